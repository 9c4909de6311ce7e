"""The 1-D time-series family as a `families.Family` (registered when effscale.series is imported)."""
from __future__ import annotations

from ..families import Family, register
from .cost import series_cost
from .nn import SeriesNet
from .spec import DEFAULT_NUM_CLASSES, SeriesSpec, get_series_spec, list_series_models, scale_series


def _build(spec: SeriesSpec, num_classes: int = DEFAULT_NUM_CLASSES, in_chans: int = 1) -> SeriesNet:
    return SeriesNet(spec, num_classes=num_classes, in_chans=in_chans)


def _cost(spec: SeriesSpec, num_classes: int = DEFAULT_NUM_CLASSES, in_chans: int = 1, batch: int = 1):
    return series_cost(spec, batch, num_classes=num_classes, in_chans=in_chans)


SERIES = register(Family(
    kind=SeriesSpec.kind, spec_type=SeriesSpec, scale=scale_series, build=_build, cost=_cost,
    from_text=SeriesSpec.from_text, text_tag="series", names=list_series_models, get=get_series_spec,
    default_num_classes=DEFAULT_NUM_CLASSES, default_in_chans=1))

__all__ = ["SERIES"]
