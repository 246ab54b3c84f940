"""One smear's white-cell differential from a folder of single-cell images.

- :func:`differential`: classify every cell, count per class, exact (Clopper-Pearson) 95 %
  intervals of the percentages (the intervals of Rümke's tables, CLSI H20-A2), comparison with
  an adult reference table, flags raised only when the whole interval lies outside the range,
  absolute counts when the white-cell count is given, and the cells to review by eye.
- :func:`write_differential`: ``differential.json``, ``cells.csv``, ``differential.png`` and a
  self-contained ``report.html`` (images embedded as data URIs) into one folder.
- :data:`DEFAULT_REFERENCE`: the shipped adult table (``data/reference_adult.json``, its source
  named inside).
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import os
from pathlib import Path

import numpy as np

__all__ = ["DEFAULT_REFERENCE", "clopper_pearson", "differential", "load_reference", "write_differential"]

_REFERENCE_FILE = Path(__file__).parent / "data" / "reference_adult.json"
# names of a count above / below the range, per class (the usual haematology terms)
_FLAG_NAMES = {
    "basophil": ("basophilia", "basopenia"),
    "eosinophil": ("eosinophilia", "eosinopenia"),
    "lymphocyte": ("lymphocytosis", "lymphopenia"),
    "monocyte": ("monocytosis", "monocytopenia"),
    "neutrophil": ("neutrophilia", "neutropenia"),
}
_DEFAULT_REVIEW_THRESHOLD = 0.9  # top probability below which a cell goes to review, if the model has no rule
_THUMB = 96  # thumbnail side in report.html (pixels)
_MAX_THUMBS_PER_CLASS = 60  # bounds report.html's size; the full list is in differential.json


def _read_json_reference(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


DEFAULT_REFERENCE = _read_json_reference(_REFERENCE_FILE)


def load_reference(path):
    """A lab's reference table: a JSON file ``{class: [low %, high %]}``; checked, returned as a dict."""
    try:
        table = _read_json_reference(path)
    except (OSError, ValueError) as e:
        raise ValueError(f"cannot read the reference table {path}: {e}") from None
    return _check_ranges(table, f"reference table {path}")


def _check_ranges(table, what):
    if not isinstance(table, dict) or not table:
        raise ValueError(f"{what} must be a JSON object {{class: [low %, high %]}}")
    out = {}
    for k, v in table.items():
        ok = isinstance(v, (list, tuple)) and len(v) == 2 and all(isinstance(x, (int, float)) for x in v)
        if not ok or not 0 <= v[0] <= v[1] <= 100:
            raise ValueError(f"{what}: {k!r} must be [low %, high %] with 0 <= low <= high <= 100, got {v!r}")
        out[str(k)] = [float(v[0]), float(v[1])]
    return out


def clopper_pearson(k, n, confidence=0.95):
    """Exact binomial interval of the proportion ``k / n`` (scipy's ``binomtest``), as fractions."""
    from scipy.stats import binomtest

    ci = binomtest(int(k), int(n)).proportion_ci(confidence_level=confidence, method="exact")
    return float(ci.low), float(ci.high)


def _flag(cls, ci, rng):
    names = _FLAG_NAMES.get(cls, (f"{cls} above range", f"{cls} below range"))
    if ci[0] > rng[1]:
        return names[0]
    if ci[1] < rng[0]:
        return names[1]
    return None


def _model_info(model):
    info = {"class": type(model).__name__}
    for key in ("architecture", "augment"):
        v = getattr(model, key, None)
        if isinstance(v, (str, bool)):
            info[key] = v
    if hasattr(model, "image_shape_"):
        info["image_shape"] = [int(s) for s in model.image_shape_]
    return info


def differential(model, images, files=None, *, reference=None, wbc=None, review_threshold=None):
    """The differential of one smear.

    Parameters
    ----------
    model : a fitted classifier with ``predict_proba`` and ``classes_`` (e.g. NDLMClassifier).
    images : array (n, height, width, channels) of the cells, at the model's image size.
    files : names of the cells (default ``cell_0`` ...), used in ``review`` and ``cells.csv``.
    reference : ``{class: [low %, high %]}`` (default: the shipped adult table).
    wbc : the white-cell count in 10^9/L; adds absolute counts, intervals, ranges and flags.
    review_threshold : cells whose top probability is below it are listed for review (default:
        the model's ``review_threshold_`` if it has one, else 0.9).

    Returns ``(summary, cells)``: ``summary`` is the ``differential.json`` dict, ``cells`` a dict
    with ``files``, ``proba`` (n, n_classes), ``predicted`` and ``review`` (bool per cell).
    """
    images = np.asarray(images)
    n = len(images)
    if n == 0:
        raise ValueError("differential needs at least one cell image")
    files = [f"cell_{i}" for i in range(n)] if files is None else [str(f) for f in files]
    if len(files) != n:
        raise ValueError(f"{len(files)} file names for {n} images")
    if wbc is not None and not (np.isfinite(wbc) and wbc > 0):
        raise ValueError(f"wbc must be a positive count in 10^9/L, got {wbc!r}")
    ref = dict(DEFAULT_REFERENCE["percent"]) if reference is None else _check_ranges(reference, "reference")
    if review_threshold is None:
        review_threshold = getattr(model, "review_threshold_", _DEFAULT_REVIEW_THRESHOLD)
    if not 0 <= review_threshold <= 1:
        raise ValueError(f"review_threshold must be in [0, 1], got {review_threshold!r}")

    proba = np.asarray(model.predict_proba(images), dtype=float)
    classes = [str(c) for c in model.classes_]
    pred = np.argmax(proba, axis=1)
    review = proba[np.arange(n), pred] < review_threshold
    counts, percent, ci95, flags = {}, {}, {}, []
    for j, c in enumerate(classes):
        k = int(np.sum(pred == j))
        lo, hi = clopper_pearson(k, n)
        counts[c], percent[c], ci95[c] = k, 100.0 * k / n, [100.0 * lo, 100.0 * hi]
        if c in ref:
            f = _flag(c, ci95[c], ref[c])
            if f:
                flags.append(f)
    summary = {
        "n_cells": n,
        "n_review": int(review.sum()),
        "classes": classes,
        "counts": counts,
        "percent": percent,
        "ci95": ci95,
        "reference_range": {c: ref[c] for c in classes if c in ref},
        "flags": flags,
        "review": [f for f, r in zip(files, review) if r],
        "review_threshold": float(review_threshold),
        "reference_source": DEFAULT_REFERENCE["source"] if reference is None else "user-supplied",
        "model": _model_info(model),
    }
    if wbc is not None:
        abs_ref = DEFAULT_REFERENCE["absolute_1e9_per_L"] if reference is None else {}
        absolute = {
            "wbc_1e9_per_L": float(wbc),
            "counts": {c: wbc * percent[c] / 100 for c in classes},
            "ci95": {c: [wbc * ci95[c][0] / 100, wbc * ci95[c][1] / 100] for c in classes},
            # a lab's own table gives percentages: its absolute range is that share of this count
            "reference_range": {
                c: list(abs_ref[c]) if c in abs_ref else [wbc * ref[c][0] / 100, wbc * ref[c][1] / 100]
                for c in classes
                if c in abs_ref or c in ref
            },
        }
        absolute["flags"] = [
            f
            for c in classes
            if c in absolute["reference_range"]
            for f in [_flag(c, absolute["ci95"][c], absolute["reference_range"][c])]
            if f
        ]
        summary["absolute"] = absolute
    cells = {"files": files, "proba": proba, "predicted": [classes[j] for j in pred], "review": review}
    return summary, cells


# --------------------------------------------------------------------------------------------
# Output files
# --------------------------------------------------------------------------------------------


def _plot_differential(summary, path):
    from .report import _new_figure

    classes = summary["classes"]
    fig = _new_figure(figsize=(7, 0.6 * len(classes) + 1.4), dpi=110)
    ax = fig.add_subplot(1, 1, 1)
    ys = np.arange(len(classes))[::-1]
    for y, c in zip(ys, classes):
        rng = summary["reference_range"].get(c)
        if rng:
            ax.barh(y, rng[1] - rng[0], left=rng[0], height=0.6, color="#cfe8cf", label="reference range")
        lo, hi = summary["ci95"][c]
        color = "#c0392b" if any(f in _FLAG_NAMES.get(c, ()) for f in summary["flags"]) else "#1f4e79"
        ax.errorbar(
            summary["percent"][c], y, xerr=[[summary["percent"][c] - lo], [hi - summary["percent"][c]]], fmt="o",
            color=color, capsize=4, label="count, 95 % interval",
        )  # fmt: skip
    handles, labels = ax.get_legend_handles_labels()
    uniq = dict(zip(labels, handles))
    ax.legend(uniq.values(), uniq.keys(), loc="lower right", fontsize=8)
    ax.set_yticks(ys, classes)
    ax.set_xlim(0, 100)
    ax.set_xlabel("% of white cells")
    ax.set_title(f"Differential of {summary['n_cells']} cells (exact 95 % intervals)")
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    return path


def _data_uri_png(data):
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def _thumbnail(image):
    from PIL import Image

    im = Image.fromarray(np.asarray(image, dtype=np.uint8).squeeze())
    im.thumbnail((_THUMB, _THUMB))
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return _data_uri_png(buf.getvalue())


def _html(summary, png_bytes, images, cells):
    e = html.escape
    classes = summary["classes"]
    rows = []
    for c in classes:
        rng = summary["reference_range"].get(c)
        lo, hi = summary["ci95"][c]
        flag = next((f for f in summary["flags"] if f in _FLAG_NAMES.get(c, ())), "")
        rows.append(
            f"<tr><td>{e(c)}</td><td>{summary['counts'][c]}</td><td>{summary['percent'][c]:.1f}</td>"
            f"<td>{lo:.1f}&ndash;{hi:.1f}</td><td>{'' if rng is None else f'{rng[0]:g}&ndash;{rng[1]:g}'}</td>"
            f"<td class='flag'>{e(flag)}</td></tr>"
        )
    absolute = ""
    if "absolute" in summary:
        a = summary["absolute"]
        arows = "".join(
            f"<tr><td>{e(c)}</td><td>{a['counts'][c]:.2f}</td><td>{a['ci95'][c][0]:.2f}&ndash;{a['ci95'][c][1]:.2f}</td>"
            f"<td>{'&ndash;'.join(f'{v:g}' for v in a['reference_range'].get(c, []))}</td></tr>"
            for c in classes
        )
        absolute = (
            f"<h2>Absolute counts (WBC {a['wbc_1e9_per_L']:g} &times; 10<sup>9</sup>/L)</h2>"
            "<table><tr><th>class</th><th>&times;10<sup>9</sup>/L</th><th>95 % interval</th><th>range</th></tr>"
            f"{arows}</table><p>Flags: {e(', '.join(a['flags']) or 'none')}</p>"
        )
    groups = []
    review_idx = np.flatnonzero(cells["review"])
    for j, c in enumerate(classes):
        idx = [i for i in review_idx if cells["predicted"][i] == c]
        if not idx:
            continue
        figs = "".join(
            f"<figure><img src='{_thumbnail(images[i])}' alt='{e(os.path.basename(cells['files'][i]))}'>"
            f"<figcaption>{e(os.path.basename(cells['files'][i]))}<br>"
            f"p={cells['proba'][i, j]:.2f}</figcaption></figure>"
            for i in idx[:_MAX_THUMBS_PER_CLASS]
        )
        more = (
            f"<p>... and {len(idx) - _MAX_THUMBS_PER_CLASS} more (see differential.json)</p>"
            if len(idx) > _MAX_THUMBS_PER_CLASS
            else ""
        )
        groups.append(f"<h3>Predicted {e(c)} ({len(idx)})</h3><div class='thumbs'>{figs}</div>{more}")
    review_html = "".join(groups) or "<p>No cell below the review threshold.</p>"
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>White-cell differential</title>
<style>
body{{font-family:sans-serif;margin:2em;max-width:60em;color:#222}}
table{{border-collapse:collapse}}td,th{{border:1px solid #bbb;padding:.25em .6em;text-align:right}}
td:first-child{{text-align:left}}.flag{{color:#c0392b;font-weight:bold}}
.thumbs{{display:flex;flex-wrap:wrap;gap:.5em}}figure{{margin:0;font-size:.7em;text-align:center;width:{_THUMB}px}}
img.plot{{max-width:100%}}
</style></head><body>
<h1>White-cell differential: {summary["n_cells"]} cells</h1>
<p>Flags: <span class="flag">{e(", ".join(summary["flags"]) or "none")}</span>.
A flag is raised only when the whole exact 95 % interval lies outside the reference range.</p>
<table><tr><th>class</th><th>cells</th><th>%</th><th>95 % interval</th><th>reference %</th><th>flag</th></tr>
{"".join(rows)}</table>
<p><img class="plot" src="{_data_uri_png(png_bytes)}" alt="differential with intervals and reference ranges"></p>
{absolute}
<h2>Cells to review ({summary["n_review"]}, top probability below {summary["review_threshold"]:.3g})</h2>
{review_html}
<p><small>Reference ranges: {e(summary["reference_source"])}<br>
Model: {e(json.dumps(summary["model"]))}. Research software: not a diagnostic device; five classes only.</small></p>
</body></html>
"""


def write_differential(out_dir, summary, cells, images):
    """Write ``differential.json``, ``cells.csv``, ``differential.png`` and ``report.html``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "differential.json", "w", encoding="utf-8") as f:
        json.dump(summary, f, indent=2)
    with open(out / "cells.csv", "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["file", "predicted"] + summary["classes"] + ["review"])
        for name, lab, p, r in zip(cells["files"], cells["predicted"], cells["proba"], cells["review"]):
            w.writerow([name, lab] + [f"{v:.6f}" for v in p] + [int(r)])
    _plot_differential(summary, out / "differential.png")
    png = (out / "differential.png").read_bytes()
    (out / "report.html").write_text(_html(summary, png, images, cells), encoding="utf-8")
    return out
