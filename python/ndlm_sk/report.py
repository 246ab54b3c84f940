"""Evaluation reports in the layout of the NDLM paper, side by side with its published numbers.

- :func:`classification_report_ndlm`: overall accuracy and error (Table I), per-class precision,
  sensitivity, specificity and F1-score (Table II), support and the confusion matrix.
- :data:`PAPER_RESULTS`: the numbers published in the paper (Tables I-IV).
- :func:`to_markdown`, :func:`to_json`: render or save a report.
- :func:`plot_learning_curves`, :func:`plot_confusion_matrix`: PNG figures (need matplotlib:
  ``pip install ndlm_sk[report]``).
- :func:`write_report`: all of the above into one folder.

The paper: Al-Jader A.R.H., Sheet N.S.M., Farhan M.N., Al-Nima R.R.O., "Normalized Deep Learning
Model for Classifying White Blood Cell" (2026), CC BY 4.0.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Mapping
from pathlib import Path

import numpy as np

__all__ = [
    "PAPER_RESULTS",
    "classification_report_ndlm",
    "plot_confusion_matrix",
    "plot_learning_curves",
    "to_json",
    "to_markdown",
    "write_report",
]

#: The paper's published results. Accuracy and error are in percent; per-class metrics are
#: fractions rounded to 2 decimals, as printed. Table III lists other shallow CNNs trained by the
#: authors on the same data (accuracy in %); Table IV is their ResNet-like model per class.
PAPER_RESULTS = {
    "reference": (
        'Al-Jader A.R.H., Sheet N.S.M., Farhan M.N., Al-Nima R.R.O., "Normalized Deep '
        'Learning Model for Classifying White Blood Cell", 2026 (CC BY 4.0)'
    ),
    "table_1": {"method": "NDLM", "accuracy": 96.19, "error": 3.81},
    "table_2": {
        "basophil": {"precision": 0.91, "sensitivity": 0.93, "specificity": 0.99, "f1": 0.92},
        "eosinophil": {"precision": 0.99, "sensitivity": 0.98, "specificity": 1.00, "f1": 0.99},
        "lymphocyte": {"precision": 0.94, "sensitivity": 0.93, "specificity": 0.99, "f1": 0.94},
        "monocyte": {"precision": 0.89, "sensitivity": 0.95, "specificity": 0.98, "f1": 0.92},
        "neutrophil": {"precision": 0.98, "sensitivity": 0.96, "specificity": 0.99, "f1": 0.97},
    },
    "table_3": {
        "DFCN": 94.56,
        "DL": 94.76,
        "DFTL": 94.7,
        "CDFL": 90.64,
        "NDEL": 95.69,
        "ResNet": 95.22,
    },
    "table_4": {  # ResNet-like model, per class
        "basophil": {"precision": 0.97, "sensitivity": 0.94, "specificity": 1.00, "f1": 0.96},
        "eosinophil": {"precision": 0.94, "sensitivity": 0.97, "specificity": 0.97, "f1": 0.95},
        "lymphocyte": {"precision": 0.94, "sensitivity": 0.96, "specificity": 0.99, "f1": 0.95},
        "monocyte": {"precision": 0.97, "sensitivity": 0.88, "specificity": 1.00, "f1": 0.92},
        "neutrophil": {"precision": 0.96, "sensitivity": 0.96, "specificity": 0.98, "f1": 0.96},
    },
}

_METRICS = ("precision", "sensitivity", "specificity", "f1")
_METRIC_TITLES = {
    "precision": "Precision",
    "sensitivity": "Sensitivity",
    "specificity": "Specificity",
    "f1": "F1-score",
}


# --------------------------------------------------------------------------------------------
# Metrics
# --------------------------------------------------------------------------------------------


def _py(v):
    """A JSON-friendly Python scalar."""
    return v.item() if isinstance(v, np.generic) else v


def classification_report_ndlm(y_true, y_pred, labels=None):
    """Overall and per-class metrics in the layout of the paper's Tables I and II.

    Precision, recall (= sensitivity), F1-score, support and the confusion matrix come from
    :mod:`sklearn.metrics`; specificity is computed from the confusion matrix as
    ``TN / (TN + FP)`` per class (one-vs-rest). Ratios with a zero denominator are 0.

    Parameters
    ----------
    y_true, y_pred : array-like of shape (n_samples,)
    labels : sequence, optional
        Classes to report, in this order (default: the sorted union of ``y_true`` and
        ``y_pred``). Accuracy always counts every sample.

    Returns
    -------
    report : dict
        JSON-serialisable::

            {"accuracy": float,        # percent, e.g. 96.19 (Table I)
             "error": float,           # percent, 100 - accuracy
             "n_samples": int,
             "labels": [...],
             "per_class": {str(label): {"precision", "sensitivity", "specificity", "f1":
                                         fractions in [0, 1], "support": int}},
             "macro_avg": {...}, "weighted_avg": {...},   # the four metrics; support total
             "confusion_matrix": {"labels": [...], "matrix": [[int]]}}  # rows true, cols pred
    """
    from sklearn.metrics import (
        accuracy_score,
        confusion_matrix,
        precision_recall_fscore_support,
    )
    from sklearn.utils.multiclass import unique_labels

    y_true = np.asarray(y_true)
    y_pred = np.asarray(y_pred)
    labels = unique_labels(y_true, y_pred) if labels is None else np.asarray(labels)
    cm = confusion_matrix(y_true, y_pred, labels=labels)
    precision, recall, f1, support = precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
    accuracy = 100.0 * float(accuracy_score(y_true, y_pred))

    total = cm.sum()
    tp = np.diag(cm)
    fp = cm.sum(axis=0) - tp
    fn = cm.sum(axis=1) - tp
    tn = total - tp - fp - fn
    denom = tn + fp
    specificity = np.divide(tn, denom, out=np.zeros(len(labels)), where=denom > 0)

    label_list = [_py(v) for v in labels]
    per_class = {}
    for k, lab in enumerate(label_list):
        per_class[str(lab)] = {
            "precision": float(precision[k]),
            "sensitivity": float(recall[k]),
            "specificity": float(specificity[k]),
            "f1": float(f1[k]),
            "support": int(support[k]),
        }
    columns = {"precision": precision, "sensitivity": recall, "specificity": specificity, "f1": f1}
    n_support = int(support.sum())
    macro = {m: float(np.mean(v)) if len(v) else 0.0 for m, v in columns.items()}
    weighted = {m: float(np.average(v, weights=support)) if n_support else 0.0 for m, v in columns.items()}
    macro["support"] = weighted["support"] = n_support
    return {
        "accuracy": accuracy,
        "error": 100.0 - accuracy,
        "n_samples": int(len(y_true)),
        "labels": label_list,
        "per_class": per_class,
        "macro_avg": macro,
        "weighted_avg": weighted,
        "confusion_matrix": {"labels": label_list, "matrix": cm.astype(int).tolist()},
    }


# --------------------------------------------------------------------------------------------
# Markdown and JSON
# --------------------------------------------------------------------------------------------


def _paper_class_key(label):
    key = str(label).strip().lower()
    table = PAPER_RESULTS["table_2"]
    if key in table:
        return key
    if key.endswith("s") and key[:-1] in table:  # "neutrophils"
        return key[:-1]
    return None


def _fmt(v, digits=2):
    if v is None:
        return "–"
    if isinstance(v, float) and not math.isfinite(v):
        return "nan"
    return f"{v:.{digits}f}"


def _row(cells):
    return "| " + " | ".join(str(c) for c in cells) + " |"


def to_markdown(report, compare_with_paper=True, title="NDLM classification report", extra=None):
    """Render a report (from :func:`classification_report_ndlm`) as Markdown.

    Sections: Table I (overall accuracy and error), Table II (per-class precision, sensitivity,
    specificity, F1-score, support), the confusion matrix, and ``extra`` (a dict of run details,
    shown as a key/value table) if given. With ``compare_with_paper``, the paper's numbers
    (:data:`PAPER_RESULTS`) are shown beside ours: NDLM and the other models of Table III in
    Table I, and a "paper" column after each metric in Table II (for class names that match the
    paper's, case-insensitively).
    """
    lines = [f"# {title}", ""]
    n = report.get("n_samples")

    # Table I
    lines += ["## Table I: overall test accuracy", ""]
    lines += [_row(["Method", "Overall accuracy (%)", "Error (%)"]), "|---|---:|---:|"]
    lines.append(_row(["**ndlm_sk (this run)**", f"**{_fmt(report['accuracy'])}**", f"**{_fmt(report['error'])}**"]))
    if compare_with_paper:
        t1 = PAPER_RESULTS["table_1"]
        lines.append(_row(["NDLM (paper, Table I)", _fmt(t1["accuracy"]), _fmt(t1["error"])]))
        for name, acc in PAPER_RESULTS["table_3"].items():
            lines.append(_row([f"{name} (paper, Table III)", _fmt(acc), _fmt(100.0 - acc)]))
    lines.append("")
    if n is not None:
        lines += [f"Evaluated on {n} images.", ""]

    # Table II
    lines += ["## Table II: per-class performance", ""]
    header = ["WBC subtype"]
    align = ["---"]
    for m in _METRICS:
        header.append(_METRIC_TITLES[m])
        align.append("---:")
        if compare_with_paper:
            header.append("paper")
            align.append("---:")
    header.append("Support")
    align.append("---:")
    lines += [_row(header), "| " + " | ".join(align) + " |"]
    for lab, vals in report["per_class"].items():
        key = _paper_class_key(lab) if compare_with_paper else None
        paper = PAPER_RESULTS["table_2"][key] if key else None
        cells = [lab[:1].upper() + lab[1:]]
        for m in _METRICS:
            cells.append(_fmt(vals[m]))
            if compare_with_paper:
                cells.append(_fmt(paper[m]) if paper else "–")
        cells.append(vals["support"])
        lines.append(_row(cells))
    for name, key in (("Macro average", "macro_avg"), ("Weighted average", "weighted_avg")):
        avg = report.get(key)
        if not avg:
            continue
        cells = [f"*{name}*"]
        for m in _METRICS:
            cells.append(_fmt(avg[m]))
            if compare_with_paper:
                cells.append("")
        cells.append(avg.get("support", ""))
        lines.append(_row(cells))
    lines.append("")
    lines += ["Sensitivity is recall; specificity is TN / (TN + FP), one class versus the rest.", ""]

    # Confusion matrix
    cm = report["confusion_matrix"]
    cm_labels = [str(v) for v in cm["labels"]]
    lines += ["## Confusion matrix", "", "Rows: true class; columns: predicted class.", ""]
    lines.append(_row(["true \\ predicted", *cm_labels, "total"]))
    lines.append("|---|" + "---:|" * (len(cm_labels) + 1))
    for lab, row in zip(cm_labels, cm["matrix"]):
        lines.append(_row([lab, *row, sum(row)]))
    lines.append("")

    if extra:
        lines += ["## Run details", "", _row(["Item", "Value"]), "|---|---|"]
        for k, v in extra.items():
            lines.append(_row([k, _md_value(v)]))
        lines.append("")

    if compare_with_paper:
        lines += [f"Paper: {PAPER_RESULTS['reference']}.", ""]
    return "\n".join(lines)


def _md_value(v):
    if isinstance(v, float):
        return f"{v:.6g}"
    if isinstance(v, (dict, list, tuple)):
        return "`" + json.dumps(v, default=_json_default) + "`"
    return str(v).replace("|", "\\|").replace("\n", " ")


def _json_default(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"{type(o).__name__} is not JSON serialisable")


def to_json(report, path):
    """Write ``report`` (any JSON-like dict; numpy scalars and arrays are converted) to ``path``.

    Returns the path written.
    """
    path = Path(path)
    path.write_text(json.dumps(report, indent=2, default=_json_default, ensure_ascii=False) + "\n", encoding="utf-8")
    return path


# --------------------------------------------------------------------------------------------
# Figures
# --------------------------------------------------------------------------------------------


def _new_figure(**kwargs):
    """A matplotlib Figure on an Agg canvas (no pyplot, no change of the global backend)."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise ImportError("plotting needs matplotlib: pip install ndlm_sk[report]") from exc
    fig = Figure(**kwargs)
    FigureCanvasAgg(fig)
    return fig


def _series(history, key):
    v = history.get(key)
    if v is None:
        return None
    arr = np.asarray(v, dtype=float).ravel()
    return arr if arr.size else None


def _as_percent(arr):
    if arr is None:
        return None
    finite = arr[np.isfinite(arr)]
    return arr * 100.0 if finite.size and finite.max() <= 1.0 else arr


def _history_of(history):
    """A history dict from a fitted NDLMClassifier's curves; anything else unchanged."""
    if isinstance(history, Mapping) or not hasattr(history, "loss_curve_"):
        return history
    pairs = (
        ("loss", "loss_curve_"),
        ("iteration_loss", "batch_loss_curve_"),
        ("train_accuracy", "train_scores_"),
        ("val_accuracy", "validation_scores_"),
    )
    return {k: list(getattr(history, a)) for k, a in pairs if getattr(history, a, None) is not None}


def plot_learning_curves(history, path, title="NDLM learning curves"):
    """Draw the training curves as a 2-panel PNG, like the paper's Fig. 3.

    Top: accuracy (%) per epoch for training and validation. Bottom: loss: the mini-batch loss
    per iteration (thin line, on a fractional-epoch axis), the training loss per epoch and the
    validation loss per epoch.

    Parameters
    ----------
    history : dict
        Lists (any may be missing, at least one must be present): ``loss`` (training loss per
        epoch), ``iteration_loss`` (per mini-batch), ``train_accuracy``, ``val_accuracy``,
        ``val_loss`` (per epoch). Accuracies may be fractions (all values <= 1, shown x100) or
        percentages. A fitted :class:`~ndlm_sk.NDLMClassifier` is accepted too (its
        ``loss_curve_``, ``batch_loss_curve_``, ``train_scores_`` and ``validation_scores_``).
    path : str or path-like
        PNG file to write.

    Returns the path written. Raises ImportError without matplotlib.
    """
    history = _history_of(history)
    if not isinstance(history, Mapping):
        raise TypeError(f"history must be a dict of lists, got {type(history).__name__}")
    loss = _series(history, "loss")
    it_loss = _series(history, "iteration_loss")
    tr_acc = _as_percent(_series(history, "train_accuracy"))
    va_acc = _as_percent(_series(history, "val_accuracy"))
    va_loss = _series(history, "val_loss")
    if all(s is None for s in (loss, it_loss, tr_acc, va_acc, va_loss)):
        raise ValueError("history has none of: loss, iteration_loss, train_accuracy, val_accuracy, val_loss")
    n_epochs = (
        max(len(s) for s in (loss, tr_acc, va_acc, va_loss) if s is not None)
        if any(s is not None for s in (loss, tr_acc, va_acc, va_loss))
        else 0
    )

    fig = _new_figure(figsize=(8.0, 7.0), layout="constrained")
    ax_acc, ax_loss = fig.subplots(2, 1, sharex=True)

    def epochs(s):
        return np.arange(1, len(s) + 1)

    if tr_acc is not None:
        ax_acc.plot(epochs(tr_acc), tr_acc, color="tab:blue", lw=1.5, label="training")
    if va_acc is not None:
        ax_acc.plot(epochs(va_acc), va_acc, color="black", ls="--", marker="o", ms=3, lw=1, label="validation")
    if tr_acc is None and va_acc is None:
        ax_acc.text(
            0.5, 0.5, "no accuracy recorded", ha="center", va="center", transform=ax_acc.transAxes, color="gray"
        )
    else:
        ax_acc.legend(loc="lower right")
    ax_acc.set_ylabel("Accuracy (%)")
    ax_acc.grid(alpha=0.3)
    ax_acc.set_title(title)

    x_label = "Epoch"
    if it_loss is not None:
        if n_epochs:
            x_it = np.arange(1, len(it_loss) + 1) * (n_epochs / len(it_loss))
            x_label = f"Epoch ({len(it_loss)} iterations)"
        else:
            x_it = np.arange(1, len(it_loss) + 1)
            x_label = "Iteration"
        ax_loss.plot(x_it, it_loss, color="tab:orange", lw=0.6, alpha=0.7, label="training (mini-batch)")
    if loss is not None:
        ax_loss.plot(epochs(loss), loss, color="tab:red", lw=1.5, marker="o", ms=2.5, label="training (epoch mean)")
    if va_loss is not None:
        ax_loss.plot(epochs(va_loss), va_loss, color="black", ls="--", marker="o", ms=3, lw=1, label="validation")
    if it_loss is None and loss is None and va_loss is None:
        ax_loss.text(0.5, 0.5, "no loss recorded", ha="center", va="center", transform=ax_loss.transAxes, color="gray")
    else:
        ax_loss.legend(loc="upper right")
    ax_loss.set_ylabel("Loss (cross-entropy)")
    ax_loss.set_xlabel(x_label)
    ax_loss.grid(alpha=0.3)
    if n_epochs:
        ax_loss.set_xlim(0, n_epochs + 0.5)

    path = Path(path)
    fig.savefig(path, dpi=120, format="png")
    return path


def plot_confusion_matrix(report, path, title="Confusion matrix"):
    """Draw the confusion matrix of a report as a PNG heat map.

    Cells show the count and the row percentage (share of the true class); colours follow the
    row percentage, so small classes stay readable. Returns the path written; raises ImportError
    without matplotlib.
    """
    cm_info = report["confusion_matrix"] if "confusion_matrix" in report else report
    labels = [str(v) for v in cm_info["labels"]]
    cm = np.asarray(cm_info["matrix"], dtype=float)
    rows = cm.sum(axis=1, keepdims=True)
    frac = np.divide(cm, rows, out=np.zeros_like(cm), where=rows > 0)

    k = len(labels)
    size = max(4.5, 1.1 * k + 2.5)
    fig = _new_figure(figsize=(size, size * 0.9), layout="constrained")
    ax = fig.subplots()
    im = ax.imshow(frac, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="share of the true class")
    for i in range(k):
        for j in range(k):
            color = "white" if frac[i, j] > 0.6 else "black"
            ax.text(
                j, i, f"{int(cm[i, j])}\n{100 * frac[i, j]:.1f}%", ha="center", va="center", color=color, fontsize=9
            )
    ax.set_xticks(range(k), labels, rotation=45, ha="right")
    ax.set_yticks(range(k), labels)
    ax.set_xlabel("Predicted class")
    ax.set_ylabel("True class")
    acc = report.get("accuracy")
    ax.set_title(f"{title} (accuracy {acc:.2f}%)" if acc is not None else title)

    path = Path(path)
    fig.savefig(path, dpi=120, format="png")
    return path


def write_report(
    out_dir, report, history=None, extra=None, compare_with_paper=True, title="NDLM classification report"
):
    """Write ``report.md``, ``report.json``, ``confusion_matrix.png`` and, with a ``history``,
    ``learning_curves.png`` into ``out_dir`` (created if needed).

    ``compare_with_paper`` and ``title`` are passed to :func:`to_markdown`.

    ``report.json`` holds the report plus ``extra`` and ``history`` when given. Without
    matplotlib the PNGs are skipped with a warning (the Markdown and JSON are still written).

    Returns a dict ``{"markdown", "json", "confusion_matrix", "learning_curves"}`` of the paths
    written.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = {}
    written["markdown"] = out / "report.md"
    written["markdown"].write_text(
        to_markdown(report, compare_with_paper=compare_with_paper, title=title, extra=extra), encoding="utf-8"
    )
    doc = dict(report)
    if extra:
        doc["extra"] = dict(extra)
    if history is not None:
        doc["history"] = dict(_history_of(history))
    written["json"] = to_json(doc, out / "report.json")
    try:
        written["confusion_matrix"] = plot_confusion_matrix(report, out / "confusion_matrix.png")
        if history is not None:
            written["learning_curves"] = plot_learning_curves(history, out / "learning_curves.png")
    except ImportError as exc:
        warnings.warn(f"write_report: figures skipped ({exc})", stacklevel=2)
    return written
