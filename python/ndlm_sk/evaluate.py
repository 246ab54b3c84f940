"""Score a fitted model on a labeled image folder (``ndlm-sk evaluate``).

:func:`evaluate_folder` reads the folder as :func:`ndlm_sk.datasets.load_pbc` does (one subfolder
per class, ``<class>/<image>``, the same image files, decoding, resizing and removal of
byte-identical duplicates) but streams it: images are decoded and predicted a chunk at a time, so
memory does not grow with the folder. Subfolders whose name is not one of the model's classes are
ignored (the PBC release has 8 classes; a 5-class model is scored on its 5). Files that cannot be
decoded are skipped and named.

:func:`write_evaluation` writes ``report.md`` / ``report.json`` / ``confusion_matrix.png`` (with
:func:`ndlm_sk.report.write_report`), ``predictions.csv`` and ``misclassified.csv``.
"""

import csv
import os
from pathlib import Path

import numpy as np

from .model_comparison import wilson_interval
from .report import classification_report_ndlm, write_report

_CHUNK = 64  # images decoded and predicted at a time


def _folder_plan(folder, classes):
    """(labels, rels, root, ignored folders, duplicate notes) of the images to score."""
    from .datasets import _SKIPPED_DIRS, _hash_files, _list_files, _plan_duplicates, _resolve_root

    root = _resolve_root(folder)
    available = sorted(
        e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith(".") and e.name not in _SKIPPED_DIRS
    )
    known = {str(c) for c in classes}
    used = [c for c in available if c in known]
    ignored = [c for c in available if c not in known]
    if not used:
        raise ValueError(
            f"{root} has no subfolder named after a class of the model: expected <class>/<image> with "
            f"<class> one of {sorted(known)}; found folders {available or 'none'}"
        )
    labels, rels = _list_files(root, used, warn_empty=False)
    hashes, _ = _hash_files(root, rels)
    dropped, within, conflicts = _plan_duplicates(labels, rels, hashes)
    keep = [i for i in range(len(rels)) if i not in dropped]
    notes = {"duplicates_dropped": [d for d, _ in within], "conflicting_duplicates_dropped": conflicts}
    return [labels[i] for i in keep], [rels[i] for i in keep], root, ignored, notes


def evaluate_folder(clf, folder, chunk=_CHUNK):
    """Predict every image of a labeled folder with ``clf`` and score it.

    Returns a dict: ``report`` (:func:`ndlm_sk.report.classification_report_ndlm`: accuracy,
    per-class precision / sensitivity / specificity / F1, confusion matrix), ``n_images``,
    ``n_correct``, ``accuracy_ci95`` (Wilson 95 % interval, percent), ``predictions`` (one dict per
    image: file, true, predicted, probability of the predicted and of the true class),
    ``misclassified`` (the wrong ones, lowest predicted probability last), ``skipped`` ([file,
    reason]), ``ignored_folders`` and the duplicates dropped.
    """
    from .datasets import read_image

    h, w, c = (int(s) for s in clf.image_shape_)
    classes = [str(k) for k in clf.classes_]
    col = {k: i for i, k in enumerate(classes)}
    labels, rels, root, ignored, notes = _folder_plan(folder, classes)
    preds, skipped = [], []
    batch, batch_rows = [], []

    def flush():
        proba = clf.predict_proba(np.stack(batch))
        for (rel, lab), p in zip(batch_rows, proba):
            k = int(np.argmax(p))
            preds.append(
                {
                    "file": rel,
                    "true": lab,
                    "predicted": classes[k],
                    "p_predicted": float(p[k]),
                    "p_true": float(p[col[lab]]),
                }
            )
        batch.clear()
        batch_rows.clear()

    for lab, rel in zip(labels, rels):
        try:
            batch.append(read_image(root / rel, (h, w), channels=c))
        except Exception as e:  # noqa: BLE001 - any file Pillow cannot decode is skipped and named
            skipped.append([rel, f"not a readable image ({type(e).__name__}: {e})"])
            continue
        batch_rows.append((rel, lab))
        if len(batch) >= chunk:
            flush()
    if batch:
        flush()
    if not preds:
        raise ValueError(f"no readable image in the class folders of {root}")
    y_true = [p["true"] for p in preds]
    y_pred = [p["predicted"] for p in preds]
    report = classification_report_ndlm(y_true, y_pred, labels=classes)
    n_correct = int(sum(t == p for t, p in zip(y_true, y_pred)))
    lo, hi = wilson_interval(n_correct, len(preds))
    wrong = sorted((p for p in preds if p["true"] != p["predicted"]), key=lambda p: -p["p_predicted"])
    return {
        "folder": str(root),
        "n_images": len(preds),
        "n_correct": n_correct,
        "accuracy_ci95": [100.0 * lo, 100.0 * hi],
        "report": report,
        "predictions": preds,
        "misclassified": wrong,
        "skipped": skipped,
        "ignored_folders": ignored,
        **notes,
    }


def _write_csv(path, rows, fields):
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(fields)
        for r in rows:
            writer.writerow([f"{r[k]:.6f}" if isinstance(r[k], float) else r[k] for k in fields])


def write_evaluation(out, result, extra=None):
    """Write the report (md, json, confusion matrix PNG), predictions.csv and misclassified.csv
    of an :func:`evaluate_folder` result into ``out``; returns the dict of paths written."""
    out = Path(out)
    details = {
        "folder": result["folder"],
        "images scored": result["n_images"],
        "accuracy 95 % Wilson interval (%)": [round(v, 2) for v in result["accuracy_ci95"]],
        "misclassified": len(result["misclassified"]),
        "skipped files": result["skipped"],
        "ignored folders (not a class of the model)": result["ignored_folders"],
        "duplicates dropped": result["duplicates_dropped"],
        "conflicting duplicates dropped": result["conflicting_duplicates_dropped"],
        **(extra or {}),
    }
    written = write_report(
        out, result["report"], extra=details, compare_with_paper=False, title="NDLM evaluation on a labeled folder"
    )
    fields = ["file", "true", "predicted", "p_predicted", "p_true"]
    written["predictions"] = out / "predictions.csv"
    _write_csv(written["predictions"], result["predictions"], fields)
    written["misclassified"] = out / "misclassified.csv"
    _write_csv(written["misclassified"], result["misclassified"], fields)
    return written


# --------------------------------------------------------------------------------- ndlm-sk evaluate
_MAX_LISTED = 50  # misclassified files printed (all of them are in misclassified.csv)


def setup_evaluate(sub):
    p = sub.add_parser(
        "evaluate",
        help="score a saved model on a labeled folder (<class>/<image>, like PBC)",
        description="Predict every image of LABELED_FOLDER (one subfolder per class, named as the model's "
        "classes; other subfolders are ignored) and print the accuracy with its 95 %% Wilson interval, "
        "per-class precision, sensitivity, specificity and F1, the confusion matrix and the misclassified "
        "files. Writes report.md, report.json, confusion_matrix.png, predictions.csv and misclassified.csv "
        "to --out. Files are read as load_pbc reads them (byte-identical duplicates are scored once).",
    )
    p.add_argument("model", metavar="MODEL", help="a .ndlm or .joblib model file")
    p.add_argument("folder", metavar="LABELED_FOLDER", help="one subfolder of images per class")
    p.add_argument("--out", metavar="DIR", default="ndlm-evaluation", help="output folder (default: ./ndlm-evaluation)")
    p.add_argument("--threads", type=int, default=None, help="threads of the C++ core")
    p.set_defaults(run=run_evaluate)


def run_evaluate(args):
    import sys

    from .cli import CLIError, _err
    from .model_io import load_model_file
    from .report import to_markdown

    if not Path(args.folder).is_dir():
        raise CLIError(f"LABELED_FOLDER {args.folder} is not a folder")
    clf = load_model_file(args.model)
    if args.threads is not None:
        if args.threads == 0:
            raise CLIError("--threads must not be 0")
        clf.n_jobs = args.threads
    result = evaluate_folder(clf, args.folder)
    for rel, reason in result["skipped"]:
        _err(f"skipped {rel}: {reason}")
    if result["ignored_folders"]:
        _err(f"ignored folders that are not a class of the model: {', '.join(result['ignored_folders'])}")
    n_dup = len(result["duplicates_dropped"]) + sum(len(g) for g in result["conflicting_duplicates_dropped"])
    if n_dup:
        _err(f"not scored: {n_dup} byte-identical duplicate file(s) (listed in report.json)")
    written = write_evaluation(args.out, result, extra={"model": str(args.model)})
    n, k = result["n_images"], result["n_correct"]
    lo, hi = result["accuracy_ci95"]
    print(f"Accuracy: {100.0 * k / n:.2f}% ({k}/{n} images; 95 % Wilson interval {lo:.1f}-{hi:.1f} %)")
    print()
    print(to_markdown(result["report"], compare_with_paper=False, title=f"{args.model} on {result['folder']}"))
    wrong = result["misclassified"]
    print(f"Misclassified: {len(wrong)} image(s), most confident first")
    for r in wrong[:_MAX_LISTED]:
        print(f"  {r['file']}: {r['true']} predicted as {r['predicted']} (p = {r['p_predicted']:.3f})")
    if len(wrong) > _MAX_LISTED:
        print(f"  ... and {len(wrong) - _MAX_LISTED} more in {written['misclassified']}")
    names = ", ".join(Path(p).name for p in written.values())
    print(f"wrote {names} to {args.out}", file=sys.stderr)
    return 0
