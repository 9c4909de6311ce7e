"""The named EfficientNet family, each a (base, multipliers, resolution, dropout) row, and the
one resolver that turns any model reference into a spec (`resolve_spec`).

The released B1-B7 multipliers are rounded by hand (not exactly alpha**phi, beta**phi,
gamma**phi), so the family is a table, as in the reference TF code.

`compound` and `scale` here are the public ones (`effscale.compound`, `effscale.scale`): the
pure functions of scaling.py on any model reference. scaling.py stays below this module and
takes specs only.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from . import scaling as _scaling
from .errors import EffscaleError, closest
from .families import families, family_for_text
from .scaling import Coefficients, Scalable, ScalingRule, scale as _scale, scale_any
from .spec import EFFICIENTNET_B0, EFFICIENTNET_LITE0, NetworkSpec

# A spec text file is a few hundred bytes; anything far larger is not one (and must not be read
# into memory whole, e.g. a dataset archive given by mistake).
MAX_SPEC_FILE_BYTES = 1 << 20
FILE_FORMS = "a model name (see `effscale models`), a spec text file or an effscale .safetensors file"
REFERENCE_FORMS = ("a model name (see `effscale models`), a NetworkSpec or another Scalable spec, a spec text "
                   "file, an effscale .safetensors file or a built effscale model")


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
    if not isinstance(name, str):
        raise TypeError(f"a model name is a str, got {type(name).__name__}")
    if name not in _FAMILY:
        raise EffscaleError(f"unknown model {name!r}{closest(name, _FAMILY)} (see `effscale models`)")
    return _FAMILY[name]


def get_spec(name: str, **overrides) -> NetworkSpec:
    """The spec of a named model, with any spec field overridden (e.g. padding="same")."""
    member = family_member(name)
    spec = _scale(member.base, Coefficients(depth=member.depth, width=member.width), name=name,
                  resolution=member.resolution)
    spec = spec.replace(dropout=member.dropout)
    return spec.replace(**overrides) if overrides else spec


# -- any model reference -> its spec --------------------------------------------------------------
def resolve_spec(ref, **overrides):
    """The spec `ref` refers to, with any spec field overridden.

    `ref` is a model name (the image family, or a series model such as series_b0), a spec
    (NetworkSpec or any `Scalable`), the path of a spec text file (`to_text()`), the path of an
    effscale .safetensors weights file (its spec travels in the metadata), or a built effscale
    model (its `.spec`). Anything else raises TypeError naming the type; a reference of the right
    type that names nothing raises EffscaleError naming it.
    """
    spec = _resolve(ref)
    return spec.replace(**overrides) if overrides else spec


def resolve_image_spec(ref, **overrides) -> NetworkSpec:
    """`resolve_spec` for what takes image models only (create_model, cost, latency, train,
    predict, plan): another family's spec is an EffscaleError naming it and its kind."""
    spec = resolve_spec(ref, **overrides)
    if not isinstance(spec, NetworkSpec):
        raise EffscaleError(f"{spec.name!r} is a {getattr(spec, 'kind', type(spec).__name__)} model; this takes "
                            "image models (EfficientNet specs, see `effscale models`)")
    return spec


def _resolve(ref):
    if isinstance(ref, Scalable):
        return ref
    if isinstance(ref, (str, os.PathLike)):
        return _from_name_or_path(ref)
    spec = getattr(ref, "spec", None)
    if isinstance(spec, Scalable):  # a built model (EfficientNet, SeriesNet)
        return spec
    raise TypeError(f"expected {REFERENCE_FORMS}; got {type(ref).__name__} {ref!r:.60}")


def _from_name_or_path(ref):
    text = os.fspath(ref)
    if isinstance(text, bytes):
        raise TypeError(f"expected {REFERENCE_FORMS}; got bytes {text!r:.60}")
    if not text.strip():
        raise EffscaleError(f"model reference {text!r} is empty; give {FILE_FORMS}")
    if isinstance(ref, str) and text in _FAMILY:
        return get_spec(text)
    for family in families():  # the other registered families' named members (series_b0, ...)
        if isinstance(ref, str) and text in family.names():
            return family.get(text)
    path = Path(text).expanduser()
    try:
        exists, is_dir, is_file = path.exists(), path.is_dir(), path.is_file()
    except (OSError, ValueError):  # a name too long for a path, or with a NUL byte
        exists = is_dir = is_file = False
    if not exists:
        if isinstance(ref, os.PathLike) or path.suffix or len(path.parts) > 1:  # a path, not a model name
            raise EffscaleError(f"spec file {text!r} does not exist")
        return get_spec(text)  # an unknown name: the error suggests close ones
    if is_dir:
        raise EffscaleError(f"{text!r} is a directory; give {FILE_FORMS}")
    if not is_file:
        raise EffscaleError(f"{text!r} is not a regular file; give {FILE_FORMS}")
    if path.suffix == ".safetensors":
        from .weights_file import read_metadata

        return spec_from_text(read_metadata(path)["spec"], f"the metadata of {text!r}")
    return spec_from_text(_read_spec_file(path, text), repr(text))


def _read_spec_file(path: Path, text: str) -> str:
    try:
        if path.stat().st_size > MAX_SPEC_FILE_BYTES:
            raise EffscaleError(f"{text!r} is {path.stat().st_size / 1e6:.1f} MB, too large for a spec text file "
                                f"(a spec is a few hundred bytes); give {FILE_FORMS}")
        return path.read_text()
    except UnicodeDecodeError:
        raise EffscaleError(f"{text!r} is neither a spec text file nor an effscale .safetensors file") from None
    except OSError as error:
        raise EffscaleError(f"cannot read {text!r}: {error.strerror or error}") from None


def spec_from_text(text: str, source: str = "spec text"):
    """A spec of any registered family from its text form, chosen by the first word ('network',
    'series', ...)."""
    return family_for_text(text, source).from_text(text)


# -- the public scaling functions, on any model reference -------------------------------------------
def compound(base, phi: float, rule: ScalingRule | None = None):
    """Compound-scale `base` by `rule.at(phi)` (EfficientNet's rule by default).

    `base` is any model reference (`resolve_spec`): a name, a spec, a spec file, a weights file or
    a built model. Errors name phi as given, what it does to the base, and the phi range allowed.
    """
    return _scaling.compound(resolve_spec(base), phi, rule)


def scale(spec, coefficients: Coefficients, **options):
    """Scale any model reference by explicit `coefficients` (see `scaling.scale` for `options`:
    name, resolution, resolution_multiple). Specs of other families use their own `scaled`."""
    spec = resolve_spec(spec)
    if not isinstance(spec, NetworkSpec) and "resolution" not in options:
        if not isinstance(coefficients, Coefficients):
            raise TypeError(f"scale() takes Coefficients(depth=, width=, resolution=) as its second argument, "
                            f"got {type(coefficients).__name__}")
        return scale_any(spec, coefficients, **options)
    return _scale(spec, coefficients, **options)
