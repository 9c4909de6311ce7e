"""matplotlib for the PNG plots (study and demo reports, the INT8 SQNR-by-depth plot): the `lab`
extra, Agg backend (files only; never needs a display)."""
from __future__ import annotations


def pyplot():
    from .errors import require

    matplotlib = require("matplotlib", "lab")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


__all__ = ["pyplot"]
