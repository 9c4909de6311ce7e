"""effscale: EfficientNet and compound model scaling as a practical instrument."""
from .cost import Cost, LayerCost, cost
from .errors import EffscaleError
from .model import create_model
from .scaling import Coefficients, Scalable, ScalingRule, compound, scale
from .spec import BlockSpec, NetworkSpec, StageSpec
from .weights import load_weights, save_weights
from .zoo import get_spec, list_models

__version__ = "0.1.0"

__all__ = [
    "BlockSpec", "Coefficients", "Cost", "EffscaleError", "LayerCost", "NetworkSpec", "Scalable", "ScalingRule", "StageSpec",
    "compound", "cost", "create_model", "get_spec", "list_models", "load_weights", "save_weights", "scale",
]
