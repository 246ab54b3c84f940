"""The committed result models (benchmarks/results/reproduction*/model.ndlm): safe files with the
parameters that trained them, so that ``clone(model).fit(X_train, y_train)`` trains the same network.

``ndlm-sk reproduce`` trains one ``fit`` call per epoch (``max_iter=1, warm_start=True``); the files
were converted from those loop settings by tools/convert_result_models.py. The first test checks
the equivalence the conversion relies on, on small images: the per-epoch loop and one ``fit`` of
``max_iter`` epochs train bit-identical models (weights, Adam state, loss curve), with and without
augmentation.
"""

import warnings
from pathlib import Path

import numpy as np
import pytest
from ndlm_sk import NDLMClassifier
from ndlm_sk.datasets import load_pbc_sample
from ndlm_sk.model_io import load_model
from sklearn.base import clone

RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results"
RUNS = {"reproduction": 86, "reproduction-augment": 50}  # epoch whose weights were kept


def _images(n=24, size=32, seed=0):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 3
    X = rng.integers(0, 90, (n, size, size, 3), dtype=np.uint8)
    X[np.arange(n), :, :, y] += 140
    return X, y


@pytest.mark.parametrize("augment", [False, True])
def test_per_epoch_loop_equals_one_fit(augment):
    X, y = _images()
    kw = dict(batch_size=8, random_state=3, n_jobs=1, augment=augment)
    loop = NDLMClassifier(max_iter=1, warm_start=True, **kw)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for _ in range(4):
            loop.fit(X, y)
        one = clone(loop).set_params(max_iter=4, warm_start=False, n_iter_no_change=4).fit(X, y)
    assert one.n_iter_ == loop.n_iter_ == 4
    assert one.loss_curve_ == loop.loss_curve_
    sa, sb = loop.__getstate__()["_net_state"], one.__getstate__()["_net_state"]
    assert sa.keys() == sb.keys()
    for k in sa:
        assert np.array_equal(np.asarray(sa[k]), np.asarray(sb[k])), k
    np.testing.assert_array_equal(one.predict_proba(X), loop.predict_proba(X))


@pytest.mark.parametrize("run", sorted(RUNS))
def test_committed_model_is_ndlm_with_clean_parameters(run):
    folder = RESULTS / run
    assert not (folder / "model.joblib").exists(), "result models are committed as .ndlm only"
    model = load_model(folder / "model.ndlm")
    assert model.n_iter_ == RUNS[run]
    params = model.get_params()
    assert params["warm_start"] is False
    assert params["max_iter"] == model.n_iter_
    assert params["augment"] is (run == "reproduction-augment")
    # one fit of max_iter epochs would not stop earlier on the training-loss rule
    best, count = np.inf, 0
    for loss in model.loss_curve_[:-1]:
        count = count + 1 if loss > best - params["tol"] else 0
        best = min(best, loss)
        assert count <= params["n_iter_no_change"]
    X, y = load_pbc_sample()
    proba = model.predict_proba(X[::10])
    assert np.all(np.isfinite(proba)) and np.allclose(proba.sum(axis=1), 1.0)
    assert list(model.classes_) == sorted(set(y))
