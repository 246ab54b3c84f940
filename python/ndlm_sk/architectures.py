"""Layer stacks as data: the NDLM preset and the shallow CNNs of the paper's Table III.

A stack is a list of dicts, one per layer, with a ``type`` and that layer's settings:

- ``{"type": "batchnorm", "eps": 1e-5, "momentum": 0.1}``
- ``{"type": "lrn", "size": 5, "alpha": 1e-4, "beta": 0.75, "k": 2.0}`` (odd window)
- ``{"type": "conv", "filters": 10, "kernel": 5, "stride": 1, "padding": 0}``
- ``{"type": "relu"}``
- ``{"type": "maxpool", "pool": 5, "stride": 5}``
- ``{"type": "fc", "units": None}`` (``None``: the number of classes)
- ``{"type": "softmax"}`` (only last; softmax + cross-entropy is applied in any case)

Omitted settings take the defaults above. The stack must end with as many outputs as classes.
"""

from copy import deepcopy

_BN = {"type": "batchnorm"}
_RELU = {"type": "relu"}
_FC = {"type": "fc"}
_SOFTMAX = {"type": "softmax"}

PRESETS = {
    # NDLM.md's table: BN, LRN, conv 5x5x10, BN, ReLU, BN, max pool 5/5, BN, FC, softmax
    "ndlm": [
        _BN,
        {"type": "lrn", "size": 5, "alpha": 1e-4, "beta": 0.75, "k": 2.0},
        {"type": "conv", "filters": 10, "kernel": 5, "stride": 1, "padding": 0},
        _BN,
        _RELU,
        _BN,
        {"type": "maxpool", "pool": 5, "stride": 5},
        _BN,
        _FC,
        _SOFTMAX,
    ],
    # Table III comparison models, as the paper describes them (Section V.B)
    "dfcn": [
        {"type": "conv", "filters": 8, "kernel": 5},
        _RELU,
        {"type": "maxpool", "pool": 5, "stride": 5},
        _FC,
        _SOFTMAX,
    ],
    "dl": [
        {"type": "conv", "filters": 10, "kernel": 15},
        _RELU,
        {"type": "maxpool", "pool": 5, "stride": 5},
        _FC,
        _SOFTMAX,
    ],
    # NDEL: BN, conv 15x15x10, ReLU, pool 5/5, cross-channel normalization (window 7), FC
    "ndel": [
        _BN,
        {"type": "conv", "filters": 10, "kernel": 15},
        _RELU,
        {"type": "maxpool", "pool": 5, "stride": 5},
        {"type": "lrn", "size": 7, "alpha": 1e-4, "beta": 0.75, "k": 2.0},
        _FC,
        _SOFTMAX,
    ],
    # CDFL couples two such networks; this is one branch (conv 5x5x2, ReLU, pool 7/3).
    "cdfl": [
        {"type": "conv", "filters": 2, "kernel": 5},
        _RELU,
        {"type": "maxpool", "pool": 7, "stride": 3},
        _FC,
        _SOFTMAX,
    ],
    # No spatial layer: treats an (n, F) table as n images of 1x1xF. Used by sklearn's checks.
    "tabular": [_BN, _FC, _SOFTMAX],
}
# The paper describes DFTL with the same layers as DL (conv 15x15x10, ReLU, pool 5/5).
PRESETS["dftl"] = deepcopy(PRESETS["dl"])


def resolve_architecture(architecture):
    """Return the layer stack (a fresh list of dicts) named or given by ``architecture``."""
    if isinstance(architecture, str):
        try:
            return deepcopy(PRESETS[architecture])
        except KeyError:
            raise ValueError(
                f"unknown architecture {architecture!r}; presets: {sorted(PRESETS)}, or pass a list of layer dicts"
            ) from None
    if isinstance(architecture, (list, tuple)) and architecture:
        stack = []
        for i, layer in enumerate(architecture):
            if not isinstance(layer, dict) or "type" not in layer:
                raise ValueError(f"layer {i} of architecture must be a dict with a 'type' key, got {layer!r}")
            stack.append(dict(layer))
        return stack
    raise ValueError(
        f"architecture must be a preset name ({sorted(PRESETS)}) or a non-empty list of layer dicts, "
        f"got {architecture!r}"
    )
