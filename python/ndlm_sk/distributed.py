"""NDLM on a Dask cluster (``pip install "ndlm_sk[dask]"``).

Cross-validation and searches need nothing from this module: scikit-learn's joblib calls run on a
cluster with ``joblib.parallel_config("dask")`` after ``dask.distributed.Client(address)``; joblib
scatters the image array to the workers (once per worker, not once per task).

Threads: inside a Dask worker, ``NDLMClassifier(n_jobs=None)`` uses **one OpenMP thread per task**.
A worker started with ``--nthreads T`` runs up to T tasks at once, one per thread, so its T cores are
busy when it has T tasks and never oversubscribed, however many tasks share it. One thread per task,
rather than "what is free right now", keeps the fitted model independent of the scheduling (the
fitted state depends on the thread count). An explicit ``n_jobs`` is used as given.
"""

import sys


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
