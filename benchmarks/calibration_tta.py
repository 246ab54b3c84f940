"""Calibration and test-time augmentation of the reproduction-augment model on the paper split.

On the validation part (2,314 images): accuracy, NLL and top-label ECE without and with
``tta=True`` (8 symmetries), and the speed of both (images/s on ``--threads`` threads). The TTA
setting with the lower validation NLL is kept. Then the calibration methods are compared by 5-fold
cross-validation inside the validation part (each calibrator fitted on 4/5 of it, scored on the
other 1/5, on the model's predictions computed once): none, temperature scaling
(:mod:`ndlm_sk.calibration`, on the logits), and scikit-learn's ``CalibratedClassifierCV`` with
``method="sigmoid"``, ``"isotonic"`` and ``"temperature"`` (on ``predict_proba``). The method with
the lowest cross-validated NLL is chosen (ECE breaks ties). Every method is then fitted on the
whole validation part, on the real model (``calibrate_temperature(model, ...)``,
``CalibratedClassifierCV(FrozenEstimator(model), method=...)``), and the test part (predicted with
each, once) gives accuracy, NLL, ECE, the errors with a top probability above 0.99, and the
reliability diagrams. The test part plays no role in any choice.

    OMP_NUM_THREADS=1 PYTHONPATH=python python benchmarks/calibration_tta.py \
        --data ../shared/data/pbc --out benchmarks/results/calibration
"""

import argparse
import json
import os
import platform
import sys
import time
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "python"))

from ndlm_sk.calibration import (  # noqa: E402
    calibrate_temperature,
    calibration_bins,
    expected_calibration_error,
    fit_temperature,
    mean_softmax,
)
from ndlm_sk.datasets import load_pbc, split_indices  # noqa: E402
from ndlm_sk.estimator import _view_logits  # noqa: E402
from ndlm_sk.model_io import load_model  # noqa: E402
from sklearn.base import BaseEstimator, ClassifierMixin  # noqa: E402
from sklearn.calibration import CalibratedClassifierCV  # noqa: E402
from sklearn.frozen import FrozenEstimator  # noqa: E402
from sklearn.metrics import log_loss  # noqa: E402
from sklearn.model_selection import StratifiedKFold  # noqa: E402

METHODS = ["none", "temperature", "sklearn-sigmoid", "sklearn-isotonic", "sklearn-temperature"]
N_BINS = 15
OVERCONFIDENT = 0.99


class _Precomputed(ClassifierMixin, BaseEstimator):
    """A fitted classifier whose X is a column of row numbers into fixed probabilities: lets
    CalibratedClassifierCV see the model's predictions without predicting again (CV only)."""

    def __init__(self, proba=None, classes=None):
        self.proba = proba
        self.classes = classes

    def fit(self, X, y):  # never called: wrapped in FrozenEstimator
        raise NotImplementedError

    def __sklearn_is_fitted__(self):
        return True

    @property
    def classes_(self):
        return self.classes

    def predict_proba(self, X):
        return self.proba[np.asarray(X)[:, 0].astype(np.int64)]

    def predict(self, X):
        return self.classes[np.argmax(self.predict_proba(X), axis=1)]


def scores(y_idx, proba):
    proba = np.asarray(proba, dtype=np.float64)
    pred = np.argmax(proba, axis=1)
    wrong = pred != y_idx
    top = proba.max(axis=1)
    with warnings.catch_warnings():  # float32 rows sum to 1 within 1e-7, not within float64 rounding
        warnings.filterwarnings("ignore", message="The y_prob values do not sum to one")
        nll = float(log_loss(y_idx, proba, labels=np.arange(proba.shape[1])))
    return {
        "accuracy": float(np.mean(~wrong)),
        "nll": nll,
        "ece": expected_calibration_error(y_idx, proba, n_bins=N_BINS),
        "errors": int(wrong.sum()),
        "errors_top_above_0.99": int(np.sum(wrong & (top > OVERCONFIDENT))),
        "correct_top_above_0.99": int(np.sum(~wrong & (top > OVERCONFIDENT))),
    }


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def cv_methods(logits, y_idx, classes, seed=0):
    """Cross-validated (5 folds inside the validation part) scores of every method."""
    proba = mean_softmax(logits).astype(np.float32)  # what predict_proba returns, within rounding
    rows = np.arange(len(y_idx))[:, None]
    out = {m: [] for m in METHODS}
    for fit_i, ev_i in StratifiedKFold(5, shuffle=True, random_state=seed).split(rows, y_idx):
        for m in METHODS:
            if m == "none":
                p = proba[ev_i]
            elif m == "temperature":
                p = mean_softmax(logits[:, ev_i], fit_temperature(logits[:, fit_i], y_idx[fit_i]))
            else:
                cal = CalibratedClassifierCV(
                    FrozenEstimator(_Precomputed(proba, np.arange(len(classes)))), method=m.split("-")[1]
                )
                p = cal.fit(rows[fit_i], y_idx[fit_i]).predict_proba(rows[ev_i])
            out[m].append(scores(y_idx[ev_i], p))
    return {
        m: {k: float(np.mean([f[k] for f in folds])) for k in ("accuracy", "nll", "ece")} for m, folds in out.items()
    }


def reliability_figure(y_idx, probas, path, title):
    from ndlm_sk.report import _new_figure

    fig = _new_figure(figsize=(4 * len(probas), 4.2), dpi=110)
    for i, (name, p) in enumerate(probas.items()):
        ax = fig.add_subplot(1, len(probas), i + 1)
        t = calibration_bins(y_idx, p, n_bins=N_BINS)
        used = t["count"] > 0
        width = 1 / N_BINS
        ax.bar(
            t["edges"][:-1][used],
            t["accuracy"][used],
            width=width,
            align="edge",
            color="#1f4e79",
            alpha=0.8,
            edgecolor="white",
            label="accuracy",
        )
        ax.bar(
            t["edges"][:-1][used],
            t["confidence"][used] - t["accuracy"][used],
            bottom=t["accuracy"][used],
            width=width,
            align="edge",
            color="#c0392b",
            alpha=0.35,
            label="gap to confidence",
        )
        ax.plot([0, 1], [0, 1], "--", color="grey", lw=0.8)
        for e, c, n in zip(t["edges"][:-1][used], t["accuracy"][used], t["count"][used]):
            ax.text(e + width / 2, min(c, 0.93) + 0.02, str(n), ha="center", fontsize=6, rotation=90)
        ece = expected_calibration_error(y_idx, p, n_bins=N_BINS)
        ax.set_title(f"{name}\nECE {100 * ece:.2f} %", fontsize=9)
        ax.set_xlabel("top probability")
        if i == 0:
            ax.set_ylabel("accuracy (bin)")
            ax.legend(fontsize=7, loc="upper left")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.02)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path)


def per_class_figure(y_idx, probas, classes, path):
    """One-vs-rest reliability curves per class (sklearn's CalibrationDisplay), 10 quantile bins."""
    from ndlm_sk.report import _new_figure
    from sklearn.calibration import CalibrationDisplay

    fig = _new_figure(figsize=(3.3 * len(classes), 3.6), dpi=110)
    for k, cls in enumerate(classes):
        ax = fig.add_subplot(1, len(classes), k + 1)
        for name, p in probas.items():
            CalibrationDisplay.from_predictions(
                y_idx == k, np.asarray(p, dtype=np.float64)[:, k], n_bins=10, strategy="quantile", name=name, ax=ax
            )
        ax.set_title(str(cls), fontsize=9)
        ax.legend(fontsize=6)
        if k:
            ax.set_ylabel("")
    fig.tight_layout()
    fig.savefig(path)


def _pct(x):
    return f"{100 * x:.2f}"


def write_markdown(r, out):
    """results.md from results.json's dict."""
    v, sp, cv, t = r["validation_tta"], r["speed"], r["validation_cv_calibration"], r["test"]
    lines = [
        "# Calibration and test-time augmentation: reproduction-augment model, paper split",
        "",
        "```bash",
        r["command"],
        "```",
        "",
        f"Model `{r['model']}`; {r['split']}; validation {r['n_validation']} and test {r['n_test']} images. "
        f"ECE: {r['ece']}. NLL: {r['nll']}. Every choice below uses the validation part only; the test "
        "part was predicted once per method.",
        "",
        "## TTA on the validation part",
        "",
        "| | accuracy (%) | NLL | ECE (%) | errors | errors with top probability > 0.99 | images/s |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for k in ("tta=False", "tta=True"):
        s = v[k]
        lines.append(
            f"| `{k}` | {_pct(s['accuracy'])} | {s['nll']:.4f} | {_pct(s['ece'])} | {s['errors']} | "
            f"{s['errors_top_above_0.99']} | {sp[k + '_images_per_second']:.0f} |"
        )
    lines += [
        "",
        f"Speed: `predict_proba` on {sp['threads']} thread(s), {r['n_validation']} images without TTA, the "
        f"first {sp['tta_timed_images']} with; TTA costs {sp['cost_ratio']:.1f}x. TTA chosen: "
        f"**{r['tta_chosen']}** ({r['tta_rule']}).",
        "",
        "## Calibration methods, 5-fold cross-validation inside the validation part",
        "",
        "`temperature`: `ndlm_sk.calibration` (on the logits, with TTA on every view); `sklearn-*`: "
        "`CalibratedClassifierCV(FrozenEstimator(...), method=...)` on `predict_proba` (here on the "
        "model's validation predictions computed once; `sklearn-temperature` works on their logarithm).",
        "",
        "| method | accuracy (%) | NLL | ECE (%) |",
        "|---|---:|---:|---:|",
    ]
    for m, s in cv.items():
        lines.append(f"| {m} | {_pct(s['accuracy'])} | {s['nll']:.4f} | {_pct(s['ece'])} |")
    lines += [
        "",
        f"Chosen: **{r['calibration_chosen']}** ({r['calibration_rule']}). Fitted on the whole validation "
        f"part: T = {r['temperature']:.4f}.",
        "",
        "## Test part, every method fitted on the whole validation part",
        "",
        "| method | accuracy (%) | NLL | ECE (%) | errors | errors with top > 0.99 | correct with top > 0.99 |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for m, s in t.items():
        lines.append(
            f"| {m} | {_pct(s['accuracy'])} | {s['nll']:.4f} | {_pct(s['ece'])} | {s['errors']} | "
            f"{s['errors_top_above_0.99']} | {s['correct_top_above_0.99']} |"
        )
    if "test_tta=False_uncalibrated" in r:
        s = r["test_tta=False_uncalibrated"]
        lines.append(
            f"| model as committed (`tta=False`, uncalibrated) | {_pct(s['accuracy'])} | {s['nll']:.4f} | "
            f"{_pct(s['ece'])} | {s['errors']} | {s['errors_top_above_0.99']} | {s['correct_top_above_0.99']} |"
        )
    lines += ["", *[f"Note: {n}" for n in r.get("notes", [])]]
    lines += [
        "",
        "Figures: `reliability_test.png` (top-label reliability diagrams on the test part, before and after), "
        "`reliability_per_class_test.png` (one-vs-rest, per class, scikit-learn's `CalibrationDisplay`), "
        "`reliability_validation_tta.png` (validation part, without and with TTA).",
        "",
    ]
    (Path(out) / "results.md").write_text("\n".join(lines))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--model", default=str(ROOT / "benchmarks/results/reproduction-augment/model.ndlm"))
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/calibration"))
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--limit", type=int, default=None, help="first N images of each part (a smoke test)")
    ap.add_argument("--save-proba", metavar="NPZ", help="also save the probabilities and labels here")
    ap.add_argument("--tta-timing-images", type=int, default=500, help="validation images timed with tta=True")
    ap.add_argument("--markdown-only", action="store_true", help="rewrite OUT/results.md from OUT/results.json")
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.markdown_only:
        write_markdown(json.loads((out / "results.json").read_text()), out)
        return 0
    log = lambda msg: print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)  # noqa: E731

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        X, y = load_pbc(args.data, 300, cache=True)
    _, va, te = split_indices(y, (0.5, 0.25, 0.25), random_state=0)
    va, te = va[: args.limit], te[: args.limit]
    X_va, X_te = X[va], X[te]
    del X
    model = load_model(args.model)
    model.set_params(n_jobs=args.threads, tta=False)
    classes = model.classes_
    y_va, y_te = np.searchsorted(classes, y[va]), np.searchsorted(classes, y[te])
    log(f"validation {len(va)}, test {len(te)} images; model {args.model}")

    # ---- TTA on validation: speed, accuracy, NLL, ECE
    p_va_plain, s_plain = timed(lambda: model.predict_proba(X_va))
    n_t = min(args.tta_timing_images, len(va))
    model.set_params(tta=True)
    p_va_tta_part, s_tta = timed(lambda: model.predict_proba(X_va[:n_t]))
    model.set_params(tta=False)
    log(f"predict_proba: {len(va) / s_plain:.0f} img/s without TTA, {n_t / s_tta:.0f} img/s with")
    model._net.n_threads = model._threads()
    logits_va, s_logits = timed(
        lambda: _view_logits(model._net, X_va, int(model.predict_batch_size), len(classes), True)
    )
    model._net.release_buffers()
    log(f"validation logits of the 8 views in {s_logits:.0f} s")
    p_va_tta = mean_softmax(logits_va).astype(np.float32)
    agree = {
        "plain_predict_proba_vs_softmax_of_view_0": float(np.abs(mean_softmax(logits_va[:1]) - p_va_plain).max()),
        "tta_predict_proba_vs_mean_softmax_of_8_views": float(np.abs(p_va_tta[:n_t] - p_va_tta_part).max()),
    }
    validation = {"tta=False": scores(y_va, p_va_plain), "tta=True": scores(y_va, p_va_tta)}
    use_tta = validation["tta=True"]["nll"] < validation["tta=False"]["nll"]
    speed = {
        "threads": args.threads,
        "tta=False_images_per_second": len(va) / s_plain,
        "tta=True_images_per_second": n_t / s_tta,
        "tta_timed_images": n_t,
        "cost_ratio": (s_tta / n_t) / (s_plain / len(va)),
    }
    log(f"validation: {validation}; tta chosen: {use_tta}")

    # ---- calibration methods, chosen by 5-fold CV inside the validation part
    lv = logits_va if use_tta else logits_va[:1]
    cv = cv_methods(lv, y_va, classes)
    chosen = min(METHODS, key=lambda m: (round(cv[m]["nll"], 6), cv[m]["ece"]))
    log(f"cross-validated on validation: {cv}; chosen: {chosen}")

    # ---- every method fitted on the whole validation part, on the real model; the test part once
    model.set_params(tta=use_tta)
    test_proba = {}
    test_proba["none"], s_test = timed(lambda: model.predict_proba(X_te))
    log(f"test predicted ({len(te) / s_test:.0f} img/s)")
    labels_va = classes[y_va]
    for m in METHODS[2:]:
        cal = CalibratedClassifierCV(FrozenEstimator(model), method=m.split("-")[1]).fit(X_va, labels_va)
        test_proba[m] = cal.predict_proba(X_te)
        log(f"{m} done")
    calibrate_temperature(model, X_va, labels_va)
    assert model.temperature_ == fit_temperature(lv, y_va)  # the same logits
    test_proba["temperature"] = model.predict_proba(X_te)
    temperature, record = model.temperature_, model.calibration_
    test = {m: scores(y_te, test_proba[m]) for m in METHODS}
    log(f"temperature {temperature:.4f}; test: {test}")

    if args.save_proba:
        np.savez(
            args.save_proba,
            y_va=y_va,
            y_te=y_te,
            p_va_plain=p_va_plain,
            logits_va=logits_va,
            **{f"test_{m}": test_proba[m] for m in METHODS},
        )
    names = {"none": "uncalibrated", "temperature": f"temperature scaling (T={temperature:.2f})"}
    names.update({m: m.replace("sklearn-", "sklearn ") for m in METHODS[2:]})
    shown = {names[m]: test_proba[m] for m in ["none", "temperature", "sklearn-sigmoid", "sklearn-isotonic"]}
    tag = "with TTA" if use_tta else "without TTA"
    reliability_figure(
        y_te, shown, out / "reliability_test.png", f"Top-label reliability, test part ({len(te)} images, {tag})"
    )
    per_class_figure(y_te, {k: shown[k] for k in list(shown)[:2]}, classes, out / "reliability_per_class_test.png")
    reliability_figure(
        y_va,
        {"uncalibrated, no TTA": p_va_plain, "uncalibrated, TTA": p_va_tta},
        out / "reliability_validation_tta.png",
        f"Top-label reliability, validation part ({len(va)} images)",
    )

    results = {
        "command": "OMP_NUM_THREADS=1 PYTHONPATH=python python "
        + " ".join(["benchmarks/calibration_tta.py"] + sys.argv[1:]),
        "model": str(Path(args.model).resolve().relative_to(ROOT))
        if Path(args.model).resolve().is_relative_to(ROOT)
        else args.model,
        "split": "paper split: load_pbc(300x300, deduplicated), split_indices((0.5, 0.25, 0.25), random_state=0)",
        "n_validation": int(len(va)),
        "n_test": int(len(te)),
        "ece": f"top-label, {N_BINS} equal-width bins (ndlm_sk.calibration.expected_calibration_error)",
        "nll": "sklearn.metrics.log_loss on float64 probabilities (clipped at float64 eps)",
        "validation_tta": validation,
        "tta_chosen": bool(use_tta),
        "tta_rule": "the setting with the lower validation NLL",
        "speed": speed,
        "agreement": agree,
        "validation_cv_calibration": cv,
        "calibration_chosen": chosen,
        "calibration_rule": "lowest 5-fold cross-validated NLL inside the validation part (ECE breaks ties)",
        "temperature": temperature,
        "temperature_record": record,
        "test": test,
        "machine": {"platform": platform.platform(), "python": platform.python_version()},
        "load_average_at_end": list(os.getloadavg()),
    }
    (out / "results.json").write_text(json.dumps(results, indent=1))
    write_markdown(results, out)
    log(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
