"""The one exception type users catch; the CLI turns it into a one-line message and exit code 2."""
from __future__ import annotations

import difflib


class EffscaleError(ValueError):
    """A bad input named with its value and what is allowed."""


def closest(name: str, candidates, n: int = 3) -> str:
    """'; did you mean a, b?' for typos, or '' when nothing is close."""
    near = difflib.get_close_matches(name, list(candidates), n=n, cutoff=0.5)
    return f"; did you mean {', '.join(near)}?" if near else ""


def is_out_of_memory(error: BaseException) -> bool:
    """True for the ways torch and Python report running out of memory (CPU allocator, CUDA, MemoryError)."""
    text = str(error).lower()
    return isinstance(error, MemoryError) or "out of memory" in text or "can't allocate memory" in text


def check_writable_file(path, option: str) -> None:
    """Fail now, not after minutes of work, when the output file `path` cannot be written: its
    folder must exist and take a new file, and `path` must not be a folder. `option` names it
    as the user gave it (e.g. "--out")."""
    import os
    import tempfile

    target = os.path.abspath(os.path.expanduser(os.fspath(path)))
    folder = os.path.dirname(target)
    if os.path.isdir(target):
        raise EffscaleError(f"{option} {str(path)!r} is a folder; give a file path such as "
                            f"{os.path.join(str(path), 'device.json')!r}")
    if not os.path.isdir(folder):
        raise EffscaleError(f"{option} {str(path)!r}: folder {folder!r} does not exist; create it or choose another path")
    try:
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".effscale-write-test-"):
            pass
    except OSError as error:
        raise EffscaleError(f"{option} {str(path)!r}: cannot write in {folder!r} ({error.strerror or error}); "
                            "choose another path") from None


def require(module: str, extra: str):
    """Import an optional dependency, or say which extra provides it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise EffscaleError(f"{module} is not installed; it comes with effscale's `{extra}` extra: "
                            f"pip install -c constraints.txt 'effscale[{extra}]'") from None
