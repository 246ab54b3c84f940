"""Short real-data smoke: does MATLAB's zerocenter input normalization avoid CDFL's collapse to the
majority class? Trains Table III's CDFL (two coupled branches, soft vote) on a stratified subset
of the paper's training part, with and without zerocenter, and prints the validation accuracy of
every epoch (validation part only; the test part is not touched).

    python benchmarks/cdfl_smoke.py --data PATH/TO/PBC --train 1000 --val 500 --epochs 4 --threads 2
"""

import argparse
import time
import warnings

import numpy as np
from ndlm_sk.datasets import load_pbc, split_indices
from ndlm_sk.table3 import make_table3_model
from sklearn.model_selection import train_test_split


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--image-size", type=int, default=300)
    ap.add_argument("--train", type=int, default=1000, help="training images (stratified subset)")
    ap.add_argument("--val", type=int, default=500, help="validation images (stratified subset)")
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--architecture", default="cdfl")
    ap.add_argument("--cache-dir", default=None)
    a = ap.parse_args(argv)
    X, y = load_pbc(a.data, a.image_size, cache=True, cache_dir=a.cache_dir, n_jobs=a.threads)
    tr, va, _ = split_indices(y, (0.5, 0.25, 0.25), random_state=0)  # the paper's split (reproduce's)
    tr = train_test_split(tr, train_size=a.train, stratify=y[tr], random_state=0)[0]
    va = train_test_split(va, train_size=a.val, stratify=y[va], random_state=0)[0]
    Xtr, ytr, Xva, yva = X[tr], y[tr], X[va], y[va]
    majority = max(np.mean(yva == c) for c in np.unique(yva))
    print(f"{len(tr)} training / {len(va)} validation images, majority-class share {majority:.4f}")
    for norm in ("none", "zerocenter"):
        clf = make_table3_model(
            a.architecture, input_normalization=norm, max_iter=1, warm_start=True, random_state=0, n_jobs=a.threads
        )
        for e in range(1, a.epochs + 1):
            t0 = time.perf_counter()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                clf.fit(Xtr, ytr)
            acc = float(np.mean(clf.predict(Xva) == yva))
            share = max(np.mean(clf.predict(Xva) == c) for c in np.unique(yva))
            print(
                f"{a.architecture} input_normalization={norm} epoch {e}: loss {clf.loss_curve_[-1]:.4f}, "
                f"val acc {acc:.4f}, largest predicted-class share {share:.3f}, {time.perf_counter() - t0:.1f} s",
                flush=True,
            )


if __name__ == "__main__":
    main()
