"""Stratified k-fold cross-validation of NDLM on the PBC images: the study the paper lists as future
work ("it was not done due to computational constraints").

    python benchmarks/cv_study.py --data ../shared/data/pbc --folds 5 --out benchmarks/results/cv

Each fold trains a fresh NDLMClassifier on k-1 folds (model selection by early stopping on a
validation part held out from those training folds only) and predicts the held-out fold once. The
out-of-fold predictions of all folds give one report over every image (Tables I-II layout), beside
the per-fold accuracies (mean, standard deviation). Finished folds are saved and skipped on a rerun.
With ``--scheduler tcp://HOST:8786`` the folds run at once on that Dask cluster (joblib's "dask"
backend; the images reach each worker once).
"""

import argparse
import json
import os
import sys
import time
import warnings

import numpy as np
from joblib import Parallel, delayed
from ndlm_sk import NDLMClassifier
from ndlm_sk._fileio import atomic_write
from ndlm_sk.datasets import load_pbc
from ndlm_sk.distributed import joblib_on_cluster
from ndlm_sk.report import classification_report_ndlm, to_markdown
from sklearn.base import clone
from sklearn.model_selection import StratifiedKFold


def fit_fold(base, X, y, tr, te, k):
    """Train a clone of ``base`` on X[tr] and predict X[te] once (a joblib task: X reaches a Dask
    worker once, the fold's rows are taken there)."""
    t0 = time.perf_counter()
    clf = clone(base)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        clf.fit(X[tr], y[tr])
    pred = clf.predict(X[te])
    return {
        "fold": k,
        "accuracy": float(np.mean(pred == y[te])),
        "epochs": clf.n_iter_,
        "best_validation_score": clf.best_validation_score_,
        "seconds": time.perf_counter() - t0,
        "test_index": te.tolist(),
        "pred": pred.tolist(),
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--image-size", type=int, default=300)
    ap.add_argument("--max-iter", type=int, default=100)
    ap.add_argument("--patience", type=int, default=10, help="n_iter_no_change of the early stopping")
    ap.add_argument("--validation-fraction", type=float, default=0.1)
    ap.add_argument("--augment", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None, help="OpenMP threads per fit (default: all; 1 in a Dask task)")
    ap.add_argument(
        "--jobs", type=int, default=None, help="folds trained at once (joblib n_jobs; default 1, -1 with --scheduler)"
    )
    ap.add_argument("--scheduler", metavar="ADDRESS", default=None, help="run the folds on a Dask cluster")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)

    X, y = load_pbc(args.data, args.image_size, verbose=True)
    base = NDLMClassifier(
        "ndlm",
        max_iter=args.max_iter,
        early_stopping=True,
        n_iter_no_change=args.patience,
        validation_fraction=args.validation_fraction,
        tol=0.0,
        random_state=args.seed,
        augment=args.augment,
        n_jobs=args.threads,
        verbose=True,
    )
    folds = StratifiedKFold(args.folds, shuffle=True, random_state=args.seed)
    splits = list(folds.split(X, y))
    paths = [os.path.join(args.out, f"fold{k}.json") for k in range(args.folds)]
    pending = [k for k in range(args.folds) if not os.path.exists(paths[k])]
    for k in sorted(set(range(args.folds)) - set(pending)):
        print(f"fold {k}: done before", flush=True)
    jobs = args.jobs if args.jobs is not None else (-1 if args.scheduler else None)
    with joblib_on_cluster(args.scheduler):
        run = Parallel(n_jobs=jobs, return_as="generator", pre_dispatch="all")
        for k, r in zip(pending, run(delayed(fit_fold)(base, X, y, *splits[k], k) for k in pending)):
            atomic_write(paths[k], lambda f, r=r: json.dump(r, f), text=True)
            print(
                f"fold {k}: accuracy {r['accuracy']:.4f} after {r['epochs']} epochs, {r['seconds']:.0f} s", flush=True
            )
    oof = np.empty(len(y), dtype=y.dtype)
    per_fold = []
    for path in paths:
        with open(path) as f:
            r = json.load(f)
        oof[np.asarray(r["test_index"])] = np.asarray(r["pred"], dtype=y.dtype)
        per_fold.append(r)

    accs = np.array([r["accuracy"] for r in per_fold]) * 100
    report = classification_report_ndlm(y, oof)
    extra = {
        "command": "python " + " ".join(sys.argv),
        "folds": args.folds,
        "fold_accuracies_percent": accs.round(2).tolist(),
        "mean_accuracy_percent": float(accs.mean()),
        "std_accuracy_percent": float(accs.std(ddof=1)),
        "epochs_per_fold": [r["epochs"] for r in per_fold],
        "seconds_per_fold": [round(r["seconds"]) for r in per_fold],
    }
    md = to_markdown(
        report, title=f"NDLM, {args.folds}-fold stratified cross-validation (out-of-fold predictions)", extra=extra
    )
    with open(os.path.join(args.out, "report.md"), "w") as f:
        f.write(md)
    with open(os.path.join(args.out, "report.json"), "w") as f:
        json.dump({"report": report, "extra": extra}, f, indent=1, default=str)
    print(md)
    print(f"accuracy {accs.mean():.2f} +- {accs.std(ddof=1):.2f} % over {args.folds} folds")


if __name__ == "__main__":
    main()
