"""Training and inference speed of NDLM: ndlm_sk vs PyTorch (CPU, eager) vs onnxruntime, side by side.

    pip install -r benchmarks/requirements.txt
    python benchmarks/bench_speed.py --threads 2 --out benchmarks/results/speed

Every configuration runs in a fresh subprocess (so peak memory is per configuration) with the same
thread count for every framework. Before timing, the script checks that the three compute the same
outputs on the same weights, and that one Adam step of ndlm_sk and PyTorch gives the same weights.
"""

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

N_CLASSES = 5
SCALE = 1 / 255


def _cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _images(n, size, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)
    y = (np.arange(n) % N_CLASSES).astype(np.int32)
    return X, y


def _fitted_classifier(size, threads, architecture="ndlm"):
    """An NDLMClassifier after one partial_fit (so batch norm running statistics are real)."""
    from ndlm_sk import NDLMClassifier

    X, y = _images(16, size, seed=1)
    clf = NDLMClassifier(architecture, batch_size=8, random_state=0, n_jobs=threads)
    clf.partial_fit(X, y, classes=np.arange(N_CLASSES))
    clf._net.release_buffers()  # partial_fit keeps them for its next call
    return clf


def _reset_peak():
    """Start the peak-memory count here (Linux: clear_refs 5 resets VmHWM), so the setup
    (fitting the weights every framework shares) does not count; the libraries and data do."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def _peak_mb():
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _median_time(fn, reps, warmup=1):
    for _ in range(warmup):
        fn()
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


# ---------------------------------------------------------------------------- one configuration
def worker(cfg):
    fw, mode, B, size, threads, reps = cfg["fw"], cfg["mode"], cfg["batch"], cfg["size"], cfg["threads"], cfg["reps"]
    X, y = _images(B, size)
    out = dict(cfg)
    if fw == "ours":
        clf = _fitted_classifier(size, threads)
        net = clf._net
        net.n_threads = threads
        if mode == "train":
            idx = np.arange(B, dtype=np.int64)
            net.train_step(X, idx, y)
            net.layer_seconds(reset=True)
            _reset_peak()
            t = _median_time(lambda: net.train_step(X, idx, y), reps)
            out["layer_seconds"] = [list(p) for p in net.layer_seconds()]
            out["layers"] = [l["type"] for l in net.layers]
            out["segments"] = [list(sg) for sg in net.segments]
            out["steps"] = reps + 1
        else:
            _reset_peak()
            t = _median_time(lambda: net.predict_proba(X, chunk=B), reps)
    elif fw == "torch":
        import torch
        from torch_ndlm import adam_for, build_torch, to_nchw

        torch.set_num_threads(threads)
        clf = _fitted_classifier(size, 1)
        model = build_torch(clf.layers_, clf.image_shape_, clf.get_layer_params())
        xt = to_nchw(X, SCALE)
        yt = torch.from_numpy(y.astype(np.int64))
        if mode == "train":
            model.train()
            opt = adam_for(model)
            lossf = torch.nn.CrossEntropyLoss()

            def step():
                opt.zero_grad(set_to_none=True)
                loss = lossf(model(xt), yt)
                loss.backward()
                opt.step()

            _reset_peak()
            t = _median_time(step, reps)
        else:
            model.eval()

            def infer():
                with torch.no_grad():
                    torch.softmax(model(xt), dim=1)

            _reset_peak()
            t = _median_time(infer, reps)
        out["torch"] = torch.__version__
    elif fw == "ort":
        import onnxruntime as ort
        from ndlm_sk import to_onnx

        clf = _fitted_classifier(size, 1)
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        sess = ort.InferenceSession(to_onnx(clf).SerializeToString(), so, providers=["CPUExecutionProvider"])
        name = sess.get_inputs()[0].name
        _reset_peak()
        t = _median_time(lambda: sess.run(None, {name: X}), reps)
        out["onnxruntime"] = ort.__version__
    else:
        raise ValueError(fw)
    out["seconds_per_batch"] = t
    out["images_per_s"] = B / t
    out["peak_rss_mb"] = _peak_mb()
    return out


def run_config(**cfg):
    r = subprocess.run([sys.executable, __file__, "--worker", json.dumps(cfg)], capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"worker {cfg} failed:\n{r.stderr[-3000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------- checks and peaks
def check_same_outputs(size, threads):
    """ours vs PyTorch vs onnxruntime on the same weights, then one Adam step ours vs PyTorch."""
    import onnxruntime as ort
    import torch
    from ndlm_sk import to_onnx
    from torch_ndlm import adam_for, build_torch, to_nchw

    torch.set_num_threads(threads)
    clf = _fitted_classifier(size, threads)
    X, y = _images(8, size, seed=2)
    p_ours = clf.predict_proba(X)
    model = build_torch(clf.layers_, clf.image_shape_, clf.get_layer_params()).eval()
    with torch.no_grad():
        p_torch = torch.softmax(model(to_nchw(X, SCALE)), 1).numpy()
    sess = ort.InferenceSession(to_onnx(clf).SerializeToString(), providers=["CPUExecutionProvider"])
    outs = sess.run(None, {sess.get_inputs()[0].name: X})
    p_ort = next(o for o in outs if getattr(o, "dtype", None) == np.float32 and o.ndim == 2)
    res = {
        "max_abs_diff_proba_torch": float(np.abs(p_ours - p_torch).max()),
        "max_abs_diff_proba_onnxruntime": float(np.abs(p_ours - p_ort).max()),
    }
    # gradients from identical weights: ours (loss_and_grad) vs PyTorch (autograd)
    clf2 = _fitted_classifier(size, threads)
    net = clf2._net
    model2 = build_torch(clf2.layers_, clf2.image_shape_, clf2.get_layer_params()).train()
    loss_ours = net.loss_and_grad(X, y)
    loss_t = torch.nn.CrossEntropyLoss()(model2(to_nchw(X, SCALE)), torch.from_numpy(y.astype(np.int64)))
    loss_t.backward()
    g_torch = [p.grad.detach().clone() for p in model2.parameters()]
    g_ours = [
        p.detach()
        for p in build_torch(clf2.layers_, clf2.image_shape_, _as_layer_params(net, net.grads.copy())).parameters()
    ]
    rel = [float((a - b).abs().max() / b.abs().max().clamp_min(1e-30)) for a, b in zip(g_ours, g_torch)]
    res["loss_ours"] = float(loss_ours)
    res["loss_torch"] = float(loss_t.detach())
    res["max_rel_diff_gradients"] = max(r for r, g in zip(rel, g_torch) if float(g.abs().max()) > 1e-3)
    # one Adam step from a fresh optimizer state on both sides
    opt = adam_for(model2, lr=clf2.learning_rate_init, l2=clf2.alpha)
    st = net.get_state()
    st["adam_m"][:] = 0
    st["adam_v"][:] = 0
    st["adam_step"] = 0
    net.set_state(st)
    net.train_step(X, np.arange(len(X)), y)
    opt.step()
    ref = build_torch(clf2.layers_, clf2.image_shape_, clf2.get_layer_params())
    # Adam's first step is lr * g / (|g| + eps): an element whose exact gradient is 0 (a conv bias
    # before batch norm, a batch-norm scale/shift that a later batch norm cancels) moves by up to
    # +-lr on rounding noise, differently in any two implementations. Compare the others.
    diffs, noise = [], 0
    for a, b, g in zip(model2.parameters(), ref.parameters(), g_torch):
        informative = g.abs() > 1e-4
        noise += int((~informative).sum())
        if informative.any():
            diffs.append(float((a - b).detach()[informative].abs().max()))
    res["max_abs_diff_params_after_adam_step"] = max(diffs)
    res["adam_step_elements_with_zero_gradient"] = noise
    return res


def _as_layer_params(net, flat):
    """A flat vector laid out like the parameters (e.g. the gradients), as per-layer arrays."""
    keep = net.params.copy()
    net.params[:] = flat  # a writable view of the network's parameters
    out = net.layer_params()
    net.params[:] = keep
    return out


def gemm_peak(threads, n=2048, reps=5):
    import torch

    torch.set_num_threads(threads)
    a = torch.randn(n, n)
    b = torch.randn(n, n)
    t = _median_time(lambda: torch.mm(a, b), reps, warmup=2)
    return 2 * n**3 / t / 1e9


def train_flops_per_image(layers, input_shape):
    """Multiply-adds x 2 of conv and fc layers: forward once, backward twice (input and weights)."""
    h, w, c = input_shape
    fwd = 0
    for s in layers:
        if s["type"] == "conv":
            kh, kw = s["kernel"]
            h = (h + 2 * s["padding"] - kh) // s["stride"] + 1
            w = (w + 2 * s["padding"] - kw) // s["stride"] + 1
            fwd += 2 * s["filters"] * c * kh * kw * h * w
            c = s["filters"]
        elif s["type"] == "maxpool":
            h = (h - s["pool"]) // s["stride"] + 1
            w = (w - s["pool"]) // s["stride"] + 1
        elif s["type"] == "fc":
            fwd += 2 * c * h * w * s["units"]
            c, h, w = s["units"], 1, 1
    return fwd, 3 * fwd


def _ints(text):
    """Comma-separated integers; an empty string is an empty list (skips that part of the run)."""
    return [int(v) for v in text.split(",") if v.strip()]


# ---------------------------------------------------------------------------- main
def fma_peak(simd, threads):
    """The float32 FMA peak (GFLOP/s) of ``simd`` ("avx512" / "avx2") on ``threads`` threads: 12
    independent FMA chains per thread (benchmarks/fma_peak.c), built with the C compiler, best of 5."""
    import subprocess
    import tempfile

    flags = {"avx512": ["-mavx512f"], "avx2": ["-mavx2", "-mfma"]}.get(simd)
    if flags is None:
        raise SystemExit(f"no FMA peak kernel for SIMD level {simd!r}: give --fma-peak")
    src = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fma_peak.c")
    with tempfile.TemporaryDirectory() as tmp:
        exe = os.path.join(tmp, "fma_peak")
        cc = os.environ.get("CC", "cc")
        try:
            subprocess.run([cc, "-O2", *flags, "-fopenmp", src, "-o", exe], check=True, capture_output=True)
        except (OSError, subprocess.CalledProcessError) as e:
            raise SystemExit(f"could not build {src} with {cc} ({e}): give --fma-peak") from None
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "OMP_PROC_BIND": "spread"}
        out = subprocess.run([exe], check=True, capture_output=True, text=True, env=env).stdout
    return float(out.rsplit("=", 1)[1])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--size", type=int, default=300)
    ap.add_argument("--reps", type=int, default=5, help="timed repetitions per process (median)")
    ap.add_argument("--rounds", type=int, default=3, help="processes per configuration, frameworks alternating")
    ap.add_argument("--train-batches", default="16,32,128")
    ap.add_argument("--infer-batches", default="1,64")
    ap.add_argument("--scaling-sizes", default="150,300,450")
    ap.add_argument(
        "--fma-peak",
        type=float,
        default=None,
        help="float32 FMA peak (GFLOP/s) of the ISA the kernels run, all threads; default: measured before "
        "the run by benchmarks/fma_peak.c (built with the C compiler, $CC or cc; run on a quiet machine)",
    )
    ap.add_argument("--out", default=None, help="folder for results.json and results.md")
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return

    import ndlm_sk
    import onnxruntime
    import torch

    T = args.threads
    info = {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "threads": T,
        "python": platform.python_version(),
        "ndlm_sk": ndlm_sk.__version__,
        "simd": ndlm_sk.simd_level(),
        "torch": torch.__version__,
        "onnxruntime": onnxruntime.__version__,
        "numpy": np.__version__,
        "image_size": args.size,
        "rounds": args.rounds,
        "command": "python " + " ".join(sys.argv),
        "fma_peak_gflops": args.fma_peak if args.fma_peak else fma_peak(ndlm_sk.simd_level(), T),
        "fma_peak_source": "--fma-peak" if args.fma_peak else "benchmarks/fma_peak.c, measured before the run",
    }
    print(json.dumps(info, indent=1), flush=True)
    results = {"info": info}
    results["checks"] = check_same_outputs(64, T)
    print("checks:", results["checks"], flush=True)
    results["gemm_peak_gflops"] = max(gemm_peak(T) for _ in range(3))
    print(f"GEMM 2048^2 peak: {results['gemm_peak_gflops']:.1f} GFLOP/s", flush=True)

    # Each configuration runs `rounds` times, the frameworks taking turns within a round, so a slow
    # spell of a shared machine hits all of them alike; a row reports the median round.
    def measure(label, cfgs):
        per = {c["fw"]: [] for c in cfgs}
        for _ in range(args.rounds):
            for c in cfgs:
                per[c["fw"]].append(run_config(**c))
        out = []
        for fw, runs in per.items():
            ips = [r["images_per_s"] for r in runs]
            r = dict(sorted(runs, key=lambda r: r["images_per_s"])[len(runs) // 2])
            r["rounds_images_per_s"] = ips
            r["peak_rss_mb"] = max(x["peak_rss_mb"] for x in runs)
            out.append(r)
            print(
                f"{label} {fw:6s}: {r['images_per_s']:8.1f} img/s (rounds: {', '.join(f'{v:.1f}' for v in ips)})"
                f"  peak {r['peak_rss_mb']:.0f} MB",
                flush=True,
            )
        return out

    rows = []
    for B in _ints(args.train_batches):
        rows += measure(
            f"train B={B:4d}",
            [dict(fw=fw, mode="train", batch=B, size=args.size, threads=T, reps=args.reps) for fw in ("ours", "torch")],
        )
    for B in _ints(args.infer_batches):
        reps = args.reps * (5 if B == 1 else 1)
        rows += measure(
            f"infer B={B:4d}",
            [
                dict(fw=fw, mode="infer", batch=B, size=args.size, threads=T, reps=reps)
                for fw in ("ours", "torch", "ort")
            ],
        )
    results["runs"] = rows

    scaling = []
    for size in _ints(args.scaling_sizes):
        for t in sorted({1, T}):
            scaling += measure(
                f"scaling size={size} threads={t}",
                [dict(fw="ours", mode="train", batch=32, size=size, threads=t, reps=max(3, args.reps // 2))],
            )
    results["scaling"] = scaling

    from ndlm_sk import PRESETS, NDLMClassifier  # noqa: F401

    clf = _fitted_classifier(64, 1)
    fwd, train = train_flops_per_image(clf.layers_, (args.size, args.size, 3))
    results["flops_per_image"] = {"forward": fwd, "train": train}
    write_report(results, args.out)


def write_report(results, out):
    def get(fw, mode, B):
        for r in results["runs"]:
            if (r["fw"], r["mode"], r["batch"]) == (fw, mode, B):
                return r

    info = results["info"]
    peak = results["gemm_peak_gflops"]
    lines = [
        "# NDLM speed: ndlm_sk vs PyTorch vs onnxruntime",
        "",
        f"Command: `{info['command']}`",
        "",
        f"CPU: {info['cpu']} ({info['cores']} cores), {info['threads']} threads for every framework; "
        f"ndlm_sk {info['ndlm_sk']} ({info['simd']}), PyTorch {info['torch']}, onnxruntime {info['onnxruntime']}, "
        f"Python {info['python']}. Input {info['image_size']}x{info['image_size']}x3, 5 classes. "
        f"Each number is the median of {info.get('rounds', 1)} rounds; a round runs every framework once, in turn, "
        f"each in a fresh process that reports the median of its timed repetitions "
        f"(every round's value is in results.json).",
        "",
        f"Same outputs first: max |p_ours - p_torch| = {results['checks']['max_abs_diff_proba_torch']:.2e}, "
        f"max |p_ours - p_onnxruntime| = {results['checks']['max_abs_diff_proba_onnxruntime']:.2e}; "
        f"loss {results['checks']['loss_ours']:.6f} (ours) vs {results['checks']['loss_torch']:.6f} (PyTorch), "
        f"gradients equal to a max relative difference of {results['checks']['max_rel_diff_gradients']:.1e}; "
        f"after one Adam step from the same weights, max |w_ours - w_torch| = "
        f"{results['checks']['max_abs_diff_params_after_adam_step']:.2e} over the elements with a nonzero gradient "
        f"({results['checks']['adam_step_elements_with_zero_gradient']} elements have an exactly-zero true gradient, "
        f"e.g. the conv bias before batch norm, where Adam's normalized first step moves either framework by "
        f"up to the learning rate on rounding noise).",
        "",
        "| task | batch | ndlm_sk img/s | PyTorch img/s | onnxruntime img/s | ours / PyTorch | ours / onnxruntime | peak MB (ours / torch / ort) |",  # noqa: E501
        "|---|---|---|---|---|---|---|---|",
    ]
    fl = results["flops_per_image"]["train"]
    fwd = results["flops_per_image"]["forward"]
    fma = info.get("fma_peak_gflops")
    for r in results["runs"]:
        if r["fw"] != "ours":
            continue
        t = get("torch", r["mode"], r["batch"])
        o = get("ort", r["mode"], r["batch"]) if r["mode"] == "infer" else None
        lines.append(
            f"| {r['mode']} | {r['batch']} | {r['images_per_s']:.1f} | {t['images_per_s']:.1f} | "
            f"{o['images_per_s']:.1f} | "
            if o
            else f"| {r['mode']} | {r['batch']} | {r['images_per_s']:.1f} | {t['images_per_s']:.1f} | - | "
        )
        lines[-1] += (
            f"{r['images_per_s'] / t['images_per_s']:.1f}x | "
            + (f"{r['images_per_s'] / o['images_per_s']:.1f}x | " if o else "- | ")
            + f"{r['peak_rss_mb']:.0f} / {t['peak_rss_mb']:.0f}"
            + (f" / {o['peak_rss_mb']:.0f} |" if o else " / - |")
        )
    lines += [
        "",
        f"Machine GEMM peak (PyTorch 2048x2048 float32 matmul, {info['threads']} threads, best of 3): {peak:.0f} GFLOP/s. "  # noqa: E501
        f"One training image costs {fl / 1e9:.3f} GFLOP (conv + fc, forward + 2x backward).",
    ]
    if fma:
        lines += [
            "",
            f"Against the float32 FMA peak of the machine ({fma:.0f} GFLOP/s, {info['threads']} threads, "
            f"{info['simd']}; from {info.get('fma_peak_source', '--fma-peak')}): "
            f"inference costs {fwd / 1e9:.3f} GFLOP per image (conv + fc forward).",
            "",
            "| task | batch | framework | img/s | GFLOP/s | % of FMA peak |",
            "|---|---|---|---|---|---|",
        ]
        for r in results["runs"]:
            if r["fw"] == "torch" and r["mode"] == "train":
                continue
            g = r["images_per_s"] * (fl if r["mode"] == "train" else fwd) / 1e9
            lines.append(
                f"| {r['mode']} | {r['batch']} | {r['fw']} | {r['images_per_s']:.1f} | {g:.1f} | {100 * g / fma:.0f}% |"
            )
    lines += ["", "| training batch | ndlm_sk GFLOP/s | % of GEMM peak |", "|---|---|---|"]
    for r in results["runs"]:
        if r["fw"] == "ours" and r["mode"] == "train":
            g = r["images_per_s"] * fl / 1e9
            lines.append(f"| {r['batch']} | {g:.1f} | {100 * g / peak:.0f}% |")
    trains = [r for r in results["runs"] if r["fw"] == "ours" and r["mode"] == "train"]
    if not trains:
        return _finish(lines, results, out)
    prof = get("ours", "train", 32) or trains[0]
    steps = prof["steps"]
    lines += [
        "",
        f"Per-layer time of one ndlm_sk training step (batch {prof['batch']}, ms per step):",
        "",
        "| # | layer | forward ms | backward ms |",
        "|---|---|---|---|",
    ]
    # segment (first, last, pool): its layers run as one pass, from first to the pool if any
    fused = {sg[0]: sg[1] if sg[2] is None else sg[2] for sg in prof.get("segments", [])}
    i = 0
    while i < len(prof["layers"]):
        j = fused.get(i, i)  # a fused segment runs (and is timed) as one pass, booked on its first layer
        f = sum(prof["layer_seconds"][k][0] for k in range(i, j + 1))
        b = sum(prof["layer_seconds"][k][1] for k in range(i, j + 1))
        name = " + ".join(prof["layers"][i : j + 1]) + (" (fused)" if j > i else "")
        num = f"{i + 1}" if j == i else f"{i + 1}-{j + 1}"
        lines.append(f"| {num} | {name} | {1e3 * f / steps:.1f} | {1e3 * b / steps:.1f} |")
        i = j + 1
    lines += [
        "",
        "Scaling of ndlm_sk training (batch 32):",
        "",
        "| image size | threads | img/s | ms per image |",
        "|---|---|---|---|",
    ]
    for r in results["scaling"]:
        lines.append(f"| {r['size']} | {r['threads']} | {r['images_per_s']:.1f} | {1e3 / r['images_per_s']:.1f} |")
    _finish(lines, results, out)


def _finish(lines, results, out):
    text = "\n".join(lines) + "\n"
    print(text)
    if out:
        os.makedirs(out, exist_ok=True)
        with open(os.path.join(out, "results.json"), "w") as f:
            json.dump(results, f, indent=1)
        with open(os.path.join(out, "results.md"), "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
