"""Base specs for the lab: any image model name or spec file, the lab's small image base, or a
series model; optionally compound-scaled by phi first (e.g. B0 at phi = -2 as a small base)."""
from __future__ import annotations

from ..errors import EffscaleError
from ..scaling import Scalable, ScalingRule, compound

LAB_BASE = "effscale_lab"


def lab_base():
    """The demo's base: a scaled-down B0 for 28-32 px data (B0 at width 0.5, depth 0.5, 32 px,
    total stride 16 as in the quick recipe's model), with the regularisation of its size
    (dropout 0.05, no drop-path) and fast BN statistics, so that a few hundred proxy steps
    measure capacity rather than regularisation."""
    from ..train.recipe import quick_spec

    return quick_spec().replace(name=LAB_BASE, dropout=0.05, drop_path_rate=0.0, bn_momentum=0.1)


def lab_models() -> list[str]:
    from ..series import list_series_models
    from ..zoo import list_models

    return [LAB_BASE, *list_models(), *list_series_models()]


def resolve_base(model, phi: float | None = None, rule: ScalingRule | None = None) -> Scalable:
    """A Scalable spec from a name (image zoo, `effscale_lab`, series zoo), a spec file, or a spec."""
    if isinstance(model, Scalable):
        spec = model
    elif not isinstance(model, str) or not model:
        raise EffscaleError(f"model={model!r} must be a model name or spec file; allowed names: "
                            f"{', '.join(lab_models())}")
    elif model == LAB_BASE:
        spec = lab_base()
    else:
        from ..zoo import resolve_spec  # image and series names, spec files, weights files

        try:
            spec = resolve_spec(model)
        except EffscaleError as error:
            from ..series import list_series_models

            raise EffscaleError(f"{error} (the lab also knows {LAB_BASE} and the series models: "
                                f"{', '.join(list_series_models())})") from None
    if phi is not None:  # compound names phi and its allowed range in its errors
        spec = compound(spec, phi, rule)
    return spec



def fit_to_task(spec, task):
    """An image spec carries the preprocessing its weights need: the task's normalisation, and
    crop_pct 1 (the lab resizes whole images). Other families are returned as they are."""
    from ..spec import NetworkSpec

    if isinstance(spec, NetworkSpec) and task.kind == "image" and task.mean:
        return spec.replace(mean=task.mean, std=task.std, crop_pct=1.0)
    return spec
