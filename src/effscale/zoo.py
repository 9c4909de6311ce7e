"""The named EfficientNet family, each a (base, multipliers, resolution, dropout) row.

The released B1-B7 multipliers are rounded by hand (not exactly alpha**phi, beta**phi,
gamma**phi), so the family is a table, as in the reference TF code.
"""
from __future__ import annotations

from dataclasses import dataclass

from .errors import EffscaleError, closest
from .scaling import Coefficients, scale
from .spec import EFFICIENTNET_B0, EFFICIENTNET_LITE0, NetworkSpec


@dataclass(frozen=True)
class FamilyMember:
    base: NetworkSpec
    width: float
    depth: float
    resolution: int
    dropout: float


_FAMILY: dict[str, FamilyMember] = {
    "efficientnet_b0": FamilyMember(EFFICIENTNET_B0, 1.0, 1.0, 224, 0.2),
    "efficientnet_b1": FamilyMember(EFFICIENTNET_B0, 1.0, 1.1, 240, 0.2),
    "efficientnet_b2": FamilyMember(EFFICIENTNET_B0, 1.1, 1.2, 260, 0.3),
    "efficientnet_b3": FamilyMember(EFFICIENTNET_B0, 1.2, 1.4, 300, 0.3),
    "efficientnet_b4": FamilyMember(EFFICIENTNET_B0, 1.4, 1.8, 380, 0.4),
    "efficientnet_b5": FamilyMember(EFFICIENTNET_B0, 1.6, 2.2, 456, 0.4),
    "efficientnet_b6": FamilyMember(EFFICIENTNET_B0, 1.8, 2.6, 528, 0.5),
    "efficientnet_b7": FamilyMember(EFFICIENTNET_B0, 2.0, 3.1, 600, 0.5),
    "efficientnet_b8": FamilyMember(EFFICIENTNET_B0, 2.2, 3.6, 672, 0.5),
    "efficientnet_l2": FamilyMember(EFFICIENTNET_B0, 4.3, 5.3, 800, 0.5),
    "efficientnet_lite0": FamilyMember(EFFICIENTNET_LITE0, 1.0, 1.0, 224, 0.2),
    "efficientnet_lite1": FamilyMember(EFFICIENTNET_LITE0, 1.0, 1.1, 240, 0.2),
    "efficientnet_lite2": FamilyMember(EFFICIENTNET_LITE0, 1.1, 1.2, 260, 0.3),
    "efficientnet_lite3": FamilyMember(EFFICIENTNET_LITE0, 1.2, 1.4, 280, 0.3),
    "efficientnet_lite4": FamilyMember(EFFICIENTNET_LITE0, 1.4, 1.8, 300, 0.3),
}


def list_models() -> list[str]:
    return list(_FAMILY)


def family_member(name: str) -> FamilyMember:
    if name not in _FAMILY:
        raise EffscaleError(f"unknown model {name!r}{closest(name, _FAMILY)} (see `effscale models`)")
    return _FAMILY[name]


def get_spec(name: str, **overrides) -> NetworkSpec:
    """The spec of a named model, with any spec field overridden (e.g. padding="same")."""
    member = family_member(name)
    spec = scale(member.base, Coefficients(depth=member.depth, width=member.width), name=name,
                 resolution=member.resolution)
    spec = spec.replace(dropout=member.dropout)
    return spec.replace(**overrides) if overrides else spec
