"""Per-kernel speed of ndlm_sk's tuned convolution: forward, backward-data (dx) and backward-weights
(dw + db), for NDLM's 5x5x3->10 and DL's / NDEL's 15x15x3->10 convolutions, at every SIMD level the
dispatcher can be forced to (NDLM_SK_SIMD), on one thread, against the 1-thread float32 FMA peak.

    python benchmarks/conv_kernels.py --out benchmarks/results/conv_kernels

Calls the test-kernel bindings (ndlm_sk._core.kernels, the kernels the network runs) in a fresh
process per SIMD level with OMP_NUM_THREADS=1. Each figure is the minimum over --reps calls of the
process's CPU time (--clock cpu, the default: with one thread, the time the kernel ran, not the time
it waited for a core on a shared machine) or of the wall time (--clock wall). dw alone is conv_backward(need_dx=False),
as at a network's first layer; dx is conv_backward minus that. Every pass costs
2 * N * Cout * Cin * KH * KW * OH * OW FLOP. Before timing, every tuned result is checked against
the reference kernel (impl="ref") on a smaller batch.
"""

import argparse
import json
import os
import shlex
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

# (name, Cin, Cout, kernel): NDLM's convolution and the 15x15 one of DL / NDEL (PRESETS)
SHAPES = [("ndlm 5x5x3->10", 3, 10, 5), ("dl/ndel 15x15x3->10", 3, 10, 15)]


CLOCKS = {"cpu": time.process_time, "wall": time.perf_counter}


def _min_time(clock, reps, fn, *args, **kw):
    fn(*args, **kw)
    best = float("inf")
    for _ in range(reps):
        t0 = clock()
        fn(*args, **kw)
        best = min(best, clock() - t0)
    return best


def worker(size, batch, reps, clock):
    from ndlm_sk import _core
    from ndlm_sk._core import kernels as K

    rng = np.random.default_rng(0)
    out = {"simd": _core.simd_level(), "rows": []}
    for name, cin, cout, k in SHAPES:
        x = rng.standard_normal((batch, cin, size, size)).astype(np.float32)
        w = (rng.standard_normal((cout, cin, k, k)) / k).astype(np.float32)
        b = rng.standard_normal(cout).astype(np.float32)
        o = size - k + 1
        dy = rng.standard_normal((batch, cout, o, o)).astype(np.float32)
        # same results as the reference (on 2 images: the reference is slow)
        y2, r2 = K.conv_forward(x[:2], w, b, impl="fast"), K.conv_forward(x[:2], w, b, impl="ref")
        f2, g2 = K.conv_backward(dy[:2], x[:2], w, impl="fast"), K.conv_backward(dy[:2], x[:2], w, impl="ref")
        check = {
            "forward": float(np.abs(y2 - r2).max() / np.abs(r2).max()),
            "dx": float(np.abs(f2[0] - g2[0]).max() / np.abs(g2[0]).max()),
            "dw": float(np.abs(f2[1] - g2[1]).max() / np.abs(g2[1]).max()),
        }
        if max(check.values()) > 1e-4:
            raise SystemExit(f"{name}: tuned kernel differs from the reference: {check}")
        clk = CLOCKS[clock]
        t_fwd = _min_time(clk, reps, K.conv_forward, x, w, b)
        t_both = _min_time(clk, reps, K.conv_backward, dy, x, w)
        t_dw = _min_time(clk, reps, K.conv_backward, dy, x, w, need_dx=False)
        flop = 2 * batch * cout * cin * k * k * o * o
        passes = (("forward", t_fwd), ("backward-data (dx)", t_both - t_dw), ("backward-weights (dw, db)", t_dw))
        for p, t in passes:
            out["rows"].append(dict(shape=name, pass_=p, seconds=t, gflop=flop / 1e9, max_rel_diff_vs_ref=check))
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--size", type=int, default=300, help="input image side (default 300)")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--reps", type=int, default=15, help="timed calls per kernel (the minimum is reported)")
    ap.add_argument(
        "--clock",
        choices=sorted(CLOCKS),
        default="cpu",
        help="cpu (default): the process's CPU time (one thread: the time it ran, not the time it waited for a "
        "core on a loaded machine); wall: elapsed time",
    )
    ap.add_argument("--levels", default="generic,avx2,avx512", help="SIMD levels (NDLM_SK_SIMD)")
    ap.add_argument("--fma-peak", type=float, default=None, help="1-thread FMA peak, GFLOP/s (default: measured)")
    ap.add_argument("--out", default=None, help="folder for results.json and results.md")
    ap.add_argument("--note", default="", help="a sentence for the report (e.g. the machine's load)")
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(args.size, args.batch, args.reps, args.clock)))
        return

    from bench_speed import _cpu_model, fma_peak

    levels = [v.strip() for v in args.levels.split(",") if v.strip()]
    peaks = {}
    for lv in levels:
        simd = lv if lv in ("avx2", "avx512") else "avx2"  # generic: against the machine's (avx2) peak
        if simd not in peaks:
            peaks[simd] = args.fma_peak or fma_peak(simd, 1)
    results = {
        "cpu": _cpu_model(),
        "command": "python " + shlex.join(sys.argv),
        "size": args.size,
        "batch": args.batch,
        "reps": args.reps,
        "clock": args.clock,
        "fma_peak_1thread_gflops": peaks,
        "note": args.note,
        "levels": {},
    }
    for lv in levels:
        env = dict(os.environ, NDLM_SK_SIMD=lv, OMP_NUM_THREADS="1")
        cmd = [sys.executable, __file__, "--worker", "--size", str(args.size), "--batch", str(args.batch)]
        r = subprocess.run(
            [*cmd, "--reps", str(args.reps), "--clock", args.clock], env=env, capture_output=True, text=True
        )
        if r.returncode != 0:
            raise SystemExit(f"NDLM_SK_SIMD={lv} failed:\n{r.stderr[-3000:]}")
        got = json.loads(r.stdout.strip().splitlines()[-1])
        if got["simd"] != lv:
            raise SystemExit(f"NDLM_SK_SIMD={lv} ran {got['simd']}")
        results["levels"][lv] = got["rows"]
        print(lv, "done", flush=True)

    o = args.size
    lines = [
        "# Convolution kernels: GFLOP/s per pass, per SIMD level (1 thread)",
        "",
        f"Command: `{results['command']}`",
        "",
        f"CPU: {results['cpu']}. Input {args.batch} x 3 x {o} x {o} float32, 10 output channels, stride 1, "
        f"no padding; the minimum over {args.reps} calls per kernel of the {'CPU' if args.clock == 'cpu' else 'wall'} "
        "time, each SIMD level in its own process "
        "(NDLM_SK_SIMD, OMP_NUM_THREADS=1). dx = conv_backward - conv_backward(need_dx=False). "
        "1-thread FMA peak (benchmarks/fma_peak.c): "
        + ", ".join(f"{k} {v:.1f} GFLOP/s" for k, v in peaks.items())
        + (" (given with --fma-peak)" if args.fma_peak else " (measured before the run)")
        + "; generic is compared with the avx2 peak: the machine's."
        + (f" {args.note}" if args.note else ""),
        "",
        "| convolution | SIMD | pass | ms per call | GFLOP | GFLOP/s | % of FMA peak |",
        "|---|---|---|---|---|---|---|",
    ]
    for lv, rows in results["levels"].items():
        peak = peaks[lv if lv in peaks else "avx2"]
        for r in rows:
            g = r["gflop"] / r["seconds"]
            lines.append(
                f"| {r['shape']} | {lv} | {r['pass_']} | {1e3 * r['seconds']:.1f} | {r['gflop']:.3f} | {g:.1f} | "
                f"{100 * g / peak:.0f}% |"
            )
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "results.json"), "w") as f:
            json.dump(results, f, indent=1)
        with open(os.path.join(args.out, "results.md"), "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
