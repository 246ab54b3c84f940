"""The paper's experiment end to end: load PBC, split 50/25/25, train NDLM, select on validation,
test once, and report as the paper does (Tables I-II, Fig. 3) next to its published numbers.

Resumable: after every epoch the model (weights + Adam state) and the history are checkpointed in
the output folder; running the same command again continues from the last finished epoch.
"""

import json
import sys
import time
import warnings
from pathlib import Path

import numpy as np

from ._fileio import atomic_write
from .datasets import WBC_CLASSES, load_pbc, split_indices
from .report import PAPER_RESULTS, classification_report_ndlm, write_report

CHECKPOINT = "checkpoint.ndlm"
BEST = "best_model.ndlm"
HISTORY = "history.json"
#: MATLAB-default options (see NDLMClassifier) and their ndlm_sk defaults, as reproduce passes them
MATLAB_OPTIONS = {
    "input_normalization": "none",
    "normalization_dimension": "element",
    "batchnorm_statistics": "moving",
    "batchnorm_l2_factor": 0.0,
    "shuffle": True,
}


def _atomic_json(doc, path):
    atomic_write(path, lambda f: json.dump(doc, f, indent=1), text=True)


def _log_loss(proba, y_enc):
    p = proba[np.arange(len(y_enc)), y_enc]
    return float(-np.mean(np.log(np.clip(p, 1e-12, 1.0))))


def reproduce(
    data,
    out,
    *,
    epochs=100,
    patience=None,
    image_size=300,
    batch_size=128,
    seed=0,
    model_seed=None,
    threads=None,
    architecture="ndlm",
    augment=False,
    test=True,
    classes=WBC_CLASSES,
    cache_dir=None,
    log=print,
    **options,
):
    """Run (or resume) the paper's experiment; returns the test report dict.

    Model selection keeps the weights of the epoch with the best validation accuracy (MATLAB's
    "best validation" output network); with ``patience``, training also stops once the validation
    accuracy has not improved for that many epochs. The test part is evaluated once, at the end.
    ``classes`` are the class folders used (default: the paper's five white-cell classes, so the
    full PBC release with its 8 folders can be passed as it is; ``None``: every subfolder).
    ``options`` are MATLAB_OPTIONS (NDLMClassifier parameters). ``architecture`` "cdfl" and "ddfl"
    train Table III's two-network models (:mod:`ndlm_sk.table3`). Models are saved as ``.ndlm``.
    ``seed`` seeds the split and, unless ``model_seed`` is given, the model (initialization and
    shuffling): ``model_seed`` trains differently seeded models on one split. With ``test=False``
    the test part is not predicted (runs that choose a configuration on validation data); the
    returned dict then holds the validation results only.
    """
    from .model_io import load_model, save_model
    from .table3 import make_table3_model

    unknown = set(options) - set(MATLAB_OPTIONS)
    if unknown:
        raise TypeError(f"unknown options {sorted(unknown)}; known: {sorted(MATLAB_OPTIONS)}")
    options = {**MATLAB_OPTIONS, **options}
    model_seed = seed if model_seed is None else int(model_seed)

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    config = {
        "data": str(Path(data).resolve()),
        "classes": None if classes is None else sorted(classes),
        "epochs": int(epochs),
        "patience": patience,
        "image_size": int(image_size),
        "batch_size": int(batch_size),
        "seed": int(seed),
        "model_seed": model_seed,
        "threads": threads,
        "architecture": architecture,
        "augment": bool(augment),
        "split": [0.5, 0.25, 0.25],
        **options,
    }

    t0 = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        X, y, paths = load_pbc(
            data, image_size, classes=classes, cache=True, cache_dir=cache_dir, verbose=True, return_paths=True
        )
    data_notes = [str(w.message) for w in caught]
    for note in data_notes:
        log(f"data: {note}")
    load_seconds = time.perf_counter() - t0
    tr, va, te = split_indices(y, (0.5, 0.25, 0.25), random_state=seed)
    log(
        f"loaded {len(X)} images {X.shape[1:]} in {load_seconds:.1f} s; "
        f"split train {len(tr)} / validation {len(va)} / test {len(te)} (seed {seed})"
    )
    X_tr, y_tr = X[tr], y[tr]
    X_va, y_va = X[va], y[va]
    X_te, y_te = X[te], y[te]
    del X

    hist_path, ckpt_path, best_path = out / HISTORY, out / CHECKPOINT, out / BEST
    if ckpt_path.exists() and hist_path.exists():
        history = json.loads(hist_path.read_text())
        fixed = ("data", "image_size", "batch_size", "seed", "model_seed", "threads", "architecture", "split")
        fixed += ("augment", "classes")
        # runs from before an option existed ran with what is now its default
        defaults = {
            "augment": False,
            "model_seed": history["config"].get("seed"),
            "classes": sorted(WBC_CLASSES),
            **MATLAB_OPTIONS,
        }
        if any(history["config"].get(k, defaults.get(k)) != config[k] for k in fixed + tuple(MATLAB_OPTIONS)):
            raise ValueError(
                f"{out} holds a run with another configuration {history.get('config')}; use another --out folder"
            )
        history["config"] = config  # epochs / patience may change: a run can be extended
        clf = load_model(ckpt_path)
        log(f"resuming after epoch {clf.n_iter_} (checkpoint {ckpt_path})")
    else:
        history = {
            "config": config,
            "loss": [],
            "train_accuracy": [],
            "val_accuracy": [],
            "val_loss": [],
            "iteration_loss": [],
            "epoch_seconds": [],
            "best_epoch": None,
            "stopped": None,
        }
        clf = make_table3_model(
            architecture,
            batch_size=batch_size,
            max_iter=1,
            warm_start=True,
            random_state=model_seed,
            n_jobs=threads,
            augment=augment,
            **options,
        )

    classes = np.unique(y_tr)
    y_va_enc = np.searchsorted(classes, y_va)
    best = max(history["val_accuracy"]) if history["val_accuracy"] else -1.0
    since_best = (
        len(history["val_accuracy"]) - 1 - int(np.argmax(history["val_accuracy"])) if history["val_accuracy"] else 0
    )
    while len(history["loss"]) < epochs:
        if patience is not None and since_best >= patience:
            break
        e = len(history["loss"]) + 1
        t_ep = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # max_iter=1 per call: no convergence warning
            n_batches = len(getattr(clf, "batch_loss_curve_", []))
            clf.fit(X_tr, y_tr)
        train_s = time.perf_counter() - t_ep
        proba = clf.predict_proba(X_va)
        val_acc = float(np.mean(np.argmax(proba, 1) == y_va_enc))
        val_loss = _log_loss(proba, y_va_enc)
        secs = time.perf_counter() - t_ep
        history["loss"].append(clf.loss_curve_[-1])
        history["train_accuracy"].append(clf.train_scores_[-1])
        history["val_accuracy"].append(val_acc)
        history["val_loss"].append(val_loss)
        history["iteration_loss"] += clf.batch_loss_curve_[n_batches:]
        history["epoch_seconds"].append(secs)
        improved = val_acc > best
        if improved:
            best, since_best = val_acc, 0
            history["best_epoch"] = e
            save_model(clf, best_path)
        else:
            since_best += 1
        save_model(clf, ckpt_path)
        _atomic_json(history, hist_path)
        left = (epochs - e) * np.mean(history["epoch_seconds"])
        log(
            f"epoch {e}/{epochs}: loss {history['loss'][-1]:.4f}, train acc {history['train_accuracy'][-1]:.4f}, "
            f"val acc {val_acc:.4f}, val loss {val_loss:.4f}{' *' if improved else ''}, {secs:.1f} s "
            f"({len(tr) / train_s:.0f} img/s training), about {left / 60:.0f} min left at most"
        )
    n_done = len(history["loss"])
    history["stopped"] = (
        f"early stopping: no validation improvement for {patience} epochs after epoch {history['best_epoch']}"
        if n_done < epochs
        else f"all {epochs} epochs"
    )
    _atomic_json(history, hist_path)
    if not test:
        summary = {
            "config": config,
            "epochs_run": n_done,
            "best_epoch": history["best_epoch"],
            "best_validation_accuracy": best,
            "validation_images": int(len(va)),
            "stopped": history["stopped"],
            "training_wall_seconds": float(np.sum(history["epoch_seconds"])),
            "test": "not predicted (validation-only run)",
        }
        _atomic_json(summary, out / "validation.json")
        log(f"best validation accuracy {best:.4f} at epoch {history['best_epoch']}; test part not predicted")
        return summary

    best_clf = load_model(best_path)
    t_pred = time.perf_counter()
    y_pred = best_clf.predict(X_te)  # the test part, used once
    pred_s = time.perf_counter() - t_pred
    report = classification_report_ndlm(y_te, y_pred, labels=list(best_clf.classes_))
    train_seconds = float(np.sum(history["epoch_seconds"]))
    extra = {
        "command": " ".join(["ndlm-sk"] + sys.argv[1:]) if sys.argv and "ndlm" in sys.argv[0] else None,
        "config": config,
        "images": {
            "total_after_dedup": int(len(y)),
            "train": int(len(tr)),
            "validation": int(len(va)),
            "test": int(len(te)),
            "data_notes": data_notes,
        },
        "epochs_run": n_done,
        "best_epoch": history["best_epoch"],
        "stopped": history["stopped"],
        "best_validation_accuracy": best,
        "training_wall_seconds": train_seconds,
        "training_images_per_second": float(n_done * len(tr) / train_seconds) if train_seconds else None,
        "test_prediction_images_per_second": float(len(te) / pred_s),
        "threads": best_clf._threads(),
        "paper_training_time": "5 h 50 min 22 s on a 4-core Intel i5-8400H (MATLAB)",
    }
    write_report(out, report, history=history, extra=extra)
    import shutil

    shutil.copyfile(best_path, out / "model.ndlm")
    log(f"test accuracy {report['accuracy']:.2f}% (paper: {_paper_accuracy(architecture)}); report in {out}")
    return report


def _paper_accuracy(architecture):
    """The paper's test accuracy for a preset name, as text ("96.19%"), or "not given"."""
    if architecture == "ndlm":
        return f"{PAPER_RESULTS['table_1']['accuracy']}%"
    if isinstance(architecture, str) and architecture.upper() in PAPER_RESULTS["table_3"]:
        return f"{PAPER_RESULTS['table_3'][architecture.upper()]}%"
    return "not given"
