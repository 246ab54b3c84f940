"""Each layer of the C++ core, impl="ref" and impl="fast", against

1. the independent float64 NumPy model of the paper's equations (tests/numpy_reference.py), and
2. finite differences of its own forward (every input gradient and parameter gradient).

Forward tolerances are error budgets of a float32 computation (see numpy_reference.sum_tolerance
and the comments below), not ad-hoc epsilons: inputs are float32, hence exact in float64, so the
only error is the kernel's own rounding.

Gradient checks: objective L = sum(R * layer_output) with a fixed random R, evaluated in float64
from the float32 outputs; central differences on one float32 input coordinate at a time, for a
random sample of coordinates (plus the first and last). The analytic gradient is the layer's
backward with dy = R. Tolerance: |fd - analytic| <= 1e-2 |analytic| + 1e-3 rms(analytic):
- truncation error of a central difference is h^2/6 f''' ~ 1e-6 relative for our smooth layers
  with h = 3e-3 (and 0 for the linear ones: conv, fc, and the parameters of batch norm);
- rounding: the float32 outputs one coordinate touches (m of them) each carry <= U32 |y| of
  error, so L carries ~ sqrt(m) U32 |y| and the difference quotient ~ sqrt(m) U32 |y| / (2 h)
  ~ 1e-5 sqrt(m) |y|, i.e. about 1e-4 of the gradient's scale for the m <= 100 outputs of the small
  shapes used here. rtol 1e-2 and atol 1e-3 rms leave a 10x margin over both, and are still far
  below the O(1) relative error of any wrong formula (a missing factor, a wrong sign, a missing
  term of the batch norm or LRN chain rule).
Kinks are avoided by construction: ReLU inputs have |x| >= 0.1 >> h; max-pooling inputs are
distinct values 0.02 apart (> 2 h), so no perturbation changes a window's argmax.
"""

import numpy as np
import numpy_reference as nr
import pytest
from ndlm_sk._core import kernels as K

U32 = nr.U32
IMPLS = ["ref", "fast"]
f32 = np.float32


def _rng(*key):
    """A generator seeded by the test's parameters, the same in every run (unlike hash())."""
    return np.random.default_rng([int.from_bytes(str(k).encode(), "little") % 2**32 for k in key])


def randn(rng, *shape, scale=1.0, offset=0.0):
    return (offset + scale * rng.standard_normal(shape)).astype(f32)


# =================================================================================================
# Forward versus the NumPy model of the equations
# =================================================================================================

BN_CASES = [
    # (N, C, H, W), offset, scale: offset >> scale checks that the variance is computed stably
    # (two-pass / Welford, not E[x^2] - E[x]^2 in float32); scale 3e-3 puts var ~ eps = 1e-5, so
    # eps must sit inside the square root exactly where Eq. 1 puts it.
    ((2, 3, 5, 4), 0.0, 1.0),
    ((3, 10, 7, 9), 4.0, 1.0),
    ((1, 1, 13, 11), 0.5, 0.2),
    ((3, 2, 4, 3), 0.0, 3e-3),
    ((4, 3, 1, 1), 1.0, 2.0),  # 1x1 images: statistics over the batch only (the "tabular" stack)
]


def bn_train_tolerance(x, gamma, beta, var, y, eps):
    """Budget of y = gamma (x - mean) rstd + beta computed in float32: the mean of M values is off
    by ~ c U32 sqrt(M) mean|x|, a two-pass variance by ~ c U32 sqrt(M) var (so rstd by half of that
    relatively), plus a few roundings per element."""
    x = x.astype(np.float64)
    M = x.shape[0] * x.shape[2] * x.shape[3]
    g = np.abs(gamma.astype(np.float64))[None, :, None, None]
    rstd = 1 / np.sqrt(var + eps)[None, :, None, None]
    mean_abs = np.abs(x).mean(axis=(0, 2, 3))[None, :, None, None]
    mean = x.mean(axis=(0, 2, 3))[None, :, None, None]
    c = 8.0
    dmean = c * U32 * np.sqrt(M) * mean_abs
    drstd_rel = 0.5 * c * U32 * np.sqrt(M) * (var / (var + eps))[None, :, None, None] + 4 * U32
    return g * rstd * (dmean + np.abs(x - mean) * (drstd_rel + 4 * U32)) + 4 * U32 * (
        np.abs(y) + np.abs(beta)[None, :, None, None]
    )


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("shape,offset,scale", BN_CASES)
def test_batchnorm_train_forward(impl, shape, offset, scale):
    rng = _rng("bn", shape, offset)
    x = randn(rng, *shape, scale=scale, offset=offset)
    C = shape[1]
    gamma = randn(rng, C, scale=1.0, offset=0.5)
    beta = randn(rng, C)
    eps = 1e-5
    y, mean, rstd = K.batchnorm_forward_train(x, gamma, beta, eps, impl=impl)
    ny, nmean, nvar = nr.batchnorm_train(x, gamma, beta, eps)
    M = shape[0] * shape[2] * shape[3]
    nr.assert_within(mean, nmean, nr.sum_tolerance(np.abs(x).mean(axis=(0, 2, 3)), M, nmean), "batch mean")
    nrstd = 1 / np.sqrt(nvar + eps)
    nr.assert_within(rstd, nrstd, nrstd * (4 * U32 * np.sqrt(M) * nvar / (nvar + eps) + 4 * U32), "batch rstd")
    nr.assert_within(y, ny, bn_train_tolerance(x, gamma, beta, nvar, ny, eps), "batch norm (training) output")


@pytest.mark.parametrize("impl", IMPLS)
def test_batchnorm_train_uses_biased_variance_and_eps(impl):
    # Two values per channel, -1 and +1: biased variance 1 (the unbiased one would be 2).
    x = np.array([[[[-1.0]], [[3.0]]], [[[1.0]], [[5.0]]]], f32)  # (2, 2, 1, 1)
    y, mean, rstd = K.batchnorm_forward_train(x, np.ones(2, f32), np.zeros(2, f32), 0.25, impl=impl)
    np.testing.assert_allclose(mean, [0.0, 4.0], rtol=0, atol=1e-7)
    np.testing.assert_allclose(rstd, [1 / np.sqrt(1.25)] * 2, rtol=1e-6)
    np.testing.assert_allclose(y[:, :, 0, 0], [[-1 / np.sqrt(1.25)] * 2, [1 / np.sqrt(1.25)] * 2], rtol=1e-6)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("shape", [(2, 3, 5, 4), (3, 10, 7, 9), (1, 1, 1, 1)])
def test_batchnorm_infer_forward(impl, shape):
    rng = _rng("bni", shape)
    C = shape[1]
    x = randn(rng, *shape, scale=2.0, offset=0.3)
    gamma, beta = randn(rng, C, offset=0.5), randn(rng, C)
    rmean = randn(rng, C)
    rvar = rng.uniform(0.1, 3.0, C).astype(f32)
    rvar[0] = 0.0  # a dead channel: only eps keeps the division finite
    eps = 1e-5
    y = K.batchnorm_forward_infer(x, gamma, beta, rmean, rvar, eps, impl=impl)
    ny = nr.batchnorm_infer(x, gamma, beta, rmean, rvar, eps)
    # ~6 roundings (x - mean, var + eps, sqrt, divide, times gamma, + beta): 16 U32 of each term
    scale = np.abs(gamma / np.sqrt(rvar.astype(np.float64) + eps))[None, :, None, None]
    tol = 16 * U32 * (
        scale * np.abs(x - rmean[None, :, None, None]) + np.abs(beta)[None, :, None, None]
    ) + 16 * U32 * np.abs(ny)
    nr.assert_within(y, ny, tol, "batch norm (inference) output")


# LRN: y = x (k + alpha/n sum x^2)^-beta in float32 is ~ a dozen roundings (the window sum of <= 7
# squares, the scale, the power, the product); 64 U32 (4e-6 relative) also admits a vectorized
# pow accurate to a few ulps, while alpha not divided by n, a wrong window or beta would be off by
# >= 1e-5 relative with the alpha=1e-4 defaults and by O(1) with alpha=1.5.
LRN_RTOL = 64 * U32


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("size", [1, 3, 5, 7])
@pytest.mark.parametrize("C", [1, 3, 10])
@pytest.mark.parametrize(
    "alpha,beta,k", [(1e-4, 0.75, 2.0), (1.5, 0.75, 1.0), (0.5, 0.3, 0.7), (0.8, 0.5, 1.2), (2.0, 1.0, 0.5)]
)
def test_lrn_forward(impl, size, C, alpha, beta, k):
    rng = _rng("lrn", size, C, alpha)
    # larger magnitudes make the tiny default alpha visible: alpha/n sum x^2 ~ 1e-4 * 100
    x = randn(rng, 2, C, 5, 3, scale=10.0 if alpha < 1e-3 else 1.0)
    y = K.lrn_forward(x, size, alpha, beta, k, impl=impl)
    ny = nr.lrn(x, size, alpha, beta, k)
    nr.assert_within(y, ny, LRN_RTOL * np.abs(ny) + 1e-37, f"LRN size {size} output")


CONV_CASES = [
    # (N, Cin, H, W, Cout, KH, KW, stride, pad)
    (2, 3, 7, 9, 4, 3, 3, 1, 0),
    (1, 1, 7, 9, 2, 1, 1, 1, 0),
    (2, 3, 9, 8, 5, 5, 5, 1, 0),  # NDLM's 5x5
    (3, 2, 7, 9, 3, 2, 3, 2, 1),  # non-square kernel, stride 2, padding 1
    (1, 4, 11, 10, 2, 3, 3, 3, 2),  # stride 3, padding 2
    (2, 3, 5, 6, 3, 5, 5, 1, 2),  # "same" padding
    (1, 2, 4, 4, 1, 6, 6, 1, 1),  # kernel larger than the image, fits only with the padding
]


def _conv_case(case, key):
    N, Cin, H, W, Cout, KH, KW, S, P = case
    rng = _rng(key, case)
    x = randn(rng, N, Cin, H, W)
    w = randn(rng, Cout, Cin, KH, KW, scale=0.5)
    b = randn(rng, Cout)
    return x, w, b, S, P


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("case", CONV_CASES)
def test_conv_forward(impl, case):
    x, w, b, S, P = _conv_case(case, "convf")
    y = K.conv_forward(x, w, b, S, P, impl=impl)
    ny = nr.conv2d(x, w, b, S, P)
    bound = nr.conv2d(np.abs(x), np.abs(w), np.abs(b), S, P)
    n_terms = w.shape[1] * w.shape[2] * w.shape[3] + 1
    nr.assert_within(y, ny, nr.sum_tolerance(bound, n_terms, ny), "convolution output")


@pytest.mark.parametrize("impl", IMPLS)
def test_conv_forward_is_cross_correlation_with_zero_padding(impl):
    # One 3x3 image, one asymmetric 2x2 kernel, padding 1: hand-computed (Eq. 3, no flip).
    x = np.arange(1, 10, dtype=f32).reshape(1, 1, 3, 3)
    w = np.array([[[[1, 2], [3, 4]]]], f32)
    y = K.conv_forward(x, w, np.array([0.5], f32), 1, 1, impl=impl)
    expect = np.array([[4, 11, 18, 9], [18, 37, 47, 21], [36, 67, 77, 33], [14, 23, 26, 9]], np.float64) + 0.5
    np.testing.assert_array_equal(y[0, 0], expect)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("n", [1, 7, 16, 17, 1000])
def test_relu_forward(impl, n):
    x = randn(_rng("relu", n), n)
    x[: min(3, n)] = [0.0, -0.0, 1e-38][: min(3, n)]
    np.testing.assert_array_equal(K.relu_forward(x, impl=impl), nr.relu(x))


def _distinct(rng, shape, spacing=0.02):
    """Distinct values `spacing` apart, in random order: no ties, and no argmax changes under a
    perturbation smaller than spacing / 2."""
    n = int(np.prod(shape))
    return ((rng.permutation(n) - n / 2) * spacing).astype(f32).reshape(shape)


def _window_argmax(x, K_, S):
    """Index (in the H x W plane) of each window's maximum, from NumPy's view of the windows."""
    N, C, H, W = x.shape
    win = np.lib.stride_tricks.sliding_window_view(x, (K_, K_), axis=(2, 3))[:, :, ::S, ::S]
    OH, OW = (H - K_) // S + 1, (W - K_) // S + 1
    win = win[:, :, :OH, :OW]
    a = win.reshape(N, C, OH, OW, K_ * K_).argmax(axis=-1)
    oy = np.arange(OH)[:, None] * S
    ox = np.arange(OW)[None, :] * S
    return (oy + a // K_) * W + ox + a % K_


POOL_CASES = [
    # (N, C, H, W, K, S)
    (2, 3, 10, 10, 5, 5),
    (1, 2, 12, 13, 5, 5),  # floor: the last 2-3 rows / columns belong to no window
    (2, 2, 9, 11, 3, 2),  # overlapping windows
    (1, 3, 15, 16, 7, 3),  # CDFL's overlapping 7/3
    (2, 1, 4, 5, 2, 2),
    (1, 2, 5, 5, 5, 1),
    (1, 1, 3, 3, 1, 2),  # 1x1 windows with stride 2
]


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("case", POOL_CASES)
def test_maxpool_forward(impl, case):
    N, C, H, W, K_, S = case
    x = _distinct(_rng("pool", case), (N, C, H, W))
    y, am = K.maxpool_forward(x, K_, S, impl=impl)
    np.testing.assert_array_equal(y, nr.maxpool(x, K_, S))  # max is exact
    np.testing.assert_array_equal(am, _window_argmax(x, K_, S))


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("N,F,O", [(1, 1, 2), (3, 7, 5), (4, 3 * 5 * 7, 5), (2, 1000, 17)])
def test_fc_forward(impl, N, F, O):
    rng = _rng("fc", N, F, O)
    x, w, b = randn(rng, N, F), randn(rng, O, F, scale=0.3), randn(rng, O)
    y = K.fc_forward(x, w, b, impl=impl)
    ny = nr.fully_connected(x, w, b)
    bound = nr.fully_connected(np.abs(x), np.abs(w), np.abs(b))
    nr.assert_within(y, ny, nr.sum_tolerance(bound, F + 1, ny), "fully connected output")


@pytest.mark.parametrize("impl", IMPLS)
def test_fc_flattens_in_channel_height_width_order(impl):
    # Eq. 7 sums over (d, g, h) of the feature map: the C++ core flattens (C, H, W) (PyTorch / ONNX).
    rng = _rng("flat")
    x4 = randn(rng, 2, 3, 4, 5)
    w = randn(rng, 6, 60)
    b = randn(rng, 6)
    y = K.fc_forward(np.ascontiguousarray(x4.reshape(2, 60)), w, b, impl=impl)
    ny = np.einsum("nchw,ochw->no", x4.astype(np.float64), w.reshape(6, 3, 4, 5).astype(np.float64)) + b
    nr.assert_within(
        y, ny, nr.sum_tolerance(nr.fully_connected(np.abs(x4), np.abs(w), np.abs(b)), 61, ny), "fc on a (C, H, W) map"
    )


@pytest.mark.parametrize("scale", [1.0, 8.0])
def test_softmax_crossentropy_forward(scale):
    # Softmax and the loss have a single implementation (no impl argument): the network uses it
    # for both training and prediction. Logit spreads stay well inside float32's range: the loss
    # is computed from float32 probabilities clipped at 1e-30 (see the next test).
    rng = _rng("sm", scale)
    N, C = 6, 5
    z = randn(rng, N, C, scale=scale)
    y = rng.integers(0, C, N).astype(np.int32)
    loss, p, d = K.softmax_crossentropy(z, y)
    npp = nr.softmax(z)
    # exp and the normalization in double, one final rounding: a few U32 of p, plus underflow
    nr.assert_within(p, npp, 8 * U32 * npp + 1e-38, "softmax (Eq. 8)")
    np.testing.assert_allclose(p.sum(axis=1), 1.0, rtol=8 * U32 * C)
    nr.assert_within(loss, nr.cross_entropy(npp, y), 8 * U32 * (1 + nr.cross_entropy(npp, y)), "cross-entropy")
    # Eq. 9: the decision is the class of the largest probability
    np.testing.assert_array_equal(nr.winner_take_all(p), nr.winner_take_all(npp))
    np.testing.assert_array_equal(nr.winner_take_all(p).sum(axis=1), 1)
    onehot = np.eye(C)[y]
    nr.assert_within(d, (npp - onehot) / N, 8 * U32 * (npp + onehot) / N + 1e-38, "dlogits = (p - 1_y) / N")


def test_crossentropy_of_a_confident_mistake_is_capped_not_infinite():
    # A logit gap of 200 makes p_y = e^-200, which float32 flushes to 0: the loss is clipped at
    # -log(1e-30) = 69.08 per sample (like sklearn's log_loss clipping) instead of being inf,
    # and the gradient p - 1_y stays exact.
    z = np.array([[200.0, 0.0], [0.0, 1.0]], f32)
    y = np.array([1, 1], np.int32)
    loss, p, d = K.softmax_crossentropy(z, y)
    exact_second = -np.log(nr.softmax(z[1:])[0, 1])
    np.testing.assert_allclose(loss, (-np.log(1e-30) + exact_second) / 2, rtol=1e-6)
    np.testing.assert_allclose(d, (nr.softmax(z) - np.eye(2)[y]) / 2, atol=1e-7)


def test_softmax_is_shift_invariant_and_stable():
    z = np.array([[1000.0, 999.0, 998.0], [-1000.0, -1001.0, -1002.0]], f32)
    loss, p, _ = K.softmax_crossentropy(z, np.array([0, 0], np.int32))
    assert np.all(np.isfinite(p)) and np.isfinite(loss)
    np.testing.assert_allclose(p[0], p[1], rtol=1e-6)
    np.testing.assert_allclose(p[0], nr.softmax(np.array([[2.0, 1.0, 0.0]]))[0], rtol=1e-6)


# =================================================================================================
# Finite-difference gradient checks
# =================================================================================================

FD_RTOL, FD_ATOL_RMS = 1e-2, 1e-3


def _sample(n, rng, k, extra=()):
    """k random flat indices plus the first, the last and `extra`."""
    idx = set(rng.choice(n, size=min(k, n), replace=False).tolist()) | {0, n - 1} | {int(i) for i in extra}
    return sorted(idx)


def check_grad(f, x, grad, what, rng, k=16, h_rel=3e-3, extra=()):
    """Central differences of the float64-valued f at float32 x, on sampled coordinates, against
    the analytic gradient (same shape as x). Step h = h_rel * max(1, |x_i|); the quotient uses
    the step actually taken after rounding x_i +- h to float32."""
    assert grad.shape == x.shape, f"{what}: gradient shape {grad.shape} != {x.shape}"
    fd, an = [], []
    for i in _sample(x.size, rng, k, extra):
        h = h_rel * max(1.0, abs(float(x.flat[i])))
        xp, xm = x.copy(), x.copy()
        xp.flat[i] = x.flat[i] + f32(h)
        xm.flat[i] = x.flat[i] - f32(h)
        fd.append((f(xp) - f(xm)) / (float(xp.flat[i]) - float(xm.flat[i])))
        an.append(float(grad.flat[i]))
    an = np.array(an)
    scale = np.sqrt(np.mean(np.asarray(grad, np.float64) ** 2))
    nr.assert_within(np.array(fd), an, FD_RTOL * np.abs(an) + FD_ATOL_RMS * scale + 1e-12, what)


def projection(out, R):
    return float(np.sum(np.asarray(out, np.float64) * R))


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize(
    "shape,offset,scale", [((3, 2, 4, 5), 0.0, 1.0), ((2, 3, 3, 3), 2.0, 0.5), ((5, 2, 1, 1), 0.0, 1.0)]
)
def test_batchnorm_gradients(impl, shape, offset, scale):
    rng = _rng("bn-grad", shape)
    C = shape[1]
    x = randn(rng, *shape, scale=scale, offset=offset)
    gamma, beta = randn(rng, C, offset=1.0), randn(rng, C)
    R = rng.standard_normal(shape)
    eps = 1e-5

    def fwd(x_, g_, b_):
        return projection(K.batchnorm_forward_train(x_, g_, b_, eps, impl=impl)[0], R)

    _, mean, rstd = K.batchnorm_forward_train(x, gamma, beta, eps, impl=impl)
    dx, dg, db = K.batchnorm_backward(R.astype(f32), x, mean, rstd, gamma, impl=impl)
    check_grad(lambda v: fwd(v, gamma, beta), x, dx, "batch norm dx", rng)
    check_grad(lambda v: fwd(x, v, beta), gamma, dg, "batch norm dgamma", rng)
    check_grad(lambda v: fwd(x, gamma, v), beta, db, "batch norm dbeta", rng)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("size,C", [(1, 2), (3, 4), (5, 3), (5, 8), (7, 10)])
@pytest.mark.parametrize(
    "alpha,beta,k,xscale",
    [(1e-4, 0.75, 2.0, 30.0), (2.0, 0.75, 1.0, 1.0), (1.0, 0.5, 1.0, 1.0), (1.5, 1.0, 0.8, 1.0), (0.7, 0.3, 1.1, 1.0)],
)
def test_lrn_gradient(impl, size, C, alpha, beta, k, xscale):
    # alpha = 2: the cross-channel term of the derivative is O(1), so the chain rule through the
    # window sum is really tested; the NDLM defaults with |x| ~ 30 make it ~ 5%.
    rng = _rng("lrn-grad", size, C, alpha)
    x = randn(rng, 2, C, 3, 2, scale=xscale)
    R = rng.standard_normal(x.shape)
    dx = K.lrn_backward(R.astype(f32), x, size, alpha, beta, k, impl=impl)
    check_grad(
        lambda v: projection(K.lrn_forward(v, size, alpha, beta, k, impl=impl), R), x, dx, f"LRN size {size} dx", rng
    )


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize(
    "case",
    [
        (2, 3, 6, 7, 4, 3, 3, 1, 0),
        (2, 2, 7, 6, 3, 2, 3, 2, 1),
        (1, 3, 8, 8, 2, 5, 5, 3, 2),
        (2, 2, 5, 5, 2, 1, 1, 2, 0),  # 1x1 stride 2: pixels no window reads have zero gradient
    ],
)
def test_conv_gradients(impl, case):
    x, w, b, S, P = _conv_case(case, "conv-grad")
    rng = _rng("conv-grad-R", case)
    y = K.conv_forward(x, w, b, S, P, impl=impl)
    R = rng.standard_normal(y.shape)
    dx, dw, db = K.conv_backward(R.astype(f32), x, w, S, P, impl=impl)
    check_grad(lambda v: projection(K.conv_forward(v, w, b, S, P, impl=impl), R), x, dx, "conv dx", rng)
    check_grad(lambda v: projection(K.conv_forward(x, v, b, S, P, impl=impl), R), w, dw, "conv dw", rng)
    check_grad(lambda v: projection(K.conv_forward(x, w, v, S, P, impl=impl), R), b, db, "conv db", rng)


@pytest.mark.parametrize("impl", IMPLS)
def test_relu_gradient(impl):
    rng = _rng("relu-grad")
    x = randn(rng, 3, 4, 5, 6)
    x = (np.sign(x) * (0.1 + np.abs(x))).astype(f32)  # |x| >= 0.1: no kink within the step
    R = rng.standard_normal(x.shape)
    dx = K.relu_backward(R.astype(f32), K.relu_forward(x, impl=impl), impl=impl)
    check_grad(lambda v: projection(K.relu_forward(v, impl=impl), R), x, dx, "relu dx", rng, k=30)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("case", POOL_CASES[:5])
def test_maxpool_gradient(impl, case):
    N, C, H, W, K_, S = case
    rng = _rng("pool-grad", case)
    x = _distinct(rng, (N, C, H, W))  # spacing 0.02 > 2 h: the argmax never changes
    y, am = K.maxpool_forward(x, K_, S, impl=impl)
    R = rng.standard_normal(y.shape)
    dx = K.maxpool_backward(R.astype(f32), am, H, W, impl=impl)
    # the window maxima are where the gradient lives: sample 16 of them too, not only random pixels
    maxima = (am.reshape(N * C, -1) + H * W * np.arange(N * C)[:, None]).ravel()
    check_grad(
        lambda v: projection(K.maxpool_forward(v, K_, S, impl=impl)[0], R),
        x,
        dx,
        "maxpool dx",
        rng,
        k=16,
        extra=rng.choice(maxima, min(16, maxima.size), replace=False),
    )
    assert np.count_nonzero(dx) == len(np.unique(am.reshape(N * C, -1) + H * W * np.arange(N * C)[:, None]))


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("N,F,O", [(3, 7, 5), (2, 40, 3), (1, 1, 2)])
def test_fc_gradients(impl, N, F, O):
    rng = _rng("fc-grad", N, F, O)
    x, w, b = randn(rng, N, F), randn(rng, O, F, scale=0.3), randn(rng, O)
    R = rng.standard_normal((N, O))
    dx, dw, db = K.fc_backward(R.astype(f32), x, w, impl=impl)
    check_grad(lambda v: projection(K.fc_forward(v, w, b, impl=impl), R), x, dx, "fc dx", rng)
    check_grad(lambda v: projection(K.fc_forward(x, v, b, impl=impl), R), w, dw, "fc dw", rng)
    check_grad(lambda v: projection(K.fc_forward(x, w, v, impl=impl), R), b, db, "fc db", rng)


@pytest.mark.parametrize("N,C", [(1, 2), (4, 5), (7, 3)])
def test_softmax_crossentropy_gradient(N, C):
    # The objective is the loss itself (a float32 scalar ~ 1: ~1e-7 absolute rounding), so the step
    # is larger, 1e-2: the quotient then carries ~1e-5 of noise against gradients ~ 1/(N C).
    rng = _rng("ce-grad", N, C)
    z = randn(rng, N, C)
    y = rng.integers(0, C, N).astype(np.int32)
    _, _, d = K.softmax_crossentropy(z, y)
    check_grad(lambda v: float(K.softmax_crossentropy(v, y)[0]), z, d, "softmax cross-entropy dlogits", rng, h_rel=1e-2)
