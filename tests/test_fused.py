"""Fused pointwise segments (cpp/fused.h, planned in Network's constructor): runs of batch norm /
ReLU layers, with the non-overlapping max pool that follows them, computed in a few passes over
the segment input. The per-layer path (fuse=False or NDLM_SK_FUSE=0) is their reference: same
loss, gradients, running statistics and probabilities within float rounding. The forward values
are even the same bits (same float operations, same per-plane reductions); the backward sums of
the last batch norm before a pool run over the pooled outputs only, so gradients differ by
rounding."""

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
    # inference with the same parameters and running statistics
    b.set_state(a.get_state())
    np.testing.assert_array_equal(a.predict_proba(X, chunk=3), b.predict_proba(X, chunk=3))
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
