"""Property-based tests (hypothesis): random small layer stacks, shapes and dtypes through the
estimator, and a fuzz of the .ndlm reader (truncation, bit flips, crafted headers and stacks).

The default profile ``ndlm-ci`` is derandomized (the same examples every run, so CI is
reproducible) with few examples, so this module stays well under a minute on one core.
``NDLM_SK_HYPOTHESIS=ndlm-explore`` draws new, more numerous examples (a local bug hunt).
Crafted files that reach the C++ core are loaded in a child process, so a crash fails the test
instead of killing the run.
"""

import io
import json
import os
import subprocess
import sys
import textwrap
import warnings
import zipfile

import ndlm_sk
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from ndlm_sk import NDLMClassifier
from ndlm_sk.model_io import load_model, save_model
from sklearn.exceptions import ConvergenceWarning

settings.register_profile(
    "ndlm-ci",
    derandomize=True,
    deadline=None,
    database=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
settings.register_profile(
    "ndlm-explore",
    deadline=None,
    max_examples=300,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
_PROFILE = os.environ.get("NDLM_SK_HYPOTHESIS", "ndlm-ci")


def _examples(n):
    """Settings of one test: ``n`` examples in CI, the explore profile's number otherwise."""
    parent = settings.get_profile(_PROFILE)
    return settings(parent, max_examples=n if _PROFILE == "ndlm-ci" else parent.max_examples)


# ----------------------------------------------------------------------------- random stacks
@st.composite
def problems(draw):
    """(stack, X, y, parameters): a stack valid for the drawn image shape, and data of a drawn dtype."""
    h, w, c = draw(st.integers(2, 9)), draw(st.integers(2, 9)), draw(st.sampled_from([1, 2, 3]))
    n_classes = draw(st.integers(2, 3))
    n = draw(st.integers(n_classes, 9))
    stack, H, W = [], h, w
    for _ in range(draw(st.integers(0, 4))):
        kind = draw(st.sampled_from(["batchnorm", "lrn", "conv", "relu", "maxpool"]))
        if kind == "batchnorm":
            stack.append({"type": "batchnorm", "momentum": draw(st.sampled_from([0.1, 0.5, 1.0]))})
        elif kind == "lrn":
            stack.append({"type": "lrn", "size": draw(st.sampled_from([1, 3, 5]))})
        elif kind == "relu":
            stack.append({"type": "relu"})
        elif kind == "conv":
            pad = draw(st.integers(0, 1))
            kh, kw = draw(st.integers(1, min(3, H + 2 * pad))), draw(st.integers(1, min(3, W + 2 * pad)))
            stride = draw(st.integers(1, 2))
            filters = draw(st.integers(1, 4))
            stack.append({"type": "conv", "filters": filters, "kernel": (kh, kw), "stride": stride, "padding": pad})
            H, W = (H + 2 * pad - kh) // stride + 1, (W + 2 * pad - kw) // stride + 1
        else:
            pool = draw(st.integers(1, min(3, H, W)))
            stride = draw(st.integers(1, 2))
            stack.append({"type": "maxpool", "pool": pool, "stride": stride})
            H, W = (H - pool) // stride + 1, (W - pool) // stride + 1
    if draw(st.booleans()):
        stack += [{"type": "fc", "units": draw(st.integers(1, 5))}, {"type": "relu"}]
    stack.append({"type": "fc"})
    if draw(st.booleans()):
        stack.append({"type": "softmax"})
    dtype = draw(st.sampled_from([np.uint8, np.float32, np.float64]))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    X = rng.integers(0, 256, (n, h, w, c)).astype(dtype)  # integer values: exact in every dtype
    y = np.r_[np.arange(n_classes), rng.integers(0, n_classes, n - n_classes)]
    params = {
        "batch_size": draw(st.integers(1, n)),
        "max_iter": draw(st.integers(1, 2)),
        "random_state": seed,
        "shuffle": draw(st.sampled_from([True, False, "once"])),
        "input_normalization": draw(st.sampled_from(["none", "zerocenter", "zscore"])),
        "batchnorm_statistics": draw(st.sampled_from(["moving", "population"])),
        "augment": draw(st.booleans()),
        "predict_batch_size": draw(st.integers(1, 4)),
    }
    return stack, X, y, params


def _fit(stack, X, y, params):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return NDLMClassifier(stack, n_jobs=1, **params).fit(X, y)


@_examples(25)
@given(problems())
def test_random_stacks_fit_and_predict(problem):
    stack, X, y, params = problem
    clf = _fit(stack, X, y, params)
    proba = clf.predict_proba(X)
    assert proba.shape == (len(X), len(np.unique(y))) and proba.dtype == np.float32
    assert np.all(np.isfinite(proba)) and np.all(proba >= 0)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=0, atol=1e-5)
    np.testing.assert_array_equal(clf.predict(X), clf.classes_[np.argmax(proba, axis=1)])
    # the same seed gives the same bits
    again = _fit(stack, X, y, params)
    state, state2 = clf._net.get_state(), again._net.get_state()
    for k in ("params", "adam_m", "adam_v", "running"):
        np.testing.assert_array_equal(state[k], state2[k])
    np.testing.assert_array_equal(again.predict_proba(X), proba)
    # the same values in another dtype, and one image at a time, give the same bits
    for dtype in (np.uint8, np.float32, np.float64):
        np.testing.assert_array_equal(clf.predict_proba(X.astype(dtype)), proba)
    np.testing.assert_array_equal(clf.predict_proba(X[-1:]), proba[-1:])
    # and the saved model predicts them too
    buf = io.BytesIO()
    save_model(clf, buf)
    np.testing.assert_array_equal(load_model(io.BytesIO(buf.getvalue())).predict_proba(X), proba)


@_examples(15)
@given(
    st.lists(
        st.fixed_dictionaries(
            {
                "type": st.sampled_from(["batchnorm", "lrn", "conv", "relu", "maxpool", "fc", "softmax", "warp"]),
            },
            optional={
                "filters": st.integers(-2, 6),
                "kernel": st.integers(-1, 12),
                "stride": st.integers(-1, 12),
                "padding": st.integers(-1, 3),
                "pool": st.integers(-1, 12),
                "size": st.integers(-1, 6),
                "units": st.one_of(st.none(), st.integers(-1, 4)),
                "eps": st.sampled_from([-1.0, 0.0, 1e-5, float("nan")]),
            },
        ),
        min_size=0,
        max_size=4,
    )
)
def test_any_small_stack_fits_or_raises_value_error(stack):
    """Any small stack (invalid settings, unknown types, wrong order) either fits or raises a
    ValueError that names the problem: never another exception."""
    X = np.random.default_rng(0).integers(0, 256, (6, 8, 8, 3), dtype=np.uint8)
    y = np.arange(6) % 2
    try:
        clf = _fit(stack, X, y, {"max_iter": 1, "batch_size": 3, "random_state": 0})
    except ValueError as e:
        assert str(e)
        return
    assert np.all(np.isfinite(clf.predict_proba(X)))


# ----------------------------------------------------------------------------- the model-file reader
SMALL = [
    {"type": "batchnorm"},
    {"type": "conv", "filters": 2, "kernel": 3},
    {"type": "relu"},
    {"type": "maxpool", "pool": 2, "stride": 2},
    {"type": "fc"},
]
_X = np.random.default_rng(1).integers(0, 256, (6, 8, 8, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def model_blob():
    clf = _fit(SMALL, _X, np.arange(6) % 3, {"max_iter": 1, "batch_size": 3, "random_state": 0})
    buf = io.BytesIO()
    save_model(clf, buf)
    return buf.getvalue(), clf.predict_proba(_X)


@_examples(40)
@given(st.data())
def test_truncated_anywhere(model_blob, data):
    blob, _ = model_blob
    cut = data.draw(st.integers(0, len(blob) - 1))
    with pytest.raises(ValueError, match="not a valid ndlm_sk model file"):
        load_model(io.BytesIO(blob[:cut]))


@_examples(40)
@given(st.data())
def test_bit_flips(model_blob, data):
    """Flipped bits give a ValueError or (in the few zip fields no CRC covers) the same model."""
    blob, expected = model_blob
    flips = data.draw(st.lists(st.tuples(st.integers(0, len(blob) - 1), st.integers(0, 7)), min_size=1, max_size=3))
    bad = bytearray(blob)
    for pos, bit in flips:
        bad[pos] ^= 1 << bit
    try:
        model = load_model(io.BytesIO(bytes(bad)))
    except ValueError as e:
        assert "not a valid ndlm_sk model file" in str(e) or "model format version" in str(e)
        return
    np.testing.assert_array_equal(model.predict_proba(_X), expected)


def _members(blob):
    with zipfile.ZipFile(io.BytesIO(blob)) as zf:
        return {n: zf.read(n) for n in zf.namelist()}


def _zip(members):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for n, b in members.items():
            zf.writestr(n, b)
    return buf.getvalue()


_JSON = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-(2**70), 2**70),
        st.sampled_from([0, 1, -1, 2**20, 2**31, 2**63, 2**64]),
        st.floats(allow_nan=False, allow_infinity=False),
        st.text(max_size=5),
        st.sampled_from([{"__array__": "a0"}, {"__array__": "zz"}, {"__float__": "nan"}, {"__tuple__": [1, 2, 3]}]),
    ),
    lambda kids: st.one_of(st.lists(kids, max_size=3), st.dictionaries(st.text(max_size=4), kids, max_size=3)),
    max_leaves=6,
)
_HUGE = st.sampled_from([0, -1, 2**20, 2**20 - 8, 2**31 - 1, 2**31, 2**40, 2**63])


@st.composite
def crafted_headers(draw, header):
    """A header with one to three edits: a state field replaced by any JSON value, a layer setting
    of the stack (both ``architecture`` and ``layers_``) set to a huge or negative size, an array
    declared huge, or the format fields changed."""
    h = json.loads(json.dumps(header))
    state = h["state"]
    for _ in range(draw(st.integers(1, 3))):
        what = draw(st.sampled_from(["field", "net_field", "layer", "array", "format"]))
        if what == "field":
            state[draw(st.sampled_from(sorted(state)))] = draw(_JSON)
        elif what == "net_field":
            state["_net_state"][draw(st.sampled_from(sorted(state["_net_state"])))] = draw(_JSON)
        elif what == "layer":
            i = draw(st.integers(0, len(SMALL) - 1))
            key = draw(st.sampled_from(["filters", "kernel", "stride", "padding", "pool", "units", "size"]))
            value = draw(_HUGE)
            for stack in (state["architecture"], state["layers_"]):
                if isinstance(stack, list) and i < len(stack) and isinstance(stack[i], dict):
                    stack[i][key] = value
        elif what == "array":
            name = draw(st.sampled_from(sorted(h["arrays"])))
            h["arrays"][name]["shape"] = [draw(_HUGE)] * draw(st.integers(1, 3))
        else:
            h[draw(st.sampled_from(["format", "format_version", "estimator", "arrays"]))] = draw(_JSON)
    return h


_CHILD = textwrap.dedent("""
    import io, json, resource, sys
    import numpy as np
    resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))  # absurd sizes must not touch the machine
    from ndlm_sk.model_io import load_model
    for path in json.loads(sys.stdin.read()):
        print(json.dumps({"start": path}), flush=True)
        out = {"path": path, "load": None, "predict": None, "msg": ""}
        try:
            model = load_model(path)
        except BaseException as e:
            out.update(load=type(e).__name__, msg=str(e)[:300])
        else:
            shape = tuple(model.image_shape_)
            if int(np.prod(shape)) <= 1 << 16:
                try:
                    p = model.predict_proba(np.zeros((2,) + shape, np.uint8))
                    out["predict"] = "finite" if np.all(np.isfinite(p)) else "non-finite"
                except BaseException as e:
                    out.update(predict=type(e).__name__, msg=str(e)[:300])
        print(json.dumps(out), flush=True)
""")


def _load_in_children(paths, timeout=120):
    """Load (and predict with) each file in a child process; a crash is recorded, the rest rerun."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    src = os.path.dirname(os.path.dirname(os.path.abspath(ndlm_sk.__file__)))
    env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "")
    results, todo = {}, list(paths)
    while todo:
        try:
            p = subprocess.run(
                [sys.executable, "-c", _CHILD], input=json.dumps(todo), env=env, capture_output=True, text=True,
                timeout=timeout,
            )  # fmt: skip
            out, status = p.stdout, f"<exit {p.returncode}> {p.stderr[-500:]}"
        except subprocess.TimeoutExpired as e:
            out, status = (e.stdout or b"").decode() if isinstance(e.stdout, bytes) else (e.stdout or ""), "<hang>"
        started = None
        for line in out.splitlines():
            msg = json.loads(line)
            if "start" in msg:
                started = msg["start"]
            else:
                results[msg["path"]], started = msg, None
        if started is None and not any(t in results for t in todo):
            pytest.fail(f"the child failed before its first file: {status}")
        if started is not None:
            results[started] = {"path": started, "load": status, "predict": None, "msg": ""}
        todo = [t for t in todo if t not in results]
    return results


def test_crafted_headers_and_stacks(model_blob, tmp_path):
    """Crafted headers (any JSON in any state field, huge or negative layer sizes, huge declared
    arrays, odd format fields) are refused with a ValueError, or load into a model that predicts;
    never a crash, a hang or another exception."""
    blob, _ = model_blob
    members = _members(blob)
    header = json.loads(members["header.json"])
    paths = []

    @_examples(30)
    @given(crafted_headers(header))
    def craft(h):
        path = tmp_path / f"c{len(paths)}.ndlm"
        path.write_bytes(_zip(dict(members, **{"header.json": json.dumps(h).encode()})))
        paths.append(str(path))

    craft()
    results = _load_in_children(paths)
    clean = {"load": (None, "ValueError"), "predict": (None, "finite")}
    bad = {p: r for p, r in results.items() if any(r[k] not in ok for k, ok in clean.items())}
    if bad:
        p, r = next(iter(bad.items()))
        pytest.fail(
            f"{len(bad)} of {len(paths)} crafted files were not refused cleanly; first: {r}\n"
            f"header: {json.loads(_members(open(p, 'rb').read())['header.json'])}"
        )
    n_loaded = sum(r["load"] is None for r in results.values())
    assert n_loaded < len(paths)  # the edits do reach the checks
