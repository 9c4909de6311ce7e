"""The EfficientNet image family as a `families.Family`: what the lab, the planner and the reports
use to scale, build and count any NetworkSpec (B0-B8, L2, Lite, the lab's small base, random and
user specs). Registered when effscale is imported."""
from __future__ import annotations

from .cost import cost as _cost
from .families import Family, register
from .nn.network import EfficientNet
from .scaling import RESOLUTION_MULTIPLE, scale as _scale
from .spec import NetworkSpec
from .zoo import get_spec, list_models


def _scale_image(spec: NetworkSpec, coefficients, *, name: str | None = None,
                 resolution_multiple: int = RESOLUTION_MULTIPLE) -> NetworkSpec:
    return _scale(spec, coefficients, name=name, resolution_multiple=resolution_multiple)


def _build(spec: NetworkSpec, num_classes: int = 1000, in_chans: int = 3) -> EfficientNet:
    return EfficientNet(spec, num_classes=num_classes, in_chans=in_chans)


def _cost_image(spec: NetworkSpec, num_classes: int = 1000, in_chans: int = 3, batch: int = 1):
    return _cost(spec, batch=batch, num_classes=num_classes, in_chans=in_chans)


IMAGE = register(Family(
    kind=NetworkSpec.kind, spec_type=NetworkSpec, scale=_scale_image, build=_build, cost=_cost_image,
    from_text=NetworkSpec.from_text, text_tag="network", names=list_models, get=get_spec,
    default_num_classes=1000, default_in_chans=3))

__all__ = ["IMAGE"]
