"""Parameters are validated the scikit-learn way (``_parameter_constraints``) in the one place
fit, partial_fit, predict and loading share, so a bad value never reaches the C++ core."""

import inspect
import io
import warnings

import numpy as np
import pytest
from ndlm_sk import NDLMClassifier
from ndlm_sk.model_io import load_model, save_model
from ndlm_sk.table3 import CoupledNDLM
from sklearn.exceptions import ConvergenceWarning
from sklearn.utils._param_validation import InvalidParameterError

STACK = [{"type": "conv", "filters": 2, "kernel": 3}, {"type": "relu"}, {"type": "fc"}]
X = np.random.default_rng(0).integers(0, 256, (12, 8, 8, 3), dtype=np.uint8)
Y = np.arange(12) % 3


def _clf(**kw):
    params = dict(architecture=STACK, max_iter=1, batch_size=4, random_state=0, n_jobs=1)
    params.update(kw)
    return NDLMClassifier(**params)


@pytest.fixture(scope="module")
def fitted():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return _clf().fit(X, Y)


def test_every_parameter_has_constraints():
    names = set(inspect.signature(NDLMClassifier).parameters)
    assert set(NDLMClassifier._parameter_constraints) == names
    assert set(CoupledNDLM._parameter_constraints) == set(inspect.signature(CoupledNDLM).parameters)


@pytest.mark.parametrize("seed", [-1, 2**32, 2**64, 1.5, "0", True])
@pytest.mark.parametrize("how", ["fit", "partial_fit"])
def test_bad_random_state_gets_sklearn_s_error(seed, how):
    with pytest.raises(InvalidParameterError, match="The 'random_state' parameter of NDLMClassifier must"):
        if how == "fit":
            _clf(random_state=seed).fit(X, Y)
        else:
            _clf(random_state=seed).partial_fit(X, Y, classes=[0, 1, 2])


def test_random_state_none_and_instances_follow_check_random_state():
    def proba(rs):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            return _clf(random_state=rs).fit(X, Y).predict_proba(X)

    np.random.seed(7)  # noqa: NPY002 - None means NumPy's legacy global generator
    a = proba(None)
    np.random.seed(7)  # noqa: NPY002
    np.testing.assert_array_equal(proba(None), a)  # None: NumPy's global generator
    np.testing.assert_array_equal(proba(np.random.RandomState(3)), proba(np.random.RandomState(3)))
    assert not np.array_equal(proba(0), proba(1))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        assert _clf(random_state=2**32 - 1).fit(X, Y).predict(X).shape == (12,)  # the largest valid seed


@pytest.mark.parametrize(
    "param, value, message",
    [
        ("alpha", np.inf, r"'alpha' parameter .* Got inf instead\. alpha must be finite"),
        ("learning_rate_init", np.inf, "learning_rate_init must be finite"),
        ("batchnorm_l2_factor", np.nan, "batchnorm_l2_factor must be finite"),
        ("input_scale", -np.inf, "input_scale must be finite"),
        ("max_iter", True, "'max_iter' parameter of NDLMClassifier must not be True"),
        ("n_jobs", 0, r"'n_jobs' parameter .* must be None, an int in the range \[-\d+, -1\] or"),
        ("shuffle", "twice", r"'shuffle' parameter .* a str among \{'once'\}"),
        ("input_normalization", "zero", "'input_normalization' parameter"),
        ("normalization_dimension", None, "'normalization_dimension' parameter"),
        ("batchnorm_statistics", "exact", "'batchnorm_statistics' parameter"),
        ("architecture", ("conv",), "'architecture' parameter"),
        ("early_stopping", "yes", "'early_stopping' parameter"),
    ],
)
def test_bad_values_name_the_parameter_at_fit_and_partial_fit(param, value, message):
    with pytest.raises(InvalidParameterError, match=message):
        _clf(**{param: value}).fit(X, Y)
    with pytest.raises(InvalidParameterError, match=message):
        _clf(**{param: value}).partial_fit(X, Y, classes=[0, 1, 2])


@pytest.mark.parametrize(
    "param, value", [("predict_batch_size", 0), ("predict_batch_size", None), ("n_jobs", 0), ("tta", "yes")]
)
def test_predict_validates_the_parameters_it_uses(fitted, param, value):
    clf = fitted.__class__(**fitted.get_params())
    clf.__setstate__(fitted.__getstate__())
    clf.set_params(**{param: value})
    methods = [clf.predict, clf.predict_proba, clf.predict_log_proba]
    for method in methods + ([clf.predict_logits] if param != "tta" else []):  # no TTA in logits
        with pytest.raises(InvalidParameterError, match=f"The '{param}' parameter of NDLMClassifier"):
            method(X)
    clf.set_params(**{param: fitted.get_params()[param], "max_iter": 0})  # predict does not train
    np.testing.assert_array_equal(clf.predict(X), fitted.predict(X))


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("predict_batch_size", 0, "'predict_batch_size' parameter"),
        ("random_state", -1, "'random_state' parameter"),
        ("shuffle", "sometimes", "'shuffle' parameter"),
        ("input_scale_", np.inf, "'input_scale_' parameter .* input_scale_ must be finite"),
        ("input_normalization_", "unit", "'input_normalization_' parameter"),
    ],
)
def test_loading_validates_parameters_and_fitted_configuration(fitted, key, value, message):
    state = dict(fitted.__getstate__(), **{key: value})
    with pytest.raises(InvalidParameterError, match=message):
        NDLMClassifier.__new__(NDLMClassifier).__setstate__(state)
    if key.endswith("_"):
        return
    bad = NDLMClassifier.__new__(NDLMClassifier)
    bad.__dict__.update(state)  # a model file holding the value: load_model refuses it, naming it
    bad.__getstate__ = lambda: state
    buf = io.BytesIO()
    save_model(bad, buf)
    buf.seek(0)
    with pytest.raises(ValueError, match=message):
        load_model(buf)
    # an unfitted estimator's state is validated as well
    unfitted = dict(NDLMClassifier().__getstate__(), **{key: value})
    with pytest.raises(InvalidParameterError, match=message):
        NDLMClassifier.__new__(NDLMClassifier).__setstate__(unfitted)


@pytest.mark.parametrize(
    "params, message",
    [
        ({"n_networks": 0}, "'n_networks' parameter of CoupledNDLM"),
        ({"n_networks": True}, "'n_networks' parameter of CoupledNDLM must not be True"),
        ({"random_state": 2**32 - 1}, "'random_state' parameter of CoupledNDLM"),
        ({"random_state": -1}, "'random_state' parameter of CoupledNDLM"),
        ({"estimator": "cdfl"}, "'estimator' parameter of CoupledNDLM"),
    ],
)
def test_coupled_parameters(params, message):
    with pytest.raises(InvalidParameterError, match=message):
        CoupledNDLM(**{"estimator": _clf(), **params}).fit(X, Y)
