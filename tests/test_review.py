"""ndlm_sk.review: the review threshold fitted on validation data, saved in .ndlm files."""

import numpy as np
import pytest
from ndlm_sk.datasets import load_pbc_sample
from ndlm_sk.estimator import NDLMClassifier
from ndlm_sk.model_io import load_model, save_model
from ndlm_sk.review import fit_review_rule, plot_risk_coverage


class FixedModel:
    classes_ = np.array(["a", "b"])

    def __init__(self, proba):
        self.proba = np.asarray(proba, dtype=float)

    def predict_proba(self, X):
        return self.proba


def test_threshold_keeps_target_accuracy():
    # top probabilities 0.99 .. 0.60; the cell at 0.7 is wrong: accepting down to 0.8 is 100 % right
    top = np.array([0.99, 0.95, 0.9, 0.8, 0.7, 0.6])
    proba = np.c_[top, 1 - top]
    y = np.array(["a", "a", "a", "a", "b", "a"])
    m = fit_review_rule(FixedModel(proba), None, y, target_accuracy=0.995)
    assert m.review_threshold_ == pytest.approx(0.8)
    accepted = top >= m.review_threshold_
    assert np.all(y[accepted] == "a")
    m = fit_review_rule(FixedModel(proba), None, y, target_accuracy=0.8)  # 5/6 >= 0.8: accept all
    assert m.review_threshold_ == pytest.approx(0.6)
    y_bad = np.array(["b"] * 6)  # every cell wrong: review every cell
    m = fit_review_rule(FixedModel(proba), None, y_bad)
    assert not np.any(top >= m.review_threshold_)
    with pytest.raises(ValueError, match="target_accuracy"):
        fit_review_rule(FixedModel(proba), None, y, target_accuracy=0)


def test_rule_saved_in_ndlm_file(tmp_path):
    X, y = load_pbc_sample(image_size=24)
    clf = NDLMClassifier(max_iter=1, batch_size=64, random_state=0, n_jobs=1).fit(X[::2], y[::2])
    fit_review_rule(clf, X[1::2], y[1::2])
    save_model(clf, tmp_path / "m.ndlm")
    back = load_model(tmp_path / "m.ndlm")
    assert back.review_threshold_ == clf.review_threshold_
    assert back.review_curve_ == clf.review_curve_
    png = plot_risk_coverage(back, tmp_path / "rc.png")
    assert png.read_bytes()[:4] == b"\x89PNG"
