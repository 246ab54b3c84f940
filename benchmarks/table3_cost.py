"""Per-model training cost: ms per training image at 300x300 (random uint8 images, mini-batches of 32,
2 threads, one epoch of 96 images after a warm-up fit of 32). python benchmarks/table3_cost.py"""

import time
import warnings

import numpy as np
from ndlm_sk.table3 import make_table3_model

rng = np.random.default_rng(0)
X = rng.integers(0, 256, (96, 300, 300, 3), dtype=np.uint8)
y = np.repeat(np.arange(5), 20)[:96]
for name in ["ndlm", "dfcn", "dl", "ndel", "cdfl", "ddfl"]:
    m = make_table3_model(name, batch_size=32, max_iter=1, random_state=0, n_jobs=2, shuffle=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m.fit(X[:32], y[:32])  # warm-up (allocation)
        t = time.perf_counter()
        m.fit(X, y)
        dt = time.perf_counter() - t
    print(
        f"{name}: {1000 * dt / len(X):.1f} ms per training image (300x300, batch 32, 2 threads)",
        flush=True,
    )
