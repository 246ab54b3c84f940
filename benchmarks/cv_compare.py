"""Cross-validated comparison of NDLM with Table III's models on the same stratified folds.

Every (model, fold) is trained with the same epoch cap and early-stopping rule (early stopping on
10 % of the training folds, ``--patience``), its held-out fold predicted once, and its result written
to ``OUT/<model>/fold<k>.json`` (a finished pair is skipped when the command is run again). Then
``results.json`` (``folds``, ``models``, per-fold scores, the tests) and ``results.md``: NDLM against
each model by the corrected resampled t-test over folds and McNemar's test on the pooled
out-of-fold predictions.

    python benchmarks/cv_compare.py --data PBC --folds 5 --max-iter 20 --patience 6 --threads 2 --out DIR

With ``--scheduler tcp://HOST:8786`` the folds of each model run at once on that Dask cluster (the
same scores as a local run with the same ``--threads``: each fit uses ``--threads`` OpenMP threads).

Models: ``ndlm`` (the paper's configuration), ``ndlm-augment`` (NDLM trained on random symmetries of
the square) and every Table III model. Per fold: accuracy, macro F1, per-class sensitivity and
specificity, fit seconds, the out-of-fold predictions (also pooled in ``oof_predictions.csv``);
``fold_accuracy.png`` plots every fold's accuracy per model.
"""

import argparse
import json
import warnings
from pathlib import Path

import numpy as np
from ndlm_sk.datasets import load_pbc
from ndlm_sk.distributed import joblib_on_cluster
from ndlm_sk.model_comparison import corrected_resampled_ttest, mcnemar, wilson_interval
from ndlm_sk.table3 import make_table3_model
from sklearn.metrics import confusion_matrix
from sklearn.model_selection import StratifiedKFold, cross_validate

MODELS = ["ndlm", "ndlm-augment", "dfcn", "dl", "dftl", "ndel", "cdfl", "ddfl"]
NO_LEADING_BN = {"dfcn", "dl", "dftl", "cdfl", "ddfl"}  # these get MATLAB's zerocenter input


def make_model(model, seed, a):
    """One (model, fold)'s estimator: every model gets the same epoch cap and early-stopping rule."""
    kw = {"input_normalization": "zerocenter"} if model in NO_LEADING_BN else {}
    if model == "ndlm-augment":  # the paper's NDLM trained on random symmetries of the square
        model, kw = "ndlm", {"augment": True}
    return make_table3_model(
        model, max_iter=a.max_iter, early_stopping=True, n_iter_no_change=a.patience, tol=0.0,
        batch_size=a.batch_size, random_state=seed, n_jobs=a.threads, **kw,
    )  # fmt: skip


def per_class_rates(y_true, pred, classes):
    """Sensitivity (recall) and specificity of every class, one-vs-rest."""
    cm = confusion_matrix(y_true, pred, labels=classes)
    tp = np.diag(cm).astype(float)
    fn, fp = cm.sum(1) - tp, cm.sum(0) - tp
    tn = cm.sum() - tp - fn - fp
    with np.errstate(invalid="ignore", divide="ignore"):
        sens, spec = tp / (tp + fn), tn / (tn + fp)
    return {str(c): {"sensitivity": float(se), "specificity": float(sp)} for c, se, sp in zip(classes, sens, spec)}


def one_fold(X, y, fold, k, model, a):
    """Train and test one (model, fold) through scikit-learn's cross_validate (seeded a.seed + k, so
    a fold's model does not depend on which other folds run with it); the fitted estimator then
    predicts its held-out fold once for the saved out-of-fold predictions."""
    clf = make_model(model, a.seed + k, a)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cv = cross_validate(clf, X, y, cv=[fold], scoring=["accuracy", "f1_macro"], return_estimator=True)
    te = fold[1]
    pred = cv["estimator"][0].predict(X[te])
    return {
        "accuracy": float(cv["test_accuracy"][0]),
        "macro_f1": float(cv["test_f1_macro"][0]),
        "per_class": per_class_rates(y[te], pred, np.unique(y)),
        "seconds": float(cv["fit_time"][0]),
        "test_index": te.tolist(),
        "pred": [str(p) for p in pred],
    }


def run_folds(X, y, folds, pending, model, a):
    """Yield (k, result) of the pending folds of one model, in fold order, each as soon as it and
    the folds before it are done: ``a.jobs`` folds at a time through joblib (on a Dask cluster under
    joblib's "dask" backend with ``--scheduler``: the images are sent to each worker once)."""
    from joblib import Parallel, delayed

    run = Parallel(n_jobs=a.jobs, return_as="generator", pre_dispatch="all")
    results = run(delayed(one_fold)(X, y, folds[k], k, model, a) for k in pending)
    yield from zip(pending, results)


def plot_folds(doc, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = doc["models"]
    fig, ax = plt.subplots(figsize=(1.2 * len(models) + 2, 3.6))
    for i, m in enumerate(models):
        acc = 100 * np.asarray(doc["scores"][m]["accuracy"])
        ax.scatter(np.full(len(acc), i) + np.linspace(-0.12, 0.12, len(acc)), acc, s=18, color="C0")
        ax.plot([i - 0.25, i + 0.25], [acc.mean()] * 2, color="C3")
        for k, v in enumerate(acc):
            ax.annotate(str(k + 1), (i + 0.16, v), fontsize=6, color="0.4", va="center")
    ax.set_xticks(range(len(models)), models)
    ax.set_ylabel("fold accuracy (%)")
    ax.set_title(f"{doc['folds']}-fold cross-validation: accuracy per fold (points) and mean (line)")
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


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
    ap.add_argument("--threads", type=int, default=2, help="OpenMP threads per fit")
    ap.add_argument(
        "--jobs", type=int, default=None, help="folds trained at once (joblib n_jobs; default 1, -1 with --scheduler)"
    )
    ap.add_argument(
        "--scheduler",
        metavar="ADDRESS",
        default=None,
        help="run the folds on a Dask cluster (tcp://HOST:8786); set --threads to the cores a task may use",
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cache-dir", default=None)
    a = ap.parse_args(argv)
    models = a.models.split(",")
    unknown = set(models) - set(MODELS)
    if unknown:
        ap.error(f"unknown models {sorted(unknown)}; known: {MODELS}")
    X, y = load_pbc(a.data, a.image_size, cache=True, cache_dir=a.cache_dir)
    y = y.astype(str)
    folds = list(StratifiedKFold(a.folds, shuffle=True, random_state=a.seed).split(X, y))
    out = Path(a.out)
    res = {}
    with joblib_on_cluster(a.scheduler):
        if a.scheduler and a.jobs is None:
            a.jobs = -1
        for m in models:
            (out / m).mkdir(parents=True, exist_ok=True)
            pending = [k for k in range(len(folds)) if not (out / m / f"fold{k}.json").exists()]
            for k, r in run_folds(X, y, folds, pending, m, a):
                (out / m / f"fold{k}.json").write_text(json.dumps(r))
                print(f"{m} fold {k}: accuracy {r['accuracy']:.4f}, {r['seconds']:.0f} s", flush=True)
            res[m] = [json.loads((out / m / f"fold{k}.json").read_text()) for k in range(len(folds))]
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
                            "per_class": [r.get("per_class") for r in res[m]],
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
    rule = (
        f"Every model: at most {a.max_iter} epochs, early stopping on 10 % of the training folds "
        f"(patience {a.patience}, tol 0), mini-batch {a.batch_size}; fold k seeded {a.seed} + k; "
        f"zerocenter input for {', '.join(sorted(NO_LEADING_BN & set(models))) or 'none'}."
    )
    lines = [f"# {a.folds}-fold cross-validated comparison", "", rule, ""] + lines
    lines += ["", "Per-class sensitivity / specificity (%), mean over folds:", ""]
    classes = sorted(res[models[0]][0]["per_class"]) if res[models[0]][0].get("per_class") else []
    if classes:
        lines += ["| model | " + " | ".join(classes) + " |", "|---|" + "---|" * len(classes)]
        for m in models:
            cells = []
            for c in classes:
                se = np.nanmean([r["per_class"][c]["sensitivity"] for r in res[m]])
                sp = np.nanmean([r["per_class"][c]["specificity"] for r in res[m]])
                cells.append(f"{100 * se:.1f} / {100 * sp:.1f}")
            lines.append(f"| {m} | " + " | ".join(cells) + " |")
    oof = np.column_stack([np.arange(len(y)), y] + [pooled(m) for m in models])
    np.savetxt(out / "oof_predictions.csv", oof, fmt="%s", delimiter=",", header="index,label," + ",".join(models),
               comments="")  # fmt: skip
    (out / "results.json").write_text(json.dumps(doc, indent=1, allow_nan=True))
    plot_folds(doc, out / "fold_accuracy.png")
    (out / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
