"""`create_model`: a name or spec (plus overrides) to a ready module, optionally with weights."""
from __future__ import annotations

import os

from torch import nn

from .errors import EffscaleError
from .nn.network import EfficientNet
from .spec import NetworkSpec
from .zoo import get_spec


def resolve_spec(name_or_spec: str | NetworkSpec, **overrides) -> NetworkSpec:
    if isinstance(name_or_spec, NetworkSpec):
        return name_or_spec.replace(**overrides) if overrides else name_or_spec
    if isinstance(name_or_spec, str):
        return get_spec(name_or_spec, **overrides)
    raise EffscaleError(f"expected a model name or NetworkSpec, got {type(name_or_spec).__name__}")


def create_model(name_or_spec: str | NetworkSpec, *, num_classes: int = 1000, in_chans: int = 3,
                 weights: str | os.PathLike | None = None, features_only: bool = False,
                 **overrides) -> nn.Module:
    """Build a model from a name in `list_models()` or a NetworkSpec.

    `overrides` replace spec fields (e.g. `padding="same"` for TF-ported weights, `bn_eps=1e-5`,
    `drop_path_rate=0.1`). `weights` loads a checkpoint in any supported key layout; for a named
    model the spec fields its implementation implies (TF padding, BN eps) are applied unless
    overridden (see `weights.model_from_checkpoint`).
    """
    if weights is not None:
        from .weights import model_from_checkpoint
        return model_from_checkpoint(weights, name_or_spec, num_classes=num_classes, in_chans=in_chans,
                                     features_only=features_only, **overrides)
    spec = resolve_spec(name_or_spec, **overrides)
    return EfficientNet(spec, num_classes=num_classes, in_chans=in_chans, features_only=features_only)
