"""Analyses of what scaling does beyond accuracy (issue 13). Built so far: the spectrum of a data
set and the input resolution it calls for (`spectrum`, `effscale analyze spectrum`)."""
from .report import run_spectrum
from .sources import SOURCE_FORMS, load_images, texture_images
from .spectrum import analyse, ring_energy

__all__ = ["SOURCE_FORMS", "analyse", "load_images", "ring_energy", "run_spectrum", "texture_images"]
