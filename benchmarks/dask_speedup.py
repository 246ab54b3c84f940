"""What a Dask cluster buys for NDLM: cross-validation and file prediction, serial vs a LocalCluster.

    pip install "ndlm_sk[dask]"
    python benchmarks/dask_speedup.py --workers 2 --out benchmarks/results/dask

Measured on one machine, so the cluster is ``--workers`` worker processes x 1 thread on 127.0.0.1;
the serial baseline runs the same tasks one after the other in this process with 1 thread each
(what one core does). The workers import ndlm_sk before the clock starts. Three numbers:

- per-task overhead: the median round trip of a no-op task, and the cost per task of 200 no-ops;
- cross-validation: ``cross_val_score`` of the same NDLMClassifier (``--folds`` folds of the
  embedded 200-image sample, upscaled to ``--size``) serially, then under ``joblib.parallel_config("dask")``;
  the scores must be identical (same seeds, one thread per fit in both);
- file prediction: ``ndlm-sk predict``'s function on a folder of ``--files`` PNG images in this
  process vs :func:`ndlm_sk.distributed.predict_files` on the cluster; the labels must be identical.

The load average before each part is recorded: on a shared machine the speed-up is not the
cluster's, and the results say so.
"""

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import warnings

import numpy as np
from sklearn.exceptions import ConvergenceWarning


def _noop(i):
    return i


def _import_ndlm_sk():
    import ndlm_sk  # noqa: F401


def _loadavg():
    return round(os.getloadavg()[0], 2)


def task_overhead(client, n=200):
    rtt = []
    for i in range(20):
        t = time.perf_counter()
        client.submit(_noop, i, pure=False).result()
        rtt.append(time.perf_counter() - t)
    t = time.perf_counter()
    client.gather(client.map(_noop, range(n), pure=False))
    per_task = (time.perf_counter() - t) / n
    return {"round_trip_ms_median": 1e3 * statistics.median(rtt), f"ms_per_task_in_a_batch_of_{n}": 1e3 * per_task}


def cross_validation(client, X, y, folds, epochs):
    import joblib
    from ndlm_sk import NDLMClassifier
    from sklearn.model_selection import StratifiedKFold, cross_val_score

    clf = NDLMClassifier(max_iter=epochs, batch_size=16, n_jobs=1, random_state=0, early_stopping=False)
    cv = StratifiedKFold(folds, shuffle=True, random_state=0)
    out = {"folds": folds, "epochs": epochs, "images": len(y), "image_shape": list(X.shape[1:])}
    out["loadavg_before_serial"] = _loadavg()
    t = time.perf_counter()
    serial = cross_val_score(clf, X, y, cv=cv, n_jobs=1)
    out["serial_s"] = time.perf_counter() - t
    out["loadavg_before_cluster"] = _loadavg()
    t = time.perf_counter()
    with joblib.parallel_config("dask"):
        cluster = cross_val_score(clf, X, y, cv=cv, n_jobs=-1)
    out["cluster_s"] = time.perf_counter() - t
    out["speedup"] = out["serial_s"] / out["cluster_s"]
    out["scores_serial"] = serial.tolist()
    out["scores_cluster"] = cluster.tolist()
    if not np.array_equal(serial, cluster):
        raise SystemExit(f"cluster scores {cluster} differ from the serial ones {serial}")
    return out


def file_prediction(client, X, y, n_files, folder):
    from ndlm_sk import NDLMClassifier
    from ndlm_sk.cli import _image_files, predict_entries
    from ndlm_sk.distributed import predict_files
    from ndlm_sk.model_io import save_model
    from PIL import Image

    model = NDLMClassifier(max_iter=1, batch_size=16, n_jobs=1, random_state=0).fit(X, y)
    model_path = os.path.join(folder, "model.ndlm")
    save_model(model, model_path)
    images = os.path.join(folder, "cells")
    os.makedirs(images)
    for i in range(n_files):
        Image.fromarray(X[i % len(X)]).save(os.path.join(images, f"cell{i:05d}.png"))
    out = {"files": n_files, "image_shape": list(X.shape[1:])}

    out["loadavg_before_serial"] = _loadavg()
    t = time.perf_counter()
    serial = [p.label for p in predict_entries(model, _image_files([images], name_others=True))]
    out["serial_s"] = time.perf_counter() - t
    out["loadavg_before_cluster"] = _loadavg()
    t = time.perf_counter()
    cluster = [p.label for p in predict_files(model_path, [images], client, chunk_size=64, progress=False)]
    out["cluster_s"] = time.perf_counter() - t
    out["speedup"] = out["serial_s"] / out["cluster_s"]
    out["files_per_s_serial"] = n_files / out["serial_s"]
    out["files_per_s_cluster"] = n_files / out["cluster_s"]
    if serial != cluster:
        raise SystemExit("the cluster's labels differ from the serial ones")
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--size", type=int, default=300, help="image side (the sample is resized)")
    ap.add_argument("--folds", type=int, default=4)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--files", type=int, default=800)
    ap.add_argument("--out", default=None, help="folder for results.json and results.md")
    args = ap.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    warnings.filterwarnings("ignore", category=ConvergenceWarning)  # a few epochs on purpose

    import distributed
    from ndlm_sk.datasets import load_pbc_sample

    X, y = load_pbc_sample(image_size=args.size)
    results = {"command": "python benchmarks/" + " ".join([os.path.basename(sys.argv[0])] + sys.argv[1:])}
    results["cpu_count"] = os.cpu_count()
    results["workers"] = f"{args.workers} processes x 1 thread, LocalCluster on 127.0.0.1"
    with (
        distributed.LocalCluster(
            n_workers=args.workers, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address=None
        ) as cluster,
        distributed.Client(cluster) as client,
        tempfile.TemporaryDirectory() as tmp,
    ):
        client.run(_import_ndlm_sk)  # the workers' one-time import is not what a task costs
        results["overhead"] = task_overhead(client)
        print("overhead", results["overhead"], flush=True)
        results["cross_validation"] = cross_validation(client, X, y, args.folds, args.epochs)
        print("cross_validation", results["cross_validation"], flush=True)
        results["file_prediction"] = file_prediction(client, X, y, args.files, tmp)
        print("file_prediction", results["file_prediction"], flush=True)

    if args.out:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "results.json"), "w") as f:
            json.dump(results, f, indent=1)
        cv, fp, oh = results["cross_validation"], results["file_prediction"], results["overhead"]
        lines = [
            "# NDLM on a Dask LocalCluster vs serial",
            "",
            f"Command: `{results['command']}` ({results['workers']}; {results['cpu_count']} cores).",
            "",
            "| job | serial (1 thread) | cluster | speed-up | load average before (serial / cluster) |",
            "|---|---:|---:|---:|---|",
            f"| cross_val_score, {cv['folds']} folds x {cv['epochs']} epochs, {cv['images']} images "
            f"{cv['image_shape'][0]}x{cv['image_shape'][1]} | {cv['serial_s']:.1f} s | {cv['cluster_s']:.1f} s "
            f"| {cv['speedup']:.2f}x | {cv['loadavg_before_serial']} / {cv['loadavg_before_cluster']} |",
            f"| predict {fp['files']} PNG files {fp['image_shape'][0]}x{fp['image_shape'][1]} | {fp['serial_s']:.1f} s "
            f"({fp['files_per_s_serial']:.0f} files/s) | {fp['cluster_s']:.1f} s ({fp['files_per_s_cluster']:.0f} "
            f"files/s) | {fp['speedup']:.2f}x | {fp['loadavg_before_serial']} / {fp['loadavg_before_cluster']} |",
            "",
            f"Per-task overhead: a no-op task's round trip {oh['round_trip_ms_median']:.1f} ms (median of 20); "
            f"{list(oh.values())[1]:.2f} ms per task in a batch of 200. Cross-validation scores and predicted "
            "labels are identical to the serial run (checked by the script).",
            "",
        ]
        with open(os.path.join(args.out, "results.md"), "w") as f:
            f.write("\n".join(lines))


if __name__ == "__main__":
    main()
