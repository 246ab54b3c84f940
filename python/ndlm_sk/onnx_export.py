"""Export a fitted :class:`~ndlm_sk.NDLMClassifier` to a standard ONNX model.

The graph is built with the ``onnx`` package from standard operators only (``Cast``, ``Mul``, ``Sub``,
``Transpose``, ``BatchNormalization``, ``LRN``, ``Conv``, ``Relu``, ``MaxPool``, ``Flatten``,
``Gemm``, ``Unsqueeze``, ``Softmax``, ``ArgMax``, ``Gather``), opset 17 and IR version 8, so any
runtime that implements opset 17 and reads IR version 8 runs it (onnxruntime ``ONNXRUNTIME_MIN`` = 1.16
or newer, the minimum of the ``onnx`` extra).

Inputs and outputs
------------------
- ``images``: ``(N, H, W, C)`` with a dynamic batch size ``N``; ``uint8`` (default) or
  ``float32`` (``input_dtype="float32"``). Inside the graph the values are cast to float32,
  multiplied by the estimator's ``input_scale``, transposed to NCHW and, with an
  ``input_normalization``, centred (``Sub`` of ``input_mean_``) and scaled (``Mul`` by
  ``1 / input_std_``), exactly as ``predict_proba`` does.
- ``label``: ``(N,)`` the predicted class itself, as ``predict`` returns it: a string tensor
  when ``classes_`` are strings, int64 for integer classes, double for float classes, bool for
  boolean classes.
- ``probabilities``: ``(N, n_classes)`` float32, columns in the order of ``classes_``.
- ``label_index``: ``(N,)`` int64, the column of the winning class.

Model metadata (``metadata_props``): ``classes`` (JSON list), ``class_dtype``, ``input_scale``,
``image_shape`` (JSON ``[H, W, C]``), ``input_dtype``, ``layers`` (JSON layer stack),
``ndlm_sk_version``, ``onnx_export_version``.

``onnx`` is imported only when a function here is called, so ``import ndlm_sk`` works without it.
"""

import json

import numpy as np

from . import __version__
from ._fileio import atomic_write

__all__ = ["to_onnx", "ONNX_OPSET", "ONNX_IR_VERSION", "ONNXRUNTIME_MIN"]

#: Operator set of the exported graphs.
ONNX_OPSET = 17
#: IR version written into the model: the lowest that allows opset 17.
ONNX_IR_VERSION = 8
#: The oldest onnxruntime the exported graphs are tested with (pyproject.toml's ``onnx`` extra).
ONNXRUNTIME_MIN = "1.16"
_EXPORT_VERSION = 1


def _class_tensor(classes):
    """``(onnx TensorProto data type, numpy array, JSON-able list, name)`` for the class labels."""
    from onnx import TensorProto

    classes = np.asarray(classes)
    values = classes.tolist()
    if classes.dtype.kind in "US" or (classes.dtype.kind == "O" and all(isinstance(v, str) for v in values)):
        strs = [v.decode() if isinstance(v, bytes) else str(v) for v in values]
        return TensorProto.STRING, np.array(strs, dtype=object), strs, "string"
    if classes.dtype.kind == "b" or (
        classes.dtype.kind == "O" and all(isinstance(v, (bool, np.bool_)) for v in values)
    ):
        arr = classes.astype(bool)
        return TensorProto.BOOL, arr, arr.tolist(), "bool"
    if classes.dtype.kind in "iu" or (
        classes.dtype.kind == "O" and all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in values)
    ):
        arr = classes.astype(np.int64)
        return TensorProto.INT64, arr, arr.tolist(), "int64"
    if classes.dtype.kind == "f" or (
        classes.dtype.kind == "O" and all(isinstance(v, (int, float, np.number)) for v in values)
    ):
        arr = classes.astype(np.float64)
        return TensorProto.DOUBLE, arr, arr.tolist(), "float64"
    raise ValueError(f"cannot export class labels of dtype {classes.dtype} to ONNX: {values[:5]}")


def to_onnx(estimator, path=None, *, input_dtype="uint8", opset=ONNX_OPSET, name="ndlm_sk"):
    """Convert a fitted :class:`~ndlm_sk.NDLMClassifier` into an ONNX model.

    Works for any layer stack the estimator accepts. The model is checked with
    ``onnx.checker.check_model`` before it is returned. A calibrated model's ``temperature_``
    (:mod:`ndlm_sk.calibration`) is folded in: the logits are divided by it before the softmax,
    as in ``predict_proba``. TTA is not exported (the graph predicts the images as given).

    Parameters
    ----------
    estimator : fitted NDLMClassifier
    path : str or path-like, optional
        Also write the model to this file.
    input_dtype : {"uint8", "float32"}, default="uint8"
        Element type of the ``images`` input. Either way the graph multiplies by ``input_scale``,
        like ``predict_proba``.
    opset : int, default=17
        ONNX operator set (13 or newer).
    name : str, default="ndlm_sk"
        Graph name.

    Returns
    -------
    model : onnx.ModelProto
        Input ``images`` ``(N, H, W, C)``; outputs ``label`` ``(N,)``, ``probabilities``
        ``(N, n_classes)`` float32 and ``label_index`` ``(N,)`` int64. See the module docstring.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    from sklearn.utils.validation import check_is_fitted

    check_is_fitted(estimator, "_net")
    if input_dtype not in ("uint8", "float32"):
        raise ValueError(f"input_dtype must be 'uint8' or 'float32', got {input_dtype!r}")
    opset = int(opset)
    if opset < 13:
        raise ValueError(f"opset must be >= 13 (Unsqueeze with an axes input), got {opset}")

    net = estimator._net
    layers = list(net.layers)
    params = net.layer_params()
    h, w, c = (int(s) for s in estimator.image_shape_)
    scale = float(np.float32(estimator.input_scale_))  # fitted, not the current parameter
    n_classes = len(estimator.classes_)
    label_type, label_values, classes_json, class_dtype = _class_tensor(estimator.classes_)

    nodes, inits = [], []
    counter = {}

    def fresh(prefix):
        counter[prefix] = counter.get(prefix, 0) + 1
        return f"{prefix}_{counter[prefix] - 1}"

    def const(prefix, array):
        nm = fresh(prefix)
        inits.append(numpy_helper.from_array(np.asarray(array), nm))
        return nm

    def node(op, inputs, prefix, **attrs):
        out = fresh(prefix)
        nodes.append(helper.make_node(op, inputs, [out], name=out + "_op", **attrs))
        return out

    # ---- input conversion, as Network::load_batch: float(x) * input_scale, NHWC -> NCHW
    x = "images"
    if input_dtype == "uint8":
        x = node("Cast", [x], "cast", to=TensorProto.FLOAT)
    x = node("Mul", [x, const("input_scale", np.array(scale, dtype=np.float32))], "scaled")
    x = node("Transpose", [x], "nchw", perm=[0, 3, 1, 2])
    # input normalization (fitted mean / deviation), as load_batch: (x - shift) * mult
    if estimator.input_normalization_ != "none":
        as_nchw = (
            (lambda a: a.reshape(1, c, 1, 1))
            if estimator.normalization_dimension_ == "channel"
            else (lambda a: a.reshape(1, h, w, c).transpose(0, 3, 1, 2))
        )
        mean = as_nchw(np.asarray(estimator.input_mean_, dtype=np.float32))
        x = node("Sub", [x, const("input_mean", np.ascontiguousarray(mean))], "centered")
        if estimator.input_std_ is not None:
            mult = as_nchw((1.0 / np.asarray(estimator.input_std_, dtype=np.float32)).astype(np.float32))
            x = node("Mul", [x, const("input_inv_std", np.ascontiguousarray(mult))], "standardized")
    rank = 4
    unsqueeze_axes = None

    for i, (spec, p) in enumerate(zip(layers, params)):
        t = spec["type"]
        if rank == 2 and t in ("batchnorm", "lrn", "conv", "maxpool"):
            if unsqueeze_axes is None:
                unsqueeze_axes = const("axes_hw", np.array([2, 3], dtype=np.int64))
            x = node("Unsqueeze", [x, unsqueeze_axes], f"l{i}_unsqueeze")
            rank = 4
        if t == "batchnorm":
            x = node(
                "BatchNormalization",
                [
                    x,
                    const(f"l{i}_gamma", p["gamma"]),
                    const(f"l{i}_beta", p["beta"]),
                    const(f"l{i}_mean", p["running_mean"]),
                    const(f"l{i}_var", p["running_var"]),
                ],
                f"l{i}_batchnorm",
                epsilon=float(spec["eps"]),
            )
        elif t == "lrn":
            x = node(
                "LRN",
                [x],
                f"l{i}_lrn",
                size=int(spec["size"]),
                alpha=float(spec["alpha"]),
                beta=float(spec["beta"]),
                bias=float(spec["k"]),
            )
        elif t == "conv":
            k = spec["kernel"]
            kh, kw = (int(k), int(k)) if np.ndim(k) == 0 else (int(v) for v in k)
            s, pad = int(spec["stride"]), int(spec["padding"])
            x = node(
                "Conv",
                [x, const(f"l{i}_weight", p["weight"]), const(f"l{i}_bias", p["bias"])],
                f"l{i}_conv",
                kernel_shape=[kh, kw],
                strides=[s, s],
                pads=[pad, pad, pad, pad],
                dilations=[1, 1],
                group=1,
            )
        elif t == "relu":
            x = node("Relu", [x], f"l{i}_relu")
        elif t == "maxpool":
            k, s = int(spec["pool"]), int(spec["stride"])
            x = node("MaxPool", [x], f"l{i}_maxpool", kernel_shape=[k, k], strides=[s, s], ceil_mode=0)
        elif t == "fc":
            if rank != 2:
                x = node("Flatten", [x], f"l{i}_flatten", axis=1)  # C, H, W order, as the core
                rank = 2
            x = node(
                "Gemm", [x, const(f"l{i}_weight", p["weight"]), const(f"l{i}_bias", p["bias"])], f"l{i}_fc", transB=1
            )
        elif t == "softmax":
            pass  # the core applies softmax once at the end, whether the stack ends with it or not
        else:  # pragma: no cover - the core rejects unknown layer types
            raise ValueError(f"layer {i}: cannot export layer type {t!r}")
    if rank != 2:
        x = node("Flatten", [x], "logits", axis=1)
    temperature = getattr(estimator, "temperature_", None)
    if temperature is not None and temperature != 1.0:  # calibration: softmax(logits / T)
        x = node("Div", [x, const("temperature", np.asarray(temperature, dtype=np.float32))], "temperature_scaled")
    probs = "probabilities"
    nodes.append(helper.make_node("Softmax", [x], [probs], name="softmax_op", axis=1))
    nodes.append(helper.make_node("ArgMax", [probs], ["label_index"], name="argmax_op", axis=1, keepdims=0))
    classes_init = "classes"
    inits.append(numpy_helper.from_array(label_values, classes_init))
    nodes.append(helper.make_node("Gather", [classes_init, "label_index"], ["label"], name="label_op", axis=0))

    elem = TensorProto.UINT8 if input_dtype == "uint8" else TensorProto.FLOAT
    graph = helper.make_graph(
        nodes,
        name,
        [helper.make_tensor_value_info("images", elem, ["N", h, w, c])],
        [
            helper.make_tensor_value_info("label", label_type, ["N"]),
            helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", n_classes]),
            helper.make_tensor_value_info("label_index", TensorProto.INT64, ["N"]),
        ],
        initializer=inits,
        doc_string=(
            f"NDLMClassifier: images (N, {h}, {w}, {c}) {input_dtype} -> label, "
            f"probabilities (N, {n_classes}), label_index"
        ),
    )
    version = __version__
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", opset)],
        producer_name="ndlm_sk",
        producer_version=version,
        doc_string="NDLM white blood cell classifier exported by ndlm_sk",
    )
    model.ir_version = ONNX_IR_VERSION
    meta = {
        "classes": json.dumps(classes_json),
        "class_dtype": class_dtype,
        "input_scale": repr(float(estimator.input_scale_)),
        "image_shape": json.dumps([h, w, c]),
        "input_dtype": input_dtype,
        "layers": json.dumps([_jsonable_spec(s) for s in layers]),
        "ndlm_sk_version": version,
        "onnx_export_version": str(_EXPORT_VERSION),
    }
    helper.set_model_props(model, meta)
    onnx.checker.check_model(model, full_check=True)
    if path is not None:
        atomic_write(path, lambda f: f.write(model.SerializeToString()))
    return model


def _jsonable_spec(spec):
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in spec.items()}
