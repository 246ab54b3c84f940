"""Fused pointwise segments (cpp/fused.h, planned in Network's constructor): runs of batch norm /
ReLU layers, with the non-overlapping max pool that follows them, computed in a few passes over
the segment input. The per-layer path (fuse=False or NDLM_SK_FUSE=0) is their reference: same
loss, gradients, running statistics and probabilities within float rounding. The training forward
values are even the same bits (same float operations, same per-plane reductions); the backward
sums of the last batch norm before a pool run over the pooled outputs only, so gradients differ by
rounding. Inference (predict_proba) runs the fused inference plan, which folds batch norm into
weights: probabilities within float rounding (second half of this file)."""

import os
import subprocess
import sys

import numpy as np
import pytest
from ndlm_sk import _core
from ndlm_sk._core import Network
from ndlm_sk.architectures import PRESETS

ENV_OFF = os.environ.get("NDLM_SK_FUSE") == "0"
BN = {"type": "batchnorm"}
RELU = {"type": "relu"}
FC = {"type": "fc"}

# name: (stack, input shape (H, W, C), expected segments as (first, last, pool))
CASES = {
    "ndlm": (PRESETS["ndlm"], (40, 40, 3), [(3, 5, 6)]),
    # relu / bn / bn before an overlapping pool 7/3: the run is fused, the pool stays a layer
    "overlapping-pool": (
        [{"type": "conv", "filters": 4, "kernel": 3}, RELU, BN, BN, {"type": "maxpool", "pool": 7, "stride": 3}, FC],
        (31, 29, 2),
        [(1, 3, None)],
    ),
    # segments with no pool after them, one at the input, one ending in ReLUs
    "no-pool": (
        [
            BN,
            RELU,
            {"type": "conv", "filters": 3, "kernel": 3},
            BN,
            RELU,
            BN,
            RELU,
            {"type": "conv", "filters": 2, "kernel": 3},
            FC,
        ],
        (23, 27, 3),
        [(0, 1, None), (3, 6, None)],
    ),
    # a lone ReLU + pool (the shallow presets), a pool whose window does not tile the input
    "dfcn": (PRESETS["dfcn"], (33, 36, 3), [(1, 1, 2)]),
    "relu-last-pool": (
        [
            {"type": "conv", "filters": 3, "kernel": 2},
            BN,
            RELU,
            RELU,
            {"type": "maxpool", "pool": 3, "stride": 3},
            BN,
            FC,
        ],
        (14, 17, 2),
        [(1, 3, 4)],
    ),
    "bn-only-pool": (
        [{"type": "conv", "filters": 2, "kernel": 3}, BN, {"type": "maxpool", "pool": 2, "stride": 2}, FC],
        (13, 12, 1),
        [(1, 1, 2)],
    ),
    "ndel": (PRESETS["ndel"], (40, 40, 3), [(2, 2, 3)]),
}


def make(name, fuse, threads=1, seed=3):
    stack, shape, _ = CASES[name]
    return Network(
        [dict(d) for d in stack], list(shape), 5, seed=seed, n_threads=threads, input_scale=1 / 255, fuse=fuse
    )


def data(name, n=7, seed=0):
    shape = CASES[name][1]
    rng = np.random.default_rng([seed, len(name)])
    return rng.integers(0, 256, (n,) + shape, dtype=np.uint8), rng.integers(0, 5, n).astype(np.int32)


def blocks(net):
    out, off = [], 0
    for i, prm in enumerate(net.layer_params()):
        for key in ("gamma", "beta", "weight", "bias"):
            if key in prm:
                out.append((f"layer {i} {key}", off, prm[key].size))
                off += prm[key].size
    return out


def assert_grads_close(a, b, net, rtol=1e-4):
    """Per parameter block: max |a - b| <= rtol * max |a| + 1e-5 * max |all of a|: the floor is for
    blocks whose exact gradient is (nearly) 0 and whose float gradient is rounding noise, e.g. a
    conv bias before a batch norm, or beta of a batch norm two layers before another one."""
    scale = np.abs(a).max()
    for name, off, n in blocks(net):
        x, y = a[off : off + n], b[off : off + n]
        tol = rtol * np.abs(x).max() + 1e-5 * scale
        assert np.abs(x - y).max() <= tol, f"{name}: max diff {np.abs(x - y).max():.3g} > {tol:.3g}"


def assert_proba_close(a, b, tol=2e-5):
    """Probabilities within float rounding of each other: absolutely, and relatively on the log
    scale (log-probability differences are logit differences, so a saturated softmax still shows
    an error in a logit)."""
    assert a.shape == b.shape and np.isfinite(a).all() and np.isfinite(b).all()
    np.testing.assert_allclose(a, b, rtol=0, atol=tol)
    m = (a > 1e-30) & (b > 1e-30)
    la, lb = np.log(a[m].astype(np.float64)), np.log(b[m].astype(np.float64))
    assert np.all(np.abs(la - lb) <= 20 * tol * (1 + np.abs(la))), f"max log diff {np.abs(la - lb).max():.3g}"


@pytest.mark.skipif(ENV_OFF, reason="NDLM_SK_FUSE=0")
@pytest.mark.parametrize("name", sorted(CASES))
def test_plan(name):
    net = make(name, True)
    assert net.fused
    assert net.segments == CASES[name][2]
    off = make(name, False)
    assert not off.fused and off.segments == []


def test_env_turns_fusion_off(monkeypatch):
    monkeypatch.setenv("NDLM_SK_FUSE", "0")
    net = make("ndlm", True)
    assert not net.fused and net.segments == []


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("name", sorted(CASES))
def test_fused_matches_per_layer(name, threads):
    X, y = data(name)
    a, b = make(name, False, threads), make(name, True, threads)
    # training-mode loss and gradients
    la, lb = a.loss_and_grad(X, y), b.loss_and_grad(X, y)
    assert la == pytest.approx(lb, rel=1e-6)
    ga, gb = np.array(a.grads), np.array(b.grads)
    assert_grads_close(ga, gb, a)
    # the forward is the same bits: loss of loss_and_grad, running statistics, probabilities
    assert la == lb
    ra, rb = a.train_step(X, np.arange(len(y)), y), b.train_step(X, np.arange(len(y)), y)
    assert ra == rb
    np.testing.assert_array_equal(a.get_state()["running"], b.get_state()["running"])
    # inference with the same parameters and running statistics: the fused inference plan folds
    # batch norm into weights (test_fused_inference_matches_per_layer), equal within rounding
    b.set_state(a.get_state())
    assert_proba_close(a.predict_proba(X, chunk=3), b.predict_proba(X, chunk=3))
    # a few steps on: the same training within rounding. Adam divides by sqrt(v) + eps: with eps =
    # 1e-8 a gradient that is pure rounding noise (e.g. a conv bias before a batch norm, exactly 0)
    # makes a +-lr step whose sign depends on the summation order; eps = 1e-4 keeps such steps small.
    for net in (a, b):
        net.set_optimizer(1e-3, 0.9, 0.999, 1e-4, 1e-4)
    for _ in range(3):
        a.train_step(X, np.arange(len(y)), y)
        b.train_step(X, np.arange(len(y)), y)
    np.testing.assert_allclose(a.predict_proba(X), b.predict_proba(X), rtol=0, atol=1e-4)


@pytest.mark.parametrize("name", ["ndlm", "no-pool"])
def test_fused_is_deterministic(name):
    X, y = data(name, n=9)
    out = []
    for _ in range(2):
        net = make(name, True, threads=2, seed=5)
        for _ in range(3):
            net.train_step(X, np.arange(len(y)), y)
        out.append((np.array(net.params), np.array(net.grads), net.get_state()["running"]))
    for u, v in zip(*out):
        np.testing.assert_array_equal(u, v)


@pytest.mark.skipif(ENV_OFF, reason="NDLM_SK_FUSE=0")
def test_layer_seconds_go_to_the_first_layer_of_a_segment():
    net = make("ndlm", True)
    X, y = data("ndlm")
    net.train_step(X, np.arange(len(y)), y)
    t = net.layer_seconds()
    assert t[3][0] > 0 and t[3][1] > 0
    for i in (4, 5, 6):
        assert t[i] == (0.0, 0.0)


# Smooth stacks (no ReLU, no pooling kinks) for finite differences of the fused gradient
FD_STACKS = {
    "bn-bn": [{"type": "conv", "filters": 3, "kernel": 3}, BN, BN, FC],
    "bn-bn-at-input": [BN, BN, {"type": "conv", "filters": 2, "kernel": 2}, FC],
}


@pytest.mark.skipif(ENV_OFF, reason="NDLM_SK_FUSE=0")
@pytest.mark.parametrize("name", sorted(FD_STACKS))
def test_fused_gradient_matches_finite_differences(name):
    net = Network([dict(d) for d in FD_STACKS[name]], [6, 7, 2], 3, seed=11, n_threads=1, input_scale=1.0)
    assert net.segments and net.segments[0][2] is None
    rng = np.random.default_rng(4)
    p = net.params
    p[:] = p + rng.normal(0, 0.2, p.size).astype(np.float32)  # non-trivial gamma / beta
    X = rng.uniform(-1, 1, (5, 6, 7, 2)).astype(np.float32)
    y = np.array([0, 1, 2, 0, 1], np.int32)
    net.loss_and_grad(X, y)
    g = np.array(net.grads, np.float64)
    coords = np.unique(
        np.concatenate([[off, off + n - 1] for _, off, n in blocks(net)] + [rng.choice(p.size, 12, replace=False)])
    )
    for j in coords:
        h = 1e-2 * max(1.0, abs(float(p[j])))
        old = p[j]
        p[j] = old + np.float32(h)
        lp = net.loss_and_grad(X, y)
        p[j] = old - np.float32(h)
        lm = net.loss_and_grad(X, y)
        p[j] = old
        fd = (lp - lm) / (2 * h)
        assert abs(fd - g[j]) <= 2e-2 * abs(g[j]) + 1e-4 / h * 1e-2 + 2e-4, f"param {j}: analytic {g[j]}, fd {fd}"


@pytest.mark.parametrize("level", ["generic", "avx2"])
def test_fused_matches_per_layer_under_other_simd_levels(level):
    """The fused kernels are compiled once per instruction set like the per-layer ones: rerun the
    comparison with a forced lower level (skipped when the CPU or build cannot)."""
    if _core.simd_level() == level or (level == "avx2" and _core.simd_level() == "generic"):
        pytest.skip(f"{level} is this process's level or unavailable")
    env = dict(os.environ, NDLM_SK_SIMD=level)
    pkg_parent = os.path.dirname(os.path.dirname(os.path.abspath(_core.__file__)))
    env["PYTHONPATH"] = os.pathsep.join([pkg_parent] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    here = os.path.dirname(os.path.abspath(__file__))
    probe = subprocess.run(
        [sys.executable, "-c", "from ndlm_sk import _core; print(_core.simd_level())"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    if probe.stdout.strip() != level:
        pytest.skip(f"cannot force NDLM_SK_SIMD={level} here")
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-x",
            "-p",
            "no:cacheprovider",
            os.path.join(here, "test_fused.py"),
            "-k",
            "matches_per_layer and not simd_levels",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        cwd=os.path.dirname(here),
    )
    assert r.returncode == 0, f"fused != per-layer with NDLM_SK_SIMD={level}:\n{r.stdout[-6000:]}\n{r.stderr[-2000:]}"


# ---------------------------------------------------------------------------------------------
# Fused inference (predict_proba with fusion on, Network's InferStep plan): batch norm folded into
# the image loading, the convolution and the fully connected weights; conv -> ReLU / batch norm
# chain -> max pool (window == stride) in one kernel. Reference: the per-layer forward
# (fuse=False) with the same parameters and running statistics.
CONV = {"type": "conv", "filters": 4, "kernel": 3}
INFER_CASES = {
    # name: (stack, (H, W, C), expected infer_steps)
    "ndlm": (PRESETS["ndlm"], (37, 41, 3), [("input_bn", 0, 0), ("conv_pool", 2, 6), ("fc", 7, 8)]),
    "ndel": (PRESETS["ndel"], (36, 33, 3), [("input_bn", 0, 0), ("conv_pool", 1, 3)]),
    "dfcn": (PRESETS["dfcn"], (33, 36, 3), [("conv_pool", 0, 2)]),
    "cdfl": (PRESETS["cdfl"], (30, 31, 3), []),  # overlapping pool 7/3: per layer
    "tabular": (PRESETS["tabular"], (1, 1, 9), [("input_bn", 0, 0)]),
    # padded, strided conv with 7 filters (two channel blocks), two BNs folded, a chain with two
    # BNs (signs multiply) and a ReLU first, a pool window that does not tile the conv output
    "padded-strided": (
        [
            BN,
            BN,
            {"type": "conv", "filters": 7, "kernel": 4, "stride": 2, "padding": 2},
            BN,
            BN,
            RELU,
            BN,
            RELU,
            BN,
            {"type": "maxpool", "pool": 3, "stride": 3},
            BN,
            BN,
            FC,
        ],
        (29, 23, 2),
        [("input_bn", 0, 1), ("conv_pool", 2, 9), ("fc", 10, 12)],
    ),
    # conv + BN without a pool (its output is written), a padded conv after a BN (not folded into
    # it), a conv -> pool with no chain, an FC -> BN -> FC
    "mixed": (
        [
            {"type": "conv", "filters": 3, "kernel": 3, "padding": 1},
            BN,
            RELU,
            BN,
            {"type": "conv", "filters": 1, "kernel": 2, "padding": 1},
            {"type": "maxpool", "pool": 2, "stride": 2},
            {"type": "fc", "units": 6},
            BN,
            FC,
        ],
        (17, 19, 3),
        [("conv", 0, 1), ("conv_pool", 4, 5), ("fc", 7, 8)],
    ),
    # a narrow conv output and a wide one (several tiles of SIMD columns, 12 filters: 3 blocks)
    "narrow": ([CONV, BN, RELU, {"type": "maxpool", "pool": 2, "stride": 2}, FC], (40, 4, 1), [("conv_pool", 0, 3)]),
    "wide": (
        [{"type": "conv", "filters": 12, "kernel": 5}, RELU, BN, {"type": "maxpool", "pool": 5, "stride": 5}, FC],
        (11, 203, 3),
        [("conv_pool", 0, 3)],
    ),
}


def make_infer(name, fuse, threads=1, seed=0, input_scale=1 / 255):
    stack, shape, _ = INFER_CASES[name]
    return Network(
        [dict(d) for d in stack], list(shape), 5, seed=seed, n_threads=threads, input_scale=input_scale, fuse=fuse
    )


def randomize_state(net, rng, negative=0.4):
    """Batch norm scales of both signs (about `negative` of the channels flipped, one exactly 0 in
    layers of more than 3 channels), shifted running statistics, non-zero biases."""
    prm = net.layer_params()
    for spec, d in zip(net.layers, prm):
        if spec["type"] == "batchnorm":
            C = d["gamma"].size
            g = rng.uniform(0.5, 1.5, C) * np.where(rng.random(C) < negative, -1, 1)
            if C > 3:
                g[rng.integers(0, C)] = 0.0
            d["gamma"] = g
            d["beta"] = rng.normal(0, 0.3, C)
            d["running_mean"] = rng.normal(0, 0.5, C)
            d["running_var"] = rng.uniform(0.3, 2.0, C)
        elif spec["type"] in ("conv", "fc"):
            d["bias"] = rng.normal(0, 0.2, d["bias"].size)
    net.set_layer_params(prm)


def infer_pair(name, threads, seed=0, input_scale=1 / 255, norm=None):
    a = make_infer(name, False, threads, input_scale=input_scale)
    b = make_infer(name, True, threads, input_scale=input_scale)
    randomize_state(a, np.random.default_rng([seed, len(name)]))
    b.set_state(a.get_state())
    if norm is not None:
        a.input_norm = b.input_norm = norm
    return a, b


@pytest.mark.skipif(ENV_OFF, reason="NDLM_SK_FUSE=0")
@pytest.mark.parametrize("name", sorted(INFER_CASES))
def test_infer_plan(name):
    assert make_infer(name, True).infer_steps == INFER_CASES[name][2]
    assert make_infer(name, False).infer_steps == []


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("batch", [1, 64])
@pytest.mark.parametrize("name", sorted(INFER_CASES))
def test_fused_inference_matches_per_layer(name, batch, threads):
    a, b = infer_pair(name, threads)
    shape = INFER_CASES[name][1]
    X = np.random.default_rng([1, batch]).integers(0, 256, (batch,) + shape, dtype=np.uint8)
    pa, pb = a.predict_proba(X), b.predict_proba(X)
    assert_proba_close(pa, pb)
    if name == "ndlm":
        assert 1e-6 < pa.min() and pa.max() < 1 - 1e-6, "degenerate test: probabilities saturated"
    # indexing, repeated calls (the folded parameters are reused) and image order are bookkeeping
    idx = np.arange(batch)[::-1].copy()
    np.testing.assert_array_equal(b.predict_proba(X, idx), pb[idx])
    np.testing.assert_array_equal(b.predict_proba(X), pb)


@pytest.mark.parametrize("name", ["ndlm", "padded-strided", "tabular"])
@pytest.mark.parametrize("mode", ["zerocenter", "zscore"])
def test_fused_inference_matches_per_layer_with_input_normalization(name, mode):
    shape = INFER_CASES[name][1]
    rng = np.random.default_rng(7)
    n = int(np.prod(shape))
    shift = rng.uniform(0, 1, n).astype(np.float32)
    mult = (rng.uniform(0.5, 3, n) if mode == "zscore" else np.ones(n)).astype(np.float32)
    a, b = infer_pair(name, 2, norm=(shift, mult))
    X = rng.integers(0, 256, (9,) + shape, dtype=np.uint8)
    pa, pb = a.predict_proba(X), b.predict_proba(X)
    assert_proba_close(pa, pb)
    # the normalization is applied: without it the probabilities move
    c = make_infer(name, True)
    c.set_state(b.get_state())
    assert np.abs(c.predict_proba(X) - pb).max() > 1e-3


@pytest.mark.parametrize("name", ["ndlm", "padded-strided", "mixed", "wide"])
@pytest.mark.parametrize("kind", ["saturated-uint8", "large-float", "tiny-float"])
def test_fused_inference_matches_per_layer_on_extreme_inputs(name, kind):
    """Extreme finite images: all-0 / all-255 uint8 (constant planes: every pooling window ties),
    floats of magnitude 1e4 with mixed signs and of magnitude 1e-38 (input_scale 1)."""
    shape = INFER_CASES[name][1]
    rng = np.random.default_rng(3)
    if kind == "saturated-uint8":
        X = np.zeros((4,) + shape, np.uint8)
        X[1] = 255
        X[2, ..., 0] = 255
        X[3] = rng.choice([0, 255], shape)
        a, b = infer_pair(name, 2)
    else:
        mag = 1e4 if kind == "large-float" else 1e-38
        X = (rng.choice([-1, 1], (5,) + shape) * rng.uniform(0.5, 1, (5,) + shape) * mag).astype(np.float32)
        a, b = infer_pair(name, 2, input_scale=1.0)
    pa, pb = a.predict_proba(X), b.predict_proba(X)
    # large inputs give logits of order 1e4: their rounding error is larger in absolute terms
    assert_proba_close(pa, pb, tol=2e-5 if kind != "large-float" else 1e-3)


@pytest.mark.skipif(ENV_OFF, reason="NDLM_SK_FUSE=0")
def test_folded_parameters_follow_every_change():
    """The folded weights are recomputed whenever parameters or running statistics change: set_state,
    train_step, set_layer_params, population_stats, and a write through the params view."""
    a, b = infer_pair("ndlm", 1)
    rng = np.random.default_rng(5)
    X = rng.integers(0, 256, (6,) + INFER_CASES["ndlm"][1], dtype=np.uint8)
    y = rng.integers(0, 5, 6).astype(np.int32)

    def check():  # the per-layer reference with b's current state (b's training rounds differently)
        a.set_state(b.get_state())
        assert_proba_close(a.predict_proba(X), b.predict_proba(X))

    check()
    first = b.predict_proba(X)
    b.train_step(X, np.arange(6), y)  # parameters and running statistics
    assert np.abs(b.predict_proba(X) - first).max() > 1e-4
    check()
    st = b.get_state()
    randomize_state(a, rng)  # set_state
    b.set_state(a.get_state())
    check()
    prm = b.layer_params()  # set_layer_params: flip the chain batch norm's scales
    prm[5]["gamma"] = -prm[5]["gamma"]
    for net in (a, b):
        net.set_layer_params(prm)
    check()
    b.params[-3] += 0.5  # a write into the writable params view (an FC bias)
    check()
    b.population_stats(X)
    check()
    b.set_state(st)
    check()


def test_fused_inference_is_deterministic_and_thread_independent():
    a, b = infer_pair("ndlm", 2)
    c = make_infer("ndlm", True, threads=1)
    c.set_state(b.get_state())
    X = np.random.default_rng(9).integers(0, 256, (7,) + INFER_CASES["ndlm"][1], dtype=np.uint8)
    p = b.predict_proba(X)
    np.testing.assert_array_equal(b.predict_proba(X), p)
    np.testing.assert_array_equal(c.predict_proba(X), p)  # each image's kernels run on one thread
