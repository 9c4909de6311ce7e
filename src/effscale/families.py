"""Families as objects: what the scaling lab, the planner and the reports need of a kind of network.

A spec is pure data (a frozen dataclass with a `kind`, a `name`, a `resolution` and a text form);
everything done *with* a spec goes through its `Family`: scale it by (depth, width, resolution),
build its module, count its analytic cost, parse its text form, list and get its named members.
Each family registers one `Family` when its package is imported (`image_family.py` for
EfficientNet, `series/family.py` for the 1-D series), so specs never import the layers that
build or count them, and a new family (V2, detectors, video, graphs) enters by registering one
object instead of growing methods on every spec.

This module sits at the bottom of the house: it imports nothing of effscale but its errors.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from .errors import EffscaleError


@dataclass(frozen=True)
class Family:
    """One kind of network.

    - ``kind``: the spec's `kind` and the input it takes ("image", "series"); the lab checks it
      against the data's.
    - ``spec_type``: the spec class (a frozen dataclass with `name`, `resolution`, `to_text()`).
    - ``scale(spec, coefficients, *, name=None, resolution_multiple=8)``: the spec scaled by
      (depth, width, resolution) with the family's rounding; pure, raises EffscaleError
      (ScaleLimitError naming the multiplier) past the family's limits.
    - ``build(spec, num_classes, in_chans)``: a fresh torch module for the spec.
    - ``cost(spec, num_classes, in_chans)``: an object with ``params`` and ``macs`` (batch 1, at
      the spec's own resolution, for a model built with those classes and input channels).
    - ``from_text(text)``: the spec from `spec.to_text()`; ``text_tag`` is the text's first word.
    - ``names()`` / ``get(name)``: the family's named members.
    - ``default_num_classes`` / ``default_in_chans``: what `build` and `cost` assume by default.
    """

    kind: str
    spec_type: type
    scale: Callable[..., Any]
    build: Callable[..., Any]
    cost: Callable[..., Any]
    from_text: Callable[[str], Any]
    text_tag: str
    names: Callable[[], list[str]]
    get: Callable[[str], Any]
    default_num_classes: int
    default_in_chans: int


_FAMILIES: dict[str, Family] = {}


def register(family: Family) -> Family:
    """Make `family` known (by its kind); registering the same kind again replaces it (a reload)."""
    if not isinstance(family, Family):
        raise TypeError(f"register() takes a Family, got {type(family).__name__}")
    _FAMILIES[family.kind] = family
    return family


def families() -> list[Family]:
    return list(_FAMILIES.values())


def family_of(spec) -> Family:
    """The registered family of `spec` (by its `kind`); TypeError for an object of no family."""
    kind = getattr(spec, "kind", None)
    family = _FAMILIES.get(kind) if isinstance(kind, str) else None
    if family is None:
        known = ", ".join(f"{f.kind} ({f.spec_type.__name__})" for f in _FAMILIES.values())
        raise TypeError(f"expected a spec of a registered family ({known}); got {type(spec).__name__} "
                        f"{spec!r:.60}")
    return family


def family_for_text(text: str, source: str = "spec text") -> Family:
    """The family whose text form `text` is (by its first word)."""
    first = text.split(None, 1)[0] if text.split() else ""
    for family in _FAMILIES.values():
        if family.text_tag == first:
            return family
    tags = " or ".join(f"'{f.text_tag} NAME ...'" for f in _FAMILIES.values())
    raise EffscaleError(f"{source} is not a spec: its text must start with {tags}, not {text.strip()[:40]!r}")


__all__ = ["Family", "families", "family_for_text", "family_of", "register"]
