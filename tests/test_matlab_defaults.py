"""MATLAB's defaults as options: input normalization, population batch-norm statistics, shuffle='once'."""

import io
import warnings

import joblib
import numpy as np
import pytest
from ndlm_sk.datasets import load_pbc_sample
from ndlm_sk.estimator import NDLMClassifier
from ndlm_sk.model_io import load_model, save_model
from numpy_reference import network_forward
from sklearn.base import clone
from sklearn.exceptions import ConvergenceWarning

SMALL = [
    {"type": "conv", "filters": 4, "kernel": 3, "padding": 1},
    {"type": "batchnorm"},
    {"type": "relu"},
    {"type": "maxpool", "pool": 2},
    {"type": "fc"},
    {"type": "softmax"},
]


@pytest.fixture(scope="module")
def data():
    X, y = load_pbc_sample(image_size=16)
    keep = np.random.default_rng(0).permutation(len(X))[:60]  # the sample is sorted by class
    return X[keep], y[keep]


def _fit(X, y, **kw):
    params = dict(architecture=SMALL, max_iter=2, batch_size=16, random_state=0, n_jobs=1)
    params.update(kw)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return NDLMClassifier(**params).fit(X, y)


def _reference_stats(X, dimension, scale=1 / 255):
    a = X.astype(np.float64) * scale
    axes = (0,) if dimension == "element" else (0, 1, 2)
    return a.mean(axis=axes), a.std(axis=axes)


@pytest.mark.parametrize("dimension", ["element", "channel"])
@pytest.mark.parametrize("dtype", [np.uint8, np.float32])
def test_fitted_mean_and_std_match_numpy(data, dimension, dtype):
    X, y = data
    X = X.astype(dtype)
    clf = _fit(X, y, input_normalization="zscore", normalization_dimension=dimension, max_iter=1)
    mean, std = _reference_stats(X, dimension)
    assert clf.input_mean_.shape == mean.shape and clf.input_mean_.dtype == np.float32
    np.testing.assert_allclose(clf.input_mean_, mean, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(clf.input_std_, np.where(std > 0, std, 1), rtol=1e-5, atol=1e-7)
    zc = _fit(X, y, input_normalization="zerocenter", normalization_dimension=dimension, max_iter=1)
    np.testing.assert_allclose(zc.input_mean_, mean, rtol=1e-6, atol=1e-7)
    assert zc.input_std_ is None


def test_chunked_pass_equals_one_shot(data):
    X, y = data
    clf = NDLMClassifier(SMALL, input_normalization="zscore")
    clf.image_shape_ = X.shape[1:]
    clf._fit_configuration()

    class Sink:
        input_norm = None

    clf._net = Sink()
    clf._fit_input_normalization(X, np.arange(len(X)), chunk=7)  # 60 = 8 chunks of 7 and one of 4
    mean, std = _reference_stats(X, "element")
    np.testing.assert_allclose(clf.input_mean_, mean, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(clf.input_std_, np.where(std > 0, std, 1), rtol=1e-5, atol=1e-7)


def test_early_stopping_holdout_is_excluded(data):
    X, y = data
    clf = _fit(X, y, input_normalization="zerocenter", early_stopping=True, validation_fraction=0.25)
    full, _ = _reference_stats(X, "element")
    assert not np.allclose(clf.input_mean_, full, atol=1e-6)  # the hold-out is not in the mean


@pytest.mark.parametrize("norm,dimension", [("zerocenter", "element"), ("zscore", "channel"), ("zscore", "element")])
def test_predict_proba_matches_numpy_reference(data, norm, dimension):
    X, y = data
    clf = _fit(X, y, input_normalization=norm, normalization_dimension=dimension)
    a = X.astype(np.float64) / 255 - clf.input_mean_.astype(np.float64)
    if clf.input_std_ is not None:
        a = a / clf.input_std_.astype(np.float64)
    ref = network_forward(clf.layers_, clf.get_layer_params(), a, input_scale=1.0)
    np.testing.assert_allclose(clf.predict_proba(X), ref, atol=2e-5)
    none = _fit(X, y)
    assert not np.allclose(none.predict_proba(X), clf.predict_proba(X), atol=1e-3)


def test_partial_fit_and_warm_start_keep_the_first_fit(data):
    X, y = data
    clf = NDLMClassifier(SMALL, input_normalization="zerocenter", random_state=0, n_jobs=1)
    clf.partial_fit(X[:30], y[:30], classes=np.unique(y))
    first = clf.input_mean_.copy()
    np.testing.assert_allclose(first, _reference_stats(X[:30], "element")[0], rtol=1e-6, atol=1e-7)
    clf.partial_fit(X[30:], y[30:])
    np.testing.assert_array_equal(clf.input_mean_, first)

    ws = _fit(X[:30], y[:30], input_normalization="zerocenter", warm_start=True, max_iter=1)
    first = ws.input_mean_.copy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        ws.fit(X[30:], y[30:])
        np.testing.assert_array_equal(ws.input_mean_, first)
        ws.set_params(input_normalization="none")
        with pytest.raises(ValueError, match=r"warm_start=True.*input_normalization='none' .fitted: 'zero"):
            ws.fit(X, y)
        with pytest.raises(ValueError, match="partial_fit continues.*input_normalization='none'"):
            clf.set_params(input_normalization="none").partial_fit(X, y)


def test_saved_in_ndlm_and_joblib_and_validated_on_load(data, tmp_path):
    X, y = data
    clf = _fit(X, y, input_normalization="zscore", normalization_dimension="channel")
    p = clf.predict_proba(X)
    path = tmp_path / "m.ndlm"
    save_model(clf, path)
    back = load_model(path)
    assert back.get_params()["input_normalization"] == "zscore"
    np.testing.assert_array_equal(back.input_std_, clf.input_std_)
    np.testing.assert_array_equal(back.predict_proba(X), p)
    buf = io.BytesIO()
    joblib.dump(clf, buf)
    buf.seek(0)
    np.testing.assert_array_equal(joblib.load(buf).predict_proba(X), p)

    state = clf.__getstate__()
    bad = dict(state, input_mean_=np.zeros(5, np.float32))
    with pytest.raises(ValueError, match="input_mean_ must be a finite array of shape"):
        NDLMClassifier().__setstate__(bad)
    bad = dict(state, input_std_=np.full(3, np.nan, np.float32))
    with pytest.raises(ValueError, match="input_std_ must be a finite array"):
        NDLMClassifier().__setstate__(bad)
    bad = dict(state, input_normalization_="zerocenter")
    with pytest.raises(ValueError, match="input_std_ must be None"):
        NDLMClassifier().__setstate__(bad)


@pytest.mark.parametrize("norm,dimension", [("zerocenter", "element"), ("zscore", "channel")])
def test_onnx_exports_the_normalization(data, tmp_path, norm, dimension):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    from ndlm_sk.onnx_export import to_onnx

    X, y = data
    clf = _fit(X, y, input_normalization=norm, normalization_dimension=dimension)
    path = tmp_path / "m.onnx"
    to_onnx(clf, path)
    import onnx

    ops = [n.op_type for n in onnx.load(str(path)).graph.node]
    assert "Sub" in ops and (("Mul" in ops[ops.index("Sub") :]) == (norm == "zscore"))
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    probs = sess.run(["probabilities"], {"images": X})[0]
    np.testing.assert_allclose(probs, clf.predict_proba(X), atol=2e-5)


def test_population_statistics_are_exact(data):
    X, y = data
    moving = _fit(X, y, batchnorm_statistics="moving")
    pop = _fit(X, y, batchnorm_statistics="population")
    # same training (the statistics only change after it): same weights
    np.testing.assert_array_equal(moving.get_layer_params()[0]["weight"], pop.get_layer_params()[0]["weight"])
    prm = pop.get_layer_params()
    # the batch norm's input: conv of the scaled images, one whole-data value per channel
    a = X.astype(np.float64).transpose(0, 3, 1, 2) / 255
    from numpy_reference import conv2d

    z = conv2d(a, prm[0]["weight"], prm[0]["bias"], 1, 1)
    m = z.size / z.shape[1]
    np.testing.assert_allclose(prm[1]["running_mean"], z.mean(axis=(0, 2, 3)), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(prm[1]["running_var"], z.var(axis=(0, 2, 3)) * m / (m - 1), rtol=1e-4, atol=1e-6)
    assert not np.allclose(moving.get_layer_params()[1]["running_var"], prm[1]["running_var"], rtol=1e-3)
    ref = network_forward(pop.layers_, prm, X, input_scale=1 / 255)
    np.testing.assert_allclose(pop.predict_proba(X), ref, atol=2e-5)


class _Recorder:
    def __init__(self):
        self.batches = []

    def train_step(self, X, idx, y, w=None):
        self.batches.append(np.array(idx))
        return 0.0, 0


@pytest.mark.parametrize("shuffle", [True, False, "once"])
def test_shuffle_orders(data, shuffle):
    X, y = data
    clf = NDLMClassifier(SMALL, shuffle=shuffle, batch_size=16)
    clf._seed, clf.n_iter_, clf.batch_loss_curve_ = 3, 0, []
    orders = []
    for epoch in range(2):
        clf._net = _Recorder()
        clf.n_iter_ = epoch
        clf._run_epoch(X, np.zeros(len(X), np.int32), np.arange(len(X)))
        orders.append(np.concatenate(clf._net.batches))
    for o in orders:
        np.testing.assert_array_equal(np.sort(o), np.arange(len(X)))
    if shuffle is False:
        np.testing.assert_array_equal(orders[0], np.arange(len(X)))
    else:
        assert not np.array_equal(orders[0], np.arange(len(X)))
    assert np.array_equal(orders[0], orders[1]) == (shuffle is not True)


def test_get_params_clone_and_bad_values(data):
    X, y = data
    clf = NDLMClassifier(input_normalization="zscore", normalization_dimension="channel", shuffle="once")
    params = clone(clf).get_params()
    assert params["input_normalization"] == "zscore" and params["normalization_dimension"] == "channel"
    assert params["batchnorm_statistics"] == "moving" and params["shuffle"] == "once"
    for name, value in [
        ("input_normalization", "mean"),
        ("normalization_dimension", "pixel"),
        ("batchnorm_statistics", "exact"),
        ("shuffle", "twice"),
        ("shuffle", 1),
        ("batchnorm_l2_factor", -1.0),
        ("batchnorm_l2_factor", float("inf")),
        ("batchnorm_l2_factor", "1"),
    ]:
        with pytest.raises(ValueError, match=name):
            NDLMClassifier(SMALL, **{name: value}).fit(X, y)


def test_seeded_fit_is_reproducible(data):
    X, y = data
    kw = dict(input_normalization="zscore", batchnorm_statistics="population", shuffle="once")
    a, b = _fit(X, y, **kw), _fit(X, y, **kw)
    np.testing.assert_array_equal(a.predict_proba(X), b.predict_proba(X))


def test_core_rejects_bad_normalization_arrays(data):
    X, y = data
    clf = _fit(X, y, max_iter=1)
    n = int(np.prod(clf.image_shape_))
    with pytest.raises(ValueError, match="height\\*width\\*channels"):
        clf._net.input_norm = (np.zeros(3, np.float32), np.ones(3, np.float32))
    with pytest.raises(ValueError, match="finite"):
        clf._net.input_norm = (np.full(n, np.inf, np.float32), np.ones(n, np.float32))
    with pytest.raises(ValueError, match="at least one image"):
        clf._net.population_stats(X, np.zeros(0, np.int64))


def test_batchnorm_l2_factor(data, tmp_path):
    X, y = data
    base = _fit(X, y)
    zero = _fit(X, y, batchnorm_l2_factor=0.0)
    np.testing.assert_array_equal(base._net.params, zero._net.params)  # 0 is today's training, bit for bit
    one = _fit(X, y, batchnorm_l2_factor=1.0, alpha=0.5)
    no_bn_l2 = _fit(X, y, alpha=0.5)
    a, b = one._net.layer_params()[1], no_bn_l2._net.layer_params()[1]  # the batch norm layer
    # penalized toward 0: the regularized gamma ends nearer 0 than the unregularized one
    assert np.abs(a["gamma"]).sum() < np.abs(b["gamma"]).sum()
    conv_a, conv_b = one._net.layer_params()[0], no_bn_l2._net.layer_params()[0]
    assert not np.array_equal(conv_a["weight"], conv_b["weight"])  # the penalty changes the trajectory
    save_model(one, tmp_path / "m.ndlm")
    back = load_model(tmp_path / "m.ndlm")
    assert back.batchnorm_l2_factor == 1.0
    np.testing.assert_array_equal(back.predict_proba(X), one.predict_proba(X))
