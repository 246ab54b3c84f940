"""The ``ndlm-sk`` command line (also ``python -m ndlm_sk``).

Subcommands::

    ndlm-sk train [--data FOLDER] [--image-size 300] [--epochs 100] ... [--save MODEL]
    ndlm-sk export-onnx MODEL OUT.onnx [--input-dtype uint8|float32]
    ndlm-sk predict MODEL IMAGE_OR_FOLDER... [--format csv|table] [--image-size auto] [--scheduler ADDRESS]
    ndlm-sk evaluate MODEL LABELED_FOLDER [--out DIR]
    ndlm-sk reproduce --data FOLDER [--out DIR] [--epochs 100] [--patience N] ...
    ndlm-sk count FOLDER --model MODEL [--out DIR] [--reference FILE.json] [--wbc X]

Models are saved by file extension and loaded by content (:func:`ndlm_sk.model_io.load_model_file`):
``.ndlm`` (:func:`ndlm_sk.save_model`, plain arrays and JSON, safe to load from anyone) or
``.joblib`` / ``.pkl`` (joblib; loading a pickle can run code, so only load files you trust).

Adding a subcommand: write ``_setup_<name>(subparsers)``, which adds the subparser and sets
``run=<function taking the parsed args and returning an exit code>``, and list it in
``_SUBCOMMANDS``.
"""

import argparse
import csv
import json
import os
import sys
import time
import warnings
from pathlib import Path
from typing import NamedTuple, Optional

import numpy as np

PROG = "ndlm-sk"
_PREDICT_CHUNK = 64  # images decoded and predicted at a time (bounds memory)


class CLIError(Exception):
    """A user error: printed as ``ndlm-sk: error: ...`` with exit code 2."""


# --------------------------------------------------------------------------------- helpers
def _err(msg):
    print(f"{PROG}: {msg}", file=sys.stderr, flush=True)


def _positive_int(text):
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return v


def _image_size(text):
    """``N`` or ``HxW``, as (height, width)."""
    try:
        parts = [int(p) for p in text.lower().split("x")]
    except ValueError:
        parts = []
    if len(parts) == 1:
        parts = parts * 2
    if len(parts) != 2 or min(parts) < 1:
        raise argparse.ArgumentTypeError(f"expected N or HxW with positive integers, got {text!r}")
    return tuple(parts)


def _fraction(text):
    try:
        v = float(text)
    except ValueError:
        v = -1.0
    if not 0 <= v < 1:
        raise argparse.ArgumentTypeError(f"expected a fraction in [0, 1), got {text!r}")
    return v


def _class_list(text):
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    if not names:
        raise argparse.ArgumentTypeError(f"expected class folder names separated by commas, got {text!r}")
    return names


def _check_out_folder(path):
    """An output file's folder must exist (checked before any long work)."""
    folder = Path(path).parent
    if not folder.is_dir():
        raise CLIError(f"{path}: the folder {folder} does not exist")


def _resolve_architecture(value):
    """A preset name, or a JSON file holding a list of layer dicts."""
    from .architectures import PRESETS

    if value in PRESETS:
        return value
    if value.lower().endswith(".json"):
        try:
            with open(value, encoding="utf-8") as f:
                stack = json.load(f)
        except (OSError, ValueError) as e:
            raise CLIError(f"cannot read the architecture file {value}: {e}") from None
        if not isinstance(stack, list):
            raise CLIError(f"{value} must hold a JSON list of layer objects")
        return stack
    raise CLIError(
        f"unknown architecture {value!r}: a preset ({', '.join(sorted(PRESETS))}) or a .json file with a list of layers"
    )


def _print_report(y_true, y_pred, classes, extra, out):
    """Overall accuracy, then ndlm_sk.report's tables (per-class precision, sensitivity,
    specificity, F1, confusion matrix) as Markdown."""
    from .model_comparison import wilson_interval
    from .report import classification_report_ndlm, to_markdown

    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    n_right = int(np.sum(y_true == y_pred))
    lo, hi = wilson_interval(n_right, len(y_true))
    print(
        f"Test accuracy: {100.0 * n_right / len(y_true):.2f}% ({n_right}/{len(y_true)} images; "
        f"95 % Wilson interval {100 * lo:.1f}-{100 * hi:.1f} %)",
        file=out,
    )
    report = classification_report_ndlm(y_true, y_pred, labels=classes)
    print(file=out)
    print(to_markdown(report, extra=extra), file=out)
    return report


# --------------------------------------------------------------------------------- train
def _add_augment_flag(p):
    p.add_argument(
        "--augment",
        action="store_true",
        help="train on random flips / 90-degree rotations of the images (not in the paper)",
    )


def _setup_train(sub):
    p = sub.add_parser(
        "train",
        help="train on an image folder (default: the embedded sample) and report",
        description="Train NDLMClassifier on a PBC-style folder (one subfolder per class), hold "
        "out a stratified test part, print the test accuracy and per-class "
        "precision, sensitivity, specificity and F1, and optionally save the model.",
    )
    p.add_argument(
        "--data",
        metavar="FOLDER",
        help="folder with one subfolder of images per class (default: the embedded 200-image PBC sample)",
    )
    p.add_argument(
        "--classes",
        type=_class_list,
        metavar="A,B,...",
        help="the class subfolders of --data to use (default: all; the paper's five in the PBC release: "
        "basophil,eosinophil,lymphocyte,monocyte,neutrophil)",
    )
    p.add_argument(
        "--image-size",
        type=_image_size,
        default=(300, 300),
        metavar="N|HxW",
        help="resize every image to this size (default: 300, as the paper)",
    )
    p.add_argument("--epochs", type=_positive_int, default=100, help="epochs (default: 100)")
    p.add_argument("--batch-size", type=_positive_int, default=128, help="mini-batch size (default: 128)")
    p.add_argument("--learning-rate", type=float, default=1e-3, help="Adam's learning rate (default: 1e-3)")
    p.add_argument(
        "--test-size",
        type=_fraction,
        default=0.25,
        help="stratified held-out test fraction (default: 0.25; 0 trains on all)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the split, the weights and the shuffling (default: 0)")
    p.add_argument(
        "--threads", type=int, default=None, help="threads of the C++ core (default: all cores or OMP_NUM_THREADS)"
    )
    p.add_argument(
        "--architecture",
        default="ndlm",
        metavar="PRESET|FILE.json",
        help="a preset (ndlm, ndel, dfcn, dl, dftl, cdfl) or a JSON file with a list of layers (default: ndlm)",
    )
    p.add_argument(
        "--validation-size",
        type=_fraction,
        default=0.0,
        help="stratified validation fraction, held out like the test part: its accuracy is shown every "
        "epoch, early stopping watches it and the best epoch's weights are kept (default: 0, no validation "
        "part: early stopping watches the training loss)",
    )
    g = p.add_argument_group("stopping (the run stops after --epochs at most)")
    g.add_argument(
        "--patience",
        type=_positive_int,
        default=10,
        help="stop early once the watched quantity (validation accuracy, else training loss) has not "
        "improved by more than --tol for more than this many epochs in a row (default: 10, "
        "NDLMClassifier's n_iter_no_change)",
    )
    g.add_argument("--tol", type=float, default=1e-4, help="the improvement that counts (default: 1e-4)")
    g.add_argument("--no-early-stopping", action="store_true", help="run all --epochs (no stopping rule)")
    _add_augment_flag(p)
    _add_matlab_flags(p)
    p.add_argument("--save", metavar="MODEL", help="save the fitted model: MODEL.ndlm (safe format) or MODEL.joblib")
    p.add_argument(
        "--out",
        metavar="DIR",
        help="write report.md, report.json, confusion_matrix.png, learning_curves.png and model.ndlm here",
    )
    p.add_argument(
        "--quiet", action="store_true", help="no per-epoch progress lines on stderr (the results are still printed)"
    )
    p.add_argument("--verbose", action="store_true", help="also print the data loader's progress")
    p.set_defaults(run=_run_train)


def _duration(seconds):
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


class _EpochProgress:
    """Watches a fit epoch by epoch: one progress line per epoch on stderr (unless quiet), and
    whether and why the estimator's stopping rule ended the run.

    It wraps the instance's ``_stop_now`` (the estimator calls it once after every epoch of a
    ``fit``, with the epoch's loss and validation accuracy) for the duration of the fit only."""

    def __init__(self, clf, quiet):
        self.clf, self.quiet = clf, quiet
        self.stopped_by_rule = False

    def __enter__(self):
        rule = self.clf._stop_now
        self.t0 = time.perf_counter()

        def stop_now(loss, vscore, keep_best):
            stop = rule(loss, vscore, keep_best)
            self.stopped_by_rule = bool(stop)
            self._line(loss, vscore)
            return stop

        self.clf._stop_now = stop_now
        return self

    def __exit__(self, *exc):
        del self.clf._stop_now  # the class's method again (and nothing unpicklable left behind)

    def _line(self, loss, vscore):
        if self.quiet:
            return
        clf = self.clf
        e, n = clf.n_iter_, clf.max_iter
        elapsed = time.perf_counter() - self.t0
        msg = f"epoch {e}/{n}: loss {loss:.4f}, train acc {clf.train_scores_[-1]:.3f}"
        if vscore is not None:
            msg += f", val acc {vscore:.3f}"
        msg += f"; {_duration(elapsed)} elapsed"
        if e < n:
            msg += f", at most {_duration(elapsed / e * (n - e))} left"
        _err(msg)

    def reason(self, early_stopping, has_validation):
        """Why the fit ended, in words."""
        clf = self.clf
        kept = ""
        if early_stopping and has_validation:
            scores = clf.validation_scores_
            best = int(np.argmax(scores))
            kept = f"; kept the weights of epoch {best + 1} (validation accuracy {scores[best]:.4f})"
        if self.stopped_by_rule and clf.n_iter_ < clf.max_iter:
            what = "the validation accuracy" if early_stopping and has_validation else "the training loss"
            return (
                f"stopped early at epoch {clf.n_iter_} of at most {clf.max_iter}: {what} did not improve by "
                f"tol={clf.tol:g} or more for {clf.n_iter_no_change + 1} epochs in a row (--patience "
                f"{clf.n_iter_no_change}){kept}; --no-early-stopping runs all epochs"
            )
        if clf.n_iter_ < clf.max_iter:
            return f"interrupted at epoch {clf.n_iter_} of {clf.max_iter}{kept}"
        return f"ran all {clf.max_iter} epochs (--epochs){kept}"


def _run_train(args):
    from sklearn.exceptions import ConvergenceWarning

    from .datasets import load_pbc, load_pbc_sample, split_indices
    from .estimator import NDLMClassifier
    from .model_io import check_save_path, save_model_file

    if args.save:
        check_save_path(args.save)  # fail before training, not after
    if args.threads == 0:
        raise CLIError("--threads must not be 0")
    if args.validation_size + args.test_size >= 1:
        raise CLIError("--validation-size plus --test-size must leave images to train on (sum below 1)")
    architecture = _resolve_architecture(args.architecture)
    t0 = time.perf_counter()
    if args.data is None:
        if args.classes:
            raise CLIError("--classes needs --data (the embedded sample has the five classes)")
        X, y = load_pbc_sample(image_size=args.image_size)
        source = "the embedded PBC sample"
    else:
        X, y = load_pbc(args.data, image_size=args.image_size, classes=args.classes, verbose=args.verbose)
        source = args.data
    h, w = args.image_size
    print(
        f"Loaded {len(y)} images of {len(np.unique(y))} classes from {source} at {h}x{w} "
        f"({time.perf_counter() - t0:.1f} s)",
        flush=True,
    )
    sizes = (1.0 - args.validation_size - args.test_size, args.validation_size, args.test_size)
    idx_train, idx_val, idx_test = _split_for_training(y, sizes, args.seed, split_indices)
    has_val = len(idx_val) > 0
    early = not args.no_early_stopping
    clf = NDLMClassifier(
        architecture,
        max_iter=args.epochs,
        batch_size=args.batch_size,
        learning_rate_init=args.learning_rate,
        random_state=args.seed,
        n_jobs=args.threads,
        augment=args.augment,
        early_stopping=early and has_val,
        # without early stopping no rule may end the run: the count of epochs without improvement
        # never exceeds max_iter
        n_iter_no_change=args.patience if early else args.epochs,
        tol=args.tol,
        **_matlab_options(args),
    )
    val = (X[idx_val], y[idx_val]) if has_val else (None, None)
    t0 = time.perf_counter()
    with warnings.catch_warnings(), _EpochProgress(clf, args.quiet) as progress:
        # the CLI says why the run ended (below): not a convergence problem to warn about
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf.fit(X[idx_train], y[idx_train], *val)
    dt = time.perf_counter() - t0
    stopped = progress.reason(early, has_val)
    print(
        f"Trained {clf.n_params_} parameters on {len(idx_train)} images for {clf.n_iter_} "
        f"epochs in {dt:.1f} s; training loss of the last epoch {clf.loss_:.4f}",
        flush=True,
    )
    print(f"{stopped[0].upper()}{stopped[1:]}.", flush=True)
    extra = {
        "data": source,
        "image size": f"{h}x{w}",
        "architecture": args.architecture,
        "epochs": clf.n_iter_,
        "maximum epochs": args.epochs,
        "stopped": stopped,
        "batch size": args.batch_size,
        "seed": args.seed,
        "training images": len(idx_train),
        "validation images": len(idx_val),
        "test images": len(idx_test),
        "training time (s)": round(dt, 1),
    }
    report = None
    if len(idx_test):
        y_pred = clf.predict(X[idx_test])
        report = _print_report(y[idx_test], y_pred, clf.classes_, extra, sys.stdout)
    if args.save:
        save_model_file(clf, args.save)
        print(f"Saved the model to {args.save}")
    if args.out:
        _write_train_outputs(args.out, clf, report, extra)
    return 0


def _split_for_training(y, sizes, seed, split_indices):
    """The stratified split of ``train``, with a hint instead of scikit-learn's message when
    a class is too small to be split."""
    if sizes[0] >= 1.0:
        return split_indices(y, sizes, random_state=seed)
    names, counts = np.unique(y, return_counts=True)
    single = [str(k) for k, n in zip(names, counts) if n < 2]
    parts = "--test-size" + (" and --validation-size" if sizes[1] > 0 else "")
    if single:
        raise CLIError(
            f"class {', '.join(single)} has a single image: a stratified {parts} split needs at least 2 images "
            "per class (one to train on, one to test). Add images to that class folder, remove it, or train on "
            "every image with --test-size 0 (no test report)"
        )
    try:
        return split_indices(y, sizes, random_state=seed)
    except ValueError as e:  # e.g. a test part smaller than the number of classes
        smallest = ", ".join(f"{k} {n}" for k, n in sorted(zip(names, counts), key=lambda t: t[1])[:3])
        raise CLIError(
            f"cannot split {len(y)} images of {len(names)} classes (fewest: {smallest}) into stratified parts "
            f"of {sizes[0]:g} / {sizes[1]:g} / {sizes[2]:g}: every part needs at least one image per class; "
            f"use more images or other {parts} ({e})"
        ) from None


def _write_train_outputs(out, clf, report, extra):
    """``--out``: the test report (reproduce's writer), the learning curves and the model."""
    from .model_io import save_model
    from .report import plot_learning_curves, to_json, write_report

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    history = {"loss": clf.loss_curve_, "train_accuracy": clf.train_scores_, "iteration_loss": clf.batch_loss_curve_}
    if clf.validation_scores_ is not None:
        history["val_accuracy"] = clf.validation_scores_
    if report is not None:
        written = write_report(out, report, history=history, extra=extra)
    else:  # no test part: no report to write, but the curves and the run's details
        written = {"json": to_json({"extra": extra, "history": history}, out / "report.json")}
        try:
            written["learning_curves"] = plot_learning_curves(history, out / "learning_curves.png")
        except ImportError as exc:
            _err(f"learning curves skipped ({exc})")
    written["model"] = out / "model.ndlm"
    save_model(clf, written["model"])
    print(f"Wrote {', '.join(Path(p).name for p in written.values())} to {out}")


# --------------------------------------------------------------------------------- export-onnx
def _setup_export_onnx(sub):
    p = sub.add_parser(
        "export-onnx",
        help="convert a saved model to ONNX",
        description="Write a saved model as an ONNX file (opset 17) that onnxruntime runs "
        "without ndlm_sk: input 'images' (N, H, W, C); outputs 'label', "
        "'probabilities' and 'label_index'.",
    )
    p.add_argument("model", metavar="MODEL", help="a .ndlm or .joblib model file")
    p.add_argument("out", metavar="OUT.onnx", help="the ONNX file to write")
    p.add_argument(
        "--input-dtype",
        choices=("uint8", "float32"),
        default="uint8",
        help="element type of the input images (default: uint8)",
    )
    p.set_defaults(run=_run_export_onnx)


def _run_export_onnx(args):
    try:
        import onnx  # noqa: F401
    except ImportError:
        raise CLIError("export-onnx needs the onnx package: pip install 'ndlm_sk[onnx]'") from None
    from .model_io import load_model_file
    from .onnx_export import to_onnx

    _check_out_folder(args.out)
    clf = load_model_file(args.model)
    to_onnx(clf, args.out, input_dtype=args.input_dtype)
    h, w, c = clf.image_shape_
    print(
        f"Wrote {args.out} ({os.path.getsize(args.out)} bytes): input 'images' "
        f"(N, {h}, {w}, {c}) {args.input_dtype}; outputs 'label', 'probabilities' "
        f"(N, {len(clf.classes_)}), 'label_index'; classes {list(map(str, clf.classes_))}"
    )
    return 0


# --------------------------------------------------------------------------------- predict
def _setup_predict(sub):
    p = sub.add_parser(
        "predict",
        help="classify image files or folders with a saved model",
        description="Print one row per image: the file, the predicted class and the probability "
        "of each class. Folders are searched recursively for images (.jpg, .jpeg, "
        ".png, .tif, .tiff). Unreadable files are reported on stderr and skipped. "
        "Exit code 0 if at least one image was predicted, else 1.",
    )
    p.add_argument("model", metavar="MODEL", help="a .ndlm or .joblib model file")
    p.add_argument("paths", metavar="IMAGE_OR_FOLDER", nargs="+")
    p.add_argument("--format", choices=("csv", "table"), default="csv", help="output format (default: csv)")
    p.add_argument(
        "--image-size",
        default="auto",
        metavar="auto|N|HxW",
        help="resize images to this size before predicting, as load_pbc does; "
        "'auto' (default) uses the size the model was trained on, which an "
        "explicit size must equal",
    )
    p.add_argument(
        "--threads", type=int, default=None, help="threads of the C++ core (with --scheduler: per task, default 1)"
    )
    p.add_argument(
        "--scheduler",
        metavar="ADDRESS",
        help="classify on a Dask cluster (e.g. tcp://HOST:8786): the workers read the files and the model at "
        "the same paths (a shared file system); rows come back in order; needs ndlm_sk[dask]",
    )
    p.add_argument(
        "--chunk-size",
        type=_positive_int,
        default=_PREDICT_CHUNK,
        help=f"with --scheduler: files per task (default: {_PREDICT_CHUNK})",
    )
    p.set_defaults(run=_run_predict)


def _image_files(paths, name_others=False):
    """Expand folders (recursively, image extensions only, sorted); yield (path, error or None).

    With ``name_others``, files in the folders without an image extension are yielded too, with
    the reason they are not read."""
    from .datasets import IMAGE_EXTENSIONS

    for p in paths:
        if os.path.isdir(p):
            found, others = [], []
            for root, dirs, files in os.walk(p):
                dirs[:] = sorted(d for d in dirs if d != "__MACOSX")
                for f in files:
                    (found if f.lower().endswith(IMAGE_EXTENSIONS) else others).append(os.path.join(root, f))
            if not found:
                yield p, "no image files in this folder"
            if name_others:
                for f in sorted(others):
                    yield f, f"not read: the extension is not one of {', '.join(IMAGE_EXTENSIONS)}"
            for f in sorted(found):
                yield f, None
        elif os.path.exists(p):
            yield p, None
        else:
            yield p, "no such file or folder"


_MAX_NAMED = 10  # skipped files named again in predict's closing summary


class Prediction(NamedTuple):
    """One image's result: its label and class probabilities, or the error that skipped it."""

    file: str
    label: Optional[str]
    proba: Optional[np.ndarray]
    error: Optional[str]


def _check_predict_model(clf, image_size):
    """The model's (height, width, channels); raise CLIError if ``image_size`` (text) differs."""
    h, w, c = (int(s) for s in clf.image_shape_)
    if image_size != "auto":
        try:
            size = _image_size(image_size)
        except argparse.ArgumentTypeError as e:
            raise CLIError(f"--image-size: {e}") from None
        if size != (h, w):
            raise CLIError(
                f"--image-size {size[0]}x{size[1]} differs from the {h}x{w} images the model was trained on (use auto)"
            )
    if c not in (1, 3):
        raise CLIError(f"the model takes {c}-channel images; predict reads RGB or grayscale files")
    return h, w, c


def predict_entries(clf, entries, chunk=_PREDICT_CHUNK):
    """Classify ``(path, error or None)`` entries (as :func:`_image_files` yields them): yield one
    :class:`Prediction` per entry, in order, decoding and predicting ``chunk`` images at a time."""
    from .datasets import read_image

    h, w, c = (int(s) for s in clf.image_shape_)
    pending = []  # (path, image or None, error or None), in order

    def flush():
        images = [im for _, im, _ in pending if im is not None]
        proba = clf.predict_proba(np.stack(images)) if images else None
        k = 0
        for path, im, error in pending:
            if im is None:
                yield Prediction(path, None, None, error)
            else:
                yield Prediction(path, str(clf.classes_[np.argmax(proba[k])]), proba[k], None)
                k += 1
        pending.clear()

    n_images = 0
    for path, error in entries:
        image = None
        if error is None:
            try:
                image = read_image(path, (h, w), channels=c)
            except Exception as e:  # noqa: BLE001 - any file Pillow cannot decode is skipped
                error = f"not a readable image ({type(e).__name__}: {e})"
        pending.append((path, image, error))
        n_images += image is not None
        if n_images >= chunk:
            yield from flush()
            n_images = 0
    yield from flush()


def write_predictions(predictions, classes, fmt="csv", out=None):
    """Write :class:`Prediction` rows as ``predict`` prints them (CSV streamed row by row, or an
    aligned table at the end); each skipped file on stderr as it comes, then a summary (images per
    predicted class, the skipped files again). Returns the number of images predicted."""
    out = sys.stdout if out is None else out
    rows = []  # for the table format (widths need every row)
    writer = None
    if fmt == "csv":
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(["file", "predicted"] + classes)
    counts = dict.fromkeys(classes, 0)
    skipped = []
    for pred in predictions:
        if pred.error is not None:
            skipped.append((pred.file, pred.error))
            _err(f"skipped {pred.file}: {pred.error}")
            continue
        counts[pred.label] += 1
        if writer is not None:
            writer.writerow([pred.file, pred.label] + [f"{v:.6f}" for v in pred.proba])
            if sum(counts.values()) % _PREDICT_CHUNK == 0:
                out.flush()
        else:
            rows.append([pred.file, pred.label] + [f"{v:.4f}" for v in pred.proba])
    out.flush()
    if writer is None and rows:
        header = ["file", "predicted"] + classes
        widths = [max(len(r[i]) for r in rows + [header]) for i in range(len(header))]
        print("  ".join(hd.ljust(wd) for hd, wd in zip(header, widths)).rstrip(), file=out)
        for r in rows:
            cells = [r[0].ljust(widths[0]), r[1].ljust(widths[1])]
            cells += [v.rjust(wd) for v, wd in zip(r[2:], widths[2:])]
            print("  ".join(cells), file=out)
    n_ok, n_bad = sum(counts.values()), len(skipped)
    _err(f"predicted {n_ok} image(s): {', '.join(f'{k} {n}' for k, n in counts.items())}")
    if n_bad:
        named = "; ".join(f"{p} ({why})" for p, why in skipped[:_MAX_NAMED])
        more = f"; and {n_bad - _MAX_NAMED} more named above" if n_bad > _MAX_NAMED else ""
        _err(f"skipped {n_bad} file(s): {named}{more}")
    return n_ok


def _run_predict(args):
    from .model_io import load_model_file

    clf = load_model_file(args.model)
    if args.threads is not None:
        if args.threads == 0:
            raise CLIError("--threads must not be 0")
        clf.n_jobs = args.threads
    _check_predict_model(clf, args.image_size)
    classes = [str(k) for k in clf.classes_]
    if args.scheduler:
        try:
            import distributed  # noqa: F401
        except ImportError:
            raise CLIError("--scheduler needs Dask: pip install 'ndlm_sk[dask]'") from None
        from .distributed import predict_files

        predictions = predict_files(
            args.model, args.paths, scheduler=args.scheduler, threads=args.threads, chunk_size=args.chunk_size
        )
    else:
        predictions = predict_entries(clf, _image_files(args.paths, name_others=True))
    return 0 if write_predictions(predictions, classes, args.format) else 1


# --------------------------------------------------------------------------------- main
def _setup_reproduce(sub):
    p = sub.add_parser(
        "reproduce",
        help="the paper's experiment: 50/25/25 split, train, select, test, report",
        description="Reproduce the NDLM paper on a PBC folder: stratified 50/25/25 train / "
        "validation / test split, NDLM trained with Adam, the epoch with the best "
        "validation accuracy kept, the test part evaluated once, and a report "
        "(Tables I-II beside the paper's numbers, confusion matrix, learning curves "
        "as PNG, Markdown and JSON) written to --out. Checkpoints every epoch: "
        "running the same command again resumes an interrupted run.",
    )
    p.add_argument("--data", metavar="FOLDER", required=True, help="the PBC folder (one subfolder of images per class)")
    p.add_argument(
        "--classes",
        type=_class_list,
        default=None,
        metavar="A,B,...",
        help="class subfolders to use (default: the paper's five, basophil,eosinophil,lymphocyte,monocyte,"
        "neutrophil, so the PBC release's other folders ig, erythroblast and platelet are left out)",
    )
    p.add_argument(
        "--out",
        metavar="DIR",
        default="ndlm-reproduction",
        help="output folder for checkpoints, report and model (default: ./ndlm-reproduction)",
    )
    p.add_argument("--epochs", type=_positive_int, default=100, help="maximum epochs (default: 100)")
    p.add_argument(
        "--patience",
        type=_positive_int,
        default=None,
        help="stop when the validation accuracy has not improved for this many epochs (default: run all epochs)",
    )
    p.add_argument("--image-size", type=_positive_int, default=300, help="image side (default: 300)")
    p.add_argument("--batch-size", type=_positive_int, default=128, help="mini-batch size (default: 128)")
    p.add_argument("--seed", type=int, default=0, help="seed of the split and the model (default: 0)")
    p.add_argument(
        "--model-seed",
        type=int,
        default=None,
        help="seed of the model (initialization, shuffling) when it should differ from the split's (default: --seed)",
    )
    p.add_argument(
        "--no-test",
        dest="test",
        action="store_false",
        help="do not predict the test part: for runs that choose a configuration on validation data",
    )
    p.add_argument(
        "--threads", type=int, default=None, help="threads of the C++ core (default: all cores or OMP_NUM_THREADS)"
    )
    p.add_argument(
        "--architecture",
        default="ndlm",
        metavar="PRESET",
        help="layer stack preset, or cdfl / ddfl: Table III's two-network models, two differently seeded "
        "branches whose probabilities are averaged (default: ndlm)",
    )
    _add_augment_flag(p)
    _add_matlab_flags(p)
    p.set_defaults(run=_run_reproduce)


def _add_matlab_flags(p):
    """MATLAB's defaults as options (NDLMClassifier parameters of the same names)."""
    g = p.add_argument_group("MATLAB defaults (ndlm_sk's defaults keep today's behaviour)")
    g.add_argument(
        "--input-normalization",
        choices=["none", "zerocenter", "zscore"],
        default="none",
        help="subtract the mean training image (zerocenter, MATLAB's default) and divide by the deviation (zscore)",
    )
    g.add_argument(
        "--normalization-dimension",
        choices=["element", "channel"],
        default="element",
        help="one mean per pixel and channel (element) or per channel (default: element)",
    )
    g.add_argument(
        "--batchnorm-statistics",
        choices=["moving", "population"],
        default="moving",
        help="batch-norm statistics at inference: running averages, or exact ones from one more pass over "
        "the training images (population, MATLAB's default)",
    )
    g.add_argument(
        "--shuffle",
        choices=["every-epoch", "once", "never"],
        default="every-epoch",
        help="training order: new every epoch (default), one shuffle before training (once, MATLAB's default), "
        "or as loaded",
    )
    g.add_argument(
        "--batchnorm-l2-factor",
        type=float,
        default=0.0,
        metavar="F",
        help="L2 penalty of batch-norm scale and offset, as a factor of the weights' (MATLAB: 1; default: 0)",
    )


def _matlab_options(args):
    return {
        "batchnorm_l2_factor": args.batchnorm_l2_factor,
        "input_normalization": args.input_normalization,
        "normalization_dimension": args.normalization_dimension,
        "batchnorm_statistics": args.batchnorm_statistics,
        "shuffle": {"every-epoch": True, "once": "once", "never": False}[args.shuffle],
    }


def _run_reproduce(args):
    from .reproduce import reproduce

    if args.threads == 0:
        raise CLIError("--threads must not be 0")
    if not Path(args.data).is_dir():
        raise CLIError(f"--data {args.data} is not a folder")
    reproduce(
        args.data,
        args.out,
        epochs=args.epochs,
        patience=args.patience,
        image_size=args.image_size,
        batch_size=args.batch_size,
        seed=args.seed,
        model_seed=args.model_seed,
        threads=args.threads,
        architecture=args.architecture,
        augment=args.augment,
        test=args.test,
        **({} if args.classes is None else {"classes": args.classes}),
        log=lambda msg: print(msg, flush=True),
        **_matlab_options(args),
    )
    return 0


def _setup_count(sub):
    from .smear_cli import setup_count

    setup_count(sub)


def _setup_evaluate(sub):
    from .evaluate import setup_evaluate

    setup_evaluate(sub)


_SUBCOMMANDS = [_setup_train, _setup_export_onnx, _setup_predict, _setup_evaluate, _setup_reproduce, _setup_count]


def build_parser():
    """The argparse parser with every subcommand of ``_SUBCOMMANDS``."""
    from . import __version__

    parser = argparse.ArgumentParser(
        prog=PROG,
        description="The NDLM white blood cell classifier: train, export to ONNX, predict.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for setup in _SUBCOMMANDS:
        setup(sub)
    return parser


def _one_line(e):
    """An exception as one line that names the file first: ``<file>: <problem>``."""
    if isinstance(e, OSError) and e.filename is not None and e.strerror:
        msg = f"{e.filename}: {e.strerror}"
    else:
        msg = str(e) or type(e).__name__
    return " ".join(line.strip() for line in msg.splitlines() if line.strip())


def main(argv=None):
    """Run the command line with ``argv`` (default: ``sys.argv[1:]``); returns the exit code.

    Every failure is one line on stderr, ``ndlm-sk: error: <file>: <problem>``: exit code 2 for
    bad input (arguments, files, data; :class:`ValueError`, :class:`OSError`), 1 for anything else
    (e.g. training that diverged, memory exhausted). ``NDLM_SK_TRACEBACK=1`` shows the traceback instead.
    """
    args = build_parser().parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except KeyboardInterrupt:
        _err("interrupted")
        return 130
    except Exception as e:
        if os.environ.get("NDLM_SK_TRACEBACK"):
            raise
        if isinstance(e, (CLIError, ValueError, OSError)):
            _err(f"error: {_one_line(e)}")
            return 2
        if isinstance(e, MemoryError):
            _err(f"error: out of memory ({_one_line(e)})")
        else:
            _err(f"error: {type(e).__name__}: {_one_line(e)}")
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
