"""Training checkpoints: written atomically, read with weights_only=True, checked before use."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch

from ..errors import EffscaleError

CHECKPOINT_NAME = "checkpoint.pt"


def estimate_run_bytes(model: torch.nn.Module) -> int:
    """Disk a run writes, for check_output_dir: model + EMA + 2 optimizer states, twice (partial +
    last), and a margin."""
    params = sum(p.numel() for p in model.parameters()) * 4
    return params * 6 + 10_000_000


def save_checkpoint(state: dict, out: Path) -> Path:
    """Write `state` to out/checkpoint.pt via a temporary file and a rename, so a crash (or
    SIGKILL) mid-write leaves the previous checkpoint intact."""
    path = out / CHECKPOINT_NAME
    partial = out / (CHECKPOINT_NAME + ".partial")
    torch.save(state, partial)
    with open(partial, "rb+") as handle:  # the rename must not land before the data
        os.fsync(handle.fileno())
    os.replace(partial, path)
    return path


def load_checkpoint(out: Path) -> dict:
    path = out / CHECKPOINT_NAME
    if not path.is_file():
        raise EffscaleError(f"--resume: no checkpoint at {path}; start without --resume")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - torch raises many types for a bad file
        raise EffscaleError(f"--resume: {path} is not a readable checkpoint ({type(error).__name__})") from None


def check_output_dir(out: Path, needed_bytes: int) -> None:
    """Fail before training when `out` cannot be written or lacks room for two checkpoints."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write-test"
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as error:
        raise EffscaleError(f"--out {str(out)!r} is not writable ({error.strerror or error})") from None
    free = shutil.disk_usage(out).free
    if free < needed_bytes:
        raise EffscaleError(f"--out {str(out)!r} has {free / 1e6:.1f} MB free; this run needs about "
                            f"{needed_bytes / 1e6:.1f} MB for its checkpoints and weights")
