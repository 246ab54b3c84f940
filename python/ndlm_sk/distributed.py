"""NDLM on a Dask cluster (``pip install "ndlm_sk[dask]"``).

Cross-validation and searches need nothing from this module: scikit-learn's joblib calls run on a
cluster with ``joblib.parallel_config("dask")`` after ``dask.distributed.Client(address)``; joblib
scatters the image array to the workers (once per worker, not once per task).

Threads: inside a Dask worker, ``NDLMClassifier(n_jobs=None)`` uses **one OpenMP thread per task**.
A worker started with ``--nthreads T`` runs up to T tasks at once, one per thread, so its T cores are
busy when it has T tasks and never oversubscribed, however many tasks share it. One thread per task,
rather than "what is free right now", keeps the fitted model independent of the scheduling (the
fitted state depends on the thread count). An explicit ``n_jobs`` is used as given.

Prediction over a tree of image files: :func:`predict_files` (``ndlm-sk predict MODEL FOLDER
--scheduler tcp://HOST:8786``).
"""

import collections
import contextlib
import copy
import os
import sys
import threading
import time


@contextlib.contextmanager
def joblib_on_cluster(address):
    """``joblib.parallel_config("dask")`` with a client of the scheduler at ``address`` for the
    block: scikit-learn's ``n_jobs`` runs there. Does nothing when ``address`` is None or empty."""
    if not address:
        yield None
        return
    import joblib
    from distributed import Client

    with Client(address) as client, joblib.parallel_config("dask"):
        yield client


def worker_threads():
    """OpenMP threads for ``n_jobs=None`` in the current Dask task, or None outside a Dask worker."""
    if "distributed" not in sys.modules:  # no Dask imported: certainly not in a worker
        return None
    from distributed import get_worker

    try:
        get_worker()
    except ValueError:  # not running in a worker's task
        return None
    return 1


# ------------------------------------------------------------------------- archive-scale prediction
class _ModelSlot:
    """One model file in one worker process: loaded once, one copy per task running at the same time."""

    def __init__(self):
        self.lock = threading.Lock()
        self.model = None  # as loaded; never used to predict (its copies are)
        self.free = []


_MODELS = {}  # (absolute path, mtime_ns, size) -> _ModelSlot, per worker process
_MODELS_LOCK = threading.Lock()


def _model_key(path):
    st = os.stat(path)
    return os.path.abspath(path), st.st_mtime_ns, st.st_size


def _checkout_model(key):
    from .model_io import load_model_file

    with _MODELS_LOCK:
        slot = _MODELS.setdefault(key, _ModelSlot())
    with slot.lock:
        if slot.model is None:
            model = load_model_file(key[0])
            if _model_key(key[0]) != key:
                raise RuntimeError(f"the model file {key[0]} differs from the one the client read")
            slot.model = model
        return slot, (slot.free.pop() if slot.free else copy.deepcopy(slot.model))


def _predict_chunk(key, threads, entries):
    """A Dask task: classify ``entries`` ([(path, error or None)]) with the model file ``key``; a
    list of :class:`ndlm_sk.cli.Prediction`, one per entry, in order."""
    from .cli import predict_entries

    slot, clf = _checkout_model(key)
    try:
        clf.n_jobs = threads
        return list(predict_entries(clf, entries, chunk=max(1, len(entries))))
    finally:
        with slot.lock:
            slot.free.append(clf)


def _chunks(entries, size):
    chunk = []
    for entry in entries:
        chunk.append(entry)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def predict_files(
    model_path,
    paths,
    client=None,
    *,
    scheduler=None,
    chunk_size=64,
    threads=None,
    retries=2,
    in_flight=None,
    progress=True,
):
    """Classify image files on a Dask cluster; yield one :class:`ndlm_sk.cli.Prediction`
    ``(file, label, proba, error)`` per file, in file order (as ``ndlm-sk predict`` lists them).

    ``paths``: image files and folders (searched recursively, sorted). The workers open the files
    and ``model_path`` at the same paths as this process (a shared file system). ``client`` (default:
    a new client of ``scheduler``, or the current client) runs one task per ``chunk_size`` files;
    each worker process loads the model once and keeps it. At most ``in_flight`` chunks (default:
    twice the cluster's threads) are submitted but not yet yielded, so memory stays bounded for any
    number of files. A file that cannot be read or decoded comes back with ``error`` set (and
    ``label``, ``proba`` None). A lost worker's tasks are rerun by Dask on another worker (a task
    that raises is retried ``retries`` times); each chunk's result is taken once, so no row is lost
    or duplicated; a chunk whose tasks killed ``distributed.scheduler.allowed-failures`` workers
    comes back as errors. ``threads``: OpenMP threads per task (default: one, see
    :func:`worker_threads`). ``progress``: a line on stderr at most every 2 s and at the end.
    """
    import distributed

    from .cli import Prediction, _image_files
    from .model_io import load_model_file

    own = None
    if client is None:
        client = own = distributed.Client(scheduler) if scheduler else None
        if client is None:
            client = distributed.get_client()
    try:
        key = _model_key(model_path)
        load_model_file(model_path)  # an unreadable model fails here, not in every task
        entries = list(_image_files([str(p) for p in paths], name_others=True))
        n_total = len(entries)
        if in_flight is None:
            in_flight = max(2, 2 * sum(client.nthreads().values()))
        chunks = _chunks(entries, int(chunk_size))
        pending = collections.deque()
        done, t0, last = 0, time.perf_counter(), 0.0

        def submit():
            for chunk in chunks:
                future = client.submit(_predict_chunk, key, threads, chunk, retries=retries, pure=False)
                pending.append((chunk, future))
                if len(pending) >= in_flight:
                    return

        submit()
        while pending:
            chunk, future = pending.popleft()
            try:
                results = future.result()
            except distributed.KilledWorker as e:
                error = f"its task was running on {e.allowed_failures + 1} workers that died"
                results = [Prediction(path, None, None, error) for path, _ in chunk]
            del future
            submit()
            yield from results
            done += len(chunk)
            now = time.perf_counter()
            if progress and (now - last >= 2.0 or not pending):
                last = now
                print(
                    f"ndlm-sk predict: {done}/{n_total} files ({100.0 * done / max(1, n_total):.0f} %), "
                    f"{done / max(now - t0, 1e-9):.0f} files/s",
                    file=sys.stderr,
                    flush=True,
                )
    finally:
        if own is not None:
            own.close()
