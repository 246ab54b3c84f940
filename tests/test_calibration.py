"""ndlm_sk.calibration: temperature scaling (fitted on logits, stored as temperature_, applied in
predict_proba, saved in .ndlm, checked on load, folded into ONNX) and the expected calibration error."""

import io

import numpy as np
import pytest
from ndlm_sk import NDLMClassifier
from ndlm_sk._core import Network
from ndlm_sk.calibration import (
    calibrate_temperature,
    calibration_bins,
    expected_calibration_error,
    fit_temperature,
    mean_softmax,
    softmax,
    temperature_nll,
)
from ndlm_sk.datasets import load_pbc_sample
from ndlm_sk.model_io import load_model, save_model

pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")


@pytest.fixture(scope="module")
def data():
    X, y = load_pbc_sample(image_size=32)
    rng = np.random.default_rng(0)
    order = rng.permutation(len(y))
    return X[order[:120]], y[order[:120]], X[order[120:]], y[order[120:]]


@pytest.fixture
def fitted(data):
    X, y, _, _ = data
    return NDLMClassifier(max_iter=3, batch_size=16, random_state=0, n_jobs=1, predict_batch_size=7).fit(X, y)


def _synthetic(temperature, n=20000, k=5, seed=0):
    """Logits and labels drawn from softmax(logits / temperature): the NLL is minimal near it."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0, 4, (n, k))
    p = softmax(z, temperature)
    y = (rng.random((n, 1)) > np.cumsum(p, axis=1)).sum(axis=1)
    return z, y


@pytest.mark.parametrize("t_true", [0.5, 1.0, 2.5])
def test_fit_temperature_recovers_a_known_temperature(t_true):
    z, y = _synthetic(t_true)
    t = fit_temperature(z, y)
    assert abs(t / t_true - 1) < 0.05, (t, t_true)
    # the minimum: the NLL rises on both sides
    nll = temperature_nll(z, y, t)
    assert nll < temperature_nll(z, y, t * 1.1) and nll < temperature_nll(z, y, t / 1.1)


def test_temperature_nll_is_the_log_loss_of_the_mean_softmax():
    rng = np.random.default_rng(1)
    z = rng.normal(0, 3, (8, 50, 4))
    y = rng.integers(0, 4, 50)
    p = mean_softmax(z, 1.7)
    assert p.shape == (50, 4) and np.allclose(p.sum(axis=1), 1)
    assert temperature_nll(z, y, 1.7) == pytest.approx(-np.mean(np.log(p[np.arange(50), y])), rel=1e-12)
    # no clipping: a label with a probability far below float64's smallest still has a finite NLL
    big = np.array([[0.0, 2000.0]])
    assert temperature_nll(big, np.array([0]), 1.0) == pytest.approx(2000.0)


def test_fit_temperature_rejects_bad_input():
    z = np.zeros((3, 2))
    with pytest.raises(ValueError, match="class indices"):
        fit_temperature(z, np.array([0, 2, 1]))
    with pytest.raises(ValueError, match="rows"):
        fit_temperature(z, np.array([0, 1]))
    with pytest.raises(ValueError, match="finite"):
        fit_temperature(np.array([[0.0, np.nan]]), np.array([0]))


@pytest.mark.parametrize("fuse", [True, False])
def test_logits_are_the_input_of_the_softmax(fitted, data, fuse):
    _, _, Xv, _ = data
    stack, shape = [dict(d) for d in fitted.layers_], list(fitted.image_shape_)
    net = Network(stack, shape, 5, n_threads=1, input_scale=fitted.input_scale_, fuse=fuse)
    net.set_state(fitted._net.get_state())
    net.input_norm = fitted._net.input_norm
    z = net.predict_proba(Xv, logits=True)
    p = net.predict_proba(Xv)
    np.testing.assert_allclose(softmax(z), p, atol=2e-7, rtol=0)
    if fuse:  # the estimator predicts with the fused plan
        np.testing.assert_array_equal(fitted.predict_logits(Xv), z)
    np.testing.assert_allclose(softmax(fitted.predict_logits(Xv)), fitted.predict_proba(Xv), atol=2e-6, rtol=0)


def test_temperature_one_is_the_identity(fitted, data):
    _, _, Xv, _ = data
    for tta in (False, True):
        fitted.set_params(tta=tta)
        before = fitted.predict_proba(Xv)
        fitted.temperature_ = 1.0
        np.testing.assert_array_equal(fitted.predict_proba(Xv), before)
        del fitted.temperature_
    z = np.random.default_rng(0).normal(0, 5, (10, 3))
    np.testing.assert_array_equal(mean_softmax(z, 1.0), softmax(z))


@pytest.mark.parametrize("tta", [False, True])
def test_calibrate_temperature_is_applied_in_predict_proba(fitted, data, tta):
    _, _, Xv, yv = data
    fitted.set_params(tta=tta)
    before = fitted.predict_proba(Xv)
    calibrate_temperature(fitted, Xv, yv)
    t = fitted.temperature_
    assert 1e-2 <= t <= 1e2 and t != 1.0
    rec = fitted.calibration_
    assert rec["method"] == "temperature" and rec["tta"] is tta and rec["n_samples"] == len(yv)
    assert rec["nll_after"] <= rec["nll_before"]
    after = fitted.predict_proba(Xv)
    assert after.dtype == np.float32 and np.allclose(after.sum(axis=1), 1, atol=1e-6)
    # the definition: softmax(logits / T) of every view, averaged
    views = [Xv] if not tta else [np.ascontiguousarray(np.rot90(Xv, k, axes=(1, 2))) for k in range(4)]
    if tta:
        views += [np.ascontiguousarray(v[:, :, ::-1]) for v in views]
    expected = np.mean([softmax(fitted.predict_logits(v), t) for v in views], axis=0)
    np.testing.assert_allclose(after, expected, atol=1e-6)
    if not tta:
        np.testing.assert_array_equal(np.argmax(after, 1), np.argmax(before, 1))
    yi = np.searchsorted(fitted.classes_, yv)
    assert -np.mean(np.log(after[np.arange(len(yi)), yi])) == pytest.approx(rec["nll_after"], rel=1e-4)
    # any training drops the calibration
    fitted.partial_fit(Xv, yv)
    assert not hasattr(fitted, "temperature_") and not hasattr(fitted, "calibration_")


def test_calibrate_temperature_rejects_unknown_labels(fitted, data):
    _, _, Xv, yv = data
    with pytest.raises(ValueError, match="not in classes_"):
        calibrate_temperature(fitted, Xv, np.where(yv == yv[0], "platelet", yv))


def test_temperature_round_trips_through_ndlm(fitted, data):
    _, _, Xv, yv = data
    calibrate_temperature(fitted, Xv, yv)
    buf = io.BytesIO()
    save_model(fitted, buf)
    buf.seek(0)
    loaded = load_model(buf)
    assert loaded.temperature_ == fitted.temperature_ and loaded.calibration_ == fitted.calibration_
    np.testing.assert_array_equal(loaded.predict_proba(Xv), fitted.predict_proba(Xv))


@pytest.mark.parametrize("bad", [-1.0, 0.0, float("nan"), float("inf"), 1e9, 1e-5, True, "2", None])
def test_bad_temperature_in_a_model_file_is_rejected(fitted, bad):
    fitted.temperature_ = bad
    buf = io.BytesIO()
    save_model(fitted, buf)
    buf.seek(0)
    with pytest.raises(ValueError, match="temperature_"):
        load_model(buf)


def test_onnx_export_folds_the_temperature_in(fitted, data):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    from ndlm_sk import to_onnx

    _, _, Xv, yv = data
    calibrate_temperature(fitted, Xv, yv)
    sess = ort.InferenceSession(to_onnx(fitted).SerializeToString(), providers=["CPUExecutionProvider"])
    onnx_p = sess.run(["probabilities"], {"images": Xv})[0]
    np.testing.assert_allclose(onnx_p, fitted.predict_proba(Xv), atol=1e-5)
    assert not np.allclose(onnx_p, softmax(fitted.predict_logits(Xv)), atol=1e-3)  # T is really in the graph


def test_expected_calibration_error_on_a_hand_made_example():
    proba = np.array([[0.9, 0.1], [0.9, 0.1], [0.3, 0.7], [0.55, 0.45]])
    y = np.array([0, 1, 1, 1])
    # 5 bins: (0.8, 1] holds 2 cells, accuracy 1/2, confidence 0.9; (0.6, 0.8] one right at 0.7;
    # (0.4, 0.6] one wrong at 0.55
    expected = 2 / 4 * abs(0.5 - 0.9) + 1 / 4 * abs(1 - 0.7) + 1 / 4 * abs(0 - 0.55)
    assert expected_calibration_error(y, proba, n_bins=5) == pytest.approx(expected)
    assert expected_calibration_error(np.array(["a", "b", "b", "b"]), proba, classes=["a", "b"], n_bins=5) == (
        pytest.approx(expected)
    )
    t = calibration_bins(y, proba, n_bins=5)
    assert t["count"].tolist() == [0, 0, 1, 1, 2]
    assert np.isnan(t["accuracy"][0]) and t["accuracy"][4] == 0.5
    # confidence 1.0 goes to the last bin, confidence exactly on an edge to the bin below it
    assert calibration_bins([0], [[1.0, 0.0]], n_bins=5)["count"].tolist() == [0, 0, 0, 0, 1]
    assert calibration_bins([0], [[0.5, 0.5]], n_bins=4)["count"].tolist() == [0, 1, 0, 0]
    # perfectly calibrated: every confident cell right
    assert expected_calibration_error([0, 1], [[1.0, 0.0], [0.0, 1.0]]) == 0.0
    with pytest.raises(ValueError, match="not in classes"):
        expected_calibration_error(["c"], [[0.5, 0.5]], classes=["a", "b"])


def test_sklearn_calibrated_classifier_cv_works_on_a_frozen_model(fitted, data):
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.frozen import FrozenEstimator

    _, _, Xv, yv = data
    for method in ("sigmoid", "isotonic"):
        cal = CalibratedClassifierCV(FrozenEstimator(fitted), method=method).fit(Xv, yv)
        p = cal.predict_proba(Xv)
        assert p.shape == (len(yv), 5) and np.allclose(p.sum(axis=1), 1)
