"""ndlm_sk: the NDLM white blood cell classifier as a fast, C++-accelerated scikit-learn estimator.

The public names load lazily, so ``ndlm_sk.datasets`` and ``ndlm_sk.report`` import (and joblib
workers decoding images start) without loading the compiled core.
"""

__version__ = "0.1.0"

_LAZY = {
    "NDLMClassifier": ("estimator", "NDLMClassifier"),
    "PRESETS": ("architectures", "PRESETS"),
    "simd_level": ("_core", "simd_level"),
    "to_onnx": ("onnx_export", "to_onnx"),
    "save_model": ("model_io", "save_model"),
    "differential": ("smear", "differential"),
    "load_model": ("model_io", "load_model"),
    "evaluate_folder": ("evaluate", "evaluate_folder"),
    "calibrate_temperature": ("calibration", "calibrate_temperature"),
}
__all__ = sorted(_LAZY) + ["__version__"]


def __getattr__(name):
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        value = getattr(importlib.import_module(f".{module}", __name__), attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'ndlm_sk' has no attribute {name!r}")


def __dir__():
    return __all__
