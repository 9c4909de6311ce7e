"""effscale: EfficientNet and compound model scaling as a practical instrument."""
from .errors import EffscaleError
from .scaling import Coefficients, ScalingRule, compound, scale
from .spec import BlockSpec, NetworkSpec, StageSpec
from .zoo import get_spec, list_models
from .model import create_model

__version__ = "0.1.0"

__all__ = [
    "BlockSpec", "Coefficients", "EffscaleError", "NetworkSpec", "ScalingRule", "StageSpec",
    "compound", "create_model", "get_spec", "list_models", "scale",
]
