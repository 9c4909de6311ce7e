"""`--init`: start a model from a checkpoint's weights (an effscale file or run, or a foreign
checkpoint in any layout `weights` reads), for classification and for a detector's / segmenter's
backbone alike."""
from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import nn

from ..errors import EffscaleError


def read_init(path: str):
    """(spec or None, state dict in effscale keys) of an --init / --teacher checkpoint."""
    from ..weights import is_effscale_file, model_from_file

    location = Path(path)
    if location.is_dir():
        location = location / "model.safetensors"
    if not location.exists():
        raise EffscaleError(f"checkpoint {path!r} does not exist")
    if is_effscale_file(location):
        model = model_from_file(location)
        return model.spec, model
    return None, location


def _adapt_stem(weight: torch.Tensor, in_chans: int) -> torch.Tensor:
    """RGB stem -> grayscale (sum over colour) or more channels (repeat, rescaled): the usual way
    to reuse ImageNet weights on data with other channel counts."""
    if weight.shape[1] == in_chans:
        return weight
    if in_chans == 1:
        return weight.sum(1, keepdim=True)
    repeats = math.ceil(in_chans / weight.shape[1])
    return weight.repeat(1, repeats, 1, 1)[:, :in_chans] * (weight.shape[1] / in_chans)


def load_init(model: nn.Module, source, init_path: str) -> None:
    """Copy every matching weight; the classifier is re-initialised when the class count differs
    and the stem adapted when the input channels differ. Any other shape difference is an error.

    The model computes like the checkpoint afterwards: the BN eps and padding its implementation
    used (and an effscale file's activation) replace the model's, with one WeightsAdaptedWarning
    (weights.match_compute); copying the tensors alone would give other logits."""
    from ..weights import COMPUTE_FIELDS, match_compute, model_from_checkpoint, set_compute_fields

    if isinstance(source, Path):
        # A foreign checkpoint: its model is built from our spec and matched to its layout (that
        # warns, once), then ours takes the same values.
        source = model_from_checkpoint(source, model.spec)
        set_compute_fields(model, **{name: getattr(source.spec, name) for name in COMPUTE_FIELDS})
    else:
        match_compute(model, {name: getattr(source.spec, name) for name in COMPUTE_FIELDS}, origin=init_path,
                      provenance="the spec the file was saved with")
    state = source.state_dict()
    target = model.state_dict()
    copied, mismatched = {}, []
    for key, value in target.items():
        if key not in state:
            continue
        theirs = state[key]
        if key == "stem.conv.weight":
            theirs = _adapt_stem(theirs, value.shape[1])
        if key.startswith("classifier.") and theirs.shape != value.shape:
            continue  # new task: keep the fresh head
        if theirs.shape != value.shape:
            mismatched.append(f"{key}: checkpoint {tuple(theirs.shape)} vs model {tuple(value.shape)}")
        else:
            copied[key] = theirs
    missing = [key for key in target if key not in copied and not key.startswith("classifier.")
               and not key.endswith("num_batches_tracked")]
    if mismatched or missing:
        problems = mismatched + [f"{key}: missing" for key in missing]
        raise EffscaleError(f"--init weights do not fit {model.spec.name}: {len(problems)} problems, e.g. "
                            + "; ".join(problems[:5]))
    model.load_state_dict(copied, strict=False)


__all__ = ["load_init", "read_init"]
