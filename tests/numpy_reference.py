"""An independent NumPy model of NDLM's layers, written from the paper's equations (Section II,
Eqs. 1-9) and /work/shared/NDLM.md, in float64. Not a test module: the tests import it.

Everything here is deliberately plain (loops over kernel offsets or channels, whole-array NumPy
for the rest) and was written from the equations, not from the C++: it is the yardstick the C++
layers are measured against. Layout is NCHW, as in the C++ core (and PyTorch / ONNX).

Equations, as NDLM.md decides their ambiguities:

- Eq. 1-2 batch norm: Z = gamma * (I - mean) / sqrt(var + eps) + beta, per channel; in training
  mean and *biased* variance over (N, H, W) of the mini-batch ("median" in Eq. 1 is the mean);
  in inference the running statistics replace them.
- Eq. 3 convolution: O[q, x, y] = B_q + sum_{i, j, k} Z[i, x S + j, y S + k] W[q, i, j, k]
  (cross-correlation) on the zero-padded input; output size floor((H + 2P - KH) / S) + 1.
- Eq. 4 ReLU: max(0, O).
- Eq. 5 max pooling: P[a', b'] = max over the K x K window starting at (a' S, b' S); output size
  floor((H - K) / S) + 1 (no padding).
- Eq. 6 cross-channel normalization: y_i = x_i / (k + alpha / n * sum_{j = max(0, i - n//2)}^
  {min(C - 1, i + n//2)} x_j^2)^beta (alpha divided by the window size n, as MATLAB / PyTorch / ONNX).
- Eq. 7 fully connected: F_r = sum_{c, h, w} W[r, (c, h, w)] x[c, h, w] + b_r, flattening in
  (C, H, W) order.
- Eq. 8 softmax: S_r = exp(F_r) / sum_s exp(F_s).
- Eq. 9 winner-take-all: CL_r = 1 if S_r is the maximum, else 0.
- Training loss: mean over the batch of -log S_{y}.
"""

import numpy as np

f64 = np.float64


# ---- Eq. 1-2: batch normalization ---------------------------------------------------------------
def batchnorm_train(x, gamma, beta, eps=1e-5):
    """Training mode: statistics of this mini-batch. Returns (y, mean, biased variance)."""
    x = np.asarray(x, f64)
    mean = x.mean(axis=(0, 2, 3))
    var = ((x - mean[None, :, None, None]) ** 2).mean(axis=(0, 2, 3))  # biased (divide by N H W)
    z = (x - mean[None, :, None, None]) / np.sqrt(var + eps)[None, :, None, None]  # Eq. 1
    y = np.asarray(beta, f64)[None, :, None, None] + np.asarray(gamma, f64)[None, :, None, None] * z  # Eq. 2
    return y, mean, var


def batchnorm_infer(x, gamma, beta, running_mean, running_var, eps=1e-5):
    """Inference mode: the running statistics replace the mini-batch ones."""
    x = np.asarray(x, f64)
    rm = np.asarray(running_mean, f64)[None, :, None, None]
    rv = np.asarray(running_var, f64)[None, :, None, None]
    z = (x - rm) / np.sqrt(rv + eps)
    return np.asarray(beta, f64)[None, :, None, None] + np.asarray(gamma, f64)[None, :, None, None] * z


# ---- Eq. 3: convolution -------------------------------------------------------------------------
def conv_output_size(n, k, stride, pad):
    return (n + 2 * pad - k) // stride + 1


def conv2d(x, w, b, stride=1, pad=0):
    """x (N, Cin, H, W), w (Cout, Cin, KH, KW), b (Cout) -> (N, Cout, OH, OW)."""
    x = np.asarray(x, f64)
    w = np.asarray(w, f64)
    N, Cin, H, W = x.shape
    Cout, Cin2, KH, KW = w.shape
    assert Cin == Cin2
    OH, OW = conv_output_size(H, KH, stride, pad), conv_output_size(W, KW, stride, pad)
    xp = np.zeros((N, Cin, H + 2 * pad, W + 2 * pad))
    xp[:, :, pad : pad + H, pad : pad + W] = x
    out = np.zeros((N, Cout, OH, OW)) + np.asarray(b, f64)[None, :, None, None]
    # sum over kernel offsets (j, k): input pixel (x S + j, y S + k) times W[q, i, j, k]
    for j in range(KH):
        for k in range(KW):
            patch = xp[:, :, j : j + stride * (OH - 1) + 1 : stride, k : k + stride * (OW - 1) + 1 : stride]
            out += np.einsum("nihw,qi->nqhw", patch, w[:, :, j, k])
    return out


# ---- Eq. 4: ReLU --------------------------------------------------------------------------------
def relu(x):
    return np.maximum(np.asarray(x, f64), 0.0)


# ---- Eq. 5: max pooling -------------------------------------------------------------------------
def maxpool(x, K, S):
    x = np.asarray(x, f64)
    N, C, H, W = x.shape
    OH, OW = (H - K) // S + 1, (W - K) // S + 1
    out = np.full((N, C, OH, OW), -np.inf)
    for a in range(K):
        for b in range(K):
            out = np.maximum(out, x[:, :, a : a + S * (OH - 1) + 1 : S, b : b + S * (OW - 1) + 1 : S])
    return out


# ---- Eq. 6: cross-channel (local response) normalization ----------------------------------------
def lrn(x, size=5, alpha=1e-4, beta=0.75, k=2.0):
    x = np.asarray(x, f64)
    C = x.shape[1]
    y = np.empty_like(x)
    for i in range(C):
        lo, hi = max(0, i - size // 2), min(C - 1, i + size // 2)
        s = (x[:, lo : hi + 1] ** 2).sum(axis=1)
        y[:, i] = x[:, i] / (k + alpha / size * s) ** beta
    return y


# ---- Eq. 7: fully connected ---------------------------------------------------------------------
def fully_connected(x, w, b):
    """x (N, C, H, W) or (N, F), flattened in (C, H, W) order; w (O, F); b (O)."""
    x = np.asarray(x, f64).reshape(len(x), -1)
    return x @ np.asarray(w, f64).T + np.asarray(b, f64)[None, :]


# ---- Eq. 8, Eq. 9 and the loss ------------------------------------------------------------------
def softmax(z):
    z = np.asarray(z, f64).reshape(len(z), -1)
    e = np.exp(z - z.max(axis=1, keepdims=True))  # shift for range; the ratio is Eq. 8's
    return e / e.sum(axis=1, keepdims=True)


def winner_take_all(p):
    """Eq. 9: 1 for the class of the maximum probability, 0 elsewhere (first one on ties)."""
    p = np.asarray(p)
    out = np.zeros(p.shape, dtype=np.int64)
    out[np.arange(len(p)), p.argmax(axis=1)] = 1
    return out


def cross_entropy(p, y, w=None):
    """Mean cross-entropy; with per-sample weights w the weighted mean sum w_i l_i / sum w_i."""
    p = np.asarray(p, f64)
    return float(-np.average(np.log(p[np.arange(len(p)), np.asarray(y)]), weights=w))


# ---- a whole layer stack ------------------------------------------------------------------------
def _setting(spec, key, default):
    v = spec.get(key)
    return default if v is None else v


def _pair(v):
    return (int(v[0]), int(v[1])) if isinstance(v, (tuple, list)) else (int(v), int(v))


def network_forward(layers, layer_params, X, input_scale=1.0, train=False):
    """Forward of a layer stack (list of spec dicts) with per-layer parameters (the dicts of
    Network.layer_params(): PyTorch layout), on images X (n, H, W, C) of any dtype.

    Returns the class probabilities (n, classes): softmax is applied at the end whether or not the
    stack names it. ``train=True`` uses mini-batch statistics in batch norm (what loss_and_grad
    differentiates), otherwise the running statistics (what predict_proba computes)."""
    a = np.asarray(X, f64).transpose(0, 3, 1, 2) * float(input_scale)  # NHWC -> NCHW
    for spec, prm in zip(layers, layer_params):
        t = spec["type"]
        if t == "batchnorm":
            eps = float(_setting(spec, "eps", 1e-5))
            if train:
                a = batchnorm_train(a, prm["gamma"], prm["beta"], eps)[0]
            else:
                a = batchnorm_infer(a, prm["gamma"], prm["beta"], prm["running_mean"], prm["running_var"], eps)
        elif t == "lrn":
            a = lrn(
                a,
                int(_setting(spec, "size", 5)),
                float(_setting(spec, "alpha", 1e-4)),
                float(_setting(spec, "beta", 0.75)),
                float(_setting(spec, "k", 2.0)),
            )
        elif t == "conv":
            a = conv2d(
                a, prm["weight"], prm["bias"], int(_setting(spec, "stride", 1)), int(_setting(spec, "padding", 0))
            )
        elif t == "relu":
            a = relu(a)
        elif t == "maxpool":
            K = _pair(spec["pool"])[0]
            a = maxpool(a, K, int(_setting(spec, "stride", K)))
        elif t == "fc":
            a = fully_connected(a, prm["weight"], prm["bias"])[:, :, None, None]
        elif t == "softmax":
            pass  # applied once below
        else:
            raise ValueError(f"unknown layer type {t!r}")
    return softmax(a.reshape(len(a), -1))


# ---- tolerance helpers shared by the tests (not part of the model) ------------------------------
U32 = 2.0**-24  # unit roundoff of float32 (half an ulp at 1.0)


def sum_tolerance(abs_sum, n_terms, expected, c=8.0):
    """Error budget of a float32 computation of a sum of n_terms products, elementwise.

    A float32 sum of n terms, accumulated in any order, has a rounding error that behaves like a
    random walk of n steps of at most U32 * (partial sum) each, so its standard deviation is at
    most U32 * sqrt(n) * sum|terms| (the worst case being terms of one sign). c = 8 puts the
    budget 8 standard deviations out, so no correct float32 kernel (SIMD lanes, blocking, threads,
    FMA or not) trips it on the ~1e5 outputs of a test, while a wrong, missing or doubled term
    (error ~ one term ~ sum|terms| / n) overshoots it as soon as n^1.5 * c * U32 << 1, i.e. for
    every sum we test (n up to a few thousand). 2 U32 |expected| adds the final rounding."""
    return (
        c * U32 * np.sqrt(np.maximum(n_terms, 1)) * np.asarray(abs_sum, np.float64)
        + 2 * U32 * np.abs(np.asarray(expected, np.float64))
        + 1e-37
    )


def assert_within(actual, expected, tol, what):
    """|actual - expected| <= tol elementwise, with a readable report of the worst element."""
    actual = np.asarray(actual, np.float64)
    expected = np.asarray(expected, np.float64)
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    assert np.all(np.isfinite(actual)), f"{what}: non-finite values"
    err = np.abs(actual - expected)
    tol = np.broadcast_to(np.asarray(tol, np.float64), err.shape)
    bad = err > tol
    if np.any(bad):
        ratio = np.where(tol > 0, err / np.where(tol > 0, tol, 1), np.inf)
        i = np.unravel_index(np.argmax(ratio), err.shape)
        raise AssertionError(
            f"{what}: {int(bad.sum())} of {err.size} elements out of tolerance; worst at {i}: "
            f"actual {actual[i]!r}, expected {expected[i]!r}, |diff| {err[i]:.3g} > tol {tol[i]:.3g}"
        )
