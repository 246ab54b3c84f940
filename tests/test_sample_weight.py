"""Per-sample weights in the loss (sample_weight, class_weight): the weighted cross-entropy and its
gradient against NumPy and finite differences, weights 1 giving the unweighted bits, integer
weights equal to repeating images within a mini-batch, and the estimator's parameters."""

import io

import numpy as np
import numpy_reference as nr
import pytest
from ndlm_sk import NDLMClassifier
from ndlm_sk._core import kernels as K
from ndlm_sk.model_io import load_model, save_model
from sklearn.base import clone
from sklearn.utils.class_weight import compute_class_weight, compute_sample_weight
from test_network import FD_CASES, make_net, param_blocks, randomize

pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")

f32 = np.float32


# ---------------------------------------------------------------------------------- the kernel
def test_weighted_crossentropy_matches_numpy():
    rng = np.random.default_rng(0)
    N, C = 7, 4
    z = rng.standard_normal((N, C)).astype(f32)
    y = rng.integers(0, C, N).astype(np.int32)
    w = rng.uniform(0, 3, N).astype(f32)
    w[2] = 0.0
    loss, p, d = K.softmax_crossentropy(z, y, w)
    npp = nr.softmax(z)
    np.testing.assert_allclose(loss, nr.cross_entropy(npp, y, w), rtol=1e-6)
    onehot = np.eye(C)[y]
    ref = w[:, None].astype(np.float64) * (npp - onehot) / w.sum(dtype=np.float64)
    np.testing.assert_allclose(d, ref, rtol=1e-5, atol=1e-8)
    assert np.all(d[2] == 0)  # a zero weight: no gradient from that sample
    # a common factor on all weights changes nothing (up to rounding)
    loss2, _, d2 = K.softmax_crossentropy(z, y, 4 * w)
    np.testing.assert_allclose(loss2, loss, rtol=1e-6)
    np.testing.assert_allclose(d2, d, rtol=1e-5, atol=1e-9)


def test_unit_weights_give_the_unweighted_bits_and_zero_weights_a_zero_step():
    rng = np.random.default_rng(1)
    z = (3 * rng.standard_normal((9, 5))).astype(f32)
    y = rng.integers(0, 5, 9).astype(np.int32)
    loss, p, d = K.softmax_crossentropy(z, y)
    loss1, p1, d1 = K.softmax_crossentropy(z, y, np.ones(9, f32))
    assert loss1 == loss
    np.testing.assert_array_equal(d1, d)
    loss0, _, d0 = K.softmax_crossentropy(z, y, np.zeros(9, f32))
    assert loss0 == 0.0 and not np.any(d0)


# ---------------------------------------------------------------------------------- the network
def _weights(rng, B):
    w = rng.uniform(0.2, 3.0, B)
    w[0] = 0.0  # a zero weight among them
    return w.astype(f32)


@pytest.mark.parametrize("name", ["ndlm", "hidden-fc-relu"])
def test_weighted_loss_and_grad_match_the_numpy_model_and_finite_differences(name):
    """loss_and_grad(X, y, w) against the float64 NumPy model's weighted mean cross-entropy, and its
    gradient against central differences of that model (h = 1e-6 max(1, |p|), the tolerances of
    test_network's unweighted check)."""
    stack, shape, k, B = FD_CASES[name]
    rng = np.random.default_rng(5)
    net = make_net(stack, shape, k, seed=11)
    randomize(net, rng)
    X = rng.uniform(0, 1, (B,) + shape).astype(f32)
    y = (np.arange(B) % k).astype(np.int32)
    w = _weights(rng, B)
    loss = net.loss_and_grad(X, y, w)
    g = np.array(net.grads, np.float64)
    p0 = np.array(net.params, np.float64)
    lp0 = net.layer_params()
    blocks = param_blocks(net)

    def numpy_loss(pv):
        lp = [dict(d) for d in lp0]
        for i, pname, off, n in blocks:
            lp[i][pname] = pv[off : off + n].reshape(lp[i][pname].shape)
        return nr.cross_entropy(nr.network_forward(net.layers, lp, X, 1.0, train=True), y, w)

    np.testing.assert_allclose(loss, numpy_loss(p0), rtol=2e-5)
    unweighted = net.loss_and_grad(X, y)
    assert abs(unweighted - loss) > 1e-4, "degenerate test: the weights do not change the loss"
    coords = np.unique(np.concatenate([off + rng.choice(n, min(n, 5), replace=False) for _, _, off, n in blocks]))
    fd = []
    for j in coords:
        h = 1e-6 * max(1.0, abs(p0[j]))
        e = np.zeros_like(p0)
        e[j] = h
        fd.append((numpy_loss(p0 + e) - numpy_loss(p0 - e)) / (2 * h))
    fd, an = np.array(fd), g[coords]
    rms = np.sqrt(np.mean(g**2))
    bad = np.flatnonzero(np.abs(fd - an) > 1e-3 * np.abs(an) + 2e-5 * rms)
    where = coords[bad][:8]
    assert bad.size == 0, f"weighted gradient != finite differences at {where}: {an[bad][:8]} vs {fd[bad][:8]}"


# no batch norm: repeating an image does not change the batch statistics
NO_BN = [
    {"type": "conv", "filters": 3, "kernel": 3},
    {"type": "relu"},
    {"type": "maxpool", "pool": 2, "stride": 2},
    {"type": "fc", "units": 6},
    {"type": "relu"},
    {"type": "fc"},
]


def test_integer_weights_equal_repeating_the_images():
    rng = np.random.default_rng(2)
    net = make_net(NO_BN, (9, 8, 2), 3, seed=3)
    X = rng.uniform(0, 1, (5, 9, 8, 2)).astype(f32)
    y = np.array([0, 1, 2, 1, 0], np.int32)
    counts = np.array([2, 1, 0, 3, 1])
    loss_w = net.loss_and_grad(X, y, counts.astype(f32))
    g_w = np.array(net.grads)
    rep = np.repeat(np.arange(5), counts)
    loss_r = net.loss_and_grad(np.ascontiguousarray(X[rep]), y[rep])
    g_r = np.array(net.grads)
    np.testing.assert_allclose(loss_w, loss_r, rtol=1e-6)
    np.testing.assert_allclose(g_w, g_r, rtol=1e-5, atol=1e-6 * np.abs(g_r).max())


def test_train_step_weights_enter_the_update():
    rng = np.random.default_rng(4)
    X = rng.uniform(0, 1, (6, 9, 8, 2)).astype(f32)
    y = np.array([0, 1, 2, 1, 0, 2], np.int32)
    idx = np.arange(6)
    nets = [make_net(NO_BN, (9, 8, 2), 3, seed=3) for _ in range(3)]
    out = [
        nets[0].train_step(X, idx, y),
        nets[1].train_step(X, idx, y, np.ones(6, f32)),
        nets[2].train_step(X, idx, y, np.array([1, 0, 2, 1, 5, 1], f32)),
    ]
    assert out[0] == out[1]
    np.testing.assert_array_equal(nets[0].params, nets[1].params)
    assert not np.array_equal(nets[0].params, nets[2].params)
    for bad in (np.ones(5, f32), np.array([1, 1, -1, 1, 1, 1], f32), np.array([1, np.nan, 1, 1, 1, 1], f32)):
        with pytest.raises(ValueError, match="sample weight"):
            nets[0].train_step(X, idx, y, bad)


# ---------------------------------------------------------------------------------- the estimator
def _data(n=60, seed=0):
    rng = np.random.default_rng(seed)
    y = np.array(["a", "b", "c"])[np.arange(n) % 3]
    y[:8] = "a"  # unequal class sizes, so "balanced" is not all ones
    X = rng.integers(0, 90, (n, 12, 12, 3), dtype=np.uint8)
    X[np.arange(n), :, :, np.searchsorted(["a", "b", "c"], y)] += 120
    return X, y


def _clf(**kw):
    p = dict(
        architecture=[{"type": "conv", "filters": 4, "kernel": 3}, {"type": "relu"}, {"type": "fc"}],
        max_iter=3,
        batch_size=16,
        random_state=0,
        n_jobs=1,
    )
    p.update(kw)
    return NDLMClassifier(**p)


def _state(clf):
    s = clf._net.get_state()
    return {k: np.asarray(v) for k, v in s.items()}


def _same(a, b):
    sa, sb = _state(a), _state(b)
    return sa.keys() == sb.keys() and all(np.array_equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("kw", [{}, {"augment": True}, {"early_stopping": True, "validation_fraction": 0.2}])
def test_unit_sample_weights_give_the_unweighted_model_bit_for_bit(kw):
    X, y = _data()
    a = _clf(**kw).fit(X, y)
    b = _clf(**kw).fit(X, y, sample_weight=np.ones(len(y)))
    assert _same(a, b)
    assert a.loss_curve_ == b.loss_curve_ and a.validation_scores_ == b.validation_scores_
    c = _clf(**kw).fit(X, y, sample_weight=np.linspace(0.1, 2, len(y)))
    assert not _same(a, c)


def test_class_weight_is_sample_weight_of_the_class():
    X, y = _data()
    cw = {"a": 0.5, "b": 2.0, "c": 1.0}
    a = _clf(class_weight=cw).fit(X, y)
    b = _clf().fit(X, y, sample_weight=compute_sample_weight(cw, y))
    assert _same(a, b)
    sw = np.linspace(0.5, 1.5, len(y))
    c = _clf(class_weight="balanced").fit(X, y, sample_weight=sw)
    d = _clf().fit(X, y, sample_weight=sw * compute_sample_weight("balanced", y))
    assert _same(c, d)
    assert not _same(a, _clf().fit(X, y))
    # the weighted epoch loss: the weighted mean of the mini-batch losses
    assert np.isfinite(c.loss_) and len(c.loss_curve_) == 3


def test_partial_fit_takes_weights_and_refuses_balanced():
    X, y = _data()
    classes = np.unique(y)
    cw = dict(zip(classes, compute_class_weight("balanced", classes=classes, y=y)))
    a = _clf(class_weight=cw)
    for _ in range(2):
        a.partial_fit(X, y, classes=classes, sample_weight=np.full(len(y), 2.0))
    b = _clf(class_weight=cw)
    for _ in range(2):
        b.partial_fit(X, y, classes=classes)
    # a common factor on all weights: the same loss per mini-batch up to float32 rounding
    np.testing.assert_allclose(a.loss_curve_, b.loss_curve_, rtol=1e-5)
    with pytest.raises(ValueError, match="not supported for partial_fit"):
        _clf(class_weight="balanced").partial_fit(X, y, classes=classes)


@pytest.mark.parametrize(
    "kw, fit_kw, match",
    [
        ({"class_weight": "heavy"}, {}, "'class_weight' parameter of NDLMClassifier must be"),
        ({"class_weight": {"a": -1.0, "b": 1, "c": 1}}, {}, r"class_weight\['a'\]"),
        ({"class_weight": {"a": 1, "b": 1, "c": 1, "z": 2}}, {}, "not in classes_"),
        ({}, {"sample_weight": np.r_[-1.0, np.ones(59)]}, "(?i)negative"),
        ({}, {"sample_weight": np.ones(3)}, "sample_weight"),
        ({}, {"sample_weight": np.zeros(60)}, "sum to 0|zero"),
    ],
)
def test_bad_weights_raise(kw, fit_kw, match):
    X, y = _data()
    with pytest.raises(ValueError, match=match):
        _clf(**kw).fit(X, y, **fit_kw)


def test_balanced_weights_shift_predictions_to_the_rare_class():
    # 90 % of class 0: the unweighted fit predicts it more often than the balanced fit
    rng = np.random.default_rng(3)
    n = 200
    y = (rng.uniform(size=n) < 0.1).astype(int)
    X = rng.normal(0, 1, (n, 1, 1, 2)).astype(f32)
    X[:, 0, 0, 0] += 0.8 * y  # overlapping classes: the prior matters
    kw = dict(architecture="tabular", max_iter=30, learning_rate_init=0.02, batch_size=32)
    plain = _clf(**kw).fit(X, y)
    bal = _clf(class_weight="balanced", **kw).fit(X, y)
    assert np.mean(bal.predict(X) == 1) > np.mean(plain.predict(X) == 1) + 0.1


def test_class_weight_is_saved_in_model_files():
    X, y_str = _data()
    y = np.searchsorted(["a", "b", "c"], y_str)  # integer labels: a dict with int keys
    for cw in ({0: 0.5, 1: 2.0, 2: 1.0}, "balanced"):
        clf = _clf(class_weight=cw).fit(X, y)
        buf = io.BytesIO()
        save_model(clf, buf)
        buf.seek(0)
        back = load_model(buf)
        assert back.class_weight == cw and type(back.class_weight) is type(cw)
        assert _same(back, clf)
        np.testing.assert_array_equal(back.predict_proba(X), clf.predict_proba(X))
        assert clone(back).get_params()["class_weight"] == cw
