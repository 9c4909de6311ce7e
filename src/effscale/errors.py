"""The one exception type users catch; the CLI turns it into a one-line message and exit code 2."""
from __future__ import annotations

import difflib


class EffscaleError(ValueError):
    """A bad input named with its value and what is allowed."""


def closest(name: str, candidates, n: int = 3) -> str:
    """'; did you mean a, b?' for typos, or '' when nothing is close."""
    near = difflib.get_close_matches(name, list(candidates), n=n, cutoff=0.5)
    return f"; did you mean {', '.join(near)}?" if near else ""


def require(module: str, extra: str):
    """Import an optional dependency, or say which extra provides it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise EffscaleError(f"{module} is not installed; it comes with effscale's `{extra}` extra: "
                            f"pip install -c constraints.txt 'effscale[{extra}]'") from None
