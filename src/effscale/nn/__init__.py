"""PyTorch modules built from specs."""
from .inference import fold_batchnorm, prepare_for_inference
from .network import EfficientNet

__all__ = ["EfficientNet", "fold_batchnorm", "prepare_for_inference"]
