"""The .ndlm model files: exact round trips, continued training, and clear errors on bad files."""

import copy
import io
import json
import math
import warnings
import zipfile

import joblib
import numpy as np
import pytest
from ndlm_sk import __version__
from ndlm_sk.datasets import load_pbc_sample
from ndlm_sk.estimator import NDLMClassifier
from ndlm_sk.model_io import FORMAT_VERSION, _decode, _encode, load_model, save_model
from sklearn.exceptions import ConvergenceWarning

SMALL = [
    {"type": "batchnorm"},
    {"type": "conv", "filters": 4, "kernel": (3, 5), "stride": 2, "padding": 1},
    {"type": "relu"},
    {"type": "maxpool", "pool": 3, "stride": 3},
    {"type": "fc"},
    {"type": "softmax"},
]


@pytest.fixture(scope="module")
def data():
    return load_pbc_sample(image_size=32)


def _fit(data, arch="ndlm", y=None, **kw):
    X, y0 = data
    params = dict(max_iter=1, batch_size=32, random_state=0, n_jobs=1)
    params.update(kw)
    clf = NDLMClassifier(arch, **params)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return clf.fit(X, y0 if y is None else y)


@pytest.fixture(scope="module")
def fitted(data):
    return _fit(data)


@pytest.fixture(scope="module")
def model_file(fitted, tmp_path_factory):
    path = tmp_path_factory.mktemp("model") / "m.ndlm"
    save_model(fitted, path)
    return path


def _assert_same_params(a, b):
    pa, pb = a.get_params(), b.get_params()
    ra, rb = pa.pop("random_state"), pb.pop("random_state")
    assert pa == pb
    if isinstance(ra, np.random.RandomState):
        assert isinstance(rb, np.random.RandomState)
        sa, sb = ra.get_state(), rb.get_state()
        assert sa[0] == sb[0] and sa[2:] == sb[2:]
        np.testing.assert_array_equal(sa[1], sb[1])
    else:
        assert ra == rb


def _assert_same_model(a, b, X):
    _assert_same_params(a, b)
    np.testing.assert_array_equal(a.classes_, b.classes_)
    assert a.classes_.dtype == b.classes_.dtype
    for name in (
        "image_shape_",
        "layers_",
        "n_iter_",
        "t_",
        "loss_curve_",
        "train_scores_",
        "n_params_",
        "n_features_in_",
        "_seed",
        "loss_",
    ):
        assert getattr(a, name) == getattr(b, name), name
    sa, sb = a._net.get_state(), b._net.get_state()
    for k in sa:
        np.testing.assert_array_equal(sa[k], sb[k])
    np.testing.assert_array_equal(a.predict_proba(X), b.predict_proba(X))


def test_round_trip_is_exact(fitted, model_file, data):
    X, _ = data
    loaded = load_model(model_file)
    _assert_same_model(fitted, loaded, X)
    np.testing.assert_array_equal(loaded.predict(X), fitted.predict(X))
    with zipfile.ZipFile(model_file) as zf:
        header = json.loads(zf.read("header.json"))
    assert header["format"] == "ndlm_sk-model"
    assert header["format_version"] == FORMAT_VERSION == 1
    assert header["library_version"] == __version__
    # the arrays are plain .npy members, readable by numpy without pickle
    with np.load(model_file, allow_pickle=False) as npz:
        assert npz["a0"].dtype.kind in "fU"


def test_partial_fit_continues_exactly(fitted, data, tmp_path):
    X, y = data
    a = copy.deepcopy(fitted)  # (the module's model stays as it is)
    path = tmp_path / "m.ndlm"
    save_model(a, path)
    b = load_model(path)
    a.partial_fit(X[:96], y[:96])
    b.partial_fit(X[:96], y[:96])
    assert b.t_ == a.t_ and b._net.get_state()["adam_step"] == a._net.get_state()["adam_step"]
    np.testing.assert_array_equal(a.predict_proba(X), b.predict_proba(X))
    # warm_start fit also continues from the saved weights and Adam state
    a.set_params(warm_start=True, max_iter=1)
    b.set_params(warm_start=True, max_iter=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        a.fit(X[:96], y[:96])
        b.fit(X[:96], y[:96])
    np.testing.assert_array_equal(a.predict_proba(X), b.predict_proba(X))


def test_other_labels_stacks_and_attributes(data):
    """int labels, object-dtype labels, a tuple kernel in a custom stack, early stopping
    (None / -inf / float attributes), a RandomState, and a file object instead of a path."""
    X, y = data
    codes = {c: i for i, c in enumerate(sorted(set(y)))}
    y_obj = np.array(list(y), dtype=object)
    for labels, kw in (
        (np.array([codes[c] for c in y]), dict(random_state=np.random.RandomState(5))),
        (y_obj, dict(early_stopping=True, max_iter=2, image_shape=(32, 32, 3))),
    ):
        clf = _fit(data, SMALL, y=labels, **kw)
        buf = io.BytesIO()
        save_model(clf, buf)
        buf.seek(0)
        loaded = load_model(buf)
        _assert_same_model(clf, loaded, X)
        assert loaded.validation_scores_ == clf.validation_scores_
        assert type(loaded.random_state) is type(clf.random_state)
    assert loaded.architecture == SMALL
    assert isinstance(loaded.architecture[1]["kernel"], tuple)


def test_unfitted_round_trip(tmp_path):
    clf = NDLMClassifier("dfcn", max_iter=3, image_shape=(8, 8, 3))
    save_model(clf, tmp_path / "u.ndlm")
    loaded = load_model(tmp_path / "u.ndlm")
    _assert_same_params(loaded, clf)
    assert not hasattr(loaded, "classes_")


def test_generic_encoding_round_trip():
    arrays = {}
    state = {
        "t": (1, (2.5, "x"), [None, True]),
        "f": [math.inf, -math.inf, 1e-300],
        "n": math.nan,
        "np": [np.float64(0.1), np.int32(-3), np.bool_(True), np.float32(1.5)],
        "tag_lookalike": {"__tuple__": [1, 2]},
        "two_keys": {"__array__": "a0", "other": 1},
        "arr": np.arange(6, dtype=np.int16).reshape(2, 3),
        "strs": np.array(["a", "bé"]),
        "objs": np.array(["x", 3, None], dtype=object),
        "empty": np.zeros((0, 2)),
        "int_keys": {0: 1.0, np.int64(3): 2.5, "s": None, 2.5: [1]},  # class_weight={label: weight}
    }
    enc = _encode(state, arrays, "state")
    text = json.dumps(enc, allow_nan=False)  # standard JSON only
    dec = _decode(json.loads(text), arrays)
    assert dec["t"] == (1, (2.5, "x"), [None, True])
    assert dec["f"] == [math.inf, -math.inf, 1e-300] and math.isnan(dec["n"])
    assert [type(v) for v in dec["np"]] == [np.float64, np.int32, np.bool_, np.float32]
    assert dec["np"][0] == np.float64(0.1) and dec["np"][3] == np.float32(1.5)
    assert dec["tag_lookalike"] == {"__tuple__": [1, 2]}
    assert dec["two_keys"] == {"__array__": "a0", "other": 1}
    assert dec["int_keys"] == {0: 1.0, 3: 2.5, "s": None, 2.5: [1]}
    assert [type(k) for k in dec["int_keys"]] == [int, np.int64, str, float]
    for k in ("arr", "strs", "objs", "empty"):
        assert dec[k].dtype == state[k].dtype and dec[k].shape == state[k].shape
        np.testing.assert_array_equal(dec[k], state[k])
    with pytest.raises(TypeError, match="cannot store"):
        _encode({"f": lambda: 0}, {}, "state")
    with pytest.raises(TypeError, match="object array"):
        _encode(np.array([object()]), {}, "state")
    with pytest.raises(TypeError, match="dict keys"):
        _encode({(1, 2): 0}, {}, "state")
    with pytest.raises(ValueError, match="bad dict key"):
        _decode({"__items__": [[[1, 2], 0]]}, {})


# ----------------------------------------------------------------------------- broken files
def _members(path):
    with zipfile.ZipFile(path) as zf:
        return {n: zf.read(n) for n in zf.namelist()}


def _write(path, members):
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for n, b in members.items():
            zf.writestr(n, b)


def _edit_header(src, dst, edit):
    m = _members(src)
    header = json.loads(m["header.json"])
    edit(header)
    m["header.json"] = json.dumps(header).encode()
    _write(dst, m)


def test_not_a_zip_empty_or_missing(tmp_path):
    bad = tmp_path / "bad.ndlm"
    bad.write_text("this is not a model")
    with pytest.raises(ValueError, match="not a ZIP"):
        load_model(bad)
    bad.write_bytes(b"")
    with pytest.raises(ValueError, match="not a valid ndlm_sk model"):
        load_model(bad)
    with pytest.raises(FileNotFoundError):
        load_model(tmp_path / "missing.ndlm")
    # a zip that is not a model
    _write(bad, {"readme.txt": b"hello"})
    with pytest.raises(ValueError, match="header.json"):
        load_model(bad)
    # a joblib pickle given to load_model is rejected, never unpickled
    joblib.dump({"a": 1}, tmp_path / "p.ndlm")
    with pytest.raises(ValueError, match="not a valid ndlm_sk model"):
        load_model(tmp_path / "p.ndlm")


def test_truncated(model_file, tmp_path):
    blob = model_file.read_bytes()
    bad = tmp_path / "t.ndlm"
    for n in (10, 100, len(blob) // 3, len(blob) // 2, len(blob) - 30, len(blob) - 1):
        bad.write_bytes(blob[:n])
        with pytest.raises(ValueError, match="not a valid ndlm_sk model"):
            load_model(bad)


def test_flipped_bytes(model_file, data, tmp_path):
    """A flipped byte anywhere gives a ValueError, or (in the few zip fields that no checksum
    covers, such as timestamps) a model identical to the original: never a crash or a silently
    different model."""
    X, _ = data
    blob = bytearray(model_file.read_bytes())
    expected = load_model(model_file).predict_proba(X[:8])
    bad = tmp_path / "f.ndlm"
    rng = np.random.default_rng(0)
    errors = 0
    positions = sorted(set(rng.integers(0, len(blob), 60).tolist()))
    for pos in positions:
        flipped = bytearray(blob)
        flipped[pos] ^= 0x5A
        bad.write_bytes(bytes(flipped))
        try:
            model = load_model(bad)
        except ValueError as e:
            assert "model" in str(e)
            errors += 1
            continue
        np.testing.assert_array_equal(model.predict_proba(X[:8]), expected)
    assert errors >= 0.8 * len(positions)


def test_wrong_format_version(model_file, tmp_path):
    bad = tmp_path / "v.ndlm"
    _edit_header(model_file, bad, lambda h: h.update(format_version=FORMAT_VERSION + 1))
    with pytest.raises(ValueError, match="format version 2 .*reads format version 1"):
        load_model(bad)
    _edit_header(model_file, bad, lambda h: h.pop("format_version"))
    with pytest.raises(ValueError, match="format version None"):
        load_model(bad)
    _edit_header(model_file, bad, lambda h: h.update(format="something-else"))
    with pytest.raises(ValueError, match="does not declare format"):
        load_model(bad)


def test_arrays_that_do_not_fit_the_architecture(data, tmp_path):
    clf = _fit(data, SMALL)
    src = tmp_path / "small.ndlm"
    save_model(clf, src)
    bad = tmp_path / "bigger.ndlm"

    def bigger_conv(h):  # declared stack with more filters than the stored weights
        for stack in (h["state"]["architecture"], h["state"]["layers_"]):
            stack[1]["filters"] = 6

    _edit_header(src, bad, bigger_conv)
    with pytest.raises(ValueError, match="do not fit the declared model.*params: expected"):
        load_model(bad)

    # the network is rebuilt from the fitted layers_ (not from the architecture parameter)
    _edit_header(src, bad, lambda h: h["state"]["layers_"][1].update(filters=6))
    with pytest.raises(ValueError, match="do not fit the declared model.*params: expected"):
        load_model(bad)
    _edit_header(src, bad, lambda h: h["state"]["layers_"][1].update(kernel=[3, 5]))  # a list, not a tuple
    with pytest.raises(ValueError, match=r"layer stack \(layers_\) is not in the form the core builds"):
        load_model(bad)

    _edit_header(src, bad, lambda h: h["state"].update(image_shape_={"__tuple__": [40, 40, 3]}, n_features_in_=4800))
    with pytest.raises(ValueError, match="do not fit the declared model"):
        load_model(bad)

    # the architecture parameter only builds the next fresh fit: a set_params after the fit may
    # have changed it, so the file loads and predicts as saved, and refitting reports the layer
    _edit_header(src, bad, lambda h: h["state"]["architecture"].append({"type": "warp"}))
    back = load_model(bad)
    np.testing.assert_array_equal(back.predict_proba(data[0]), clf.predict_proba(data[0]))
    with pytest.raises(ValueError, match="unknown layer type"):
        back.fit(*data)

    _edit_header(src, bad, lambda h: h["state"].update(image_shape_=[32, 32, 3]))
    with pytest.raises(ValueError, match="image_shape_"):
        load_model(bad)

    _edit_header(
        src, bad, lambda h: h["state"].pop("_net_state") and h["state"].pop("_seed") or h["state"].update(_net_state={})
    )
    with pytest.raises(ValueError, match="lacks"):
        load_model(bad)


def test_array_table_inconsistencies(model_file, tmp_path):
    bad = tmp_path / "a.ndlm"

    # declared shape differs from the stored array
    def shrink(h):
        name = next(k for k, d in h["arrays"].items() if d["dtype"] == "<f4")
        h["arrays"][name]["shape"] = [3]

    _edit_header(model_file, bad, shrink)
    with pytest.raises(ValueError, match="declared|larger"):
        load_model(bad)
    # an object (pickle) array is refused by declaration
    _edit_header(model_file, bad, lambda h: h["arrays"]["a0"].update(dtype="|O"))
    with pytest.raises(ValueError, match="bad declaration"):
        load_model(bad)
    # a missing member, a reference to an undeclared array, a header that is not JSON
    m = _members(model_file)
    del m["a1.npy"]
    _write(bad, m)
    with pytest.raises(ValueError, match="missing"):
        load_model(bad)
    _edit_header(model_file, bad, lambda h: h["state"].update(classes_={"__array__": "zz"}))
    with pytest.raises(ValueError, match="missing array"):
        load_model(bad)
    m = _members(model_file)
    m["header.json"] = b"{not json"
    _write(bad, m)
    with pytest.raises(ValueError, match="not valid JSON"):
        load_model(bad)
    # an .npy member holding a pickled object array
    m = _members(model_file)
    buf = io.BytesIO()
    np.lib.format.write_array(buf, np.array([{"x": 1}], dtype=object), allow_pickle=True)
    header = json.loads(m["header.json"])
    name = next(iter(header["arrays"]))
    m[f"{name}.npy"] = buf.getvalue()
    _write(bad, m)
    with pytest.raises(ValueError, match="not a valid ndlm_sk model"):
        load_model(bad)


def test_joblib_still_works(fitted, data, tmp_path):
    X, _ = data
    joblib.dump(fitted, tmp_path / "m.joblib")
    np.testing.assert_array_equal(joblib.load(tmp_path / "m.joblib").predict_proba(X), fitted.predict_proba(X))


def test_save_is_atomic_and_rejects_other_objects(fitted, tmp_path):
    with pytest.raises(TypeError, match="NDLMClassifier"):
        save_model(object(), tmp_path / "x.ndlm")
    path = tmp_path / "m.ndlm"
    save_model(fitted, path)
    save_model(fitted, path)  # overwrite
    assert [p.name for p in tmp_path.iterdir()] == ["m.ndlm"]  # no temporary file left


# ----------------------------------------------------------------------------- one writer, one dispatcher
def test_atomic_write_names_the_target_and_leaves_nothing(tmp_path):
    from ndlm_sk._fileio import atomic_write

    with pytest.raises(FileNotFoundError) as e:
        atomic_write(tmp_path / "missing" / "m.ndlm", lambda f: f.write(b"x"))
    assert e.value.filename == str(tmp_path / "missing" / "m.ndlm")  # not the temporary file
    target = tmp_path / "a.json"
    atomic_write(target, lambda f: f.write("old"), text=True)

    def fail(f):
        f.write(b"half")
        raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError, match="interrupted"):
        atomic_write(target, fail)
    assert target.read_text() == "old"  # the old content survives an interrupted write
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]


def test_load_model_file_by_content(fitted, data, tmp_path):
    from ndlm_sk.model_io import load_model_file, save_model_file

    X, _ = data
    want = fitted.predict_proba(X[:8])
    save_model_file(fitted, tmp_path / "m.ndlm")
    save_model_file(fitted, tmp_path / "m.joblib")
    for name in ("m.ndlm", "m.joblib"):
        np.testing.assert_array_equal(load_model_file(tmp_path / name).predict_proba(X[:8]), want)
    # an .ndlm archive renamed .joblib is read as .ndlm (nothing unpickled), not fed to joblib
    (tmp_path / "renamed.joblib").write_bytes((tmp_path / "m.ndlm").read_bytes())
    np.testing.assert_array_equal(load_model_file(tmp_path / "renamed.joblib").predict_proba(X[:8]), want)
    # a pickle named .ndlm is never unpickled: refused with a hint
    (tmp_path / "pickle.ndlm").write_bytes((tmp_path / "m.joblib").read_bytes())
    with pytest.raises(ValueError, match=r"pickle\.ndlm: not an \.ndlm archive but looks like a joblib"):
        load_model_file(tmp_path / "pickle.ndlm")
    # a truncated joblib file: one ValueError naming the file (joblib says "EOF: reading array data")
    blob = (tmp_path / "m.joblib").read_bytes()
    for cut in (0, 10, len(blob) // 2, len(blob) - 1):
        (tmp_path / "cut.joblib").write_bytes(blob[:cut])
        with pytest.raises(ValueError, match=r"cut\.joblib: not a readable joblib model file"):
            load_model_file(tmp_path / "cut.joblib")
    joblib.dump({"not": "a model"}, tmp_path / "dict.joblib")
    with pytest.raises(ValueError, match=r"dict\.joblib: holds a dict, not an NDLMClassifier"):
        load_model_file(tmp_path / "dict.joblib")
    with pytest.raises(ValueError, match=r"m\.txt: a model file must end in \.ndlm"):
        load_model_file(tmp_path / "m.txt")
    with pytest.raises(FileNotFoundError):
        load_model_file(tmp_path / "absent.ndlm")


def test_check_save_path(tmp_path):
    from ndlm_sk.model_io import check_save_path

    check_save_path(tmp_path / "m.ndlm")
    check_save_path(tmp_path / "m.joblib")
    with pytest.raises(FileNotFoundError, match="does not exist") as e:
        check_save_path(tmp_path / "missing" / "dir" / "m.ndlm")
    assert e.value.filename == str(tmp_path / "missing" / "dir" / "m.ndlm")
    with pytest.raises(ValueError, match="must end in"):
        check_save_path(tmp_path / "m.onnx")
    (tmp_path / "d.ndlm").mkdir()
    with pytest.raises(IsADirectoryError):
        check_save_path(tmp_path / "d.ndlm")


def test_limits_and_version_have_one_source():
    """The thread / size limits Python checks are the core's; the version is written once."""
    import re

    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    from pathlib import Path

    import ndlm_sk
    from ndlm_sk import _core
    from ndlm_sk.estimator import _MAX_DIM, _MAX_THREADS

    assert (_MAX_THREADS, _MAX_DIM) == (_core.MAX_THREADS, _core.MAX_DIM)
    _core.Network([{"type": "fc"}], [1, 1, 2], 2, n_threads=_MAX_THREADS)
    with pytest.raises(ValueError, match="n_threads"):
        _core.Network([{"type": "fc"}], [1, 1, 2], 2, n_threads=_MAX_THREADS + 1)
    NDLMClassifier(n_jobs=_MAX_THREADS)._check_params(("n_jobs",))
    with pytest.raises(ValueError, match="n_jobs"):
        NDLMClassifier(n_jobs=_MAX_THREADS + 1)._check_params(("n_jobs",))
    root = Path(__file__).resolve().parents[1]  # the source tree (ndlm_sk may be installed elsewhere)
    project = tomllib.loads((root / "pyproject.toml").read_text())
    assert "version" not in project["project"] and project["project"]["dynamic"] == ["version"]
    source = project["tool"]["scikit-build"]["metadata"]["version"]["input"]
    assert re.findall(r'^__version__ = "(.+)"', (root / source).read_text(), re.M) == [ndlm_sk.__version__]


# ----------------------------------------------------------------------------- values no fit can produce
def _edit_array(src, dst, field, edit):
    """Rewrite the array stored for ``state[field...]`` (a tuple of keys) with ``edit(array)``."""
    m = _members(src)
    header = json.loads(m["header.json"])
    ref = header["state"]
    for k in field:
        ref = ref[k]
    name = ref["__array__"]
    a = np.lib.format.read_array(io.BytesIO(m[f"{name}.npy"])).copy()
    a = edit(a)
    buf = io.BytesIO()
    np.lib.format.write_array(buf, a, allow_pickle=False)
    m[f"{name}.npy"] = buf.getvalue()
    header["arrays"][name] = {"dtype": a.dtype.str, "shape": list(a.shape)}
    m["header.json"] = json.dumps(header).encode()
    _write(dst, m)


def _set(a, index, value):
    a[index] = value
    return a


@pytest.fixture(scope="module")
def bn_model_file(data, tmp_path_factory):
    """A fitted SMALL stack (a batch norm first): its running statistics sit at the start of ``running``."""
    path = tmp_path_factory.mktemp("bn") / "bn.ndlm"
    save_model(_fit(data, SMALL), path)
    return path


@pytest.mark.parametrize(
    "field, edit, message",
    [
        (("_net_state", "running"), lambda a: _set(a, -1, -0.5), r"layer 0 \(batchnorm\) has 1 negative batch-norm"),
        (("_net_state", "adam_v"), lambda a: _set(a, 3, -1e-9), "negative Adam second moment"),
        (("_net_state", "params"), lambda a: _set(a, 0, 1e38), r"magnitude above 1e\+30.*predictions would be NaN"),
        (("_net_state", "params"), lambda a: _set(a, 5, np.inf), "_net_state.params: 1 non-finite"),
        (("_net_state", "adam_m"), lambda a: _set(a, 5, np.nan), "_net_state.adam_m: 1 non-finite"),
        (("_net_state", "running"), lambda a: _set(a, 0, np.nan), "_net_state.running: 1 non-finite"),
        (("_net_state", "params"), lambda a: a.astype(np.float64), "must be a 1-D float32 array"),
        (("classes_",), lambda a: a[::-1].copy(), "classes_: must be sorted and distinct"),
        (("classes_",), lambda a: np.concatenate([a[:-1], a[:1]]), "classes_: must be sorted and distinct"),
    ],
)
def test_impossible_array_values(bn_model_file, tmp_path, field, edit, message):
    bad = tmp_path / "bad.ndlm"
    _edit_array(bn_model_file, bad, field, edit)
    with pytest.raises(ValueError, match=r"bad\.ndlm: not a valid ndlm_sk model file.*" + message):
        load_model(bad)


def _put(key, value):
    return lambda h: h["state"].update({key: value})


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda h: h.update(format_version=True), "format version True"),
        (lambda h: h.update(format_version=1.0), "format version 1.0"),
        (
            _put("predict_batch_size", 0),
            r"'predict_batch_size' parameter of NDLMClassifier must be an int in the range \[1, inf\)",
        ),
        (
            _put("predict_batch_size", None),
            r"'predict_batch_size' parameter of NDLMClassifier must be an int in the range \[1, inf\)",
        ),
        (
            _put("predict_batch_size", 2.5),
            r"'predict_batch_size' parameter of NDLMClassifier must be an int in the range \[1, inf\)",
        ),
        (_put("_seed", -1), r"_seed: must be an integer in \[0, 2\*\*64\)"),
        (_put("_seed", 2**64), r"_seed: must be an integer in \[0, 2\*\*64\)"),
        (_put("n_iter_", -3), "n_iter_: must be an integer >= 0"),
        (_put("t_", 1.5), "t_: must be an integer >= 0"),
        (_put("n_features_in_", 7), "n_features_in_: 7 is not height"),
        (_put("review_threshold_", 1.5), r"review_threshold_: must be a probability in \[0, 1\]"),
        (lambda h: h["state"]["_net_state"].update(adam_step=-1), "adam_step: must be an integer >= 0"),
        (lambda h: h["state"]["_net_state"].update(adam_step=True), "adam_step: must be an integer >= 0"),
        (_put("image_shape_", {"__tuple__": [2**21, 1, 3]}), "image_shape_: each size must be at most"),
    ],
)
def test_impossible_header_values(bn_model_file, tmp_path, edit, message):
    bad = tmp_path / "bad.ndlm"
    _edit_header(bn_model_file, bad, edit)
    with pytest.raises(ValueError, match=message) as e:
        load_model(bad)
    assert "bad.ndlm" in str(e.value)


def test_values_a_fit_produces_still_load(bn_model_file, data, tmp_path):
    """The checks reject only the impossible: zero variances and moments, negative weights,
    a review rule of exactly 0 or 1, integer labels, all load."""
    ok = tmp_path / "ok.ndlm"
    _edit_array(bn_model_file, ok, ("_net_state", "running"), lambda a: _set(a, -1, 0.0))
    load_model(ok)
    _edit_array(bn_model_file, ok, ("_net_state", "params"), lambda a: _set(a, 0, -1e3))
    load_model(ok)
    _edit_header(bn_model_file, ok, _put("review_threshold_", 1.0))
    assert load_model(ok).review_threshold_ == 1.0
    X, y = data
    clf = _fit(data, SMALL, y=np.searchsorted(np.unique(y), y) * 10 - 5)  # labels -5, 5, 15, ...
    save_model(clf, ok)
    np.testing.assert_array_equal(load_model(ok).predict(X[:8]), clf.predict(X[:8]))
