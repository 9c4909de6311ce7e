"""The effscale weights file format, read without torch: its name and version, its metadata (the
spec travels in it) and the test for it. Kept apart from weights.py (which converts and loads
state dicts and builds models) so that the spec resolver (zoo) can read a file's spec without
importing the model layer above it."""
from __future__ import annotations

import json
import os
import struct
from pathlib import Path

from .errors import EffscaleError
from .spec import NetworkSpec

FORMAT_NAME = "effscale"
FORMAT_VERSION = 1


def read_metadata(path: str | os.PathLike) -> dict:
    """The metadata of an effscale safetensors file, parsed.

    Returns `{"format_version": int, "spec": str (NetworkSpec.to_text(); NetworkSpec.from_text
    parses it), "num_classes": int, "in_chans": int, "features_only": bool, "extra": dict}`. Raises EffscaleError for a file that is not an effscale
    safetensors file (foreign checkpoints have no spec: load them with `load_weights`).
    """
    raw = _safetensors_metadata(_existing_file(path))
    if raw is None or raw.get("format") != FORMAT_NAME:
        raise EffscaleError(f"{str(path)!r} is not an effscale weights file (no effscale metadata); "
                            "foreign checkpoints load with load_weights(model, path)")
    try:
        version = int(raw["format_version"])
        if version > FORMAT_VERSION:
            raise EffscaleError(f"{str(path)!r} has weights format version {version}; this effscale "
                                f"reads up to version {FORMAT_VERSION} (upgrade effscale)")
        NetworkSpec.from_text(raw["spec"])  # a broken spec is an error here, not when it is used
        return {"format_version": version, "spec": raw["spec"],
                "num_classes": int(raw["num_classes"]), "in_chans": int(raw["in_chans"]),
                "features_only": bool(int(raw.get("features_only", "0"))),
                "extra": json.loads(raw["extra"]) if "extra" in raw else {}}
    except (KeyError, ValueError) as error:
        if isinstance(error, EffscaleError):
            raise
        raise EffscaleError(f"{str(path)!r} has broken effscale metadata ({type(error).__name__}: {error})") from None


def is_effscale_file(path: str | os.PathLike) -> bool:
    """True for a safetensors file written by `save_weights` (False for anything else, never raises)."""
    try:
        raw = _safetensors_metadata(Path(path)) if Path(path).is_file() else None
    except EffscaleError:
        return False
    return raw is not None and raw.get("format") == FORMAT_NAME


def _existing_file(path) -> Path:
    if not isinstance(path, (str, os.PathLike)):
        raise EffscaleError(f"weights path must be a str or path, got {type(path).__name__}")
    path = Path(path)
    if not path.exists():
        raise EffscaleError(f"weights file {str(path)!r} does not exist")
    if not path.is_file():
        raise EffscaleError(f"weights path {str(path)!r} is not a file")
    return path


def _safetensors_metadata(path: Path, strict: bool = True):
    """The `__metadata__` of a safetensors file (None when it has none).

    With strict=False, returns False instead of raising when the file is not safetensors at all.
    """
    try:
        with open(path, "rb") as handle:
            prefix = handle.read(8)
            if len(prefix) < 8:
                raise ValueError("file too short")
            (size,) = struct.unpack("<Q", prefix)
            if size < 2 or size > 100_000_000 or size > path.stat().st_size - 8:
                raise ValueError("bad header size")
            header = json.loads(handle.read(size))
            if not isinstance(header, dict):
                raise ValueError("header is not a JSON object")
    except (OSError, ValueError, UnicodeDecodeError) as error:
        if not strict:
            return False
        raise EffscaleError(f"{str(path)!r} is not a safetensors file ({error})") from None
    metadata = header.get("__metadata__")
    return metadata if isinstance(metadata, dict) else None
