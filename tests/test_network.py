"""The whole network (ndlm_sk._core.Network): forward against the NumPy model of the paper's
equations, end-to-end finite-difference gradients of loss_and_grad, one Adam step against NumPy,
determinism, argument validation and state round trips."""

import os

import numpy as np
import numpy_reference as nr
import pytest
from ndlm_sk._core import Network
from ndlm_sk.architectures import PRESETS

f32 = np.float32
U32 = nr.U32


def _rng(*key):
    return np.random.default_rng([int.from_bytes(str(k).encode(), "little") % 2**32 for k in key])


def make_net(stack, shape, n_classes, seed=0, threads=1, scale=1.0, fuse=True):
    return Network(
        [dict(layer) if isinstance(layer, dict) else layer for layer in stack],
        list(shape),
        n_classes,
        seed=seed,
        n_threads=threads,
        input_scale=scale,
        fuse=fuse,
    )


# The core runs runs of batch norm / ReLU layers (and a non-overlapping pool after them) as fused
# segments unless fuse=False or NDLM_SK_FUSE=0: the numerical tests run on both paths.
FUSE = [pytest.param(True, id="fused"), pytest.param(False, id="per-layer")]
FUSE_ENV_OFF = os.environ.get("NDLM_SK_FUSE") == "0"


def check_fusion(net, fuse):
    assert net.fused == (fuse and not FUSE_ENV_OFF)
    if not net.fused:
        assert net.segments == []


def param_blocks(net):
    """(layer index, name, offset, size) of every trainable block of net.params, in the order the
    core lays them out (layer by layer; weight or gamma, then bias or beta)."""
    out, off = [], 0
    for i, prm in enumerate(net.layer_params()):
        for name in ("gamma", "beta", "weight", "bias"):
            if name in prm:
                out.append((i, name, off, prm[name].size))
                off += prm[name].size
    assert off == net.n_params
    return out


def randomize(net, rng):
    """Non-trivial batch norm parameters and running statistics and non-zero biases, so that the
    inference forward really exercises every term of every equation."""
    new = []
    for spec, prm in zip(net.layers, net.layer_params()):
        d = {}
        if spec["type"] == "batchnorm":
            C = prm["gamma"].size
            d = {
                "gamma": rng.uniform(0.5, 1.5, C),
                "beta": rng.normal(0, 0.3, C),
                "running_mean": rng.normal(0, 0.5, C),
                "running_var": rng.uniform(0.3, 2.0, C),
            }
        elif spec["type"] in ("conv", "fc"):
            d = {"bias": rng.normal(0, 0.2, prm["bias"].size)}
        new.append(d)
    net.set_layer_params(new)


# A stack with everything the ndlm preset lacks: padding, stride 2, overlapping pooling, LRN after
# pooling (the paper's Eq. 5 -> Eq. 6 order, as in NDEL), a hidden fully connected layer.
OTHER = [
    {"type": "batchnorm"},
    {"type": "conv", "filters": 4, "kernel": (3, 2), "stride": 2, "padding": 1},
    {"type": "relu"},
    {"type": "maxpool", "pool": 3, "stride": 2},
    {"type": "lrn", "size": 3, "alpha": 0.5, "beta": 0.75, "k": 1.0},
    {"type": "conv", "filters": 5, "kernel": 2, "stride": 1, "padding": 2},
    {"type": "batchnorm"},
    {"type": "fc", "units": 6},
    {"type": "relu"},
    {"type": "fc"},
    {"type": "softmax"},
]


# =================================================================================================
# Forward against NumPy
# =================================================================================================
# Fusion at the very first layer (no input gradient), a pool whose windows leave rows over, a
# long segment with a pool after it.
FUSED_AT_INPUT = [
    {"type": "batchnorm"},
    {"type": "relu"},
    {"type": "batchnorm"},
    {"type": "maxpool", "pool": 2, "stride": 2},
    {"type": "conv", "filters": 3, "kernel": 3},
    {"type": "relu"},
    {"type": "batchnorm"},
    {"type": "relu"},
    {"type": "batchnorm", "eps": 1e-3, "momentum": 0.3},
    {"type": "maxpool", "pool": 2},
    {"type": "fc"},
]

FORWARD_CASES = {
    # name: (stack, (H, W, C), n_classes, uint8 images?, input_scale)
    "ndlm": (PRESETS["ndlm"], (16, 13, 3), 5, True, 1 / 255),
    "other": (OTHER, (21, 19, 3), 4, False, 1.0),
    "fused-at-input": (FUSED_AT_INPUT, (15, 14, 2), 3, False, 2.0),
}


def _images(rng, shape, n, as_uint8):
    if as_uint8:
        return rng.integers(0, 256, (n,) + tuple(shape), dtype=np.uint8)
    return rng.uniform(0, 1, (n,) + tuple(shape)).astype(f32)


@pytest.mark.parametrize("fuse", FUSE)
@pytest.mark.parametrize("name", sorted(FORWARD_CASES))
def test_predict_proba_matches_numpy(name, fuse):
    stack, shape, k, as_uint8, scale = FORWARD_CASES[name]
    rng = _rng("fwd", name)
    net = make_net(stack, shape, k, seed=3, scale=scale, fuse=fuse)
    check_fusion(net, fuse)
    randomize(net, rng)
    X = _images(rng, shape, 5, as_uint8)
    p = net.predict_proba(X)
    ref = nr.network_forward(net.layers, net.layer_params(), X, scale, train=False)
    assert p.shape == (5, k) and p.dtype == f32
    # float32 all the way through ~10 layers: logits carry ~1e-6 relative error, so probabilities
    # ~1e-6 absolute; 2e-5 leaves a 10x margin and is far below any wrong-equation effect.
    np.testing.assert_allclose(p, ref, rtol=0, atol=2e-5)
    assert np.all(p.sum(axis=1) > 1 - 1e-5)
    assert 1e-4 < ref.min() and ref.max() < 0.999, "degenerate test: probabilities saturated"
    # chunking and indexing are bookkeeping only
    np.testing.assert_allclose(net.predict_proba(X, chunk=2), p, rtol=0, atol=1e-6)
    idx = np.array([4, 0, 0, 2])
    np.testing.assert_allclose(net.predict_proba(X, idx), p[idx], rtol=0, atol=1e-6)


@pytest.mark.parametrize("fuse", FUSE)
@pytest.mark.parametrize("name", sorted(FORWARD_CASES))
def test_training_loss_matches_numpy(name, fuse):
    # loss_and_grad uses mini-batch statistics in batch norm (Eq. 1 in training mode)
    stack, shape, k, as_uint8, scale = FORWARD_CASES[name]
    rng = _rng("loss", name)
    net = make_net(stack, shape, k, seed=4, scale=scale, fuse=fuse)
    randomize(net, rng)
    X = _images(rng, shape, 6, as_uint8)
    y = rng.integers(0, k, 6).astype(np.int32)
    loss = net.loss_and_grad(X, y)
    p = nr.network_forward(net.layers, net.layer_params(), X, scale, train=True)
    np.testing.assert_allclose(loss, nr.cross_entropy(p, y), rtol=2e-5)


@pytest.mark.parametrize("fuse", FUSE)
@pytest.mark.parametrize("name", ["ndlm", "fused-at-input"])
def test_train_step_counts_winner_take_all_hits_and_updates_running_stats(name, fuse):
    stack, shape, k, as_uint8, scale = FORWARD_CASES[name]
    rng = _rng("wta", name)
    net = make_net(stack, shape, k, seed=5, scale=scale, fuse=fuse)
    randomize(net, rng)
    X = _images(rng, shape, 9, as_uint8)
    idx = np.array([8, 1, 3, 3, 0, 5, 7])
    y = rng.integers(0, k, len(idx)).astype(np.int32)
    before = net.layer_params()
    p = nr.network_forward(net.layers, before, X[idx], scale, train=True)
    loss, n_correct = net.train_step(X, idx, y)
    np.testing.assert_allclose(loss, nr.cross_entropy(p, y), rtol=2e-5)
    assert n_correct == int(nr.winner_take_all(p)[np.arange(len(y)), y].sum())  # Eq. 9
    # running statistics of every batch norm: decay `momentum` (0.1) per mini-batch, unbiased
    # variance (PyTorch's convention), of the layer's input in this forward
    after = net.layer_params()
    acts = numpy_activations(net.layers, before, X[idx], scale)
    for i, spec in enumerate(net.layers):
        if spec["type"] != "batchnorm":
            continue
        mom = spec["momentum"]
        m, v = acts[i].mean(axis=(0, 2, 3)), acts[i].var(axis=(0, 2, 3), ddof=1)
        np.testing.assert_allclose(
            after[i]["running_mean"],
            (1 - mom) * before[i]["running_mean"] + mom * m,
            rtol=1e-5,
            atol=1e-6,
            err_msg=f"layer {i} running mean",
        )
        np.testing.assert_allclose(
            after[i]["running_var"],
            (1 - mom) * before[i]["running_var"] + mom * v,
            rtol=1e-4,
            atol=1e-6,
            err_msg=f"layer {i} running var",
        )


def numpy_activations(layers, params, X, scale):
    """The input of every layer in the NumPy model's training-mode forward."""
    acts = []
    for i in range(len(layers)):
        if i == 0:
            acts.append(np.asarray(X, np.float64).transpose(0, 3, 1, 2) * scale)
            continue
        # the forward of layers [0, i) applied to X: run the model on the truncated stack
        acts.append(_partial_forward(layers[:i], params[:i], X, scale))
    return acts


def _partial_forward(layers, params, X, scale):
    a = np.asarray(X, np.float64).transpose(0, 3, 1, 2) * scale
    for spec, prm in zip(layers, params):
        t = spec["type"]
        if t == "batchnorm":
            a = nr.batchnorm_train(a, prm["gamma"], prm["beta"], spec["eps"])[0]
        elif t == "lrn":
            a = nr.lrn(a, spec["size"], spec["alpha"], spec["beta"], spec["k"])
        elif t == "conv":
            a = nr.conv2d(a, prm["weight"], prm["bias"], spec["stride"], spec["padding"])
        elif t == "relu":
            a = nr.relu(a)
        elif t == "maxpool":
            a = nr.maxpool(a, spec["pool"], spec["stride"])
        elif t == "fc":
            a = nr.fully_connected(a, prm["weight"], prm["bias"])[:, :, None, None]
    return a


def _l2_factor(name, bn_factor):
    # MATLAB's factors: conv / fc weights 1, their biases 0, batch-norm gamma and beta bn_factor
    return {"weight": 1.0, "bias": 0.0, "gamma": bn_factor, "beta": bn_factor}[name]


@pytest.mark.parametrize("bn_factor", [0.0, 1.0, 0.5])
def test_one_adam_step_matches_numpy(bn_factor):
    # train_step = loss_and_grad + L2 (conv / fc weights; batch norm times bn_factor) + Adam (bias-corrected)
    stack, shape, k = OTHER, (21, 19, 3), 4
    rng = _rng("adam")
    net = make_net(stack, shape, k, seed=6)
    lr, b1, b2, eps, l2 = 1e-2, 0.8, 0.99, 1e-6, 0.05
    net.set_optimizer(lr, b1, b2, eps, l2, bn_factor)
    X = _images(rng, shape, 4, False)
    y = np.array([0, 1, 2, 3], np.int32)
    p0 = np.array(net.params, np.float64)
    net.loss_and_grad(X, y)
    g = np.array(net.grads, np.float64)
    for _, name, off, n in param_blocks(net):
        g[off : off + n] += l2 * _l2_factor(name, bn_factor) * p0[off : off + n]
    m, v = (1 - b1) * g, (1 - b2) * g * g
    expect1 = p0 - lr * (m / (1 - b1)) / (np.sqrt(v / (1 - b2)) + eps)
    net.train_step(X, np.arange(4), y)
    np.testing.assert_allclose(net.params, expect1, rtol=1e-5, atol=1e-6 * lr)
    # second step: moments carry over
    p1 = np.array(net.params, np.float64)
    net.loss_and_grad(X, y)
    g2 = np.array(net.grads, np.float64)
    for _, name, off, n in param_blocks(net):
        g2[off : off + n] += l2 * _l2_factor(name, bn_factor) * p1[off : off + n]
    m, v = b1 * m + (1 - b1) * g2, b2 * v + (1 - b2) * g2 * g2
    expect2 = p1 - lr * (m / (1 - b1**2)) / (np.sqrt(v / (1 - b2**2)) + eps)
    net.train_step(X, np.arange(4), y)
    np.testing.assert_allclose(net.params, expect2, rtol=1e-4, atol=1e-4 * lr)


# =================================================================================================
# End-to-end finite differences of loss_and_grad
# =================================================================================================
FD_CASES = {
    # name: (stack, (H, W, C), n_classes, batch)
    "ndlm": (PRESETS["ndlm"], (16, 13, 3), 5, 4),
    "conv-stride2-padding": (
        [
            {"type": "batchnorm"},
            {"type": "conv", "filters": 3, "kernel": 3, "stride": 2, "padding": 1},
            {"type": "relu"},
            {"type": "conv", "filters": 4, "kernel": (2, 3), "stride": 2, "padding": 2},
            {"type": "batchnorm"},
            {"type": "maxpool", "pool": 2, "stride": 2},
            {"type": "fc"},
        ],
        (13, 11, 2),
        3,
        5,
    ),
    "hidden-fc-relu": (
        [
            {"type": "conv", "filters": 3, "kernel": 3},
            {"type": "relu"},
            {"type": "maxpool", "pool": 3, "stride": 2},
            {"type": "lrn", "size": 3, "alpha": 1.0, "beta": 0.75, "k": 1.0},
            {"type": "fc", "units": 7},
            {"type": "relu"},
            {"type": "batchnorm"},
            {"type": "fc"},
            {"type": "softmax"},
        ],
        (9, 10, 3),
        4,
        6,
    ),
    "fused-at-input": (FUSED_AT_INPUT, (15, 14, 2), 3, 5),
}


class FDSetup:
    """One FD case: network, batch, analytic gradient, sampled coordinates, and the float64 loss of
    the NumPy model of the same network as a function of the flat parameter vector."""

    def __init__(self, name, fuse):
        stack, shape, k, B = FD_CASES[name]
        rng = _rng("netfd", name)
        self.net = net = make_net(stack, shape, k, seed=7, fuse=fuse)
        check_fusion(net, fuse)
        if any(layer["type"] == "batchnorm" for layer in stack):
            randomize(net, rng)
        self.X = rng.uniform(0, 1, (B,) + shape).astype(f32)
        self.y = (np.arange(B) % k).astype(np.int32)
        self.loss = net.loss_and_grad(self.X, self.y)
        self.g = np.array(net.grads, np.float64)
        self.p0 = np.array(net.params, np.float64)
        self.blocks = param_blocks(net)
        self.lp0 = net.layer_params()
        # every block: its first and last element and 6 random ones
        self.coords, self.names = [], []
        for layer, pname, off, n in self.blocks:
            pick = np.unique(np.concatenate([[off, off + n - 1], off + rng.choice(n, min(n, 6), replace=False)]))
            self.coords += pick.tolist()
            self.names += [f"layer {layer} {pname}[{i - off}]" for i in pick]
        self.rng = rng

    def numpy_loss(self, pv):
        lp = [dict(d) for d in self.lp0]
        for i, name, off, n in self.blocks:
            lp[i][name] = pv[off : off + n].reshape(lp[i][name].shape)
        return nr.cross_entropy(nr.network_forward(self.net.layers, lp, self.X, 1.0, train=True), self.y)

    def numpy_fd(self, j, h):
        e = np.zeros_like(self.p0)
        e[j] = h
        return (self.numpy_loss(self.p0 + e) - self.numpy_loss(self.p0 - e)) / (2 * h)


_FD_SETUPS = {}


def fd_setup(name, fuse):
    if (name, fuse) not in _FD_SETUPS:
        _FD_SETUPS[name, fuse] = FDSetup(name, fuse)
    return _FD_SETUPS[name, fuse]


def _report(names, an, fd, bad):
    return "; ".join(f"{names[j]}: analytic {an[j]:.7g}, fd {fd[j]:.7g}" for j in bad[:8])


@pytest.mark.parametrize("fuse", FUSE)
@pytest.mark.parametrize("name", sorted(FD_CASES))
def test_loss_and_grad_matches_float64_differences_of_the_numpy_model(name, fuse):
    """The C++ gradient against central differences of the independent float64 NumPy model of the
    same network (training-mode batch norm), h = 1e-6 max(1, |p|): truncation ~1e-12 and rounding
    ~1e-10, so the reference is exact to ~1e-9 and kinks (ReLU, pooling) are practically never
    within +-h. The float32 backward through ~10 layers is good to ~1e-6 of the gradient's scale:
    tolerance 1e-3 |g| + 2e-5 rms(g) (measured worst case: 2e-6 rms)."""
    S = fd_setup(name, fuse)
    np.testing.assert_allclose(S.loss, S.numpy_loss(S.p0), rtol=2e-5)
    fd = np.array([S.numpy_fd(j, 1e-6 * max(1.0, abs(S.p0[j]))) for j in S.coords])
    an = S.g[S.coords]
    rms = np.sqrt(np.mean(S.g**2))
    bad = np.flatnonzero(np.abs(fd - an) > 1e-3 * np.abs(an) + 2e-5 * rms)
    assert bad.size == 0, "gradient != float64 model: " + _report(S.names, an, fd, bad)
    # and along one random direction through all parameters at once
    d = S.rng.standard_normal(S.p0.size)
    d /= np.linalg.norm(d)
    t = 1e-6
    dfd = (S.numpy_loss(S.p0 + t * d) - S.numpy_loss(S.p0 - t * d)) / (2 * t)
    assert abs(dfd - S.g @ d) <= 1e-3 * abs(dfd) + 2e-5 * rms, f"directional derivative {S.g @ d} vs {dfd}"


FD32_STEPS = (1e-2, 3e-3, 1e-3)


@pytest.mark.parametrize("fuse", FUSE)
@pytest.mark.parametrize("name", sorted(FD_CASES))
def test_loss_and_grad_matches_its_own_finite_differences(name, fuse):
    """The C++ gradient against central differences of loss_and_grad itself, moving entries of
    the writable .params view. The loss is a float32 ~1 (ulp 1.2e-7) and the forward's rounding
    moves it by a few ulps, so the quotient carries ~5e-7 / h of noise: a large step is needed,
    and ReLU / max pooling kinks within +-h then bias the quotient. Kinks are avoided by
    construction: for each coordinate, the largest step in FD32_STEPS at which the float64 NumPy
    model's difference quotient agrees with its h -> 0 limit to 1e-3 (i.e. no kink and little
    curvature within +-h) is used; coordinates without such a step are skipped (at most 20%).
    Tolerance 1e-2 |g| + 1e-6 / h: 2x the noise estimate, and the truncation error left is
    <= 1e-3 |g| by the choice of h."""
    S = fd_setup(name, fuse)
    net, X, y = S.net, S.X, S.y
    p = net.params  # a writable view: writes change what loss_and_grad computes
    fd, an, names, tols = [], [], [], []
    for j, nm in zip(S.coords, S.names):
        scale = max(1.0, abs(S.p0[j]))
        limit = S.numpy_fd(j, 1e-6 * scale)
        h = next((h for h in FD32_STEPS if abs(S.numpy_fd(j, h * scale) - limit) <= 1e-3 * abs(limit) + 1e-6), None)
        if h is None:
            continue
        old = p[j]
        p[j] = old + f32(h * scale)
        lp = net.loss_and_grad(X, y)
        step = float(p[j])
        p[j] = old - f32(h * scale)
        lm = net.loss_and_grad(X, y)
        step -= float(p[j])
        p[j] = old
        fd.append((lp - lm) / step)
        an.append(S.g[j])
        names.append(f"{nm} (h={h:g})")
        tols.append(1e-2 * abs(S.g[j]) + 1e-6 / (h * scale))
    assert len(fd) >= 0.8 * len(S.coords), f"only {len(fd)} of {len(S.coords)} coordinates are kink-free"
    fd, an = np.array(fd), np.array(an)
    bad = np.flatnonzero(np.abs(fd - an) > np.array(tols))
    assert bad.size == 0, "gradient != finite differences of loss_and_grad: " + _report(names, an, fd, bad)
    np.testing.assert_array_equal(net.params, S.p0.astype(f32))  # restored


def test_loss_and_grad_changes_no_state():
    stack, shape, k, _ = FD_CASES["ndlm"]
    net = make_net(stack, shape, k, seed=8)
    net.set_optimizer(1e-3, 0.9, 0.999, 1e-8, 1e-4)
    X = _images(_rng("nostate"), shape, 4, False)
    net.train_step(X, np.arange(4), np.arange(4).astype(np.int32))
    s0 = net.get_state()
    net.loss_and_grad(X, np.array([1, 2, 3, 4], np.int32))
    s1 = net.get_state()
    for key in s0:
        np.testing.assert_array_equal(s0[key], s1[key], err_msg=key)


# =================================================================================================
# Determinism and threads
# =================================================================================================
DET_STACK, DET_SHAPE, DET_K = PRESETS["ndlm"], (24, 22, 3), 5


def _train(seed, threads, steps=3):
    rng = _rng("det-data")
    X = rng.integers(0, 256, (12,) + DET_SHAPE, dtype=np.uint8)
    y = rng.integers(0, DET_K, 12).astype(np.int32)
    net = make_net(DET_STACK, DET_SHAPE, DET_K, seed=seed, threads=threads, scale=1 / 255)
    net.set_optimizer(1e-3, 0.9, 0.999, 1e-8, 1e-4)
    init = np.array(net.params)
    for s in range(steps):
        idx = np.arange(12)[(np.arange(8) + 3 * s) % 12]
        net.train_step(X, idx, y[idx])
    return net, init, X


def test_same_seed_and_threads_is_bit_identical():
    a, ia, X = _train(11, 2)
    b, ib, _ = _train(11, 2)
    np.testing.assert_array_equal(ia, ib)
    np.testing.assert_array_equal(a.params, b.params)
    sa, sb = a.get_state(), b.get_state()
    for key in sa:
        np.testing.assert_array_equal(sa[key], sb[key], err_msg=key)
    np.testing.assert_array_equal(a.predict_proba(X), b.predict_proba(X))


def test_different_seeds_give_different_weights():
    a = make_net(DET_STACK, DET_SHAPE, DET_K, seed=1)
    b = make_net(DET_STACK, DET_SHAPE, DET_K, seed=2)
    for i, name, off, n in param_blocks(a):
        if name == "weight":  # Glorot-uniform; batch norm starts at gamma 1, beta 0 and biases at 0
            assert not np.array_equal(a.params[off : off + n], b.params[off : off + n]), f"layer {i} weight"
            lim = np.sqrt(6.0 / sum(_fans(a, i)))
            assert np.all(np.abs(a.params[off : off + n]) <= lim)
            assert np.abs(a.params[off : off + n]).max() > 0.9 * lim
        else:
            expect = 1.0 if name == "gamma" else 0.0
            np.testing.assert_array_equal(a.params[off : off + n], expect)


def _fans(net, i):
    spec, inshape = net.layers[i], ([None] + net.output_shapes)[i]
    if inshape is None:
        inshape = (DET_SHAPE[2], DET_SHAPE[0], DET_SHAPE[1])
    out = net.output_shapes[i]
    if spec["type"] == "conv":
        kh, kw = spec["kernel"]
        return kh * kw * inshape[0], kh * kw * out[0]
    return int(np.prod(inshape)), out[0]


def test_one_and_two_threads_agree():
    # The tuned kernels may split reductions differently with 2 threads: float32 rounding only.
    rng = _rng("threads")
    B = 12
    X = rng.uniform(0, 1, (B,) + DET_SHAPE).astype(f32)
    y = (np.arange(B) % DET_K).astype(np.int32)
    nets = [make_net(DET_STACK, DET_SHAPE, DET_K, seed=12, threads=t) for t in (1, 2)]
    assert [n.n_threads for n in nets] == [1, 2]
    losses = [n.loss_and_grad(X, y) for n in nets]
    np.testing.assert_allclose(losses[0], losses[1], rtol=1e-6)
    g1, g2 = (np.array(n.grads) for n in nets)
    np.testing.assert_allclose(g1, g2, rtol=1e-4, atol=1e-6 * np.abs(g1).max())
    for n in nets:
        # Adam divides by sqrt(v) + eps: with eps = 1e-8 a gradient that is pure rounding noise
        # (a conv bias followed by batch norm: exactly 0 in exact arithmetic, ~1e-7 here) becomes a
        # +-lr step whose sign depends on the summation order. eps = 1e-4 keeps such steps below
        # lr / 100 while real gradients (>= 1e-2) still move by ~lr.
        n.set_optimizer(1e-3, 0.9, 0.999, 1e-4, 1e-4)
        for _ in range(3):
            n.train_step(X, np.arange(B), y)
    np.testing.assert_allclose(nets[0].params, nets[1].params, rtol=0, atol=3e-5)
    np.testing.assert_allclose(nets[0].predict_proba(X), nets[1].predict_proba(X), rtol=0, atol=1e-5)


@pytest.mark.parametrize("name", ["ndlm", "fused-at-input"])
def test_fused_and_per_layer_paths_agree(name):
    # Planes of 45x42 > 1024 values cross the tuned kernels' chunk boundaries. Both paths are also
    # checked against NumPy above; here they are held to each other, at float32 rounding level.
    stack, _, k, _, scale = FORWARD_CASES[name]
    shape, B = (45, 42, 3), 6
    rng = _rng("fused-vs-layers", name)
    X = rng.integers(0, 256, (B,) + shape, dtype=np.uint8)
    y = (np.arange(B) % k).astype(np.int32)
    nets = [make_net(stack, shape, k, seed=13, threads=2, scale=scale, fuse=f) for f in (True, False)]
    check_fusion(nets[0], True)
    check_fusion(nets[1], False)
    if not FUSE_ENV_OFF:
        assert nets[0].segments, "nothing fused: the test would compare the per-layer path with itself"
    losses = [n.loss_and_grad(X, y) for n in nets]
    np.testing.assert_allclose(losses[0], losses[1], rtol=1e-6)
    g0, g1 = (np.array(n.grads) for n in nets)
    np.testing.assert_allclose(g0, g1, rtol=1e-4, atol=1e-6 * np.abs(g1).max())
    for n in nets:
        n.set_optimizer(1e-3, 0.9, 0.999, 1e-4, 1e-4)  # eps: see test_one_and_two_threads_agree
        n.train_step(X, np.arange(B), y)
    s0, s1 = (n.get_state() for n in nets)
    np.testing.assert_allclose(s0["running"], s1["running"], rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(s0["params"], s1["params"], rtol=0, atol=1e-5)
    np.testing.assert_allclose(nets[0].predict_proba(X), nets[1].predict_proba(X), rtol=0, atol=1e-5)


# =================================================================================================
# Construction errors
# =================================================================================================
def _fc(**kw):
    return dict({"type": "fc"}, **kw)


BAD_STACKS = [
    # (stack, (H, W, C), n_classes, fragments the message must contain)
    (
        [{"type": "conv", "filters": 2, "kernel": 3}, {"type": "maxpool", "pool": 5}, _fc()],
        (6, 6, 1),
        3,
        ["layer 1", "maxpool"],
    ),
    ([{"type": "batchnorm"}, {"type": "conv", "filters": 2, "kernel": 7}, _fc()], (5, 6, 3), 3, ["layer 1", "conv"]),
    ([{"type": "conv", "filters": 2, "kernel": (2, 9), "padding": 1}, _fc()], (9, 6, 3), 3, ["layer 0", "conv"]),
    ([{"type": "lrn", "size": 4}, _fc()], (3, 3, 3), 3, ["layer 0", "lrn"]),
    ([{"type": "batchnorm"}, {"type": "dropout"}, _fc()], (3, 3, 3), 3, ["layer 1", "dropout"]),
    ([{"type": "conv", "filters": 2, "kernal": 3}, _fc()], (3, 3, 3), 3, ["layer 0", "kernal"]),
    ([_fc(), {"type": "softmax"}, {"type": "relu"}], (3, 3, 3), 3, ["layer 1", "softmax"]),
    ([{"type": "softmax"}, _fc()], (3, 3, 3), 3, ["layer 0", "softmax"]),
    ([{"type": "conv", "filters": 0, "kernel": 3}, _fc()], (5, 5, 1), 3, ["layer 0", "conv"]),
    ([{"type": "conv", "filters": 2, "kernel": 3, "stride": 0}, _fc()], (5, 5, 1), 3, ["layer 0", "conv"]),
    ([{"type": "conv", "filters": 2, "kernel": 3, "padding": -1}, _fc()], (5, 5, 1), 3, ["layer 0", "conv"]),
    ([{"type": "maxpool", "pool": (2, 3)}, _fc()], (5, 5, 1), 3, ["layer 0", "maxpool"]),
    ([{"type": "maxpool", "pool": 2, "stride": 0}, _fc()], (5, 5, 1), 3, ["layer 0", "maxpool"]),
    ([{"type": "batchnorm", "eps": 0}, _fc()], (5, 5, 1), 3, ["layer 0", "batchnorm"]),
    ([{"type": "batchnorm"}, _fc(units=-1)], (5, 5, 1), 3, ["layer 1", "fc"]),
    ([{"type": "batchnorm"}, {"type": "maxpool"}, _fc()], (5, 5, 1), 3, ["layer 1", "pool"]),
    ([{"type": "relu"}, "fc"], (5, 5, 1), 3, ["layer 1"]),
    ([{"filters": 2}, _fc()], (5, 5, 1), 3, ["layer 0", "type"]),
    ([{"type": "conv", "filters": 2, "kernel": 3}, {"type": "relu"}], (5, 5, 1), 3, ["n_classes = 3", "2x3x3"]),
    ([{"type": "batchnorm"}, _fc(units=4)], (5, 5, 1), 3, ["n_classes = 3", "4x1x1"]),
    ([{"type": "relu"}], (1, 1, 3), 3, ["no trainable parameters"]),
    ([], (5, 5, 1), 3, ["empty"]),
    ([{"type": "batchnorm"}, _fc()], (5, 5, 1), 1, ["2 classes"]),
    ([{"type": "batchnorm"}, _fc()], (0, 5, 1), 3, []),
]


@pytest.mark.parametrize("stack,shape,k,fragments", BAD_STACKS)
def test_impossible_stacks_raise_value_error_naming_the_layer(stack, shape, k, fragments):
    with pytest.raises(ValueError) as e:
        make_net(stack, shape, k)
    msg = str(e.value)
    for frag in fragments:
        assert frag in msg, f"{frag!r} not in the message {msg!r}"


def test_bad_input_shape_argument():
    with pytest.raises(ValueError, match="input_shape"):
        Network([{"type": "fc"}], [5, 5], 3)


# =================================================================================================
# Bad arguments to train_step, loss_and_grad, predict_proba
# =================================================================================================
SMALL = [{"type": "batchnorm"}, {"type": "conv", "filters": 2, "kernel": 3}, {"type": "relu"}, _fc()]
SMALL_SHAPE, SMALL_K = (6, 5, 2), 3


@pytest.fixture
def small():
    net = make_net(SMALL, SMALL_SHAPE, SMALL_K)
    net.set_optimizer(1e-3, 0.9, 0.999, 1e-8, 1e-4)
    X = _rng("small").uniform(0, 1, (4,) + SMALL_SHAPE).astype(f32)
    return net, X


def _bad_train_args(X):
    ok_idx, ok_y = np.array([0, 1, 3]), np.array([0, 1, 2], np.int32)
    big = np.zeros((8,) + SMALL_SHAPE, f32)
    return {
        "transposed images": (X.transpose(0, 2, 1, 3).copy(), ok_idx, ok_y),
        "wrong channel count": (np.zeros((4, 6, 5, 3), f32), ok_idx, ok_y),
        "3-d images": (X[0], ok_idx, ok_y),
        "flat rows": (X.reshape(4, -1), ok_idx, ok_y),
        "float64 images": (X.astype(np.float64), ok_idx, ok_y),
        "int32 images": (X.astype(np.int32), ok_idx, ok_y),
        "float16 images": (X.astype(np.float16), ok_idx, ok_y),
        "bool images": (X > 0.5, ok_idx, ok_y),
        "strided images": (big[::2], ok_idx, ok_y),
        "Fortran-order images": (np.asfortranarray(X), ok_idx, ok_y),
        "index = n": (X, np.array([0, 4, 1]), ok_y),
        "negative index": (X, np.array([0, -1, 1]), ok_y),
        "label = n_classes": (X, ok_idx, np.array([0, 3, 1], np.int32)),
        "negative label": (X, ok_idx, np.array([0, -1, 1], np.int32)),
        "empty batch": (X, np.array([], np.int64), np.array([], np.int32)),
        "fewer labels than indices": (X, ok_idx, np.array([0, 1], np.int32)),
    }


@pytest.mark.parametrize("case", sorted(_bad_train_args(np.zeros((4,) + SMALL_SHAPE, f32))))
def test_train_step_rejects_bad_arguments(small, case):
    net, X = small
    before = np.array(net.params)
    args = _bad_train_args(X)[case]
    with pytest.raises(ValueError):
        net.train_step(*args)
    np.testing.assert_array_equal(net.params, before)


def test_train_step_rejects_labels_that_overflow_int32(small):
    net, X = small
    with pytest.raises(ValueError):
        net.train_step(X, np.array([0, 1]), np.array([0, 2**32 + 1], np.int64))


@pytest.mark.parametrize("what", ["idx", "labels"])
def test_train_step_rejects_fractional_indices_and_labels(small, what):
    net, X = small
    idx, y = np.array([0, 1]), np.array([0, 1], np.int32)
    if what == "idx":
        idx = np.array([0.9, 1.2])
    else:
        y = np.array([0.0, 1.7])
    with pytest.raises(ValueError):
        net.train_step(X, idx, y)


def test_loss_and_grad_and_predict_proba_reject_bad_arguments(small):
    net, X = small
    for bad in (X.astype(np.float64), X.astype(np.int32), X[:, :, :4].copy(), np.asfortranarray(X)):
        with pytest.raises(ValueError):
            net.loss_and_grad(bad, np.zeros(len(bad), np.int32))
        with pytest.raises(ValueError):
            net.predict_proba(bad)
    with pytest.raises(ValueError):
        net.loss_and_grad(X, np.array([0, 1, 2, 3], np.int32))  # label 3 of 3 classes
    with pytest.raises(ValueError):
        net.loss_and_grad(X, np.array([0, 1], np.int32))
    with pytest.raises(ValueError):
        net.loss_and_grad(X[:0], np.array([], np.int32))
    with pytest.raises(ValueError):
        net.predict_proba(X, np.array([0, 4]))
    with pytest.raises(ValueError):
        net.predict_proba(X, np.array([-1]))
    with pytest.raises(ValueError):
        net.predict_proba(X, chunk=0)
    assert net.predict_proba(X[:0]).shape == (0, SMALL_K)
    # uint8 and float32 images are both accepted and mean the same thing
    Xu = (X * 255).round().astype(np.uint8)
    np.testing.assert_allclose(net.predict_proba(Xu), net.predict_proba(Xu.astype(f32)), rtol=0, atol=1e-7)


@pytest.mark.parametrize(
    "args",
    [
        (0.0, 0.9, 0.999, 1e-8, 0.0),
        (1e-3, 1.0, 0.999, 1e-8, 0.0),
        (1e-3, 0.9, -0.1, 1e-8, 0.0),
        (1e-3, 0.9, 0.999, 0.0, 0.0),
        (1e-3, 0.9, 0.999, 1e-8, -1.0),
        (float("nan"), 0.9, 0.999, 1e-8, 0.0),
    ],
)
def test_set_optimizer_rejects_bad_settings(small, args):
    with pytest.raises(ValueError):
        small[0].set_optimizer(*args)


# =================================================================================================
# State
# =================================================================================================
def test_state_round_trip():
    a, _, X = _train(21, 1, steps=2)
    b = make_net(DET_STACK, DET_SHAPE, DET_K, seed=99, threads=1, scale=1 / 255)
    b.set_optimizer(1e-3, 0.9, 0.999, 1e-8, 1e-4)
    sa = a.get_state()
    assert sa["adam_step"] == 2
    b.set_state(sa)
    sb = b.get_state()
    for key in sa:
        np.testing.assert_array_equal(sa[key], sb[key], err_msg=key)
    np.testing.assert_array_equal(a.predict_proba(X), b.predict_proba(X))
    y = np.arange(8).astype(np.int32) % DET_K
    a.train_step(X, np.arange(8), y)
    b.train_step(X, np.arange(8), y)
    np.testing.assert_array_equal(a.params, b.params)  # Adam moments and step came along
    for la, lb in zip(a.layer_params(), b.layer_params()):
        for key in la:
            np.testing.assert_array_equal(la[key], lb[key], err_msg=key)


def _corrupt(state, key, how):
    s = {k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in state.items()}
    if how == "short":
        s[key] = s[key][:-1]
    elif how == "long":
        s[key] = np.concatenate([s[key], [0.0]])
    elif how == "nan":
        s[key][len(s[key]) // 2] = np.nan
    elif how == "inf":
        s[key][0] = np.inf
    elif how == "missing":
        del s[key]
    return s


SET_STATE_BAD = [(k, h) for k in ("params", "adam_m", "adam_v", "running") for h in ("short", "long", "missing")] + [
    ("params", "nan"),
    ("params", "inf"),
    ("adam_step", "missing"),
]
SET_STATE_NAN_UNCHECKED = [("adam_m", "nan"), ("adam_v", "nan"), ("running", "nan"), ("running", "inf")]


def _check_set_state_rejects(key, how):
    a, _, _ = _train(31, 1, steps=1)
    s0 = a.get_state()
    with pytest.raises(ValueError):
        a.set_state(_corrupt(s0, key, how))
    s1 = a.get_state()  # validated before anything is written
    for k in s0:
        np.testing.assert_array_equal(s0[k], s1[k], err_msg=k)


@pytest.mark.parametrize("key,how", SET_STATE_BAD)
def test_set_state_rejects_wrong_sizes_and_nan(key, how):
    _check_set_state_rejects(key, how)


@pytest.mark.parametrize("key,how", SET_STATE_NAN_UNCHECKED)
def test_set_state_rejects_nan_in_moments_and_running_stats(key, how):
    _check_set_state_rejects(key, how)


@pytest.mark.parametrize("step", [1.5, "abc", None])
def test_set_state_rejects_non_integer_adam_step(step):
    a, _, _ = _train(31, 1, steps=1)
    s = a.get_state()
    s["adam_step"] = step
    with pytest.raises(ValueError):
        a.set_state(s)


def test_set_state_rejects_negative_adam_step():
    a, _, _ = _train(31, 1, steps=1)
    s = a.get_state()
    s["adam_step"] = -1
    with pytest.raises(ValueError):
        a.set_state(s)


# =================================================================================================
# The paper's model on 300x300x3
# =================================================================================================
def test_ndlm_preset_parameter_count_and_shapes():
    net = make_net(PRESETS["ndlm"], (300, 300, 3), 5)
    assert net.n_params == 174_881
    # NDLM.md's table (C, H, W)
    assert [tuple(s) for s in net.output_shapes] == [
        (3, 300, 300),
        (3, 300, 300),
        (10, 296, 296),
        (10, 296, 296),
        (10, 296, 296),
        (10, 296, 296),
        (10, 59, 59),
        (10, 59, 59),
        (5, 1, 1),
        (5, 1, 1),
    ]
    sizes = [(i, name, n) for i, name, _, n in param_blocks(net)]
    assert sizes == [
        (0, "gamma", 3),
        (0, "beta", 3),
        (2, "weight", 750),
        (2, "bias", 10),
        (3, "gamma", 10),
        (3, "beta", 10),
        (5, "gamma", 10),
        (5, "beta", 10),
        (7, "gamma", 10),
        (7, "beta", 10),
        (8, "weight", 174_050),
        (8, "bias", 5),
    ]
    lp = net.layer_params()
    assert lp[2]["weight"].shape == (10, 3, 5, 5) and lp[8]["weight"].shape == (5, 34_810)
    assert [layer["type"] for layer in net.layers] == [layer["type"] for layer in PRESETS["ndlm"]]
    assert net.layers[1] == {"type": "lrn", "size": 5, "alpha": pytest.approx(1e-4), "beta": 0.75, "k": 2.0}
    assert net.layers[6] == {"type": "maxpool", "pool": 5, "stride": 5}
    assert net.layers[8]["units"] == 5


def test_set_layer_params_is_all_or_nothing():
    a, _, _ = _train(31, 1, steps=1)
    before = a.layer_params()
    new = [{k: v + 1.0 for k, v in p.items()} for p in before]  # every layer valid ...
    last = max(i for i, p in enumerate(new) if p)
    new[last]["bias"] = np.zeros(new[last]["bias"].size + 1)  # ... but the last one
    with pytest.raises(ValueError, match=f"layer {last} bias"):
        a.set_layer_params(new)
    new[last] = {"no_such_array": np.zeros(1)}
    with pytest.raises(ValueError, match="no parameter 'no_such_array'"):
        a.set_layer_params(new)
    for p0, p1 in zip(before, a.layer_params()):  # nothing was written, not even the valid layers
        for k in p0:
            np.testing.assert_array_equal(p0[k], p1[k], err_msg=k)


def test_accessors_never_see_a_train_step_half_done():
    # Every snapshot taken while another thread trains (train_step runs without the GIL) must be
    # the state after some whole number of steps: the accessors take the network's lock.
    # (Against the previous build, whose layer_params took no lock, it failed 2 runs of 8.)
    import threading

    # many parameters, one image: the Adam update is a good part of each step
    stack, shape, steps = [{"type": "batchnorm"}, _fc()], (128, 128, 3), 40
    rng = _rng("lock-data")
    X = rng.integers(0, 256, (2,) + shape, dtype=np.uint8)
    y = rng.integers(0, DET_K, 2).astype(np.int32)

    def snapshots(net):
        params = net.get_state()["params"].tobytes()
        arrays = np.concatenate([a.ravel() for p in net.layer_params() for a in p.values()]).tobytes()
        return params, arrays

    def run(net, after_step=None):
        for _ in range(steps):
            net.train_step(X, np.arange(2), y)
            if after_step:
                after_step(net)

    def new_net():
        net = make_net(stack, shape, DET_K, seed=5, threads=1, scale=1 / 255)
        net.set_optimizer(1e-3, 0.9, 0.999, 1e-8, 1e-4)
        return net

    ref = new_net()
    whole = [snapshots(ref)]
    run(ref, lambda n: whole.append(snapshots(n)))
    whole_params, whole_arrays = {w[0] for w in whole}, {w[1] for w in whole}

    net = new_net()
    t = threading.Thread(target=run, args=(net,))
    t.start()
    seen = []
    while t.is_alive():
        seen.append(snapshots(net))
    t.join()
    assert len(seen) >= 2
    for params, arrays in seen:
        assert params in whole_params
        assert arrays in whole_arrays
