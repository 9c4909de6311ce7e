"""PyTorch modules built from specs."""
from .inference import fold_batchnorm, prepare_for_inference
from .network import EfficientNet, build_model

__all__ = ["EfficientNet", "build_model", "fold_batchnorm", "prepare_for_inference"]
