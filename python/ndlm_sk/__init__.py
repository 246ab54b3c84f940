"""ndlm_sk: the NDLM white blood cell classifier as a fast, C++-accelerated scikit-learn estimator."""

from ._core import simd_level
from .architectures import PRESETS
from .estimator import NDLMClassifier

__version__ = "0.1.0"
__all__ = ["NDLMClassifier", "PRESETS", "simd_level", "__version__"]
