"""Training and inference speed of NDLM: ndlm_sk vs PyTorch (CPU, eager) vs onnxruntime, side by side.

Training also for Table III's 15x15 models (``--architectures``, default ndlm,dl,ndel) against
PyTorch; inference (NDLM) also on onnxruntime running the PyTorch-exported ONNX of the same weights.

    pip install -r benchmarks/requirements.txt
    python benchmarks/bench_speed.py --threads 2 --out benchmarks/results/speed

Every configuration runs in a fresh subprocess (so peak memory is per configuration) with the same
thread count for every framework. Before timing, the script checks that the three compute the same
outputs on the same weights, and that one Adam step of ndlm_sk and PyTorch gives the same weights
(for every architecture timed).
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
def _ort_session(model_bytes, threads):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    return ort.InferenceSession(model_bytes, so, providers=["CPUExecutionProvider"])


def worker(cfg):
    fw, mode, B, size, threads, reps = cfg["fw"], cfg["mode"], cfg["batch"], cfg["size"], cfg["threads"], cfg["reps"]
    arch = cfg.get("arch", "ndlm")
    X, y = _images(B, size)
    out = dict(cfg)
    if fw == "ours":
        clf = _fitted_classifier(size, threads, arch)
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
        clf = _fitted_classifier(size, 1, arch)
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

        clf = _fitted_classifier(size, 1, arch)
        sess = _ort_session(to_onnx(clf).SerializeToString(), threads)
        name = sess.get_inputs()[0].name
        _reset_peak()
        t = _median_time(lambda: sess.run(None, {name: X}), reps)
        out["onnxruntime"] = ort.__version__
    elif fw == "ort_torch":  # onnxruntime on the ONNX that PyTorch exports of the same network
        import onnxruntime as ort
        import torch
        from torch_ndlm import build_torch, export_onnx

        torch.set_num_threads(1)
        clf = _fitted_classifier(size, 1, arch)
        data, out["exporter"] = export_onnx(
            build_torch(clf.layers_, clf.image_shape_, clf.get_layer_params()), SCALE, X[:1]
        )
        sess = _ort_session(data, threads)
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
def check_same_outputs(size, threads, arch="ndlm"):
    """ours vs PyTorch vs onnxruntime (on ndlm_sk's and on PyTorch's ONNX export) on the same
    weights, then one Adam step ours vs PyTorch."""
    import onnxruntime as ort
    import torch
    from ndlm_sk import to_onnx
    from torch_ndlm import adam_for, build_torch, export_onnx, to_nchw

    torch.set_num_threads(threads)
    clf = _fitted_classifier(size, threads, arch)
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
    try:
        data, res["torch_onnx_exporter"] = export_onnx(model, SCALE, X[:1])
        s2 = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
        p2 = s2.run(None, {s2.get_inputs()[0].name: X})[0]
        res["max_abs_diff_proba_onnxruntime_torch_export"] = float(np.abs(p_ours - p2).max())
    except RuntimeError as e:
        res["torch_onnx_export_failed"] = str(e)
    # gradients from identical weights: ours (loss_and_grad) vs PyTorch (autograd)
    clf2 = _fitted_classifier(size, threads, arch)
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
    """Multiply-adds x 2 of conv and fc layers: (forward FLOPs, training FLOPs). Training is the forward
    plus the backward for the weights and for the input, except at the first layer: ndlm_sk computes
    no gradient for the images (so DL's first-layer conv costs 2x its forward, not 3x)."""
    h, w, c = input_shape
    fwd = train = 0
    for i, s in enumerate(layers):
        f = 0
        if s["type"] == "conv":
            kh, kw = s["kernel"]
            h = (h + 2 * s["padding"] - kh) // s["stride"] + 1
            w = (w + 2 * s["padding"] - kw) // s["stride"] + 1
            f = 2 * s["filters"] * c * kh * kw * h * w
            c = s["filters"]
        elif s["type"] == "maxpool":
            h = (h - s["pool"]) // s["stride"] + 1
            w = (w - s["pool"]) // s["stride"] + 1
        elif s["type"] == "fc":
            f = 2 * c * h * w * s["units"]
            c, h, w = s["units"], 1, 1
        fwd += f
        train += f * (2 if i == 0 else 3)
    return fwd, train


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
    ap.add_argument("--train-batches", default="16,32,128", help="NDLM training batch sizes")
    ap.add_argument("--infer-batches", default="1,64")
    ap.add_argument("--scaling-sizes", default="150,300,450")
    ap.add_argument(
        "--architectures",
        default="ndlm,dl,ndel",
        help="presets whose training is timed against PyTorch (ndlm at --train-batches, the others at "
        "--arch-train-batches with --arch-reps repetitions); inference is NDLM's",
    )
    ap.add_argument("--arch-train-batches", default="32", help="training batch sizes of the non-NDLM architectures")
    ap.add_argument("--arch-reps", type=int, default=2, help="timed repetitions per process, non-NDLM architectures")
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
    from ndlm_sk import PRESETS

    archs = [a.strip() for a in args.architectures.split(",") if a.strip()]
    for a in archs:
        if a not in PRESETS:
            raise SystemExit(f"--architectures: unknown preset {a!r} (one of {', '.join(sorted(PRESETS))})")
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
        "architectures": archs,
        "command": "python " + " ".join(sys.argv),
        "fma_peak_gflops": args.fma_peak if args.fma_peak else fma_peak(ndlm_sk.simd_level(), T),
        "fma_peak_source": "--fma-peak" if args.fma_peak else "benchmarks/fma_peak.c, measured before the run",
    }
    print(json.dumps(info, indent=1), flush=True)
    results = {"info": info}
    infer_batches = _ints(args.infer_batches)
    checked = list(dict.fromkeys((["ndlm"] if infer_batches or "ndlm" in archs else []) + archs))
    results["checks"] = {}
    for a in checked:
        results["checks"][a] = check_same_outputs(64, T, a)
        print(f"checks {a}:", results["checks"][a], flush=True)
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
                f"{label} {fw:9s}: {r['images_per_s']:8.1f} img/s (rounds: {', '.join(f'{v:.1f}' for v in ips)})"
                f"  peak {r['peak_rss_mb']:.0f} MB",
                flush=True,
            )
        return out

    rows = []
    for a in archs:
        batches, reps = (
            (_ints(args.train_batches), args.reps) if a == "ndlm" else (_ints(args.arch_train_batches), args.arch_reps)
        )
        for B in batches:
            rows += measure(
                f"train {a} B={B:4d}",
                [
                    dict(fw=fw, arch=a, mode="train", batch=B, size=args.size, threads=T, reps=reps)
                    for fw in ("ours", "torch")
                ],
            )
    # onnxruntime on PyTorch's export only where it exported (the reason is in the checks otherwise)
    ort_fws = ("ort", "ort_torch") if "torch_onnx_exporter" in results["checks"].get("ndlm", {}) else ("ort",)
    for B in infer_batches:
        reps = args.reps * (5 if B == 1 else 1)
        rows += measure(
            f"infer ndlm B={B:4d}",
            [
                dict(fw=fw, arch="ndlm", mode="infer", batch=B, size=args.size, threads=T, reps=reps)
                for fw in ("ours", "torch", *ort_fws)
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

    results["flops_per_image"] = {}
    for a in checked:
        fwd, train = train_flops_per_image(_fitted_classifier(64, 1, a).layers_, (args.size, args.size, 3))
        results["flops_per_image"][a] = {"forward": fwd, "train": train}
    write_report(results, args.out)


FW_NAMES = {
    "ours": "ndlm_sk",
    "torch": "PyTorch",
    "ort": "onnxruntime (ndlm_sk's ONNX)",
    "ort_torch": "onnxruntime (PyTorch's ONNX)",
}


def write_report(results, out):
    runs = results["runs"]

    def get(fw, mode, B, arch="ndlm"):
        for r in runs:
            if (r["fw"], r["mode"], r["batch"], r.get("arch", "ndlm")) == (fw, mode, B, arch):
                return r

    info = results["info"]
    peak = results["gemm_peak_gflops"]
    lines = [
        "# Speed: ndlm_sk vs PyTorch vs onnxruntime (NDLM; training also DL / NDEL)",
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
        "Same outputs first (64x64 images, the weights of one partial_fit):",
        "",
    ]
    for a, c in results["checks"].items():
        line = (
            f"- {a}: max |p_ours - p_torch| = {c['max_abs_diff_proba_torch']:.2e}, "
            f"max |p_ours - p_onnxruntime| = {c['max_abs_diff_proba_onnxruntime']:.2e} (ndlm_sk's ONNX), "
        )
        if "max_abs_diff_proba_onnxruntime_torch_export" in c:
            line += (
                f"{c['max_abs_diff_proba_onnxruntime_torch_export']:.2e} (PyTorch's ONNX, {c['torch_onnx_exporter']}); "
            )
        else:
            line += f"PyTorch's ONNX export failed ({c.get('torch_onnx_export_failed', 'not tried')}); "
        line += (
            f"loss {c['loss_ours']:.6f} (ours) vs {c['loss_torch']:.6f} (PyTorch), "
            f"gradients equal to a max relative difference of {c['max_rel_diff_gradients']:.1e}; "
            f"after one Adam step from the same weights, max |w_ours - w_torch| = "
            f"{c['max_abs_diff_params_after_adam_step']:.2e} over the elements with a nonzero gradient "
            f"({c['adam_step_elements_with_zero_gradient']} elements with an exactly-zero true gradient)."
        )
        lines.append(line)
    lines += [
        "",
        "Elements with an exactly-zero true gradient (e.g. the conv bias before batch norm) are left out of the "
        "Adam comparison: Adam's normalized first step moves either framework by up to the learning rate on "
        "rounding noise.",
        "",
    ]
    fws = [fw for fw in FW_NAMES if any(r["fw"] == fw for r in runs)]
    peers = [fw for fw in fws if fw != "ours"]
    lines += [
        "| task | model | batch | "
        + " | ".join(f"{FW_NAMES[fw]} img/s" for fw in fws)
        + " | "
        + " | ".join(f"ours / {FW_NAMES[fw]}" for fw in peers)
        + " | peak MB ("
        + " / ".join(FW_NAMES[fw] for fw in fws)
        + ") |",
        "|" + "---|" * (3 + len(fws) + len(peers) + 1),
    ]
    for r in runs:
        if r["fw"] != "ours":
            continue
        a = r.get("arch", "ndlm")
        others = {fw: get(fw, r["mode"], r["batch"], a) for fw in fws}
        cells = [r["mode"], a, str(r["batch"])]
        cells += [f"{o['images_per_s']:.1f}" if o else "-" for o in others.values()]
        cells += [f"{r['images_per_s'] / others[fw]['images_per_s']:.1f}x" if others[fw] else "-" for fw in peers]
        cells.append(" / ".join(f"{o['peak_rss_mb']:.0f}" if o else "-" for o in others.values()))
        lines.append("| " + " | ".join(cells) + " |")
    flops = results["flops_per_image"]
    lines += [
        "",
        f"Machine GEMM peak (PyTorch 2048x2048 float32 matmul, {info['threads']} threads, best of 3): {peak:.0f} GFLOP/s. "  # noqa: E501
        "GFLOP per image (conv + fc multiply-adds x 2; training = forward + backward for weights and input, no input "
        "gradient at the first layer): "
        + ", ".join(
            f"{a} {f['train'] / 1e9:.3f} training / {f['forward'] / 1e9:.3f} inference" for a, f in flops.items()
        )
        + ".",
    ]
    fma = info.get("fma_peak_gflops")
    if fma:
        lines += [
            "",
            f"Against the float32 FMA peak of the machine ({fma:.0f} GFLOP/s, {info['threads']} threads, "
            f"{info['simd']}; from {info.get('fma_peak_source', '--fma-peak')}):",
            "",
            "| task | model | batch | framework | img/s | GFLOP per image | GFLOP/s | % of FMA peak |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for r in runs:
            f = flops[r.get("arch", "ndlm")]["train" if r["mode"] == "train" else "forward"] / 1e9
            g = r["images_per_s"] * f
            lines.append(
                f"| {r['mode']} | {r.get('arch', 'ndlm')} | {r['batch']} | {r['fw']} | {r['images_per_s']:.1f} | "
                f"{f:.3f} | {g:.1f} | {100 * g / fma:.0f}% |"
            )
    trains = [r for r in runs if r["fw"] == "ours" and r["mode"] == "train"]
    if trains:
        lines += ["", "| training | batch | ndlm_sk GFLOP/s | % of GEMM peak |", "|---|---|---|---|"]
        for r in trains:
            g = r["images_per_s"] * flops[r.get("arch", "ndlm")]["train"] / 1e9
            lines.append(f"| {r.get('arch', 'ndlm')} | {r['batch']} | {g:.1f} | {100 * g / peak:.0f}% |")
    for a in dict.fromkeys(r.get("arch", "ndlm") for r in trains):
        prof = get("ours", "train", 32, a) or next(r for r in trains if r.get("arch", "ndlm") == a)
        lines += ["", *_layer_table(prof, a)]
    if results.get("scaling"):
        lines += [
            "",
            "Scaling of ndlm_sk NDLM training (batch 32):",
            "",
            "| image size | threads | img/s | ms per image |",
            "|---|---|---|---|",
        ]
        for r in results["scaling"]:
            lines.append(f"| {r['size']} | {r['threads']} | {r['images_per_s']:.1f} | {1e3 / r['images_per_s']:.1f} |")
    _finish(lines, results, out)


def _layer_table(prof, arch):
    """Per-layer forward / backward ms of one ndlm_sk training step, from a worker's layer_seconds."""
    steps = prof["steps"]
    lines = [
        f"Per-layer time of one ndlm_sk {arch} training step (batch {prof['batch']}, ms per step):",
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
    return lines


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
