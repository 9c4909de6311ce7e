"""Detector and segmenter weights as self-describing safetensors files: the dense spec (as JSON,
backbone in its text form), the input channels and the class names travel in the metadata, so
`load_dense_model(path)` rebuilds the model with nothing else (as `weights.model_from_file` does
for classifiers)."""
from __future__ import annotations

import json
import os
from pathlib import Path

from torch import nn

from ..errors import EffscaleError
from ..weights_file import _existing_file, _safetensors_metadata
from .modules import build_dense_model
from .spec import dense_spec_from_dict, dense_spec_to_dict

DENSE_FORMAT = "effscale-dense"
DENSE_VERSION = 1


def save_dense_weights(model: nn.Module, path, extra: dict | None = None) -> Path:
    from safetensors.torch import save_file

    metadata = {"format": DENSE_FORMAT, "format_version": str(DENSE_VERSION),
                "spec": json.dumps(dense_spec_to_dict(model.spec)), "in_chans": str(model.in_chans),
                "extra": json.dumps(extra or {}, sort_keys=True)}
    path = Path(path)
    tensors = {key: value.detach().cpu().contiguous() for key, value in model.state_dict().items()}
    partial = path.with_name(path.name + ".partial")
    save_file(tensors, str(partial), metadata=metadata)
    os.replace(partial, path)
    return path


def is_dense_file(path) -> bool:
    location = Path(path)
    if location.is_dir():
        location = location / "model.safetensors"
    if not location.is_file():
        return False
    raw = _safetensors_metadata(location, strict=False)  # False: not safetensors at all (a .pth)
    return isinstance(raw, dict) and raw.get("format") == DENSE_FORMAT


def read_dense_metadata(path) -> dict:
    location = _existing_file(Path(path) / "model.safetensors" if Path(path).is_dir() else path)
    raw = _safetensors_metadata(location)
    if raw is None or raw.get("format") != DENSE_FORMAT:
        raise EffscaleError(f"{str(location)!r} is not an effscale detector / segmenter weights file")
    if int(raw.get("format_version", 0)) > DENSE_VERSION:
        raise EffscaleError(f"{str(location)!r} has format version {raw['format_version']}; this effscale reads "
                            f"up to {DENSE_VERSION} (upgrade effscale)")
    return {"spec": dense_spec_from_dict(json.loads(raw["spec"])), "in_chans": int(raw["in_chans"]),
            "extra": json.loads(raw.get("extra", "{}")), "path": location}


def load_dense_model(path) -> nn.Module:
    """The detector / segmenter saved at `path` (a file or a run directory), in eval mode."""
    from safetensors.torch import load_file

    metadata = read_dense_metadata(path)
    model = build_dense_model(metadata["spec"], metadata["in_chans"])
    state = load_file(str(metadata["path"]))
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise EffscaleError(f"{metadata['path']}: the weights do not fit its own spec ({len(missing)} missing, "
                            f"{len(unexpected)} unexpected keys, e.g. {(missing + unexpected)[:3]})")
    model.classes = metadata["extra"].get("classes")
    return model.eval()


__all__ = ["is_dense_file", "load_dense_model", "read_dense_metadata", "save_dense_weights"]
