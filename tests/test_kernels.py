"""Tuned kernels (impl="fast": SIMD + OpenMP) against the reference layers (impl="ref") on odd
shapes: sizes that are not multiples of any SIMD width, 1 and 17 channels, big kernels on big
enough images, strides 1-3, paddings 0-2, pooling 5/5, 7/3, 2/2 and LRN windows 1-7.

Tolerances: ops without a sum (ReLU, max pooling's values and argmax) must be exact. A sum of n
products gets numpy_reference.sum_tolerance: 8 U32 sqrt(n) sum|terms| (an 8-sigma random-walk
budget for float32 accumulation in any order), with sum|terms| computed by the reference kernel
itself on |inputs|. The others get budgets derived in the comments.

Then the same comparisons run once per SIMD level the dispatcher can be forced to with the
environment variable NDLM_SK_SIMD (generic / avx2 / avx512), each in its own Python process
because the dispatcher decides once per process.
"""

import os
import subprocess
import sys

import numpy as np
import numpy_reference as nr
import pytest
from ndlm_sk import _core
from ndlm_sk._core import kernels as K

U32 = nr.U32
f32 = np.float32


def _rng(*key):
    return np.random.default_rng([int.from_bytes(str(k).encode(), "little") % 2**32 for k in key])


def randn(rng, *shape, scale=1.0, offset=0.0):
    return (offset + scale * rng.standard_normal(shape)).astype(f32)


def _abs(*a):
    return [np.abs(v) for v in a]


# ---- batch norm ---------------------------------------------------------------------------------
BN_SHAPES = [(1, 1, 7, 9), (3, 3, 7, 9), (3, 10, 31, 30), (1, 17, 61, 64), (3, 3, 61, 64), (3, 17, 1, 1)]


def _bn_inputs(shape, offset):
    rng = _rng("bn", shape, offset)
    C = shape[1]
    x = randn(rng, *shape, scale=1.5, offset=offset)
    gamma, beta = randn(rng, C, offset=0.5), randn(rng, C)
    return rng, x, gamma, beta


@pytest.mark.parametrize("shape", BN_SHAPES)
@pytest.mark.parametrize("offset", [0.0, 3.0])
def test_fast_equals_ref_batchnorm_train(shape, offset):
    _, x, gamma, beta = _bn_inputs(shape, offset)
    y, mean, rstd = K.batchnorm_forward_train(x, gamma, beta, 1e-5, impl="fast")
    ry, rmean, rrstd = K.batchnorm_forward_train(x, gamma, beta, 1e-5, impl="ref")
    M = shape[0] * shape[2] * shape[3]
    c = 8 * U32 * np.sqrt(M)
    # mean: a sum of M terms; rstd: a two-pass variance is off by ~ c var, rstd by half that
    nr.assert_within(mean, rmean, nr.sum_tolerance(np.abs(x).mean(axis=(0, 2, 3)), M, rmean), "mean")
    nr.assert_within(rstd, rrstd, rrstd * (c / 2 + 4 * U32), "rstd")
    # y = gamma (x - mean) rstd + beta: error of mean and rstd carried through, plus 4 roundings
    bc = lambda v: np.asarray(v, np.float64)[None, :, None, None]  # noqa: E731
    dmean = c * bc(np.abs(x).mean(axis=(0, 2, 3)))
    tol = np.abs(bc(gamma)) * bc(rrstd) * (dmean + np.abs(x - bc(rmean)) * (c / 2 + 8 * U32)) + 4 * U32 * (
        np.abs(ry) + np.abs(bc(beta))
    )
    nr.assert_within(y, ry, tol, "batch norm output")


@pytest.mark.parametrize("shape", BN_SHAPES)
def test_fast_equals_ref_batchnorm_infer(shape):
    rng, x, gamma, beta = _bn_inputs(shape, 1.0)
    C = shape[1]
    rm, rv = randn(rng, C), rng.uniform(0.05, 4, C).astype(f32)
    y = K.batchnorm_forward_infer(x, gamma, beta, rm, rv, 1e-5, impl="fast")
    ry = K.batchnorm_forward_infer(x, gamma, beta, rm, rv, 1e-5, impl="ref")
    scale = np.abs(gamma / np.sqrt(rv + 1e-5))[None, :, None, None]
    tol = 8 * U32 * (scale * np.abs(x - rm[None, :, None, None]) + np.abs(beta)[None, :, None, None] + np.abs(ry))
    nr.assert_within(y, ry, tol, "batch norm inference output")


@pytest.mark.parametrize("shape", BN_SHAPES)
def test_fast_equals_ref_batchnorm_backward(shape):
    rng, x, gamma, beta = _bn_inputs(shape, 0.5)
    _, mean, rstd = K.batchnorm_forward_train(x, gamma, beta, 1e-5, impl="ref")
    dy = randn(rng, *shape)
    dx, dg, db = K.batchnorm_backward(dy, x, mean, rstd, gamma, impl="fast")
    rdx, rdg, rdb = K.batchnorm_backward(dy, x, mean, rstd, gamma, impl="ref")
    M = shape[0] * shape[2] * shape[3]
    bc = lambda v: np.asarray(v, np.float64)[None, :, None, None]  # noqa: E731
    xhat = (x - bc(mean)) * bc(rstd)
    nr.assert_within(db, rdb, nr.sum_tolerance(np.abs(dy).sum(axis=(0, 2, 3)), M, rdb), "dbeta")
    nr.assert_within(dg, rdg, nr.sum_tolerance(np.abs(dy * xhat).sum(axis=(0, 2, 3)), M, rdg), "dgamma")
    # dx = gamma rstd (dy - mean(dy) - xhat mean(dy xhat)): the two means are sums of M terms
    c = 8 * U32 * np.sqrt(M)
    tol = np.abs(bc(gamma)) * bc(rstd) * (
        c * (bc(np.abs(dy).mean(axis=(0, 2, 3))) + np.abs(xhat) * bc(np.abs(dy * xhat).mean(axis=(0, 2, 3))))
        + 8 * U32 * (np.abs(dy) + np.abs(xhat) * bc(np.abs((dy * xhat).mean(axis=(0, 2, 3)))))
    ) + 4 * U32 * np.abs(rdx)
    nr.assert_within(dx, rdx, tol, "batch norm dx")


# ---- LRN ----------------------------------------------------------------------------------------
# About a dozen roundings per output (window sum, scale, power, products); 64 U32 (~4e-6) also
# admits a vectorized pow good to a few ulps. The backward's second term is a window sum of
# products: its budget scales with the sum of their magnitudes.
LRN_RTOL = 64 * U32


def _lrn_abs_backward(dy, x, size, alpha, beta, k):
    x = x.astype(np.float64)
    dy = np.abs(dy.astype(np.float64))
    C = x.shape[1]
    s = np.empty_like(x)
    for c in range(C):
        lo, hi = max(0, c - size // 2), min(C - 1, c + size // 2)
        s[:, c] = k + alpha / size * (x[:, lo : hi + 1] ** 2).sum(axis=1)
    t = dy * np.abs(x) * s ** (-beta - 1)
    out = dy * s**-beta
    for c in range(C):
        lo, hi = max(0, c - size // 2), min(C - 1, c + size // 2)
        out[:, c] += 2 * alpha * beta / size * np.abs(x[:, c]) * t[:, lo : hi + 1].sum(axis=1)
    return out


LRN_PARAMS = [(1e-4, 0.75, 2.0), (1.0, 0.75, 1.0), (0.3, 0.5, 1.5), (2.0, 1.0, 0.5), (0.5, 0.3, 0.7)]
# windows wider than the channel count (clipped at both ends), equal to it, and narrower
LRN_CASES = [
    (N, C, H, W, size)
    for (N, H, W) in [(3, 7, 9), (1, 31, 30)]
    for (C, size) in [
        (1, 1),
        (1, 5),
        (3, 1),
        (3, 3),
        (3, 5),
        (3, 7),
        (10, 3),
        (10, 5),
        (10, 7),
        (17, 3),
        (17, 5),
        (17, 7),
    ]
] + [(3, 17, 1, 1, 5), (1, 10, 61, 64, 5)]


@pytest.mark.parametrize("case", LRN_CASES)
def test_fast_equals_ref_lrn(case):
    N, C, H, W, size = case
    rng = _rng("lrn", case)
    x = randn(rng, N, C, H, W, scale=3.0)
    dy = randn(rng, N, C, H, W)
    # beta 0.75 (NDLM), 0.5 and 1 may have vectorized special cases; 0.3 is a generic power
    for alpha, beta, k in LRN_PARAMS:
        y = K.lrn_forward(x, size, alpha, beta, k, impl="fast")
        ry = K.lrn_forward(x, size, alpha, beta, k, impl="ref")
        nr.assert_within(y, ry, LRN_RTOL * np.abs(ry) + 1e-37, f"LRN forward alpha={alpha}")
        dx = K.lrn_backward(dy, x, size, alpha, beta, k, impl="fast")
        rdx = K.lrn_backward(dy, x, size, alpha, beta, k, impl="ref")
        nr.assert_within(
            dx, rdx, LRN_RTOL * _lrn_abs_backward(dy, x, size, alpha, beta, k) + 1e-37, f"LRN backward alpha={alpha}"
        )


# ---- convolution --------------------------------------------------------------------------------
CONV_CASES = [
    # (N, Cin, H, W, Cout, KH, KW, stride, pad)
    (1, 1, 7, 9, 3, 1, 1, 1, 0),
    (3, 3, 7, 9, 10, 3, 3, 1, 1),
    (3, 3, 31, 30, 10, 5, 5, 1, 0),  # NDLM's layer on a small image
    (1, 17, 31, 30, 3, 2, 3, 2, 2),
    (3, 10, 31, 30, 17, 3, 3, 3, 1),
    (1, 3, 61, 64, 10, 15, 15, 1, 0),  # DL / NDEL's 15x15
    (3, 3, 61, 64, 10, 5, 5, 2, 2),
    (1, 1, 31, 30, 1, 15, 15, 3, 2),
    (3, 17, 7, 9, 1, 5, 5, 1, 2),
    (1, 10, 7, 9, 17, 1, 1, 2, 1),
    (3, 1, 61, 64, 3, 2, 3, 3, 0),
    (2, 3, 7, 9, 4, 2, 2, 1, 2),  # padding >= kernel: whole output rows / columns read only zeros
    (2, 3, 9, 8, 4, 9, 8, 1, 0),  # kernel = image: 1x1 output
    (1, 2, 31, 5, 3, 3, 5, 1, 0),  # one output column
]


@pytest.mark.parametrize("case", CONV_CASES)
def test_fast_equals_ref_conv(case):
    N, Cin, H, W, Cout, KH, KW, S, P = case
    rng = _rng("conv", case)
    x = randn(rng, N, Cin, H, W, offset=0.2)  # offset: partial sums of one sign, the hard case
    w = randn(rng, Cout, Cin, KH, KW, scale=0.2)
    b = randn(rng, Cout)
    y = K.conv_forward(x, w, b, S, P, impl="fast")
    ry = K.conv_forward(x, w, b, S, P, impl="ref")
    ay = K.conv_forward(*_abs(x, w, b), S, P, impl="ref")
    nr.assert_within(y, ry, nr.sum_tolerance(ay, Cin * KH * KW + 1, ry), "conv forward")

    dy = randn(rng, *ry.shape)
    dx, dw, db = K.conv_backward(dy, x, w, S, P, impl="fast")
    rdx, rdw, rdb = K.conv_backward(dy, x, w, S, P, impl="ref")
    adx, adw, adb = K.conv_backward(*_abs(dy, x, w), S, P, impl="ref")
    OH, OW = ry.shape[2:]
    nr.assert_within(dx, rdx, nr.sum_tolerance(adx, Cout * KH * KW, rdx), "conv dx")
    nr.assert_within(dw, rdw, nr.sum_tolerance(adw, N * OH * OW, rdw), "conv dw")
    nr.assert_within(db, rdb, nr.sum_tolerance(adb, N * OH * OW, rdb), "conv db")
    # without dx (a network's first layer): the same dw and db, bit for bit, and no dx
    for impl in ("fast", "ref"):
        ndx, ndw, ndb = K.conv_backward(dy, x, w, S, P, impl=impl, need_dx=False)
        assert ndx is None
        np.testing.assert_array_equal(ndw, dw if impl == "fast" else rdw)
        np.testing.assert_array_equal(ndb, db if impl == "fast" else rdb)


# ---- ReLU ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("n", [1, 3, 7, 8, 15, 16, 17, 31, 33, 63, 65, 3 * 17 * 61 * 64])
def test_fast_equals_ref_relu(n):
    rng = _rng("relu", n)
    x = randn(rng, n)
    x[rng.random(n) < 0.1] = 0.0
    y = K.relu_forward(x, impl="fast")
    np.testing.assert_array_equal(y, K.relu_forward(x, impl="ref"))
    dy = randn(rng, n)
    np.testing.assert_array_equal(K.relu_backward(dy, y, impl="fast"), K.relu_backward(dy, y, impl="ref"))


# ---- max pooling --------------------------------------------------------------------------------
POOL_CASES = [
    (N, C, H, W, K_, S)
    for (N, C, H, W) in [(1, 1, 7, 9), (3, 3, 31, 30), (1, 17, 61, 64), (3, 10, 61, 64)]
    for (K_, S) in [(5, 5), (7, 3), (2, 2), (3, 2), (1, 1), (2, 3)]
    if K_ <= min(H, W)
]


@pytest.mark.parametrize("case", POOL_CASES)
def test_fast_equals_ref_maxpool(case):
    N, C, H, W, K_, S = case
    rng = _rng("pool", case)
    x = randn(rng, N, C, H, W)  # continuous random values: no ties
    y, am = K.maxpool_forward(x, K_, S, impl="fast")
    ry, ram = K.maxpool_forward(x, K_, S, impl="ref")
    np.testing.assert_array_equal(y, ry)
    np.testing.assert_array_equal(am, ram)
    dy = randn(rng, *ry.shape)
    dx = K.maxpool_backward(dy, ram, H, W, impl="fast")
    rdx = K.maxpool_backward(dy, ram, H, W, impl="ref")
    # overlapping windows (S < K) add up to ceil(K/S)^2 contributions per pixel
    adx = K.maxpool_backward(np.abs(dy), ram, H, W, impl="ref")
    nr.assert_within(dx, rdx, nr.sum_tolerance(adx, -((-K_ // S) ** 2), rdx), "maxpool dx")


@pytest.mark.parametrize("K_,S", [(5, 5), (3, 2), (2, 2)])
def test_fast_maxpool_with_ties_picks_a_maximum(K_, S):
    # After a ReLU, ties (zeros) are common. Any element equal to the window's maximum is a valid
    # argmax (a subgradient); the reference takes the first one. The tie-break cannot change a
    # network's gradient: a tie at 0 after a ReLU routes the gradient to a pixel whose ReLU
    # derivative is 0, wherever it is in the window.
    rng = _rng("ties", K_, S)
    x = np.maximum(randn(rng, 3, 10, 31, 30), 0).astype(f32)
    x[:, :, :10, :10] = 0.0  # whole windows of zeros
    y, am = K.maxpool_forward(x, K_, S, impl="fast")
    ry, _ = K.maxpool_forward(x, K_, S, impl="ref")
    np.testing.assert_array_equal(y, ry)
    planes = x.reshape(30, -1)
    picked = np.take_along_axis(planes, am.reshape(30, -1).astype(np.int64), axis=1).reshape(y.shape)
    np.testing.assert_array_equal(picked, y)
    H, W = x.shape[2:]
    r, c = am // W, am % W
    oy = np.arange(y.shape[2])[:, None] * S
    ox = np.arange(y.shape[3])[None, :] * S
    assert np.all((r >= oy) & (r < oy + K_) & (c >= ox) & (c < ox + K_)), "argmax outside its window"


# ---- fully connected ----------------------------------------------------------------------------
FC_CASES = [
    (1, 1, 1),
    (3, 7, 5),
    (1, 17 * 7 * 9, 5),
    (3, 10 * 31 * 30, 10),
    (3, 1000, 17),
    (3, 3, 64),
    (1, 34810, 5),
    (17, 65, 3),
    (2, 100, 1),
]


@pytest.mark.parametrize("case", FC_CASES)
def test_fast_equals_ref_fc(case):
    N, F, O = case
    rng = _rng("fc", case)
    x, w, b = randn(rng, N, F, offset=0.3), randn(rng, O, F, scale=0.1), randn(rng, O)
    y = K.fc_forward(x, w, b, impl="fast")
    ry = K.fc_forward(x, w, b, impl="ref")
    nr.assert_within(y, ry, nr.sum_tolerance(K.fc_forward(*_abs(x, w, b), impl="ref"), F + 1, ry), "fc forward")
    dy = randn(rng, N, O)
    dx, dw, db = K.fc_backward(dy, x, w, impl="fast")
    rdx, rdw, rdb = K.fc_backward(dy, x, w, impl="ref")
    adx, adw, adb = K.fc_backward(*_abs(dy, x, w), impl="ref")
    nr.assert_within(dx, rdx, nr.sum_tolerance(adx, O, rdx), "fc dx")
    nr.assert_within(dw, rdw, nr.sum_tolerance(adw, N, rdw), "fc dw")
    nr.assert_within(db, rdb, nr.sum_tolerance(adb, N, rdb), "fc db")


# ---- extreme finite inputs ----------------------------------------------------------------------
# Values near float max (+-3.4e38), near the smallest normal (1e-38), denormals and zeros, alone and
# mixed. Where the reference is finite the tuned kernel must be finite and within its budget; where
# the reference is not finite the tuned kernel must give the same pattern (NaN where NaN, the same
# infinity). Kernels that sum products (conv, fc, batch norm) accumulate in float32 by design, so
# one operand is extreme and the other scaled so that no product and no partial sum of |terms|
# leaves float range (the reference sums in double and would stay finite where float cannot); the
# pointwise kernels (ReLU, max pooling, LRN, batch norm inference) get extreme values everywhere.
FMAX = float(np.finfo(f32).max)
DENORM = float(np.finfo(f32).smallest_subnormal)
EXTREMES = ["huge", "tiny", "denormal", "mixed"]


def extreme(rng, shape, kind):
    sign = rng.choice([-1.0, 1.0], shape)
    huge = sign * rng.uniform(0.5, 1.0, shape) * FMAX
    tiny = sign * rng.uniform(1.0, 10.0, shape) * 1.1754944e-38
    den = sign * rng.integers(1, 2**23, shape) * DENORM
    if kind == "huge":
        v = huge
    elif kind == "tiny":
        v = tiny
    elif kind == "denormal":
        v = den
    else:
        pick = rng.integers(0, 5, shape)
        v = np.choose(pick, [huge, tiny, den, np.zeros(shape), sign * rng.uniform(0.1, 10, shape)])
    return v.astype(f32)


def assert_agrees(fast, ref, rtol, what, atol=4 * DENORM):
    fast, ref = np.asarray(fast, np.float64), np.asarray(ref, np.float64)
    assert fast.shape == ref.shape, what
    fin = np.isfinite(ref)
    bad = np.isfinite(fast) != fin
    bad |= ~fin & ((np.isnan(fast) != np.isnan(ref)) | (np.sign(np.nan_to_num(fast)) != np.sign(np.nan_to_num(ref))))
    assert not bad.any(), (
        f"{what}: non-finite pattern differs at {np.argwhere(bad)[:5].tolist()}: "
        f"fast {fast[bad][:5]} ref {ref[bad][:5]}"
    )
    tol = rtol * np.abs(ref[fin]) + np.broadcast_to(np.asarray(atol, np.float64), ref.shape)[fin]
    err = np.abs(fast[fin] - ref[fin])
    assert (err <= tol).all(), f"{what}: worst error {err.max():.3g} (tolerance there {tol[err.argmax()]:.3g})"


@pytest.mark.parametrize("kind", EXTREMES)
def test_fast_equals_ref_extreme_relu_and_maxpool(kind):
    rng = _rng("extreme-pool", kind)
    x = extreme(rng, (2, 3, 13, 11), kind)
    assert_agrees(K.relu_forward(x, impl="fast"), K.relu_forward(x, impl="ref"), 0, "relu")
    dy = extreme(rng, x.shape, kind)
    assert_agrees(K.relu_backward(dy, x, impl="fast"), K.relu_backward(dy, x, impl="ref"), 0, "relu backward")
    for pool, stride in [(2, 2), (3, 1), (5, 5)]:
        y, am = K.maxpool_forward(x, pool, stride, impl="fast")
        ry, ram = K.maxpool_forward(x, pool, stride, impl="ref")
        assert_agrees(y, ry, 0, f"maxpool {pool}/{stride}")
        g = extreme(rng, y.shape, kind)
        assert_agrees(
            K.maxpool_backward(g, ram, 13, 11, impl="fast"),
            K.maxpool_backward(g, ram, 13, 11, impl="ref"),
            1e-6,
            "maxpool backward",
        )


@pytest.mark.parametrize("kind", EXTREMES)
@pytest.mark.parametrize(
    "size,alpha,beta,k", [(5, 1e-4, 0.75, 2.0), (3, 1.0, 0.5, 1.0), (7, 0.1, 1.0, 1.0), (3, 1e-4, 0.6, 1.0)]
)
def test_fast_equals_ref_extreme_lrn(kind, size, alpha, beta, k):
    rng = _rng("extreme-lrn", kind, size, beta)
    x = extreme(rng, (2, 9, 7, 11), kind)
    y = K.lrn_forward(x, size, alpha, beta, k, impl="fast")
    ry = K.lrn_forward(x, size, alpha, beta, k, impl="ref")
    assert_agrees(y, ry, 1e-5, "lrn forward")
    # the gradient: dy moderate (the backward multiplies dy by x-sized factors)
    dy = randn(rng, *x.shape)
    assert_agrees(
        K.lrn_backward(dy, x, size, alpha, beta, k, impl="fast"),
        K.lrn_backward(dy, x, size, alpha, beta, k, impl="ref"),
        1e-4,
        "lrn backward",
        atol=1e-30,
    )


# Batch norm on |x| ~ 1e38: the statistics' float chunks overflow there and are redone in double, and
# channels whose (x - mean) or gamma rstd leaves float range take the output and dx passes in double
# (as the reference does everywhere).
# "band": planes of 2304 values (3 float chunks) that are ordinary except for two rows across a chunk
# boundary of one channel, so redone and float chunks mix in one plane and one channel.
@pytest.mark.parametrize("kind", EXTREMES)
@pytest.mark.parametrize("layout", ["full", "band"])
def test_fast_equals_ref_extreme_batchnorm(kind, layout):
    rng = _rng("extreme-bn", kind, layout)
    shape = (3, 5, 9, 13) if layout == "full" else (2, 3, 48, 48)
    C = shape[1]
    if layout == "full":
        x = extreme(rng, shape, kind)
    else:
        x = randn(rng, *shape, offset=0.3)
        x[0, 1, 20:22] = extreme(rng, (2, 48), kind)
    gamma, beta = randn(rng, C, offset=0.5), randn(rng, C)
    y, mean, rstd = K.batchnorm_forward_train(x, gamma, beta, 1e-5, impl="fast")
    ry, rmean, rrstd = K.batchnorm_forward_train(x, gamma, beta, 1e-5, impl="ref")
    assert_agrees(mean, rmean, 1e-4, "batch norm mean", atol=1e-4 * np.abs(x).max())
    assert_agrees(rstd, rrstd, 1e-4, "batch norm rstd")
    # y = gamma xhat + beta: xhat within [-sqrt(M), sqrt(M)], its error relative to ~1
    assert_agrees(y, ry, 1e-4, "batch norm output", atol=1e-3 * (np.abs(gamma).max() + 1))
    rv = np.abs(extreme(rng, (C,), kind)) + f32(1e-5)
    rm = extreme(rng, (C,), kind)
    assert_agrees(
        K.batchnorm_forward_infer(x, gamma, beta, rm, rv, 1e-5, impl="fast"),
        K.batchnorm_forward_infer(x, gamma, beta, rm, rv, 1e-5, impl="ref"),
        1e-5,
        "batch norm inference",
    )
    dy = randn(rng, *shape)
    dx, dg, db = K.batchnorm_backward(dy, x, rmean, rrstd, gamma, impl="fast")
    rdx, rdg, rdb = K.batchnorm_backward(dy, x, rmean, rrstd, gamma, impl="ref")
    M = shape[0] * shape[2] * shape[3]
    assert_agrees(db, rdb, 0, "batch norm dbeta", atol=nr.sum_tolerance(np.abs(dy).sum(axis=(0, 2, 3)), M, 0).max())
    assert_agrees(dg, rdg, 1e-4, "batch norm dgamma", atol=1e-3 * np.sqrt(M) * np.abs(dy).sum() / C)
    assert_agrees(dx, rdx, 1e-3, "batch norm dx", atol=1e-3 * np.abs(gamma).max() * np.abs(rrstd).max() * 10)


@pytest.mark.parametrize("kind", EXTREMES)
def test_fast_equals_ref_extreme_conv_and_fc(kind):
    rng = _rng("extreme-conv", kind)
    x = extreme(rng, (2, 3, 12, 10), kind)
    taps = 3 * 3 * 3
    # weights and output gradients scaled so that sums of |terms| stay below float max
    w = (rng.uniform(-1, 1, (4, 3, 3, 3)) / (2 * taps)).astype(f32)
    b = randn(rng, 4)
    for stride, pad in [(1, 1), (2, 0)]:
        y = K.conv_forward(x, w, b, stride, pad, impl="fast")
        ry = K.conv_forward(x, w, b, stride, pad, impl="ref")
        ay = K.conv_forward(*_abs(x, w), np.zeros(4, f32), stride, pad, impl="ref")
        assert_agrees(y, ry, 0, f"conv forward s{stride}", atol=nr.sum_tolerance(ay, taps, ry) + 4 * DENORM)
        n_out = y.shape[0] * y.shape[2] * y.shape[3]
        dy = (rng.uniform(-1, 1, y.shape) / (2 * n_out * taps)).astype(f32)
        dx, dw, db = K.conv_backward(dy, x, w, stride, pad, impl="fast")
        rdx, rdw, rdb = K.conv_backward(dy, x, w, stride, pad, impl="ref")
        _, adw, _ = K.conv_backward(*_abs(dy, x, w), stride, pad, impl="ref")
        assert_agrees(dw, rdw, 0, f"conv dw s{stride}", atol=nr.sum_tolerance(adw, n_out, rdw) + 4 * DENORM)
        # dx: dy extreme, weights moderate
        dyx = extreme(rng, y.shape, kind)
        dyx = (dyx / (2 * taps)).astype(f32) if kind in ("huge", "mixed") else dyx
        dx, _, _ = K.conv_backward(dyx, x, w, stride, pad, impl="fast")
        rdx, _, _ = K.conv_backward(dyx, x, w, stride, pad, impl="ref")
        adx, _, _ = K.conv_backward(*_abs(dyx, x, w), stride, pad, impl="ref")
        assert_agrees(dx, rdx, 0, f"conv dx s{stride}", atol=nr.sum_tolerance(adx, taps, rdx) + 4 * DENORM)
    F, O = 37, 5
    xf = extreme(rng, (6, F), kind)
    wf = (rng.uniform(-1, 1, (O, F)) / (2 * F)).astype(f32)
    bf = randn(rng, O)
    y = K.fc_forward(xf, wf, bf, impl="fast")
    ry = K.fc_forward(xf, wf, bf, impl="ref")
    ay = K.fc_forward(*_abs(xf, wf), np.zeros(O, f32), impl="ref")
    assert_agrees(y, ry, 0, "fc forward", atol=nr.sum_tolerance(ay, F, ry) + 4 * DENORM)
    dy = (rng.uniform(-1, 1, (6, O)) / (2 * 6 * O)).astype(f32)
    dx, dw, db = K.fc_backward(dy, xf, wf, impl="fast")
    rdx, rdw, rdb = K.fc_backward(dy, xf, wf, impl="ref")
    _, adw, _ = K.fc_backward(*_abs(dy, xf, wf), impl="ref")
    assert_agrees(dw, rdw, 0, "fc dw", atol=nr.sum_tolerance(adw, 6, rdw) + 4 * DENORM)


# ---- every forced SIMD level, each in a fresh process -------------------------------------------
def _cpu_flags():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return None


_NEEDS = {"generic": set(), "avx2": {"avx2", "fma"}, "avx512": {"avx512f", "avx512bw", "avx512vl"}}
_HERE = os.path.dirname(os.path.abspath(__file__))


def _env(level):
    env = dict(os.environ, NDLM_SK_SIMD=level)
    # the child must import the same ndlm_sk as this process
    pkg_parent = os.path.dirname(os.path.dirname(os.path.abspath(_core.__file__)))
    env["PYTHONPATH"] = os.pathsep.join([pkg_parent] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    return env


@pytest.mark.parametrize("level", ["generic", "avx2", "avx512"])
def test_fast_equals_ref_under_forced_simd_level(level):
    flags = _cpu_flags()
    if level != "generic":
        if flags is None:
            pytest.skip(f"cannot read /proc/cpuinfo to tell whether this CPU has {level}")
        missing = _NEEDS[level] - flags
        if missing:
            pytest.skip(f"this CPU lacks {sorted(missing)}, needed for NDLM_SK_SIMD={level}")
    # load the extension module alone (importing the package would pull in scikit-learn: slow)
    code = (
        "import importlib.util as u, sys; s = u.spec_from_file_location('ndlm_sk._core', sys.argv[1]); "
        "m = u.module_from_spec(s); s.loader.exec_module(m); print(m.simd_level())"
    )
    probe = subprocess.run(
        [sys.executable, "-c", code, _core.__file__], env=_env(level), capture_output=True, text=True, timeout=60
    )
    assert probe.returncode == 0, f"importing ndlm_sk with NDLM_SK_SIMD={level} failed:\n{probe.stderr}"
    got = probe.stdout.strip()
    if got != level:
        pytest.skip(
            f"the dispatcher ignores NDLM_SK_SIMD={level} (it picked {got!r}): "
            "forcing a SIMD level is not supported by this build"
        )
    if level == _core.simd_level() and os.environ.get("NDLM_SK_SIMD") is None:
        pytest.skip(f"{level} is this process's own level: the in-process tests above already ran on it")
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-x",
            "-p",
            "no:cacheprovider",
            os.path.join(_HERE, "test_kernels.py"),
            "-k",
            "fast_equals_ref and not forced_simd_level",
        ],
        env=_env(level),
        capture_output=True,
        text=True,
        timeout=600,
        cwd=os.path.dirname(_HERE),
    )
    assert r.returncode == 0, f"fast != ref with NDLM_SK_SIMD={level}:\n{r.stdout[-6000:]}\n{r.stderr[-2000:]}"
