"""One-off conversion of the committed reproduction models from joblib pickles to ``.ndlm``.

``ndlm-sk reproduce`` trains with ``max_iter=1, warm_start=True`` (one ``fit`` call per epoch,
so that it can score the validation part and checkpoint after every epoch); the pickles kept
those loop settings. This script loads each pickle (they are our own files), restores the
parameters that make ``clone(model).fit(X_train, y_train)`` train the same network as the run
did (``max_iter`` = the epoch whose weights were kept, ``warm_start=False``, and for the paper
configuration ``n_iter_no_change = max_iter``, because the run's per-epoch loop never applied
the training-loss stopping rule, which one ``fit`` of 86 epochs would apply at epoch 23),
saves ``model.ndlm`` next to it, and checks that the ``.ndlm`` model has bit-identical weights,
Adam state and predictions (``predict_proba`` on a random sample of the paper split's test
images) as the pickle. It does not delete the pickles.

    OMP_NUM_THREADS=1 PYTHONPATH=python python tools/convert_result_models.py \
        --data ../shared/data/pbc --sample 300
"""

import argparse
import sys
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "python"))

from ndlm_sk.datasets import load_pbc, split_indices  # noqa: E402
from ndlm_sk.model_io import load_model, save_model  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"


def clean_params(model, stop_rule_applies):
    """Constructor parameters for one ``fit`` that trains what the per-epoch loop trained."""
    params = {"max_iter": int(model.n_iter_), "warm_start": False}
    if stop_rule_applies:
        params["n_iter_no_change"] = int(model.n_iter_)
    return params


def stop_rule_fires(model):
    """Would the training-loss rule (MLPClassifier's, as in ``_stop_now``) stop one fit early?"""
    best, count = np.inf, 0
    for loss in model.loss_curve_[:-1]:  # after the last epoch stopping changes nothing
        count = count + 1 if loss > best - model.tol else 0
        best = min(best, loss)
        if count > model.n_iter_no_change:
            return True
    return False


def _same(a, b):
    """Bit-identical nested state (dicts, lists, arrays, scalars)."""
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return isinstance(b, (list, tuple)) and len(a) == len(b) and all(_same(x, z) for x, z in zip(a, b))
    a, b = np.asarray(a), np.asarray(b)
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, help="the PBC folder the runs used")
    ap.add_argument("--sample", type=int, default=300, help="test images compared")
    ap.add_argument("--runs", nargs="+", default=["reproduction", "reproduction-augment"])
    args = ap.parse_args(argv)
    import joblib

    X, y = load_pbc(args.data, 300, cache=True)
    _, _, te = split_indices(y, (0.5, 0.25, 0.25), random_state=0)
    pick = np.sort(np.random.default_rng(0).choice(te, size=min(args.sample, len(te)), replace=False))
    Xs = X[pick]
    del X
    for run in args.runs:
        folder = RESULTS / run
        old = joblib.load(folder / "model.joblib")
        fires = stop_rule_fires(old)
        params = clean_params(old, fires)
        before = {k: old.get_params()[k] for k in params}
        new = joblib.load(folder / "model.joblib")
        new.set_params(**params)
        save_model(new, folder / "model.ndlm")
        loaded = load_model(folder / "model.ndlm")
        same_state = _same(old._net.get_state(), loaded._net.get_state())
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            pa, pb = old.predict_proba(Xs), loaded.predict_proba(Xs)
        same = np.array_equal(pa, pb) and pa.dtype == pb.dtype
        print(
            f"{run}: {before} -> {params} (training-loss rule would fire with the defaults: {fires}); "
            f"n_iter_={loaded.n_iter_}; network state bit-identical: {same_state}; "
            f"predict_proba on {len(pick)} test images bit-identical: {same} "
            f"(max |dp| {np.max(np.abs(pa - pb)):.1e}); model.ndlm {(folder / 'model.ndlm').stat().st_size:,} bytes"
        )
        if not (same and same_state):
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
