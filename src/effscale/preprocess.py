"""Evaluation preprocessing derived from a spec: the weights carry resolution, crop and mean/std.

resize the shorter side to floor(resolution / crop_pct) (bicubic) -> center crop to resolution ->
scale to [0, 1] -> normalise with the spec's mean/std. This is the timm/torchvision evaluation
transform, written with PIL and numpy only.
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Iterable, Union

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import EffscaleError
from .spec import NetworkSpec

ImageLike = Union[str, os.PathLike, Image.Image, np.ndarray]


def load_image(path: str | os.PathLike) -> Image.Image:
    """An image file as an RGB PIL image, upright per its EXIF orientation."""
    path = Path(path)
    if not path.exists():
        raise EffscaleError(f"image {str(path)!r} does not exist")
    if not path.is_file():
        raise EffscaleError(f"image path {str(path)!r} is not a file")
    try:
        with Image.open(path) as image:
            image.load()
            image = ImageOps.exif_transpose(image)
            return image.convert("RGB")
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as error:
        raise EffscaleError(f"image {str(path)!r} cannot be read ({type(error).__name__}: {error})") from None


def resize_size(spec: NetworkSpec) -> int:
    """Shorter-side size before the center crop (256 for 224 px at crop_pct 0.875)."""
    return int(math.floor(spec.resolution / spec.crop_pct))


def to_rgb(image: ImageLike) -> Image.Image:
    """A path, PIL image or HxW / HxWxC uint8 array as an RGB PIL image."""
    if isinstance(image, (str, os.PathLike)):
        return load_image(image)
    if isinstance(image, Image.Image):
        return image.convert("RGB") if image.mode != "RGB" else image
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] not in (1, 3, 4)):
            raise EffscaleError(f"image array must be uint8 HxW or HxWx(1|3|4), got {image.dtype} {image.shape}")
        return Image.fromarray(image.squeeze(2) if image.ndim == 3 and image.shape[2] == 1 else image).convert("RGB")
    raise EffscaleError(f"expected an image path, PIL image or uint8 array, got {type(image).__name__}")


def transform(image: ImageLike, spec: NetworkSpec, in_chans: int = 3) -> torch.Tensor:
    """One image -> a normalised float tensor (in_chans, resolution, resolution).

    `in_chans=1` (models trained on grayscale data) converts to luminance and normalises with
    the mean of the spec's three means / stds, as the training transform does."""
    if not isinstance(spec, NetworkSpec):
        raise EffscaleError(f"expected a NetworkSpec, got {type(spec).__name__}")
    if in_chans not in (1, 3):
        raise EffscaleError(f"in_chans={in_chans!r}: images can be preprocessed for 1 or 3 channels")
    image = to_rgb(image)
    if in_chans == 1:
        image = image.convert("L")
    size, crop = resize_size(spec), spec.resolution
    width, height = image.size
    if width <= height:
        new_size = (size, max(1, int(size * height / width)))
    else:
        new_size = (max(1, int(size * width / height)), size)
    if new_size != image.size:
        image = image.resize(new_size, Image.BICUBIC)
    left = int(round((new_size[0] - crop) / 2.0))
    top = int(round((new_size[1] - crop) / 2.0))
    image = image.crop((left, top, left + crop, top + crop))
    array = np.asarray(image, dtype=np.float32) / 255.0
    mean = np.asarray(spec.mean, dtype=np.float32)
    std = np.asarray(spec.std, dtype=np.float32)
    if in_chans == 1:
        array, mean, std = array[..., None], mean.mean(keepdims=True), std.mean(keepdims=True)
    return torch.from_numpy(((array - mean) / std).transpose(2, 0, 1).copy())


def preprocess(images: ImageLike | Iterable[ImageLike], spec) -> torch.Tensor:
    """Images (paths, PIL images or uint8 arrays; one or a list) -> a batch (N, 3, res, res).

    `spec` is a NetworkSpec or a model carrying one (`model.spec`).
    """
    in_chans = getattr(spec, "in_chans", 3)  # a model knows its input channels
    spec = getattr(spec, "spec", spec)
    if not isinstance(spec, NetworkSpec):
        raise EffscaleError(f"expected a NetworkSpec or an effscale model, got {type(spec).__name__}")
    if isinstance(images, (str, os.PathLike, Image.Image, np.ndarray)):
        images = [images]
    tensors = [transform(image, spec, in_chans) for image in images]
    if not tensors:
        raise EffscaleError("no images given")
    return torch.stack(tensors)
