"""Images at their native size for the analyses, from the data specs users already have and from
two references: scikit-image's real photographs and textures, and a documented texture generator.

Sources (`--data`):
- `fashion-mnist` (bundled), `idx:DIR`: the training images (28 x 28);
- `folder:DIR`, `images:DIR`: every image file under DIR (recursively), at its own size;
  `coco:DIR` / `masks:DIR`: the images of DIR/train/images;
- `skimage:photos`: the natural photographs scikit-image ships (astronaut, camera, coffee,
  chelsea, rocket, coins, moon); `skimage:textures`: its real textures (brick, grass, gravel);
  both need scikit-image;
- `textures`: `texture_images`, generated (no files): strong high-frequency content.
A sample of at most `samples` images is drawn with `seed` where a source has more.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import EffscaleError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".gif")
SKIMAGE_SETS = {"photos": ("astronaut", "camera", "coffee", "chelsea", "rocket", "coins", "moon"),
                "textures": ("brick", "grass", "gravel")}
SOURCE_FORMS = ("fashion-mnist, idx:DIR, folder:DIR, images:DIR, coco:DIR, masks:DIR, skimage:photos, "
                "skimage:textures, textures")


def texture_images(count: int, size: int = 256, seed: int = 0) -> list[np.ndarray]:
    """`count` grey size x size uint8 textures with most of their energy at fine scales: each the
    sum of 3-6 plane gratings of random orientation, phase and frequency 0.12-0.45 cycles per pixel
    (30-115 cycles per image at 256 px), plus white noise at a third of their amplitude. A
    stand-in for fabric, foliage or sensor texture, where resolution matters most."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size].astype(np.float64)
    images = []
    for _ in range(count):
        image = np.zeros((size, size))
        for _ in range(rng.integers(3, 7)):
            angle, frequency, phase = rng.uniform(0, np.pi), rng.uniform(0.12, 0.45), rng.uniform(0, 2 * np.pi)
            image += np.sin(2 * np.pi * frequency * (x * np.cos(angle) + y * np.sin(angle)) + phase)
        image /= np.abs(image).max() or 1
        image += rng.normal(0, 1 / 3, image.shape)
        images.append(np.clip(127.5 + 60 * image, 0, 255).astype(np.uint8))
    return images


def load_images(data: str, *, samples: int = 500, seed: int = 0) -> list[np.ndarray]:
    """Up to `samples` images (H x W or H x W x C arrays, native size) of `data` (see the module docstring)."""
    if not isinstance(data, str) or not data.strip():
        raise EffscaleError(f"data {data!r} is not a source; allowed: {SOURCE_FORMS}")
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
        raise EffscaleError(f"samples={samples!r} must be an integer >= 1")
    kind, sep, location = data.strip().partition(":")
    rng = np.random.default_rng(seed)
    if data.strip() == "textures":
        return texture_images(min(samples, 64), seed=seed)
    if sep and kind == "skimage":
        return _skimage(location, data)
    if sep and kind in ("folder", "images", "coco", "masks"):
        root = Path(location).expanduser()
        if kind in ("coco", "masks"):
            root = root / "train" / "images"
        if not root.is_dir():
            raise EffscaleError(f"data {data!r}: {str(root)!r} is not a directory")
        files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise EffscaleError(f"data {data!r}: no image files ({', '.join(IMAGE_SUFFIXES)}) under {str(root)!r}")
        chosen = [files[i] for i in sorted(rng.choice(len(files), min(samples, len(files)), replace=False))]
        return [_read(path) for path in chosen]
    from ..data import load_data

    if not (data.strip().lower() in ("fashion-mnist", "fashion_mnist", "fashionmnist") or (sep and kind == "idx")):
        raise EffscaleError(f"data {data!r} is unknown; allowed: {SOURCE_FORMS}")
    splits = load_data(data)
    images = splits.train.images
    chosen = sorted(rng.choice(len(images), min(samples, len(images)), replace=False))
    return [images[i].permute(1, 2, 0).numpy() for i in chosen]


def _read(path: Path) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(path) as opened:
            return np.asarray(opened.convert("RGB"))
    except (OSError, ValueError) as error:
        raise EffscaleError(f"cannot read image {str(path)!r}: {error}") from None


def _skimage(name: str, data: str) -> list[np.ndarray]:
    if name not in SKIMAGE_SETS:
        raise EffscaleError(f"data {data!r}: scikit-image set {name!r} is unknown; allowed: "
                            f"{', '.join('skimage:' + k for k in SKIMAGE_SETS)}")
    try:
        import skimage.data
    except ImportError:
        raise EffscaleError(f"data {data!r} needs scikit-image: pip install 'effscale[analysis]'") from None
    return [np.asarray(getattr(skimage.data, image)()) for image in SKIMAGE_SETS[name]]


__all__ = ["SKIMAGE_SETS", "SOURCE_FORMS", "load_images", "texture_images"]
