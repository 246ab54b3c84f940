"""``ndlm-sk count``: one smear's differential (see :mod:`ndlm_sk.smear`)."""

import sys

import numpy as np


def setup_count(sub):
    p = sub.add_parser(
        "count",
        help="a smear's white-cell differential from a folder of cell images",
        description="Classify every cell image in FOLDER (searched recursively) and write "
        "differential.json (counts, percentages with exact 95 %% intervals, reference ranges, "
        "flags, cells to review), cells.csv, differential.png and a self-contained report.html to --out.",
    )
    p.add_argument("folder", metavar="FOLDER", help="the cell images of one smear")
    p.add_argument("--model", metavar="MODEL", required=True, help="a .ndlm or .joblib model file")
    p.add_argument("--out", metavar="DIR", default="ndlm-count", help="output folder (default: ./ndlm-count)")
    p.add_argument(
        "--reference",
        metavar="FILE.json",
        help="the lab's reference ranges {class: [low %%, high %%]} (default: the shipped adult table)",
    )
    p.add_argument("--wbc", type=float, metavar="X", help="white-cell count in 10^9/L: adds absolute counts")
    p.add_argument(
        "--review-threshold",
        type=float,
        metavar="P",
        help="review cells whose top probability is below P (default: the model's rule, else 0.9)",
    )
    p.add_argument("--threads", type=int, default=None, help="threads of the C++ core")
    p.set_defaults(run=run_count)


def run_count(args):
    from .cli import CLIError, _err, _image_files
    from .datasets import read_image
    from .model_io import load_model_file
    from .smear import differential, load_reference, write_differential

    reference = load_reference(args.reference) if args.reference else None
    clf = load_model_file(args.model)
    if args.threads is not None:
        if args.threads == 0:
            raise CLIError("--threads must not be 0")
        clf.n_jobs = args.threads
    h, w, c = (int(s) for s in clf.image_shape_)
    files, images = [], []
    for path, error in _image_files([args.folder]):
        if error is None:
            try:
                images.append(read_image(path, (h, w), channels=c))
                files.append(path)
                continue
            except Exception as e:  # noqa: BLE001 - any file Pillow cannot decode is skipped
                error = f"{type(e).__name__}: {e}"
        _err(f"skipped {path}: {error}")
    if not images:
        raise CLIError(f"no readable cell image in {args.folder}")
    images = np.stack(images)
    summary, cells = differential(
        clf, images, files, reference=reference, wbc=args.wbc, review_threshold=args.review_threshold
    )
    out = write_differential(args.out, summary, cells, images)
    parts = ", ".join(
        f"{k} {summary['percent'][k]:.1f}% ({summary['ci95'][k][0]:.1f}-{summary['ci95'][k][1]:.1f})"
        for k in summary["classes"]
    )
    print(f"{summary['n_cells']} cells: {parts}")
    print(f"flags: {', '.join(summary['flags']) or 'none'}; {summary['n_review']} cell(s) to review")
    print(f"wrote differential.json, cells.csv, differential.png, report.html to {out}", file=sys.stderr)
    return 0
