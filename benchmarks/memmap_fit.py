"""Out-of-core training: peak memory of one epoch of NDLMClassifier.fit on an np.memmap of uint8
images, against the size of the memmap.

    python benchmarks/memmap_fit.py --n 20000 --size 64 --dir /tmp --out benchmarks/results/memmap

Writes a synthetic memmap (random uint8 images, 5 balanced classes) as DIR/ndlm_memmap_N_S.npy
(kept for reruns), reopens it read-only (np.load(mmap_mode="r")) and fits one epoch on one thread.
A thread samples /proc/self/status every 10 ms: RssAnon is the process's own (anonymous) memory,
NumPy's and the C++ core's allocations; RssFile counts the memmap's pages mapped in while they are
read, which the kernel can drop at any time (they are the file, not a copy). ru_maxrss (their sum's
peak) is reported too. Also traces NumPy's allocations (tracemalloc) during the fit.
"""

import argparse
import json
import os
import platform
import resource
import sys
import threading
import time
import tracemalloc
import warnings

import numpy as np
from ndlm_sk import NDLMClassifier


def status_kib():
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            if k in ("VmRSS", "RssAnon", "RssFile", "RssShmem"):
                out[k] = int(v.split()[0])
    return out


class Sampler(threading.Thread):
    def __init__(self, period=0.01):
        super().__init__(daemon=True)
        self.period, self.peak, self.stop = period, {}, threading.Event()

    def run(self):
        while not self.stop.is_set():
            for k, v in status_kib().items():
                self.peak[k] = max(self.peak.get(k, 0), v)
            time.sleep(self.period)


def make_memmap(path, n, size, chunk=1000):
    if os.path.exists(path):
        return
    X = np.lib.format.open_memmap(path + ".part", mode="w+", dtype=np.uint8, shape=(n, size, size, 3))
    rng = np.random.default_rng(0)
    for s in range(0, n, chunk):
        X[s : s + chunk] = rng.integers(0, 256, X[s : s + chunk].shape, dtype=np.uint8)
    X.flush()
    del X
    os.replace(path + ".part", path)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=20000)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--dir", default="/tmp")
    ap.add_argument("--out", default=None, help="folder for results.json and results.md")
    a = ap.parse_args()
    path = os.path.join(a.dir, f"ndlm_memmap_{a.n}_{a.size}.npy")
    make_memmap(path, a.n, a.size)
    X = np.load(path, mmap_mode="r")
    y = np.arange(a.n) % 5
    clf = NDLMClassifier(max_iter=1, batch_size=a.batch_size, random_state=0, n_jobs=1)
    before = status_kib()
    sampler = Sampler()
    sampler.start()
    tracemalloc.start()
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        clf.fit(X, y)
    seconds = time.perf_counter() - t0
    numpy_peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    sampler.stop.set()
    sampler.join()
    mib = 1 / 1024
    r = {
        "command": "python " + " ".join(sys.argv),
        "images": a.n,
        "image_shape": list(X.shape[1:]),
        "memmap_mib": round(X.nbytes / 2**20, 1),
        "batch_size": a.batch_size,
        "threads": 1,
        "fit_seconds": round(seconds, 1),
        "rss_anon_before_fit_mib": round(before["RssAnon"] * mib, 1),
        "rss_anon_peak_mib": round(sampler.peak["RssAnon"] * mib, 1),
        "rss_anon_growth_mib": round((sampler.peak["RssAnon"] - before["RssAnon"]) * mib, 1),
        "rss_file_peak_mib": round(sampler.peak["RssFile"] * mib, 1),
        "ru_maxrss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * mib, 1),
        "numpy_traced_peak_mib": round(numpy_peak / 2**20, 2),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
    }
    text = "\n".join(f"{k}: {v}" for k, v in r.items())
    print(text, flush=True)
    if a.out:
        os.makedirs(a.out, exist_ok=True)
        with open(os.path.join(a.out, "results.json"), "w") as f:
            json.dump(r, f, indent=2)
            f.write("\n")


if __name__ == "__main__":
    main()
