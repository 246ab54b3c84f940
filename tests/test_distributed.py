"""NDLM on a Dask LocalCluster (127.0.0.1, 2 worker processes x 1 thread, no dashboard)."""

import contextlib
import csv
import io
import json
import os
import shutil
import sys
import warnings

import joblib
import numpy as np
import pytest

distributed = pytest.importorskip("distributed")

from ndlm_sk import NDLMClassifier  # noqa: E402
from ndlm_sk.cli import _image_files, predict_entries  # noqa: E402
from ndlm_sk.datasets import load_pbc_sample  # noqa: E402
from ndlm_sk.model_io import load_model  # noqa: E402
from sklearn.model_selection import GridSearchCV, cross_val_score, cross_validate  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")


class _Paths(distributed.WorkerPlugin):
    """Workers import this module (CountedArray) and benchmarks/ (cv_compare's fold function)."""

    paths = [os.path.dirname(__file__), os.path.join(os.path.dirname(os.path.dirname(__file__)), "benchmarks")]

    def setup(self, worker):
        sys.path[:0] = [p for p in self.paths if p not in sys.path]


@pytest.fixture(scope="module")
def client():
    with (
        distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address=None
        ) as cluster,
        distributed.Client(cluster) as c,
    ):
        c.register_plugin(_Paths(), name="test-paths")  # on every worker, also one started after a death
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


# ------------------------------------------------------------------------- predict_files / predict --scheduler
def run_cli(*argv):
    from ndlm_sk.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in argv])
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def archive(tmp_path_factory, data):
    """A saved model and a tree of 24 sample images (nested folders) with one corrupt file."""
    from ndlm_sk.datasets import pbc_sample_path
    from ndlm_sk.model_io import save_model

    root = tmp_path_factory.mktemp("archive")
    model = root / "m.ndlm"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        save_model(small(n_jobs=1).fit(*data), model)
    images = root / "images"
    for i, c in enumerate(sorted(p.name for p in pbc_sample_path().iterdir() if p.is_dir())):
        sub = images / c / ("deeper" if i % 2 else "")
        sub.mkdir(parents=True, exist_ok=True)
        for f in sorted((pbc_sample_path() / c).glob("*.jpg"))[:5]:
            shutil.copy(f, sub / f.name)
    (images / "basophil" / "corrupt.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    return model, images


def parse_csv(text):
    rows = list(csv.reader(io.StringIO(text)))
    return rows[0], rows[1:]


def test_predict_on_the_cluster_equals_local_predict(client, archive):
    model, images = archive
    code, out, err = run_cli("predict", model, images, "--threads", "1")
    assert code == 0 and "corrupt.jpg" in err
    header, local = parse_csv(out)
    assert len(local) == 25
    code, out, err = run_cli("predict", model, images, "--scheduler", client.scheduler.address, "--chunk-size", "3")
    assert code == 0
    assert f"skipped {images / 'basophil' / 'corrupt.jpg'}: not a readable image (UnidentifiedImageError" in err
    assert "predicted 25 image(s): " in err and "skipped 1 file(s)" in err
    assert "ndlm-sk predict: 26/26 files (100 %)" in err
    remote_header, remote = parse_csv(out)
    assert remote_header == header
    assert [r[:2] for r in remote] == [r[:2] for r in local]  # same files in the same order, same labels
    np.testing.assert_allclose(np.array(remote)[:, 2:].astype(float), np.array(local)[:, 2:].astype(float), atol=2e-6)

    # the function: one Prediction per file, the corrupt one with its error; the model loaded once
    # per worker process and one copy per task running at a time (1 thread per worker here)
    from ndlm_sk import distributed as nd

    preds = list(nd.predict_files(model, [images], client, chunk_size=5, progress=False))
    assert [p.file for p in preds if p.error is None] == [r[0] for r in local]
    assert [p.label for p in preds if p.error is None] == [r[1] for r in local]
    assert [p.file for p in preds if p.error] == [str(images / "basophil" / "corrupt.jpg")]

    def cached():
        return [(k[0], s.model is not None, len(s.free)) for k, s in nd._MODELS.items()]

    assert sorted(client.run(cached).values()) == [[(str(model), True, 1)]] * 2


def test_cv_compare_on_the_cluster_equals_local(client, tmp_path):
    """benchmarks/cv_compare.py --scheduler: the folds on the cluster, the same results.json scores."""
    sys.path.insert(0, _Paths.paths[1])
    import cv_compare
    from ndlm_sk.datasets import pbc_sample_path

    argv = ["--data", str(pbc_sample_path()), "--models", "ndlm,cdfl", "--folds", "2", "--image-size", "24"]
    argv += ["--max-iter", "2", "--patience", "1", "--threads", "1", "--batch-size", "64"]
    argv += ["--cache-dir", str(tmp_path / "cache")]
    cv_compare.main(argv + ["--out", str(tmp_path / "local")])
    with distributed.get_task_stream(client) as ts:
        cv_compare.main(argv + ["--out", str(tmp_path / "remote"), "--scheduler", client.scheduler.address])
    assert len(ts.data) >= 4  # 2 models x 2 folds ran as tasks
    local, remote = (json.loads((tmp_path / d / "results.json").read_text()) for d in ("local", "remote"))
    for m in ("ndlm", "cdfl"):
        for key in ("accuracy", "macro_f1", "per_class"):
            assert remote["scores"][m][key] == local["scores"][m][key], (m, key)
    assert remote["tests"] == local["tests"]
    oof = [(tmp_path / d / "oof_predictions.csv").read_text() for d in ("local", "remote")]
    assert oof[0] == oof[1]


def test_a_worker_killed_mid_prediction_loses_and_duplicates_no_row(client, archive, tmp_path):
    """One worker process dies (os._exit) when its second chunk starts; Dask reruns its tasks (the
    one it was running, the finished ones whose results it held) elsewhere; every file comes back once."""
    from ndlm_sk import distributed as nd

    model, images = archive
    marker = tmp_path / "killed"

    class KillOnce(distributed.WorkerPlugin):  # defined here: pickled by value for the workers
        def __init__(self, marker):
            self.marker, self.n = marker, 0

        def transition(self, key, start, finish, **kwargs):
            if finish == "executing" and "_predict_chunk" in str(key):
                self.n += 1
                if self.n == 2:
                    try:
                        os.close(os.open(self.marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
                    except FileExistsError:  # the other worker, or this one after its restart
                        return
                    os._exit(1)

    # last test of the module (its cluster has a fresh worker after it): no wait for the replacement
    pids = set(client.run(os.getpid).values())
    client.register_plugin(KillOnce(str(marker)), name="kill-once")
    try:
        preds = list(nd.predict_files(model, [images], client, chunk_size=2, progress=False))
    finally:
        client.unregister_worker_plugin("kill-once")
    assert marker.exists()  # a worker did die
    assert len(pids - set(client.run(os.getpid).values())) == 1
    clf = load_model(model)
    clf.n_jobs = 1
    local = list(predict_entries(clf, _image_files([str(images)], name_others=True)))
    assert [p.file for p in preds] == [p.file for p in local]  # each file once, in order
    assert [p.label for p in preds] == [p.label for p in local]
