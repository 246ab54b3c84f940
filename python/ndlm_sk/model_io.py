"""Saving and loading fitted models in a format that runs no code when loaded.

``joblib.dump`` / ``pickle`` work too, but loading a pickle can execute arbitrary code, so only
load pickles you trust. :func:`save_model` writes an ``.ndlm`` file instead: plain data that
:func:`load_model` reads without unpickling anything.

The ``.ndlm`` format, version 1
-------------------------------
A ZIP archive (readable with any zip tool; ``numpy.load(path, allow_pickle=False)["a0"]``
reads its arrays) holding:

- ``header.json``: one UTF-8 JSON object (standard JSON: no NaN / Infinity literals)::

      {"format": "ndlm_sk-model", "format_version": 1, "library_version": "0.1.0",
       "estimator": "NDLMClassifier", "arrays": {"a0": {"dtype": "<f4", "shape": [174881]}, ...},
       "state": {...}}

  ``state`` is the estimator's ``__getstate__()`` (constructor parameters, fitted attributes and
  ``_net_state``, the network's parameters, Adam moments and step, and batch-norm running
  statistics), encoded as JSON where JSON has a type, and with one-key tagged objects otherwise:

  - ``{"__array__": "a0"}``: the NumPy array stored in member ``a0.npy``;
  - ``{"__objarray__": [...], "shape": [...]}``: an object array of JSON scalars (e.g. string
    class labels given as Python objects);
  - ``{"__tuple__": [...]}``: a tuple (JSON only has lists);
  - ``{"__float__": "nan" | "inf" | "-inf"}``: a non-finite float;
  - ``{"__npscalar__": value, "dtype": "<f8"}``: a NumPy scalar;
  - ``{"__randomstate__": {...}}``: a ``numpy.random.RandomState`` (its ``get_state()``);
  - ``{"__dict__": {...}}``: a dict that itself has exactly one key that is one of these tags;
  - ``{"__items__": [[key, value], ...]}``: a dict with keys that are not all str (e.g.
    ``class_weight={0: 1.0, 1: 5.0}``), keys and values encoded as above.

- ``<name>.npy``: one member per array, in NumPy's ``.npy`` format, never of object dtype.

ZIP's CRC-32 of every member is verified on load, the arrays must have the dtypes and shapes the
header declares, and the rebuilt network checks that the arrays fit the declared layer stack, so
a truncated, corrupted or inconsistent file raises :class:`ValueError` with a reason.
"""

import errno
import io
import json
import math
import os
import zipfile
from pathlib import Path

import numpy as np
from sklearn.utils._param_validation import InvalidParameterError

from . import __version__
from ._fileio import atomic_write

__all__ = [
    "save_model",
    "load_model",
    "save_model_file",
    "load_model_file",
    "check_save_path",
    "FORMAT_NAME",
    "FORMAT_VERSION",
]

#: Value of the header's ``format`` field.
FORMAT_NAME = "ndlm_sk-model"
#: Version of the ``.ndlm`` format written by :func:`save_model` (and the only one read).
FORMAT_VERSION = 1

_HEADER = "header.json"
_MAX_HEADER_BYTES = 64 << 20
_NPY_HEADER_SLACK = 1 << 16  # bytes allowed for an .npy member's own header
_TAGS = (
    "__array__",
    "__objarray__",
    "__tuple__",
    "__float__",
    "__npscalar__",
    "__randomstate__",
    "__dict__",
    "__items__",
)


# ----------------------------------------------------------------------------- encoding
def _is_json_scalar(v):
    return v is None or isinstance(v, (bool, int, str)) or (isinstance(v, float) and math.isfinite(v))


def _encode(obj, arrays, where):
    if isinstance(obj, np.generic):  # first: np.float64 is also a float, np.bool_ is not a bool
        if obj.dtype.kind not in "biuf":
            raise TypeError(f"{where}: NumPy scalars of dtype {obj.dtype} are not supported")
        return {"__npscalar__": _encode(obj.item(), arrays, where), "dtype": obj.dtype.str}
    if obj is None or isinstance(obj, (bool, str)):
        return obj
    if isinstance(obj, int) and not isinstance(obj, bool):
        return int(obj)
    if isinstance(obj, float):
        if math.isfinite(obj):
            return float(obj)
        return {"__float__": "nan" if math.isnan(obj) else ("inf" if obj > 0 else "-inf")}
    if isinstance(obj, np.ndarray):
        if obj.dtype.kind == "O":
            vals = obj.ravel().tolist()
            if not all(_is_json_scalar(v) for v in vals):
                raise TypeError(f"{where}: object array with values that are not str, int, finite float, bool or None")
            return {"__objarray__": vals, "shape": list(obj.shape)}
        if obj.dtype.kind not in "biufcUS" or obj.dtype.fields is not None:
            raise TypeError(f"{where}: arrays of dtype {obj.dtype} are not supported")
        name = f"a{len(arrays)}"
        arrays[name] = np.ascontiguousarray(obj)
        return {"__array__": name}
    if isinstance(obj, tuple):
        return {"__tuple__": [_encode(v, arrays, f"{where}[{i}]") for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [_encode(v, arrays, f"{where}[{i}]") for i, v in enumerate(obj)]
    if isinstance(obj, dict):
        if not all(isinstance(k, str) for k in obj):
            for k in obj:
                if not (_is_json_scalar(k) or (isinstance(k, np.generic) and k.dtype.kind in "biuf")):
                    raise TypeError(f"{where}: dict keys must be str, int, float, bool or None, got {k!r}")
            return {
                "__items__": [
                    [_encode(k, arrays, f"{where} key"), _encode(v, arrays, f"{where}[{k!r}]")] for k, v in obj.items()
                ]
            }
        out = {}
        for k, v in obj.items():
            out[k] = _encode(v, arrays, f"{where}[{k!r}]")
        if any(k in _TAGS for k in out):
            return {"__dict__": out}
        return out
    if isinstance(obj, np.random.RandomState):
        kind, keys, pos, has_gauss, cached = obj.get_state()
        return {
            "__randomstate__": {
                "kind": kind,
                "keys": _encode(keys, arrays, where),
                "pos": int(pos),
                "has_gauss": int(has_gauss),
                "cached_gaussian": _encode(float(cached), arrays, where),
            }
        }
    raise TypeError(f"{where}: cannot store a {type(obj).__name__} in an .ndlm file (use joblib for such models)")


def _decode(obj, arrays, where="state"):
    if isinstance(obj, list):
        return [_decode(v, arrays, f"{where}[{i}]") for i, v in enumerate(obj)]
    if not isinstance(obj, dict):
        return obj
    tag = next((k for k in obj if k in _TAGS), None)
    if tag == "__array__":
        name = obj[tag]
        if not isinstance(name, str) or name not in arrays:
            raise ValueError(f"{where}: refers to a missing array {name!r}")
        return arrays[name]
    if tag == "__objarray__":
        vals, shape = obj[tag], obj.get("shape")
        if not isinstance(vals, list) or not all(_is_json_scalar(v) for v in vals):
            raise ValueError(f"{where}: bad object array")
        arr = np.empty(len(vals), dtype=object)
        arr[:] = vals
        try:
            return arr.reshape([int(s) for s in shape])
        except (TypeError, ValueError):
            raise ValueError(f"{where}: bad object array shape {shape!r}") from None
    if tag == "__tuple__" and len(obj) == 1:
        if not isinstance(obj[tag], list):
            raise ValueError(f"{where}: bad tuple")
        return tuple(_decode(v, arrays, f"{where}[{i}]") for i, v in enumerate(obj[tag]))
    if tag == "__float__" and len(obj) == 1:
        try:
            return float({"nan": "nan", "inf": "inf", "-inf": "-inf"}[obj[tag]])
        except (KeyError, TypeError):
            raise ValueError(f"{where}: bad float {obj[tag]!r}") from None
    if tag == "__npscalar__":
        try:
            return np.dtype(obj["dtype"]).type(_decode(obj[tag], arrays, where))
        except (KeyError, TypeError, ValueError, OverflowError):
            raise ValueError(f"{where}: bad NumPy scalar {obj!r}") from None
    if tag == "__randomstate__" and len(obj) == 1:
        s = obj[tag]
        try:
            rs = np.random.RandomState()
            rs.set_state(
                (
                    str(s["kind"]),
                    _decode(s["keys"], arrays, where),
                    int(s["pos"]),
                    int(s["has_gauss"]),
                    float(_decode(s["cached_gaussian"], arrays, where)),
                )
            )
            return rs
        except (KeyError, TypeError, ValueError):
            raise ValueError(f"{where}: bad RandomState") from None
    if tag == "__items__" and len(obj) == 1:
        items = obj[tag]
        if not isinstance(items, list) or not all(isinstance(kv, list) and len(kv) == 2 for kv in items):
            raise ValueError(f"{where}: bad dict items")
        out = {}
        for k, v in items:
            key = _decode(k, arrays, f"{where} key")
            if not (_is_json_scalar(key) or isinstance(key, np.generic)):
                raise ValueError(f"{where}: bad dict key {key!r}")
            out[key] = _decode(v, arrays, f"{where}[{key!r}]")
        return out
    if tag == "__dict__" and len(obj) == 1:
        if not isinstance(obj[tag], dict):
            raise ValueError(f"{where}: bad dict")
        obj = obj[tag]
    return {k: _decode(v, arrays, f"{where}[{k!r}]") for k, v in obj.items()}


# ----------------------------------------------------------------------------- saving
def save_model(estimator, path):
    """Save an :class:`~ndlm_sk.NDLMClassifier` (fitted or not) to an ``.ndlm`` file.

    The file holds arrays and JSON only (see :mod:`ndlm_sk.model_io` for the format); load it
    with :func:`load_model`. Everything needed to predict and to continue training with
    ``partial_fit`` or ``warm_start`` is saved, including the Adam optimizer state.

    Parameters
    ----------
    estimator : NDLMClassifier
    path : str, path-like or writable binary file object
        A path is written atomically (a temporary file in the same folder, then renamed).
    """
    from .estimator import NDLMClassifier
    from .table3 import CoupledNDLM

    if isinstance(estimator, CoupledNDLM):  # Table III's two-network models: the branches' states
        raw = {
            "n_networks": estimator.n_networks,
            "random_state": estimator.random_state,
            "estimator": None if estimator.estimator is None else estimator.estimator.__getstate__(),
        }
        if hasattr(estimator, "estimators_"):
            raw["branches"] = [b.__getstate__() for b in estimator.estimators_]
    elif isinstance(estimator, NDLMClassifier):
        raw = estimator.__getstate__()
    else:
        raise TypeError(f"save_model saves an NDLMClassifier or a CoupledNDLM, got {type(estimator).__name__}")
    arrays = {}
    state = _encode(raw, arrays, "state")
    header = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "library_version": __version__,
        "estimator": type(estimator).__name__,
        "arrays": {k: {"dtype": a.dtype.str, "shape": list(a.shape)} for k, a in arrays.items()},
        "state": state,
    }
    blob = json.dumps(header, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode("utf-8")

    def write(f):
        with zipfile.ZipFile(f, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
            zf.writestr(_HEADER, blob)
            for name, a in arrays.items():
                buf = io.BytesIO()
                np.lib.format.write_array(buf, a, allow_pickle=False)
                zf.writestr(f"{name}.npy", buf.getvalue())

    if hasattr(path, "write"):
        write(path)
    else:
        atomic_write(path, write)


# ----------------------------------------------------------------------------- loading
def _bad(path, reason):
    return ValueError(f"{path}: not a valid ndlm_sk model file: {reason}")


def _read_member(zf, name, limit, path):
    try:
        info = zf.getinfo(name)
    except KeyError:
        raise _bad(path, f"member {name!r} is missing") from None
    if info.file_size > limit:
        raise _bad(path, f"member {name!r} is larger ({info.file_size} bytes) than declared")
    try:
        return zf.read(info)  # verifies the member's CRC-32
    except Exception as e:  # noqa: BLE001 - BadZipFile, zlib.error, EOFError, OSError, ...
        raise _bad(path, f"member {name!r} is corrupt ({type(e).__name__}: {e})") from None


def load_model(path):
    """Load a model written by :func:`save_model`; no code from the file is executed.

    Parameters
    ----------
    path : str, path-like or readable binary file object

    Returns
    -------
    estimator : NDLMClassifier
        Predicts exactly as the saved one and continues training (``partial_fit``) exactly as
        it would have.

    Raises
    ------
    ValueError
        If the file is not a ZIP archive, is truncated or corrupted, has an unknown format
        version, or its arrays do not fit the declared layer stack.
    """
    from .estimator import NDLMClassifier

    shown = str(getattr(path, "name", "<file>")) if hasattr(path, "read") else os.fspath(path)
    try:
        zf = zipfile.ZipFile(path if hasattr(path, "read") else os.fspath(path), "r")
    except (FileNotFoundError, IsADirectoryError, PermissionError):
        raise
    except Exception as e:  # noqa: BLE001 - BadZipFile, EOFError, NotImplementedError, ...
        raise _bad(shown, f"not a ZIP archive or truncated ({type(e).__name__}: {e})") from None
    with zf:
        raw = _read_member(zf, _HEADER, _MAX_HEADER_BYTES, shown)
        try:
            header = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError) as e:
            raise _bad(shown, f"header.json is not valid JSON ({e})") from None
        if not isinstance(header, dict) or header.get("format") != FORMAT_NAME:
            raise _bad(shown, f"header.json does not declare format {FORMAT_NAME!r}")
        version = header.get("format_version")
        if isinstance(version, bool) or not isinstance(version, int) or version != FORMAT_VERSION:
            raise ValueError(
                f"{shown}: model format version {version!r} (written by ndlm_sk "
                f"{header.get('library_version', '?')}); this ndlm_sk ({__version__}) reads "
                f"format version {FORMAT_VERSION} only"
            )
        kind = header.get("estimator")
        if kind not in (NDLMClassifier.__name__, "CoupledNDLM"):
            raise _bad(shown, f"it holds a {kind!r}, not an NDLMClassifier or a CoupledNDLM")
        decl = header.get("arrays")
        if not isinstance(decl, dict):
            raise _bad(shown, "header.json lacks the array table")
        arrays = {}
        for name, d in decl.items():
            try:
                dtype = np.dtype(d["dtype"])
                shape = tuple(int(s) for s in d["shape"])
                if dtype.kind not in "biufcUS" or dtype.fields is not None or any(s < 0 for s in shape):
                    raise ValueError
            except (KeyError, TypeError, ValueError):
                raise _bad(shown, f"bad declaration of array {name!r}: {d!r}") from None
            nbytes = math.prod(shape) * dtype.itemsize
            data = _read_member(zf, f"{name}.npy", nbytes + _NPY_HEADER_SLACK, shown)
            try:
                a = np.lib.format.read_array(io.BytesIO(data), allow_pickle=False)
            except Exception as e:  # noqa: BLE001 - any malformed .npy content
                raise _bad(shown, f"array {name!r} is unreadable ({type(e).__name__}: {e})") from None
            if a.dtype != dtype or a.shape != shape:
                raise _bad(shown, f"array {name!r} is {a.dtype} {a.shape}, declared {dtype} {shape}")
            arrays[name] = a if a.flags.writeable else a.copy()
        try:
            state = _decode(header.get("state"), arrays)
        except (TypeError, RecursionError) as e:
            raise _bad(shown, f"bad state ({e})") from None
        except ValueError as e:
            raise _bad(shown, str(e)) from None
    if not isinstance(state, dict):
        raise _bad(shown, "the state is not an object")
    if kind == "CoupledNDLM":
        return _coupled_from_state(state, shown)
    return _ndlm_from_state(state, shown)


def _coupled_from_state(state, shown):
    from .table3 import CoupledNDLM

    est = CoupledNDLM(
        None if state.get("estimator") is None else _ndlm_from_state(state["estimator"], shown),
        n_networks=state.get("n_networks"),
        random_state=state.get("random_state"),
    )
    try:
        est._template()  # the parameters' checks
    except ValueError as e:
        raise _bad(shown, str(e)) from None
    if "branches" in state:
        branches = state["branches"]
        if not isinstance(branches, list) or len(branches) != est.n_networks:
            raise _bad(shown, f"a CoupledNDLM of {est.n_networks} networks needs as many branch states")
        est.estimators_ = [_ndlm_from_state(b, shown) for b in branches]
        classes = [b.classes_ for b in est.estimators_]
        if any(not np.array_equal(c, classes[0]) for c in classes):
            raise _bad(shown, "the branches have different classes_")
        est.classes_ = classes[0]
    return est


def _ndlm_from_state(state, shown):
    from .estimator import NDLMClassifier

    if not isinstance(state, dict):
        raise _bad(shown, "an estimator state is not an object")
    _check_state(state, shown)
    if "_net_state" in state:
        _check_values(state, shown)
    est = NDLMClassifier.__new__(NDLMClassifier)
    try:
        est.__setstate__(state)
    except InvalidParameterError as e:  # a parameter outside _parameter_constraints: it names it
        raise _bad(shown, str(e)) from None
    except MemoryError:
        raise _bad(shown, "the declared layer stack is too large to build") from None
    except (ValueError, TypeError, KeyError, AttributeError, IndexError, OverflowError, RuntimeError) as e:
        raise _bad(shown, f"the saved arrays do not fit the declared model ({e})") from None
    if "_net_state" in state:
        _check_built(est, shown)
    return est


def _check_state(state, shown):
    """Type checks of the fields __setstate__ relies on, so a bad file gives a clear error."""
    from . import _core

    if "_net_state" not in state:
        return  # an unfitted estimator: nothing to rebuild
    need = ("_net_state", "_seed", "classes_", "image_shape_", "layers_", "architecture", "input_scale", "n_jobs")
    missing = [k for k in need if k not in state]
    if missing:
        raise _bad(shown, f"the state lacks {missing}")
    ns = state["_net_state"]
    if not isinstance(ns, dict) or not all(
        isinstance(ns.get(k), np.ndarray) for k in ("params", "adam_m", "adam_v", "running")
    ):
        raise _bad(shown, "the network state lacks its arrays")
    shape = state["image_shape_"]
    if not (
        isinstance(shape, tuple)
        and len(shape) == 3
        and all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in shape)
    ):
        raise _bad(shown, f"bad image_shape_ {shape!r}")
    classes = state["classes_"]
    if not isinstance(classes, np.ndarray) or classes.ndim != 1 or len(classes) < 2:
        raise _bad(shown, "classes_ must be an array of at least 2 labels")
    if not isinstance(state["_seed"], int) or isinstance(state["_seed"], bool):
        raise _bad(shown, f"bad _seed {state['_seed']!r}")
    if not isinstance(state["layers_"], list):
        raise _bad(shown, "layers_ must be a list of layer specs")
    n_jobs = state["n_jobs"]
    if n_jobs is not None and (
        not isinstance(n_jobs, int) or isinstance(n_jobs, bool) or n_jobs == 0 or abs(n_jobs) > _core.MAX_THREADS
    ):
        raise _bad(shown, f"bad n_jobs {n_jobs!r}")
    n_params = state.get("n_params_")
    if isinstance(n_params, int) and ns["params"].size != n_params:
        raise _bad(shown, f"{ns['params'].size} parameters stored but n_params_={n_params}")


#: Largest parameter magnitude a file may hold. Adam moves a weight by about learning_rate_init per
#: step, so no fit comes near it; beyond it the products of a forward pass overflow float32
#: (predictions would be NaN).
MAX_ABS_PARAM = 1e30


def _is_int(v, low=None):
    return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_)) and (low is None or v >= low)


def _check_values(state, shown):
    """Value checks of a fitted state: reject what no fit can produce (raised as ValueError naming
    the field), before the network is built from it."""

    def bad(field, problem):
        return _bad(shown, f"field {field}: {problem}")

    ns = state["_net_state"]
    for name in ("params", "adam_m", "adam_v", "running"):
        a = ns[name]
        if a.dtype != np.float32 or a.ndim != 1:
            raise bad(f"_net_state.{name}", f"must be a 1-D float32 array, got {a.dtype} {a.shape}")
        n_bad = int(np.count_nonzero(~np.isfinite(a)))
        if n_bad:
            raise bad(f"_net_state.{name}", f"{n_bad} non-finite value(s)")
    big = np.abs(ns["params"]) > MAX_ABS_PARAM
    if big.any():
        raise bad(
            "_net_state.params",
            f"{int(big.sum())} value(s) of magnitude above {MAX_ABS_PARAM:g} (largest "
            f"{float(np.abs(ns['params']).max()):.3g}): no fit gives such weights, and predictions would be NaN",
        )
    if (ns["adam_v"] < 0).any():
        raise bad("_net_state.adam_v", f"{int((ns['adam_v'] < 0).sum())} negative Adam second moment(s)")
    if not _is_int(ns.get("adam_step"), 0):
        raise bad("_net_state.adam_step", f"must be an integer >= 0, got {ns.get('adam_step')!r}")
    if not (_is_int(state["_seed"], 0) and state["_seed"] < 2**64):
        raise bad("_seed", f"must be an integer in [0, 2**64), got {state['_seed']!r}")
    classes = state["classes_"]
    try:
        uniq = np.unique(classes)
    except TypeError:
        raise bad("classes_", "labels of types that cannot be sorted together") from None
    if len(uniq) != len(classes) or not np.array_equal(uniq, classes):
        raise bad("classes_", f"must be sorted and distinct (as fit makes them), got {classes.tolist()!r:.200}")
    shape = state["image_shape_"]
    from . import _core

    if max(shape) > _core.MAX_DIM:
        raise bad("image_shape_", f"each size must be at most {_core.MAX_DIM}, got {shape!r}")
    n_features = state.get("n_features_in_")
    if n_features is not None and n_features != math.prod(shape):
        raise bad("n_features_in_", f"{n_features!r} is not height * width * channels of image_shape_ {shape!r}")
    for name in ("n_iter_", "t_"):
        if name in state and not _is_int(state[name], 0):
            raise bad(name, f"must be an integer >= 0, got {state[name]!r}")
    if "review_threshold_" in state:
        t = state["review_threshold_"]
        if not (isinstance(t, (float, int, np.floating)) and not isinstance(t, bool) and 0 <= t <= 1):
            raise bad("review_threshold_", f"must be a probability in [0, 1], got {t!r}")
    if "temperature_" in state:
        from .calibration import MAX_TEMPERATURE, MIN_TEMPERATURE

        t = state["temperature_"]
        if not (
            isinstance(t, (float, int, np.floating))
            and not isinstance(t, (bool, np.bool_))
            and MIN_TEMPERATURE <= t <= MAX_TEMPERATURE  # False for NaN
        ):
            raise bad("temperature_", f"must be a number in [{MIN_TEMPERATURE}, {MAX_TEMPERATURE}], got {t!r}")
    if "calibration_" in state and not isinstance(state["calibration_"], dict):
        raise bad("calibration_", f"must be an object, got {state['calibration_']!r:.80}")


def _check_built(est, shown):
    """Checks that need the rebuilt network: the named arrays of each layer (the parameters are
    checked by ``__setstate__`` against ``_parameter_constraints``)."""
    for i, (spec, arrays) in enumerate(zip(est.layers_, est.get_layer_params())):
        rv = arrays.get("running_var")
        if rv is not None and (rv < 0).any():
            raise _bad(
                shown,
                f"field _net_state.running: layer {i} ({spec['type']}) has {int((rv < 0).sum())} negative "
                "batch-norm running variance(s)",
            )


# ----------------------------------------------------------------------------- by file name
SAFE_EXTENSIONS = (".ndlm",)
PICKLE_EXTENSIONS = (".joblib", ".pkl", ".pickle")
_ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")
# how a joblib file starts: a pickle (protocol 2+), or joblib's zlib / gzip / bz2 / xz / lzma / lz4 wrappers
_PICKLE_MAGIC = (b"\x80", b"\x78", b"\x1f\x8b", b"BZh", b"\xfd7zXZ", b"\x5d\x00", b"\x04\x22\x4d\x18")


def _extension(path):
    ext = Path(os.fspath(path)).suffix.lower()
    if ext not in SAFE_EXTENSIONS + PICKLE_EXTENSIONS:
        raise ValueError(f"{os.fspath(path)}: a model file must end in .ndlm (safe format) or .joblib / .pkl")
    return ext


def check_save_path(path):
    """Raise (``ValueError`` / ``OSError`` naming ``path``) unless a model can be saved there: an
    ``.ndlm`` / ``.joblib`` / ``.pkl`` name in an existing, writable folder. Call it before a long
    fit so that a bad ``--save`` fails before the training, not after."""
    _extension(path)
    target = Path(os.fspath(path))
    folder = target.parent if str(target.parent) else Path(".")
    if target.is_dir():
        raise IsADirectoryError(errno.EISDIR, "is a folder, not a model file name", str(target))
    if not folder.is_dir():
        raise FileNotFoundError(errno.ENOENT, f"the folder {folder} does not exist", str(target))
    if not os.access(folder, os.W_OK | os.X_OK):
        raise PermissionError(errno.EACCES, f"the folder {folder} is not writable", str(target))


def save_model_file(estimator, path):
    """Save by extension: ``.ndlm`` with :func:`save_model`, ``.joblib`` / ``.pkl`` with joblib
    (both atomically: a temporary file in the same folder, then renamed)."""
    if _extension(path) in SAFE_EXTENSIONS:
        save_model(estimator, path)
        return
    import joblib

    atomic_write(path, lambda f: joblib.dump(estimator, f))


def load_model_file(path):
    """Load a model file by its content, checked against its extension.

    An ``.ndlm`` file is read with :func:`load_model` (no code executed). A ``.joblib`` / ``.pkl``
    file is unpickled with joblib (which can run code: only load files you trust), unless it is
    an ``.ndlm`` archive under another name, which :func:`load_model` reads. Raises
    :class:`ValueError` naming the file for anything that is not a readable model, and
    ``FileNotFoundError`` / ``IsADirectoryError`` / ``PermissionError`` for a path that cannot be read.
    """
    from .estimator import NDLMClassifier
    from .table3 import CoupledNDLM

    shown = os.fspath(path)
    ext = _extension(path)
    with open(path, "rb") as f:  # raises FileNotFoundError / IsADirectoryError / PermissionError
        head = f.read(8)
    if ext in SAFE_EXTENSIONS or head.startswith(_ZIP_MAGIC):
        try:
            return load_model(path)
        except ValueError as e:
            if ext in SAFE_EXTENSIONS and head.startswith(_PICKLE_MAGIC):
                raise ValueError(
                    f"{shown}: not an .ndlm archive but looks like a joblib / pickle file; "
                    "if you trust it, rename it .joblib to load it with joblib"
                ) from None
            raise e from None
    import joblib

    try:
        model = joblib.load(path)
    except Exception as e:  # noqa: BLE001 - truncated or foreign data fails in many ways
        raise ValueError(f"{shown}: not a readable joblib model file ({type(e).__name__}: {e})") from None
    if not isinstance(model, (NDLMClassifier, CoupledNDLM)):
        raise ValueError(f"{shown}: holds a {type(model).__name__}, not an NDLMClassifier or a CoupledNDLM")
    return model
