"""Test-time augmentation (tta=True): probabilities averaged over the symmetries of the image."""

import io

import numpy as np
import pytest
from ndlm_sk import NDLMClassifier
from ndlm_sk.datasets import load_pbc_sample
from ndlm_sk.model_io import load_model, save_model

pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")


@pytest.fixture(scope="module")
def fitted():
    X, y = load_pbc_sample(image_size=32)
    clf = NDLMClassifier(max_iter=2, batch_size=16, random_state=0, n_jobs=1, predict_batch_size=7).fit(X, y)
    return clf, X[:20]


def _all_symmetries(x):
    """The 8 symmetries of the square of an (n, H, W, C) batch, written out by hand."""
    out = []
    for k in range(4):
        r = np.rot90(x, k, axes=(1, 2))
        out += [r, r[:, :, ::-1]]
    return [np.ascontiguousarray(a) for a in out]


def test_tta_is_the_mean_of_the_8_manual_predictions(fitted):
    clf, X = fitted
    clf.set_params(tta=False)
    manual = np.mean([clf.predict_proba(v).astype(np.float64) for v in _all_symmetries(X)], axis=0)
    plain = clf.predict_proba(X)
    clf.set_params(tta=True)
    try:
        tta = clf.predict_proba(X)
        pred = clf.predict(X)
    finally:
        clf.set_params(tta=False)
    assert tta.dtype == np.float32 and tta.shape == plain.shape
    np.testing.assert_allclose(tta, manual, rtol=0, atol=1e-6)
    np.testing.assert_allclose(tta.sum(axis=1), 1, atol=1e-5)
    assert np.abs(tta - plain).max() > 1e-3, "degenerate test: the model is already invariant"
    np.testing.assert_array_equal(pred, clf.classes_[tta.argmax(axis=1)])


def test_tta_probabilities_are_invariant_to_rotating_and_flipping_the_input(fitted):
    clf, X = fitted
    clf.set_params(tta=True)
    try:
        ref = clf.predict_proba(X)
        for v in _all_symmetries(X)[1:]:
            np.testing.assert_allclose(clf.predict_proba(v), ref, rtol=0, atol=2e-6)
    finally:
        clf.set_params(tta=False)


def test_non_square_images_average_the_4_flips():
    rng = np.random.default_rng(0)
    X = rng.integers(0, 256, (12, 9, 7, 3), dtype=np.uint8)
    y = np.arange(12) % 3
    stack = [{"type": "conv", "filters": 3, "kernel": 3}, {"type": "relu"}, {"type": "fc"}]
    clf = NDLMClassifier(stack, max_iter=1, batch_size=4, random_state=0, n_jobs=1).fit(X, y)
    flips = [X, X[:, ::-1], X[:, :, ::-1], X[:, ::-1, ::-1]]
    manual = np.mean([clf.predict_proba(np.ascontiguousarray(f)) for f in flips], axis=0)
    clf.set_params(tta=True)
    np.testing.assert_allclose(clf.predict_proba(X), manual, rtol=0, atol=1e-6)
    np.testing.assert_allclose(clf.predict_proba(np.ascontiguousarray(X[:, ::-1])), manual, rtol=0, atol=2e-6)


def test_tta_is_saved_in_model_files_and_checked(fitted):
    clf, X = fitted
    clf.set_params(tta=True)
    try:
        buf = io.BytesIO()
        save_model(clf, buf)
        buf.seek(0)
        back = load_model(buf)
        assert back.tta is True
        np.testing.assert_array_equal(back.predict_proba(X), clf.predict_proba(X))
        clf.set_params(tta="yes")
        with pytest.raises(ValueError, match="'tta' parameter of NDLMClassifier must be"):
            clf.predict_proba(X)
    finally:
        clf.set_params(tta=False)
