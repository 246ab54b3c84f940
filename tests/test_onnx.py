"""ONNX export: onnxruntime reproduces predict_proba / predict for several layer stacks."""

import json
import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from ndlm_sk import __version__  # noqa: E402
from ndlm_sk.datasets import load_pbc_sample, pbc_sample_path  # noqa: E402
from ndlm_sk.estimator import NDLMClassifier  # noqa: E402
from ndlm_sk.onnx_export import ONNX_IR_VERSION, ONNX_OPSET, to_onnx  # noqa: E402
from sklearn.exceptions import ConvergenceWarning, NotFittedError  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
# the deployment section: docs/deploy.md, or README.md once it is merged there
DOCS = [ROOT / "docs" / "deploy.md", ROOT / "README.md"]

# Every layer type, and the export's tricky paths: a stride-2 padded convolution, LRN after
# pooling with a large alpha (so the alpha / size convention matters), a hidden fc + ReLU, then
# batch norm and LRN on the 2-D fc output (the graph must unsqueeze to 4-D), no final softmax.
CUSTOM = [
    {"type": "conv", "filters": 6, "kernel": 3, "stride": 2, "padding": 1},
    {"type": "batchnorm"},
    {"type": "relu"},
    {"type": "maxpool", "pool": 3, "stride": 2},
    {"type": "lrn", "size": 3, "alpha": 2.0, "beta": 0.75, "k": 1.0},
    {"type": "fc", "units": 16},
    {"type": "relu"},
    {"type": "batchnorm"},
    {"type": "lrn", "size": 5, "alpha": 1.0, "beta": 0.5, "k": 1.5},
    {"type": "fc"},
]
# (architecture, image size): ndel's 15x15 convolution is trained on smaller images to stay fast
STACKS = {"ndlm": ("ndlm", 48), "ndel": ("ndel", 32), "custom": (CUSTOM, 48)}


@pytest.fixture(scope="module")
def samples():
    cache = {}

    def get(size):
        if size not in cache:
            cache[size] = load_pbc_sample(image_size=size)
        return cache[size]

    return get


def _fit(arch, X, y, epochs=2):
    # two epochs of mini-batches of 32: batch-norm running statistics far from (0, 1)
    clf = NDLMClassifier(arch, max_iter=epochs, batch_size=32, random_state=0, n_jobs=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return clf.fit(X, y)


@pytest.fixture(scope="module")
def fitted(samples):
    models = {}

    def get(key):
        if key not in models:
            arch, size = STACKS[key]
            X, y = samples(size)
            # trained on every other image (all classes, half the time); tested on all 200
            models[key] = (_fit(arch, X[::2], y[::2]), X)
        return models[key]

    return get


def _session(model):
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("key", sorted(STACKS))
def test_onnxruntime_matches_estimator(fitted, key):
    clf, X = fitted(key)
    running = clf._net.get_state()["running"]  # batch-norm means (start at 0), variances (at 1)
    assert running.size and np.mean((running != 0) & (running != 1)) > 0.9
    model = to_onnx(clf)
    onnx.checker.check_model(model, full_check=True)
    sess = _session(model)
    # batch sizes 1 and 7 (dynamic batch), and every image at once
    for batch in (X[:1], X[50:57], X):
        label, proba, index = sess.run(None, {"images": batch})
        expected = clf.predict_proba(batch)
        assert proba.shape == expected.shape and proba.dtype == np.float32
        np.testing.assert_allclose(proba, expected, atol=1e-4, rtol=0)
        np.testing.assert_array_equal(label, clf.predict(batch))
        np.testing.assert_array_equal(index, np.argmax(expected, axis=1))
        assert index.dtype == np.int64


def test_graph_interface_and_metadata(fitted):
    clf, X = fitted("ndlm")
    model = to_onnx(clf)
    assert model.ir_version == ONNX_IR_VERSION == 8
    assert [(o.domain, o.version) for o in model.opset_import] == [("", ONNX_OPSET)]
    assert ONNX_OPSET == 17
    ops = {n.op_type for n in model.graph.node}
    assert {
        "Cast",
        "Mul",
        "Transpose",
        "BatchNormalization",
        "LRN",
        "Conv",
        "Relu",
        "MaxPool",
        "Gemm",
        "Softmax",
        "ArgMax",
        "Gather",
    } <= ops
    (inp,) = model.graph.input
    assert inp.name == "images"
    tt = inp.type.tensor_type
    assert tt.elem_type == onnx.TensorProto.UINT8
    assert tt.shape.dim[0].dim_param == "N" and [d.dim_value for d in tt.shape.dim[1:]] == [48, 48, 3]
    assert [o.name for o in model.graph.output] == ["label", "probabilities", "label_index"]
    assert model.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.STRING
    meta = {p.key: p.value for p in model.metadata_props}
    assert json.loads(meta["classes"]) == list(clf.classes_)
    assert float(meta["input_scale"]) == clf.input_scale
    assert json.loads(meta["image_shape"]) == [48, 48, 3]
    assert meta["ndlm_sk_version"] == __version__
    assert meta["input_dtype"] == "uint8"
    assert len(json.loads(meta["layers"])) == len(clf.layers_)
    assert model.producer_name == "ndlm_sk"


def test_float32_input_and_integer_classes(samples, tmp_path):
    X, y = samples(48)
    codes = {c: 10 * (i + 1) for i, c in enumerate(sorted(set(y)))}
    y_int = np.array([codes[c] for c in y])
    clf = _fit(CUSTOM, X, y_int, epochs=1)
    path = tmp_path / "f32.onnx"
    to_onnx(clf, path, input_dtype="float32")
    model = onnx.load(str(path))
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert model.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.INT64
    assert json.loads({p.key: p.value for p in model.metadata_props}["classes"]) == [10, 20, 30, 40, 50]
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    Xf = X[:7].astype(np.float32)
    label, proba, _ = sess.run(None, {"images": Xf})
    np.testing.assert_allclose(proba, clf.predict_proba(Xf), atol=1e-4, rtol=0)
    assert label.dtype == np.int64
    np.testing.assert_array_equal(label, clf.predict(Xf))


def test_errors(fitted):
    with pytest.raises(NotFittedError):
        to_onnx(NDLMClassifier())
    clf, _ = fitted("ndlm")
    with pytest.raises(ValueError, match="input_dtype"):
        to_onnx(clf, input_dtype="float64")


def _docs_snippet():
    for path in DOCS:
        if path.is_file():
            text = path.read_text(encoding="utf-8")
            m = re.search(r"<!-- onnxruntime-only snippet[^>]*-->\s*```python\n(.*?)```", text, re.S)
            if m:
                return m.group(1)
    pytest.fail("the onnxruntime-only snippet is missing from docs/deploy.md and README.md")


def test_docs_snippet_runs_with_onnxruntime_alone(fitted, tmp_path):
    """The README snippet runs in a fresh interpreter and imports neither ndlm_sk nor sklearn."""
    from ndlm_sk.datasets import _decode_image

    code = _docs_snippet()
    assert not re.search(r"^\s*(import|from)\s+(ndlm_sk|sklearn)", code, re.M)
    clf, _ = fitted("ndlm")
    to_onnx(clf, tmp_path / "ndlm.onnx")
    src = sorted((pbc_sample_path() / "monocyte").glob("*.jpg"))[0]
    (tmp_path / "cell.jpg").write_bytes(src.read_bytes())
    guard = (
        "\nimport sys as _s\n"
        "assert not any(m == 'ndlm_sk' or m.startswith(('ndlm_sk.', 'sklearn')) for m in _s.modules)\n"
        "print('PROBA', json.dumps(probabilities[0].tolist()))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # ndlm_sk is not importable
    res = subprocess.run(
        [sys.executable, "-c", code + guard], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    assert res.returncode == 0, res.stderr
    first, proba_line = res.stdout.strip().splitlines()[-2:]
    image = _decode_image(tmp_path / "cell.jpg", clf.image_shape_[:2])[np.newaxis]
    assert first.split()[0] == clf.predict(image)[0]
    np.testing.assert_allclose(json.loads(proba_line.split(" ", 1)[1]), clf.predict_proba(image)[0], atol=1e-4)
