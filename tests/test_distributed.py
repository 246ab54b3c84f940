"""NDLM on a Dask LocalCluster (127.0.0.1, 2 worker processes x 1 thread, no dashboard)."""

import os
import sys
import warnings

import joblib
import numpy as np
import pytest

distributed = pytest.importorskip("distributed")

from ndlm_sk import NDLMClassifier  # noqa: E402
from ndlm_sk.datasets import load_pbc_sample  # noqa: E402
from sklearn.model_selection import GridSearchCV, cross_val_score, cross_validate  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")


@pytest.fixture(scope="module")
def client():
    with (
        distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address=None
        ) as cluster,
        distributed.Client(cluster) as c,
    ):
        c.run(sys.path.insert, 0, os.path.dirname(__file__))  # workers unpickle CountedArray from here
        yield c


@pytest.fixture(scope="module")
def data():
    X, y = load_pbc_sample(image_size=24)
    return X[::2], y[::2]  # 100 images, 20 per class


def small(**kw):
    return NDLMClassifier(max_iter=4, batch_size=16, learning_rate_init=3e-3, random_state=0, **kw)


def _rebuild(array, log):
    """Unpickling a CountedArray appends this process's pid to ``log``: one line per deserialization."""
    with open(log, "a") as f:
        f.write(f"{os.getpid()}\n")
    return array


class CountedArray(np.ndarray):
    """An image array that logs each of its (or its slices') deserializations."""

    def __array_finalize__(self, obj):
        self.log = getattr(obj, "log", None)

    def __reduce__(self):
        return _rebuild, (np.asarray(self), self.log)


@distributed.protocol.dask_serialize.register(CountedArray)
def _not_as_a_plain_array(x):
    raise NotImplementedError  # Dask falls back to pickle, so __reduce__ runs


def test_n_jobs_none_is_one_thread_per_task_in_a_worker(client, data):
    X, y = data

    def threads():
        return small()._threads(), small(n_jobs=2)._threads()

    assert client.submit(threads, pure=False).result() == (1, 2)
    # the network a fit builds in the task (a fitted model unpickled here would rebuild it with local threads)
    assert client.submit(lambda: small().fit(X[:40], y[:40])._net.n_threads, pure=False).result() == 1


def test_cross_validation_on_the_cluster_equals_local(client, data, tmp_path):
    X, y = data
    # the log-loss differs between folds and between any two fits: equal means the same fitted models
    kw = dict(cv=4, scoring=("accuracy", "neg_log_loss"), return_train_score=True)
    local = cross_validate(small(n_jobs=1), X, y, **kw)
    log = tmp_path / "unpickled.txt"
    Xc = X.view(CountedArray)
    Xc.log = str(log)
    # pre_dispatch="all": joblib scatters X once before the tasks start (no race between batches)
    with distributed.get_task_stream(client) as ts, joblib.parallel_config("dask"):
        remote = cross_validate(small(), Xc, y, **kw, n_jobs=-1, pre_dispatch="all")
    assert len({t["worker"] for t in ts.data}) == 2  # both workers ran folds
    assert len(set(local["test_neg_log_loss"])) == 4
    for key in ("test_accuracy", "train_accuracy", "test_neg_log_loss", "train_neg_log_loss"):
        np.testing.assert_array_equal(remote[key], local[key])
    pids = log.read_text().split()
    # the 4 folds' tasks got X by reference: it was deserialized once per worker that needed it
    assert len(pids) == len(set(pids)) <= 2, pids

    with joblib.parallel_config("dask"):
        scores = cross_val_score(small(), X, y, cv=3, n_jobs=-1)
    np.testing.assert_array_equal(scores, cross_val_score(small(n_jobs=1), X, y, cv=3))


def test_grid_search_on_the_cluster_equals_local(client, data):
    X, y = data
    grid = {"learning_rate_init": [1e-3, 3e-3]}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        local = GridSearchCV(small(n_jobs=1), grid, cv=2).fit(X, y)
        with joblib.parallel_config("dask"):
            remote = GridSearchCV(small(), grid, cv=2, n_jobs=-1).fit(X, y)
    np.testing.assert_array_equal(remote.cv_results_["mean_test_score"], local.cv_results_["mean_test_score"])
    assert remote.best_params_ == local.best_params_
