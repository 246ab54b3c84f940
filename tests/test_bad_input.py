"""Bad input gives a clear Python exception that names the problem, never a crash or a hang.

The plain cases run in this process. The dangerous ones (odd dtypes, index ranges handed to the
C++ core, huge or degenerate shapes, absurd settings) run in a child interpreter under an
address-space limit: a segfault or abort there shows up as a negative return code (a signal)
instead of killing the test run, and the test names the case that did it.
"""

import json
import os
import re
import subprocess
import sys
import textwrap

import ndlm_sk
import numpy as np
import pytest
from ndlm_sk import NDLMClassifier
from sklearn.exceptions import NotFittedError

pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")

SIZE = 32


def images(n=12, size=SIZE, channels=3, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, channels), dtype=np.uint8)


def labels(n=12):
    return np.arange(n) % 3


def clf(**kw):
    params = dict(max_iter=1, batch_size=4, random_state=0, n_jobs=1)
    params.update(kw)
    return NDLMClassifier(**params)


@pytest.fixture(scope="module")
def fitted():
    return clf().fit(images(), labels())


# ------------------------------------------------------------------------ shapes of X
def test_1d_X():
    with pytest.raises(ValueError, match="1D"):
        clf().fit(np.zeros(12), labels())


def test_5d_X():
    with pytest.raises(ValueError, match="got 5 dimensions"):
        clf().fit(np.zeros((12, 4, 4, 4, 3), np.uint8), labels())


def test_5d_X_at_predict(fitted):
    with pytest.raises(ValueError, match="dimensions"):
        fitted.predict(np.zeros((2, SIZE, SIZE, 3, 1), np.uint8))


@pytest.mark.parametrize("shape", [(3, 40, 40, 3), (3, SIZE, SIZE, 1), (3, SIZE, 40, 3)])
def test_image_shape_differs_from_the_fitted_one(fitted, shape):
    got = "x".join(map(str, shape[1:]))
    with pytest.raises(ValueError, match=rf"{got}.*fitted on {SIZE}x{SIZE}x3"):
        fitted.predict(np.zeros(shape, np.uint8))


def test_rows_of_the_wrong_width_at_predict(fitted):
    with pytest.raises(ValueError, match="features"):
        fitted.predict(np.zeros((3, 100), np.float32))


def test_validation_images_of_another_shape():
    with pytest.raises(ValueError, match=r"40x40x3.*32x32x3"):
        clf().fit(images(), labels(), X_val=images(3, 40), y_val=[0, 1, 2])


def test_images_smaller_than_the_receptive_field():
    # NDLM: conv 5x5 then pool 5x5 -> needs >= 9x9; 8x8 leaves a 4x4 map for the 5x5 pool
    with pytest.raises(ValueError, match=r"8x8x3.*(pool|kernel).*larger than its input"):
        clf().fit(images(size=8), labels())


def test_rows_without_image_shape_are_1x1_images_too_small_for_ndlm():
    with pytest.raises(ValueError, match=r"1x1x3072.*larger than its input"):
        clf().fit(images().reshape(12, -1), labels())


def test_image_shape_that_does_not_match_the_rows():
    with pytest.raises(ValueError, match="image_shape"):
        clf(image_shape=(SIZE, SIZE, 1)).fit(images().reshape(12, -1), labels())
    with pytest.raises(ValueError, match="image_shape"):
        clf(image_shape=(SIZE, 96)).fit(images().reshape(12, -1), labels())
    with pytest.raises(ValueError, match="image_shape"):  # 4-D X disagreeing with image_shape
        clf(image_shape=(30, 30, 3)).fit(images(), labels())


def test_negative_image_shape():
    with pytest.raises(ValueError, match="image_shape"):
        clf(image_shape=(-SIZE, -SIZE, 3)).fit(images().reshape(12, -1), labels())


# ------------------------------------------------------------------------- values of X
@pytest.mark.parametrize("bad, word", [(np.nan, "NaN"), (np.inf, "infinity"), (-np.inf, "infinity")])
def test_non_finite_X(fitted, bad, word):
    X = images().astype(np.float32)
    X[3, 5, 7, 1] = bad
    with pytest.raises(ValueError, match=word):
        clf().fit(X, labels())
    with pytest.raises(ValueError, match=word):
        fitted.predict(X)
    with pytest.raises(ValueError, match=word):
        clf().fit(images(), labels(), X_val=X[2:5], y_val=[0, 1, 2])


def test_empty_X(fitted):
    with pytest.raises(ValueError, match="0 sample"):
        clf().fit(images()[:0], labels()[:0])
    with pytest.raises(ValueError, match="0 sample"):
        fitted.predict(images()[:0])
    with pytest.raises(ValueError, match="0 sample"):
        clf().fit(np.zeros((0, 10)), [])


def test_string_images():
    with pytest.raises(ValueError, match="(?i)string|convert"):
        clf().fit(np.full((12, SIZE, SIZE, 3), "a"), labels())


def test_object_images_with_none():
    with pytest.raises(ValueError, match="NaN|object|None"):
        clf().fit(np.full((12, SIZE, SIZE, 3), None, dtype=object), labels())


def test_complex_images():
    with pytest.raises(ValueError, match="(?i)complex"):
        clf().fit(images().astype(np.complex64), labels())


# ------------------------------------------------------------------------------------ y
def test_X_and_y_of_different_lengths():
    with pytest.raises(ValueError, match=r"12 samples.*11|inconsistent"):
        clf().fit(images(), labels()[:-1])
    with pytest.raises(ValueError, match="X_val has 3 samples but y_val has 2"):
        clf().fit(images(), labels(), X_val=images(3), y_val=[0, 1])


def test_single_class():
    with pytest.raises(ValueError, match="at least 2 classes"):
        clf().fit(images(), np.zeros(12, int))
    with pytest.raises(ValueError, match="at least 2 classes"):
        clf().partial_fit(images(), np.zeros(12, int), classes=[0])


@pytest.mark.filterwarnings("ignore:invalid value encountered in cast:RuntimeWarning")
def test_continuous_or_2d_or_missing_y():
    with pytest.raises(ValueError, match="Unknown label type"):
        clf().fit(images(), np.linspace(0, 1, 12))
    with pytest.raises(ValueError, match="1d"):
        clf().fit(images(), np.zeros((12, 2)))
    with pytest.raises(ValueError, match="NaN"):
        clf().fit(images(), np.array([0.0, 1.0, np.nan] * 4))
    with pytest.raises(ValueError, match="requires y"):
        clf().fit(images(), None)
    with pytest.raises(ValueError, match="y_val"):
        clf().fit(images(), labels(), X_val=images(3))


def test_unknown_labels_at_partial_fit():
    y = np.array(["a", "b", "zebra"] * 4)
    with pytest.raises(ValueError, match="zebra"):
        clf().partial_fit(images(), y, classes=["a", "b"])
    model = clf().partial_fit(images(), y, classes=["a", "b", "zebra"])
    with pytest.raises(ValueError, match="okapi"):
        model.partial_fit(images(), np.array(["a", "okapi", "b"] * 4))
    assert model.n_iter_ == 1  # the rejected calls changed nothing


def test_unknown_labels_in_the_validation_set():
    with pytest.raises(ValueError, match=r"\b9\b"):
        clf().fit(images(), labels(), X_val=images(3), y_val=[0, 1, 9])


def test_partial_fit_classes():
    with pytest.raises(ValueError, match="classes"):
        clf().partial_fit(images(), labels())
    model = clf().partial_fit(images(), labels(), classes=[0, 1, 2])
    with pytest.raises(ValueError, match="classes"):
        model.partial_fit(images(), labels(), classes=[0, 1, 2, 3])


# ---------------------------------------------------------------------------- parameters
def test_unknown_constructor_parameter_via_set_params():
    with pytest.raises(ValueError, match="Invalid parameter 'learning_rate'"):
        NDLMClassifier().set_params(learning_rate=0.1)
    with pytest.raises(TypeError):
        NDLMClassifier(learning_rate=0.1)


@pytest.mark.parametrize(
    "param, value",
    [
        ("learning_rate_init", -1e-3),
        ("learning_rate_init", 0),
        ("learning_rate_init", np.nan),
        ("learning_rate_init", "fast"),
        ("batch_size", 0),
        ("batch_size", -5),
        ("batch_size", 4.5),
        ("batch_size", True),
        ("beta_1", 1),
        ("beta_1", -0.1),
        ("beta_2", 1.0),
        ("epsilon", 0),
        ("alpha", -1e-4),
        ("max_iter", 0),
        ("n_iter_no_change", 0),
        ("tol", -1),
        ("validation_fraction", 0),
        ("validation_fraction", 1),
        ("input_scale", np.inf),
        ("predict_batch_size", 0),
        ("n_jobs", 0),
    ],
)
def test_invalid_parameter_values(param, value):
    with pytest.raises(ValueError, match=param):
        clf(**{param: value}).fit(images(), labels())


def test_infinite_learning_rate():
    with pytest.raises(ValueError, match="learning_rate_init"):
        clf(learning_rate_init=np.inf).fit(images(), labels())


@pytest.mark.parametrize(
    "architecture, message",
    [
        (
            [{"type": "conv", "filters": 2, "kernel": 3}, {"type": "maxpool", "pool": 40}, {"type": "fc"}],
            r"layer 1 \(maxpool\): pool window 40x40 is larger than its input 30x30",
        ),
        (
            [{"type": "conv", "filters": 2, "kernel": 33}, {"type": "fc"}],
            r"layer 0 \(conv\): kernel 33x33 is larger than its input 32x32",
        ),
        ([{"type": "dropout"}, {"type": "fc"}], "unknown layer type 'dropout'"),
        ([{"type": "conv", "filters": 2, "kernal": 3}, {"type": "fc"}], "unknown setting 'kernal'"),
        ([{"type": "relu", "inplace": True}, {"type": "fc"}], "unknown setting 'inplace'"),
        ([{"type": "conv", "kernel": 3}, {"type": "fc"}], "needs 'filters' and 'kernel'"),
        ([{"type": "conv", "filters": 2, "kernel": 3, "stride": 0}, {"type": "fc"}], "stride must be >= 1"),
        ([{"type": "conv", "filters": 2, "kernel": -3}, {"type": "fc"}], "kernel size must be >= 1"),
        ([{"type": "lrn", "size": 4}, {"type": "fc"}], "odd"),
        ([{"type": "batchnorm", "momentum": "x"}, {"type": "fc"}], "momentum"),
        ([{"type": "maxpool", "pool": [2, 3]}, {"type": "fc"}], "square"),
        ([{"type": "softmax"}, {"type": "fc"}], "softmax can only be the last layer"),
        ([{"type": "fc", "units": 7}], "n_classes = 3"),
        ([{"type": "relu"}], "n_classes = 3|no trainable parameters"),
        ([], "non-empty list"),
        (["conv"], "must be a dict with a 'type' key"),
        ("resnet", "unknown architecture 'resnet'"),
    ],
    ids=[
        "pool-larger-than-input",
        "kernel-larger-than-input",
        "unknown-layer-type",
        "unknown-setting",
        "setting-of-a-layer-without-settings",
        "conv-without-filters",
        "conv-stride-0",
        "negative-kernel",
        "even-lrn-window",
        "non-numeric-momentum",
        "non-square-pool",
        "softmax-not-last",
        "wrong-number-of-outputs",
        "no-fc",
        "empty-stack",
        "layer-not-a-dict",
        "unknown-preset",
    ],
)
def test_impossible_layer_stacks(architecture, message):
    with pytest.raises(ValueError, match=message):
        clf(architecture=architecture).fit(images(), labels())


# --------------------------------------------------------------------------- not fitted
@pytest.mark.parametrize("method", ["predict", "predict_proba", "predict_log_proba", "score", "get_layer_params"])
def test_not_fitted(method):
    args = {"score": (images(), labels()), "get_layer_params": ()}.get(method, (images(),))
    with pytest.raises(NotFittedError):
        getattr(NDLMClassifier(), method)(*args)


def test_warm_start_with_other_images_after_fit():
    model = clf(warm_start=True).fit(images(), labels())
    with pytest.raises(ValueError, match=r"40x40x3.*fitted on"):
        model.fit(images(size=40), labels())


# ---------------------------------------------------- dangerous cases, in a child process
# Each case is code run after the setup below; it raises the expected exception, or (``None``)
# must run through. The child catches every exception and reports it as one JSON line.
_SETUP = textwrap.dedent(f"""
    import numpy as np, pickle, warnings
    warnings.simplefilter("ignore")
    from ndlm_sk import NDLMClassifier
    rng = np.random.default_rng(0)
    X = rng.integers(0, 256, (12, {SIZE}, {SIZE}, 3), dtype=np.uint8)
    y = np.arange(12) % 3
    def clf(arch="ndlm", **kw):
        p = dict(max_iter=1, batch_size=4, random_state=0, n_jobs=1); p.update(kw)
        return NDLMClassifier(arch, **p)
    model = clf().fit(X, y)
    net = model._net  # the C++ network: its bindings promise to check what they are given
    idx = np.arange(4, dtype=np.int64)
    yi = np.zeros(4, np.int32)
""")

# name: (code, expected exception class names ("A|B"), None for success or "*" for anything but
# a crash or a hang, regex the exception message must match)
DANGEROUS = {
    # dtypes of X through the public API
    "bool images": ("clf().fit(X > 100, y).predict(X > 100)", None, ""),
    "int64 images": ("clf().fit(X.astype(np.int64), y).predict(X.astype(np.int64))", None, ""),
    "float16 images": ("clf().fit(X.astype(np.float16), y).predict(X.astype(np.float16))", None, ""),
    "big-endian float32": ("clf().fit(X.astype('>f4'), y).predict(X.astype('>f4'))", None, ""),
    "fortran order": ("clf().fit(np.asfortranarray(X), y).predict(np.asfortranarray(X))", None, ""),
    "negative strides": ("clf().fit(X[::-1, ::-1, ::-1], y).predict(X[::-1, :, ::-1])", None, ""),
    "strided view": ("model.predict(np.zeros((4, 64, 64, 3), np.uint8)[:, ::2, ::2])", None, ""),
    "bytes images": ("clf().fit(np.full((12, 32, 32, 3), b'x'), y)", "ValueError", "(?i)convert|string|bytes"),
    "object images": ("clf().fit(np.full((12, 32, 32, 3), 'a', dtype=object), y)", "ValueError", "(?i)convert|string"),
    "structured images": (
        "clf().fit(np.zeros((12, 32, 32, 3), dtype='i4,f4'), y)",
        "ValueError|TypeError",
        "(?i)dtype|convert|structured|void",
    ),
    # converted to numbers, as scikit-learn's check_array does: only must not crash
    "datetime images": ("clf().fit(np.zeros((12, 32, 32, 3), dtype='M8[s]'), y)", "*", ""),
    "string images at predict": ("model.predict(np.full((2, 32, 32, 3), 'a'))", "ValueError", "(?i)convert|string"),
    # index issues handed straight to the core
    "core: image index too large": ("net.train_step(X, np.array([0, 12]), yi[:2])", "ValueError", "index out of range"),
    "core: negative image index": ("net.train_step(X, np.array([-1, 0]), yi[:2])", "ValueError", "index out of range"),
    "core: huge image index": ("net.train_step(X, np.array([2**62]), yi[:1])", "ValueError", "index out of range"),
    "core: label out of range": ("net.train_step(X, idx, np.array([0, 1, 2, 3]))", "ValueError", "label out of range"),
    "core: negative label": ("net.train_step(X, idx, np.array([0, -1, 2, 1]))", "ValueError", "label out of range"),
    "core: labels and indices disagree": ("net.train_step(X, idx, yi[:3])", "ValueError", "one label per index"),
    "core: empty mini-batch": ("net.train_step(X, idx[:0], yi[:0])", "ValueError", "empty"),
    "core: float64 images": ("net.train_step(X.astype(np.float64), idx, yi)", "ValueError", "uint8 or float32"),
    "core: non-contiguous images": ("net.train_step(np.asfortranarray(X), idx, yi)", "ValueError", "C-contiguous"),
    "core: 3-D images": ("net.train_step(X[..., 0], idx, yi)", "ValueError", "dimensions"),
    "core: other image size": ("net.train_step(np.zeros((4, 40, 40, 3), np.uint8), idx, yi)", "ValueError", "40x40x3"),
    "core: predict index too large": ("net.predict_proba(X, np.array([3, 99]))", "ValueError", "index out of range"),
    "core: predict NaN indices": (
        "net.predict_proba(X, np.array([np.nan, 1.0]))",
        "ValueError",
        "index out of range|integer",
    ),
    "core: predict chunk 0": ("net.predict_proba(X, None, 0)", "ValueError", "chunk"),
    "core: state of the wrong size": (
        "s = net.get_state(); s['params'] = s['params'][:5]; net.set_state(s)",
        "ValueError",
        "expected .* values, got 5",
    ),
    "core: state without a key": ("s = net.get_state(); del s['adam_m']; net.set_state(s)", "ValueError", "adam_m"),
    "core: layer params of the wrong size": (
        "p = net.layer_params(); p[2]['weight'] = np.zeros(3); net.set_layer_params(p)",
        "ValueError",
        "expected .* values, got 3",
    ),
    # a corrupted pickle
    "truncated pickled state": (
        "s = model.__getstate__(); s['_net_state']['params'] = s['_net_state']['params'][:7]; NDLMClassifier().__setstate__(s)",  # noqa: E501
        "ValueError",
        "got 7",
    ),
    "pickled state with another layer stack": (  # the network is rebuilt from layers_, not architecture
        "s = model.__getstate__(); "
        "s['layers_'] = [dict(l, filters=l['filters'] + 1) if l['type'] == 'conv' else l for l in s['layers_']]; "
        "NDLMClassifier().__setstate__(s)",
        "ValueError",
        "params: expected",
    ),
    # huge or degenerate shapes and settings
    "zero-height images": ("clf().fit(np.zeros((12, 0, 32, 3), np.uint8), y)", "ValueError", "0x32x3"),
    "zero-channel images": (
        "clf().fit(np.zeros((12, 32, 32, 0), np.uint8), y)",
        "ValueError",
        "32x32x0|positive|feature",
    ),
    "1x1 images": ("clf().fit(np.zeros((12, 1, 1, 3), np.uint8), y)", "ValueError", "1x1x3.*larger than its input"),
    "1x100000 images": (
        "clf().fit(np.zeros((12, 1, 100000, 1), np.uint8), y)",
        "ValueError",
        "1x100000x1.*larger than its input",
    ),
    "huge fc layer": ("clf([{'type': 'fc', 'units': 10**9}, {'type': 'fc'}]).fit(X, y)", "MemoryError|ValueError", ""),
    "huge padding": (
        "clf([{'type': 'conv', 'filters': 1, 'kernel': 1, 'padding': 10**6}, {'type': 'fc'}]).fit(X, y)",
        "MemoryError|ValueError",
        "",
    ),
    # the message must not blame the 1x1 kernel (2 * padding overflows a C++ int)
    "padding overflowing int": (
        "clf([{'type': 'conv', 'filters': 1, 'kernel': 1, 'padding': 2**30}, {'type': 'fc'}]).fit(X, y)",
        "MemoryError|ValueError",
        r"^(?!.*kernel 1x1 is larger than its input)",
    ),
    "filters beyond int": (
        "clf([{'type': 'conv', 'filters': 2**40, 'kernel': 3}, {'type': 'fc'}]).fit(X, y)",
        "ValueError",
        "filters",
    ),
    "pool window 2**31-1": (
        "clf([{'type': 'maxpool', 'pool': 2**31 - 1}, {'type': 'fc'}]).fit(X, y)",
        "ValueError",
        "larger than its input|pool must be at most 1048576, got 2147483647",
    ),
    "stride larger than the input": (
        "clf([{'type': 'conv', 'filters': 1, 'kernel': 3, 'stride': 1000}, {'type': 'fc'}]).fit(X, y).predict(X)",
        None,
        "",
    ),
    "stride 2**31-1": (
        "clf([{'type': 'conv', 'filters': 1, 'kernel': 3, 'stride': 2**31 - 1}, {'type': 'fc'}]).fit(X, y).predict(X)",
        "ValueError",
        "stride must be at most",
    ),
    "huge batch sizes": ("clf(batch_size=10**12, predict_batch_size=2**40).fit(X, y).predict(X)", None, ""),
    "diverging training": (
        "clf(learning_rate_init=1e30, max_iter=3).fit(X.astype(np.float32) * 1e30, y)",
        "RuntimeError|ValueError",
        "(?i)diverg|finite",
    ),
    "width beyond int (zero-size)": (
        "clf().fit(np.zeros((2, 1, 2**31, 0), np.uint8), [0, 1])",
        "ValueError",
        "2147483648|too large|positive",
    ),
    "n_jobs=100000": ("clf(n_jobs=100000).fit(X, y)", "InvalidParameterError", "n_jobs"),
}

# Cases that fail today because of a bug in the estimator or core (see the report).
KNOWN_BUGS = {}  # name -> reason, for cases marked xfail(strict=True) until fixed

_CHILD = textwrap.dedent("""
    import json, resource, sys, traceback
    # keep absurd allocations from touching the shared machine: 6 GB of address space
    resource.setrlimit(resource.RLIMIT_AS, (6 << 30, 6 << 30))
    cases = json.loads(sys.stdin.read())
    ns = {}
    exec(SETUP, ns)
    for name, code in cases:
        print(json.dumps({"start": name}), flush=True)
        try:
            exec(code, dict(ns))
            out = {"name": name, "exc": None, "msg": ""}
        except BaseException as e:
            out = {"name": name, "exc": type(e).__name__, "msg": str(e)[:2000]}
        print(json.dumps(out), flush=True)
    print(json.dumps({"done": True}), flush=True)
""")


def _run_children(cases, timeout=120):
    """Run the cases in child interpreters; a crash or hang is recorded and the rest rerun."""
    env = dict(os.environ)
    src = os.path.dirname(os.path.dirname(os.path.abspath(ndlm_sk.__file__)))
    env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "")
    env["OMP_NUM_THREADS"] = "1"
    script = f"SETUP = {_SETUP!r}\n" + _CHILD
    results, todo = {}, list(cases)
    while todo:
        try:
            p = subprocess.run(
                [sys.executable, "-c", script],
                input=json.dumps(todo),
                env=env,
                capture_output=True,
                text=True,
                timeout=timeout,
            )
            out, rc, hung = p.stdout, p.returncode, False
        except subprocess.TimeoutExpired as e:
            out = e.stdout.decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
            rc, hung = None, True
        started, finished = None, 0
        for line in out.splitlines():
            msg = json.loads(line)
            if "start" in msg:
                started = msg["start"]
            elif "name" in msg:
                results[msg["name"]] = msg
                started, finished = None, finished + 1
        if started is None and finished == 0:  # died before its first case: the setup failed
            pytest.fail(f"child failed during setup (rc={rc}): {'hang' if hung else p.stderr[-2000:]}")
        if started is not None:  # this case crashed or hung the child
            results[started] = {
                "name": started,
                "exc": "<hang>" if hung else f"<rc {rc}>",
                "msg": "" if hung else p.stderr[-1000:],
                "rc": rc,
            }
        todo = [(n, c) for n, c in todo if n not in results]
    return results


@pytest.fixture(scope="module")
def dangerous_results():
    return _run_children([(name, code) for name, (code, _, _) in DANGEROUS.items()])


@pytest.mark.parametrize(
    "name",
    [
        pytest.param(n, marks=pytest.mark.xfail(strict=True, reason=KNOWN_BUGS[n])) if n in KNOWN_BUGS else n
        for n in DANGEROUS
    ],
)
def test_dangerous_input_in_a_child_process(dangerous_results, name):
    code, expected, pattern = DANGEROUS[name]
    r = dangerous_results[name]
    assert not (r["exc"] or "").startswith("<"), (
        f"{name!r} killed or hung the interpreter ({r['exc']}): {code}\n{r['msg']}"
    )
    if expected == "*":
        return
    if expected is None:
        assert r["exc"] is None, f"{name!r} raised {r['exc']}: {r['msg']}"
    else:
        assert r["exc"] in expected.split("|"), f"{name!r} raised {r['exc']}: {r['msg']}"
        assert re.search(pattern, r["msg"]), f"{name!r}: message {r['msg']!r} does not match {pattern!r}"


def test_nested_lists_of_images(fitted):
    """X.tolist() of an image array predicts as the array does; ragged images get a clear message."""
    X = images(6)
    np.testing.assert_array_equal(fitted.predict_proba(X.tolist()), fitted.predict_proba(X))
    ragged = X.tolist()
    ragged[2] = ragged[2][:-1]
    with pytest.raises(ValueError, match="nested list of images of different shapes"):
        fitted.predict(ragged)
