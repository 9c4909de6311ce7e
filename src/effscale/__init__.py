"""effscale: EfficientNet and compound model scaling as a practical instrument."""
from .cost import Cost, LayerCost, cost
from .errors import EffscaleError
from .families import Family, families, family_of
from .model import create_model
from .scaling import Coefficients, Scalable, ScalingRule, ScaleLimitError
from .spec import BlockSpec, NetworkSpec, StageSpec
from .weights import load_weights, save_weights
# compound / scale / cost take any model reference (name, spec, spec file, weights file, built model)
from .zoo import compound, get_spec, list_models, resolve_spec, scale
# The registered families (each registers itself on import): EfficientNet images, 1-D series.
from .image_family import IMAGE
from .series.family import SERIES

__version__ = "0.1.0"

__all__ = [
    "BlockSpec", "Coefficients", "Cost", "EffscaleError", "Family", "IMAGE", "LayerCost", "NetworkSpec", "SERIES",
    "Scalable", "ScaleLimitError", "ScalingRule", "StageSpec", "compound", "cost", "create_model", "families",
    "family_of", "get_spec", "list_models", "load_weights", "resolve_spec", "save_weights", "scale",
]
