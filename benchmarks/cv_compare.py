"""Cross-validated comparison of NDLM with Table III's models on the same stratified folds.

Every (model, fold) is trained with the same epoch cap and early-stopping rule (early stopping on
10 % of the training folds, ``--patience``), its held-out fold predicted once, and its result written
to ``OUT/<model>/fold<k>.json`` (a finished pair is skipped when the command is run again). Then
``results.json`` (``folds``, ``models``, per-fold scores, the tests) and ``results.md``: NDLM against
each model by the corrected resampled t-test over folds and McNemar's test on the pooled
out-of-fold predictions.

    python benchmarks/cv_compare.py --data PBC --folds 5 --max-iter 20 --patience 6 --threads 2 --out DIR
"""

import argparse
import json
import time
import warnings
from pathlib import Path

import numpy as np
from ndlm_sk.datasets import load_pbc
from ndlm_sk.model_comparison import corrected_resampled_ttest, mcnemar, wilson_interval
from ndlm_sk.table3 import make_table3_model
from sklearn.metrics import accuracy_score, f1_score
from sklearn.model_selection import StratifiedKFold

MODELS = ["ndlm", "dfcn", "dl", "dftl", "ndel", "cdfl", "ddfl"]
NO_LEADING_BN = {"dfcn", "dl", "dftl", "cdfl", "ddfl"}  # these get MATLAB's zerocenter input


def run_fold(X, y, tr, te, model, seed, a):
    kw = {"input_normalization": "zerocenter"} if model in NO_LEADING_BN else {}
    clf = make_table3_model(
        model, max_iter=a.max_iter, early_stopping=True, n_iter_no_change=a.patience, tol=0.0,
        batch_size=a.batch_size, random_state=seed, n_jobs=a.threads, **kw,
    )  # fmt: skip
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        clf.fit(X[tr], y[tr])
    seconds = time.perf_counter() - t0
    pred = clf.predict(X[te])
    return {
        "accuracy": float(accuracy_score(y[te], pred)),
        "macro_f1": float(f1_score(y[te], pred, average="macro")),
        "seconds": seconds,
        "test_index": te.tolist(),
        "pred": [str(p) for p in pred],
    }


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--image-size", type=int, default=300)
    ap.add_argument("--max-iter", type=int, default=20)
    ap.add_argument("--patience", type=int, default=6)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cache-dir", default=None)
    a = ap.parse_args(argv)
    models = a.models.split(",")
    X, y = load_pbc(a.data, a.image_size, cache=True, cache_dir=a.cache_dir)
    y = y.astype(str)
    folds = list(StratifiedKFold(a.folds, shuffle=True, random_state=a.seed).split(X, y))
    out = Path(a.out)
    res = {}
    for m in models:
        (out / m).mkdir(parents=True, exist_ok=True)
        res[m] = []
        for k, (tr, te) in enumerate(folds):
            f = out / m / f"fold{k}.json"
            if not f.exists():
                r = run_fold(X, y, tr, te, m, a.seed + k, a)
                f.write_text(json.dumps(r))
                print(f"{m} fold {k}: accuracy {r['accuracy']:.4f}, {r['seconds']:.0f} s", flush=True)
            res[m].append(json.loads(f.read_text()))
    n_test = float(np.mean([len(te) for _, te in folds]))
    n_train = len(y) - n_test

    def pooled(m):
        p = np.empty(len(y), dtype=object)
        for r in res[m]:
            p[np.asarray(r["test_index"], int)] = r["pred"]
        return p.astype(str)

    doc = {"folds": a.folds, "models": models, "config": vars(a), "scores": {}, "tests": {}}
    lines = [
        "| model | accuracy per fold | mean +- SD | out-of-fold (95 % Wilson) | seconds |",
        "|---|---|---|---|---:|",
    ]
    for m in models:
        acc = [r["accuracy"] for r in res[m]]
        oof = pooled(m) == y
        lo, hi = wilson_interval(int(oof.sum()), len(y))
        doc["scores"][m] = {"accuracy": acc, "macro_f1": [r["macro_f1"] for r in res[m]],
                            "seconds": [r["seconds"] for r in res[m]]}  # fmt: skip
        lines.append(
            f"| {m} | {', '.join(f'{100 * v:.2f}' for v in acc)} "
            f"| {100 * np.mean(acc):.2f} +- {100 * np.std(acc, ddof=1):.2f} "
            f"| {100 * oof.mean():.2f} ({100 * lo:.1f}-{100 * hi:.1f}) | {sum(doc['scores'][m]['seconds']):.0f} |"
        )
    if "ndlm" in models:
        lines += ["", "| NDLM vs | t (corrected) | p | McNemar b / c | p |", "|---|---:|---:|---:|---:|"]
        for m in models:
            if m == "ndlm":
                continue
            t, p = corrected_resampled_ttest(
                doc["scores"]["ndlm"]["accuracy"], doc["scores"][m]["accuracy"], n_train, n_test
            )
            b, c, pm = mcnemar(y, pooled("ndlm"), pooled(m))
            doc["tests"][m] = {"t": t, "p_ttest": p, "mcnemar_b": b, "mcnemar_c": c, "p_mcnemar": pm}
            lines.append(f"| {m} | {t:.2f} | {p:.3g} | {b} / {c} | {pm:.3g} |")
    (out / "results.json").write_text(json.dumps(doc, indent=1, allow_nan=True))
    (out / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
