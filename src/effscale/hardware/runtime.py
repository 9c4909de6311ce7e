"""Running a model the way a profile measured it, and timing it.

Every latency effscale predicts is for `prepare(spec, profile)` called under
`torch.inference_mode()` with `profile.threads` intra-op threads and (when the profile says so)
a channels_last input; `measure_latency` does exactly that, so predictions and measurements
compare like with like.
"""
from __future__ import annotations

from contextlib import contextmanager

import torch

from ..errors import EffscaleError
from ..timing import LatencyMeasurement, measure_in_passes, time_call  # noqa: F401  (re-exported)


@contextmanager
def torch_threads(threads: int):
    """Run the block with `threads` intra-op threads, restoring the caller's setting after."""
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise EffscaleError(f"threads={threads!r} must be an integer >= 1")
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def prepare(spec, profile, *, batch: int = 1, num_classes: int = 1000) -> torch.nn.Module:
    """The model exactly as `profile` runs it: built from `spec` (a NetworkSpec or model name),
    eval mode, batch norm folded, in-place squeeze-excite, and the profile's memory format and
    precision (`nn.prepare_for_inference`). Call it under `torch.inference_mode()`.

    `batch` is accepted for symmetry with `measure_latency` and checked; the module itself
    does not depend on it.
    """
    from ..model import create_model
    from ..nn import prepare_for_inference

    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise EffscaleError(f"batch={batch!r} must be an integer >= 1")
    model = create_model(spec, num_classes=num_classes)
    return prepare_for_inference(model, channels_last=profile.channels_last, bf16=profile.precision == "bf16")


def example_input(profile, channels: int, resolution: int, batch: int = 1) -> torch.Tensor:
    """A random float32 image batch in the profile's memory format (bf16 models cast it themselves)."""
    x = torch.randn(batch, channels, resolution, resolution)
    return x.contiguous(memory_format=torch.channels_last) if profile.channels_last else x


def measure_latency(spec_or_model, profile, *, batch: int = 1, repeats: int | None = None, warmup: int = 2,
                    resolution: int | None = None, budget_s: float = 1.0) -> LatencyMeasurement:
    """Time one call on `batch` images as the profile measures: `profile.threads` threads (the
    caller's setting is restored after), `torch.inference_mode()`, channels_last input when the
    profile says so.

    `spec_or_model`: a NetworkSpec or model name (built with `prepare`), or a module to time as
    given (prepare it yourself to compare with predictions). `resolution`: input side in pixels
    (default: the spec's). `repeats=None` is adaptive: at least 5 calls, more until `budget_s`
    seconds of calls (at most 200), after `warmup` untimed calls.

    A runtime profile (`profile.runtime` "openvino" / "onnxruntime") times a spec as it ships on
    that runtime and precision instead (runtime_profile.measure_on_runtime: export first, ~10-30 s).
    """
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise EffscaleError(f"batch={batch!r} must be an integer >= 1")
    if getattr(profile, "runtime", "torch") != "torch" and not isinstance(spec_or_model, torch.nn.Module):
        from ..zoo import resolve_image_spec
        from .deployed import measure_on_runtime

        spec = resolve_image_spec(spec_or_model)
        if resolution is not None and resolution != spec.resolution:
            spec = spec.replace(resolution=resolution)
        return measure_on_runtime(spec, profile, batch=batch, repeats=repeats, warmup=warmup, budget_s=budget_s)
    if isinstance(spec_or_model, torch.nn.Module):
        model = spec_or_model
        spec = getattr(model, "spec", None)
    else:
        from ..zoo import resolve_image_spec

        spec = resolve_image_spec(spec_or_model)
        model = prepare(spec, profile, batch=batch)
    if resolution is None:
        if spec is None:
            raise EffscaleError("measure_latency needs resolution= for a module without a .spec")
        resolution = spec.resolution
    if isinstance(resolution, bool) or not isinstance(resolution, int) or resolution < 1:
        raise EffscaleError(f"resolution={resolution!r} must be an integer >= 1")
    x = example_input(profile, getattr(model, "in_chans", 3), resolution, batch)
    with torch_threads(profile.threads), torch.inference_mode():
        return time_call(lambda: model(x), warmup=warmup, repeats=repeats, budget_s=budget_s)
