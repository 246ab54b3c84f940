"""The configuration that builds the network is fitted state: set_params after a fit changes the
next fresh fit only, persistence restores the fitted network, and a warm start or partial_fit
refuses parameters that would ask for another network (issue 9 item 3)."""

import io
import warnings

import joblib
import numpy as np
import pytest
from ndlm_sk import NDLMClassifier
from ndlm_sk.model_io import load_model, save_model
from sklearn.exceptions import ConvergenceWarning

SMALL = [
    {"type": "batchnorm"},
    {"type": "conv", "filters": 4, "kernel": 3},
    {"type": "relu"},
    {"type": "maxpool", "pool": 2, "stride": 2},
    {"type": "fc"},
]


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (24, 12, 12, 3), dtype=np.uint8), np.arange(24) % 3


def _clf(**kw):
    params = dict(max_iter=1, batch_size=8, random_state=0, n_jobs=1)
    params.update(kw)
    return NDLMClassifier(SMALL, **params)


def _fit(clf, X, y):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return clf.fit(X, y)


def _round_trips(clf):
    """The estimator through joblib and through an .ndlm file."""
    buf = io.BytesIO()
    joblib.dump(clf, buf)
    buf.seek(0)
    from_joblib = joblib.load(buf)
    buf = io.BytesIO()
    save_model(clf, buf)
    buf.seek(0)
    return from_joblib, load_model(buf)


def test_fitted_attributes_record_what_built_the_network(data):
    clf = _fit(_clf(input_scale=0.5, input_normalization="zscore", normalization_dimension="channel"), *data)
    assert clf.input_scale_ == 0.5
    assert clf.input_normalization_ == "zscore"
    assert clf.normalization_dimension_ == "channel"
    assert clf.batchnorm_statistics_ == "moving"
    assert clf.image_shape_ == (12, 12, 3)
    assert clf.layers_[1] == {"type": "conv", "filters": 4, "kernel": (3, 3), "stride": 1, "padding": 0}


@pytest.mark.parametrize(
    "change",
    [
        {"input_scale": 1.0},
        {"input_normalization": "none"},
        {"normalization_dimension": "element"},
        {"architecture": "tabular"},
        {"image_shape": (3, 48, 3)},
    ],
)
def test_set_params_after_fit_does_not_change_the_restored_model(data, change):
    X, y = data
    clf = _fit(_clf(input_normalization="zscore", normalization_dimension="channel"), X, y)
    p = clf.predict_proba(X)
    clf.set_params(**change)
    np.testing.assert_array_equal(clf.predict_proba(X), p)
    for back in _round_trips(clf):
        np.testing.assert_array_equal(back.predict_proba(X), p)
        assert back.layers_ == clf.layers_
        assert back.get_params() == clf.get_params()  # the parameters stay as set: for the next fit


def test_a_model_from_before_the_fitted_configuration_loads_with_its_saved_parameters(data):
    X, y = data
    clf = _fit(_clf(input_scale=0.5, input_normalization="zerocenter"), X, y)
    p = clf.predict_proba(X)
    old = clf.__getstate__()
    for name in ("input_scale_", "input_normalization_", "normalization_dimension_", "batchnorm_statistics_"):
        del old[name]
    back = NDLMClassifier.__new__(NDLMClassifier)
    back.__setstate__(old)
    assert back.input_scale_ == 0.5 and back.input_normalization_ == "zerocenter"
    np.testing.assert_array_equal(back.predict_proba(X), p)


@pytest.mark.parametrize(
    "change, match",
    [
        ({"architecture": "tabular"}, "architecture='tabular' .does not build the fitted layers_"),
        ({"architecture": SMALL[:-1] + [{"type": "fc", "units": 3}, {"type": "relu"}]}, "architecture="),
        ({"input_scale": 1.0}, r"input_scale=1.0 \(fitted: 0.00392"),
        ({"input_normalization": "zerocenter"}, "input_normalization='zerocenter' .fitted: 'none'"),
        ({"normalization_dimension": "channel"}, "normalization_dimension='channel'"),
        ({"image_shape": (12, 36, 1)}, r"image_shape=\(12, 36, 1\) \(fitted: \(12, 12, 3\)\)"),
    ],
)
@pytest.mark.parametrize("how", ["warm_start", "partial_fit"])
def test_continuing_with_another_network_raises(data, change, match, how):
    X, y = data
    clf = _clf(warm_start=how == "warm_start")
    if how == "warm_start":
        _fit(clf, X, y)
    else:
        clf.partial_fit(X, y, classes=[0, 1, 2])
    before = clf.__getstate__()["_net_state"]["params"].copy()
    clf.set_params(**change)
    head = "warm_start=True" if how == "warm_start" else "partial_fit"
    with pytest.raises(ValueError, match=f"{head} continues training the fitted network.*{match}"):
        if how == "warm_start":
            clf.fit(X, y)
        else:
            clf.partial_fit(X, y)
    np.testing.assert_array_equal(clf._net.get_state()["params"], before)  # nothing trained


def test_continuing_on_images_of_another_shape_raises(data):
    X, y = data
    clf = _fit(_clf(warm_start=True), X, y)
    with pytest.raises(ValueError, match="images are 16x16x3 but NDLMClassifier was fitted on 12x12x3"):
        clf.fit(np.zeros((6, 16, 16, 3), np.uint8), y[:6])
    # rows read as images by the fitted image_shape_ need image_shape to say so
    rows = X.reshape(len(X), -1)
    with pytest.raises(ValueError, match="reads rows of 432 features as 1x1x432 images.*fitted on 12x12x3"):
        clf.fit(rows, y)
    before = clf.n_iter_
    _fit(clf.set_params(image_shape=(12, 12, 3)), rows, y)
    assert clf.n_iter_ == before + 1


def test_model_saved_after_any_legal_warm_start_sequence_loads(data):
    X, y = data
    clf = _fit(_clf(warm_start=True, input_normalization="zerocenter"), X, y)
    legal = [
        {"learning_rate_init": 3e-3, "alpha": 0.0},
        {"max_iter": 2, "batch_size": 5, "shuffle": "once"},
        {"batchnorm_statistics": "population", "augment": True},
        {"architecture": [dict(layer) for layer in clf.layers_]},  # the fitted stack, spelled out
        {"architecture": SMALL[:-1] + [{"type": "fc", "units": 3}], "input_scale": 1 / 255},  # the same stack
        {"early_stopping": True, "validation_fraction": 0.25, "batchnorm_statistics": "moving"},
    ]
    for step in legal:
        _fit(clf.set_params(**step), X, y)
        p = clf.predict_proba(X)
        for back in _round_trips(clf):
            np.testing.assert_array_equal(back.predict_proba(X), p)
            assert back.layers_ == clf.layers_
    assert clf.batchnorm_statistics_ == "moving"
    # and both continue exactly as the live model does
    a, b = _round_trips(clf)
    for est in (clf, a, b):
        _fit(est, X, y)
    np.testing.assert_array_equal(a.predict_proba(X), clf.predict_proba(X))
    np.testing.assert_array_equal(b.predict_proba(X), clf.predict_proba(X))


def test_a_fresh_fit_uses_the_changed_parameters(data):
    X, y = data
    clf = _fit(_clf(), X, y)
    clf.set_params(architecture="tabular", input_scale=1.0, warm_start=False)
    _fit(clf, X, y)
    assert clf.input_scale_ == 1.0
    assert [layer["type"] for layer in clf.layers_] == ["batchnorm", "fc", "softmax"]


def test_onnx_export_uses_the_fitted_configuration(data):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    from ndlm_sk.onnx_export import to_onnx

    X, y = data
    clf = _fit(_clf(input_normalization="zscore"), X, y)
    p = clf.predict_proba(X)
    clf.set_params(input_scale=1.0, input_normalization="none")
    sess = ort.InferenceSession(to_onnx(clf).SerializeToString())
    out = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, {"images": X})))
    np.testing.assert_allclose(out["probabilities"], p, rtol=1e-4, atol=1e-5)
