"""The same layer stack in PyTorch, from ndlm_sk's layer specs and weights (benchmarks, checks)."""

import numpy as np
import torch
from torch import nn


def build_torch(layers, input_shape, layer_params=None):
    """nn.Sequential equivalent of ndlm_sk canonical ``layers`` on (H, W, C) inputs, NCHW inside."""
    h, w, c = input_shape
    mods = []
    for spec in layers:
        t = spec["type"]
        if t == "batchnorm":
            mods.append(nn.BatchNorm2d(c, eps=spec["eps"], momentum=spec["momentum"]))
        elif t == "lrn":
            mods.append(nn.LocalResponseNorm(spec["size"], alpha=spec["alpha"], beta=spec["beta"], k=spec["k"]))
        elif t == "conv":
            kh, kw = spec["kernel"]
            mods.append(nn.Conv2d(c, spec["filters"], (kh, kw), stride=spec["stride"], padding=spec["padding"]))
            h = (h + 2 * spec["padding"] - kh) // spec["stride"] + 1
            w = (w + 2 * spec["padding"] - kw) // spec["stride"] + 1
            c = spec["filters"]
        elif t == "relu":
            mods.append(nn.ReLU())
        elif t == "maxpool":
            mods.append(nn.MaxPool2d(spec["pool"], stride=spec["stride"]))
            h = (h - spec["pool"]) // spec["stride"] + 1
            w = (w - spec["pool"]) // spec["stride"] + 1
        elif t == "fc":
            mods.append(nn.Flatten())
            mods.append(nn.Linear(c * h * w, spec["units"]))
            c, h, w = spec["units"], 1, 1
        elif t == "softmax":
            pass  # CrossEntropyLoss / softmax applied outside, on the logits
        else:
            raise ValueError(t)
    model = nn.Sequential(*mods)
    if layer_params is not None:
        load_params(model, layers, layer_params)
    return model


def load_params(model, layers, layer_params):
    mods = [m for m in model if not isinstance(m, nn.Flatten)]
    mi = 0
    with torch.no_grad():
        for spec, p in zip(layers, layer_params):
            if spec["type"] == "softmax":
                continue
            m = mods[mi]
            mi += 1
            if spec["type"] == "batchnorm":
                m.weight.copy_(torch.from_numpy(p["gamma"]))
                m.bias.copy_(torch.from_numpy(p["beta"]))
                m.running_mean.copy_(torch.from_numpy(p["running_mean"]))
                m.running_var.copy_(torch.from_numpy(p["running_var"]))
            elif spec["type"] in ("conv", "fc"):
                m.weight.copy_(torch.from_numpy(p["weight"]))
                m.bias.copy_(torch.from_numpy(p["bias"]))


def adam_for(model, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, l2=1e-4):
    """Adam with ndlm_sk's L2 convention: weight decay on conv / linear weights only."""
    decay, rest = [], []
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            decay.append(m.weight)
            rest.append(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            rest += [m.weight, m.bias]
    return torch.optim.Adam(
        [{"params": decay, "weight_decay": l2}, {"params": rest, "weight_decay": 0.0}], lr=lr, betas=betas, eps=eps
    )


def to_nchw(images_uint8, scale):
    return torch.from_numpy(np.ascontiguousarray(images_uint8.transpose(0, 3, 1, 2))).float().mul_(scale)


class _FromImages(nn.Module):
    """``model`` on ndlm_sk's input (uint8 NHWC images), returning class probabilities: the same
    contract as ndlm_sk's own ONNX export, so onnxruntime runs both on the same input."""

    def __init__(self, model, scale):
        super().__init__()
        self.model = model
        self.scale = scale

    def forward(self, x):
        return torch.softmax(self.model(x.permute(0, 3, 1, 2).float() * self.scale), dim=1)


def export_onnx(model, scale, example_images):
    """``model`` (eval mode) exported by torch.onnx.export, batch size dynamic: (ONNX bytes, exporter).

    The TorchScript-based exporter (``dynamo=False``) is tried first, then the default (dynamo, which
    needs the onnxscript package). Raises RuntimeError naming both failures if neither works."""
    import io
    import warnings

    wrapped = _FromImages(model.eval(), scale).eval()
    x = torch.from_numpy(np.ascontiguousarray(example_images))
    errors = []
    for dynamo in (False, True):
        f = io.BytesIO()
        kw = (
            {"dynamic_shapes": ({0: torch.export.Dim("batch")},)}
            if dynamo
            else {"dynamic_axes": {"images": {0: "batch"}, "proba": {0: "batch"}}}
        )
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                torch.onnx.export(wrapped, (x,), f, dynamo=dynamo, input_names=["images"], output_names=["proba"], **kw)
        except Exception as e:  # noqa: BLE001 - any exporter failure is reported, with its reason
            errors.append(f"dynamo={dynamo}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
            continue
        return f.getvalue(), ("torch.onnx.export(dynamo=True)" if dynamo else "torch.onnx.export(dynamo=False)")
    raise RuntimeError("; ".join(errors))
