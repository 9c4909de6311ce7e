"""In-memory image datasets and the `--data SPEC` forms that load them.

Every dataset is held as one uint8 tensor (N x C x H x W) plus int64 labels: a 12k-image set
at 28 px is 9 MB, 100k images at the 64 px folder default are 1.2 GB. Decoding happens once at
load time, so nothing can fail mid-epoch, and batching is plain indexing.

Data specs:
    fashion-mnist   the Fashion-MNIST subset bundled in the package (12,000 train + 2,000 test,
                    balanced, 28 x 28 grayscale)
    idx:DIR         a directory of the four IDX files (train-images-idx3-ubyte, train-labels-idx1-ubyte,
                    t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte; gzipped or not): MNIST, Fashion-MNIST
    folder:DIR      an image-folder tree, one subfolder per class, either under DIR/train and DIR/val
                    (or DIR/test) or directly under DIR, split by `split_fraction` (see folder.py)
"""
from __future__ import annotations

import io
import json
import os
from importlib import resources
from pathlib import Path

import numpy as np
import torch

from ..errors import EffscaleError
from . import idx
from .containers import DataSplits, ImageDataset

FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                         "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
BUNDLED_NAME = "fashion-mnist"
BUNDLED_ASSET = "fashion_mnist_subset.npz"
# SHA-256 of the decompressed Fashion-MNIST training labels: identifies the dataset in idx:DIR.
FASHION_MNIST_TRAIN_LABELS_SHA256 = "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9"
SPEC_FORMS = "fashion-mnist (the bundled subset), idx:DIR (four MNIST-style IDX files), folder:DIR (image folders)"


def load_data(spec: str, *, split_fraction: float = 0.1, seed: int = 0, image_size: int | None = None) -> DataSplits:
    """Load a data spec (`fashion-mnist`, `idx:DIR`, `folder:DIR`) into memory.

    `image_size` is the stored (square) size: folder images are resized (shorter side) and
    centre-cropped to it, default `folder.DEFAULT_IMAGE_SIZE` (64); IDX and bundled images keep
    their native 28 x 28 unless it is given. `split_fraction` and `seed` only matter for a folder
    tree without train/val subfolders (the held-out share per class and the draw); IDX and the
    bundled set have fixed splits.
    """
    if not isinstance(spec, str):
        raise EffscaleError(f"data spec must be a string, got {type(spec).__name__}; allowed: {SPEC_FORMS}")
    if image_size is not None and (not isinstance(image_size, int) or isinstance(image_size, bool) or image_size < 1):
        raise EffscaleError(f"image_size={image_size!r} must be a positive integer or None")
    text = spec.strip()
    kind, sep, location = text.partition(":")
    if text.lower() in (BUNDLED_NAME, "fashion_mnist", "fashionmnist"):
        splits = load_bundled(text)
    elif sep and kind.lower() == "idx":
        splits = load_idx(_directory(location, spec), text)
    elif sep and kind.lower() == "folder":
        from .folder import load_folder
        return load_folder(_directory(location, spec), text, split_fraction=split_fraction, seed=seed,
                           image_size=image_size)
    else:
        hint = f"; did you mean folder:{text}?" if text and os.path.isdir(os.path.expanduser(text)) else ""
        raise EffscaleError(f"data spec {spec!r} is unknown; allowed: {SPEC_FORMS}{hint}")
    if image_size is not None:
        splits = DataSplits(resize_dataset(splits.train, image_size), resize_dataset(splits.test, image_size),
                            splits.source)
    return splits


def _directory(location: str, spec: str) -> Path:
    if not location.strip():
        raise EffscaleError(f"data spec {spec!r} names no directory; allowed: {SPEC_FORMS}")
    path = Path(location.strip()).expanduser()
    try:
        path.stat()
    except PermissionError:
        raise EffscaleError(f"data directory {str(path)!r} (from {spec!r}) cannot be reached (permission denied "
                            "on a folder above it)") from None
    except (OSError, ValueError):
        pass  # missing or malformed: said below
    if not path.exists():
        raise EffscaleError(f"data directory {str(path)!r} (from {spec!r}) does not exist")
    if not path.is_dir():
        raise EffscaleError(f"data path {str(path)!r} (from {spec!r}) is not a directory")
    if not os.access(path, os.R_OK | os.X_OK):
        raise EffscaleError(f"data directory {str(path)!r} (from {spec!r}) is not readable (permission denied)")
    return path


def load_bundled(source: str = BUNDLED_NAME) -> DataSplits:
    """The bundled Fashion-MNIST subset (built by scripts/build_fashion_mnist_subset.py)."""
    asset = resources.files(__package__).joinpath("assets", BUNDLED_ASSET)
    try:
        payload = asset.read_bytes()
    except (FileNotFoundError, OSError) as error:
        raise EffscaleError(f"the bundled Fashion-MNIST subset is missing ({asset}: {error}); reinstall effscale "
                            "or rebuild it with scripts/build_fashion_mnist_subset.py") from None
    classes = list(FASHION_MNIST_CLASSES)
    with np.load(io.BytesIO(payload), allow_pickle=False) as arrays:
        splits = [ImageDataset(torch.from_numpy(arrays[f"{split}_images"]).unsqueeze(1),
                               torch.from_numpy(arrays[f"{split}_labels"].astype(np.int64)),
                               classes, f"{BUNDLED_NAME}/{split}") for split in ("train", "test")]
    return DataSplits(splits[0], splits[1], source)


def bundled_provenance() -> dict:
    """The bundled subset's provenance record (source checksums, seed, counts, licence)."""
    text = resources.files(__package__).joinpath("assets", "fashion_mnist_subset.json").read_text()
    return json.loads(text)


def load_idx(directory: Path, source: str) -> DataSplits:
    """MNIST-style IDX files. Class names: a `classes.txt` in the directory (one per line) if present,
    the Fashion-MNIST names when the training labels are Fashion-MNIST's, otherwise the label numbers."""
    train_images, train_labels, label_bytes = idx.read_split(directory, "train")
    test_images, test_labels, _ = idx.read_split(directory, "test")
    if train_images.shape[1:] != test_images.shape[1:]:
        raise EffscaleError(f"IDX directory {str(directory)!r}: train images are {train_images.shape[1:]}, "
                            f"test images {test_images.shape[1:]}")
    num_classes = int(max(train_labels.max(), test_labels.max())) + 1
    classes_file = directory / "classes.txt"
    if classes_file.is_file():
        classes = [line.strip() for line in classes_file.read_text().splitlines() if line.strip()]
        if len(classes) < num_classes:
            raise EffscaleError(f"{str(classes_file)!r} names {len(classes)} classes but the labels go up to "
                                f"{num_classes - 1}")
    elif idx.sha256(label_bytes) == FASHION_MNIST_TRAIN_LABELS_SHA256:
        classes = list(FASHION_MNIST_CLASSES)
    else:
        classes = [str(label) for label in range(num_classes)]
    name = directory.name or str(directory)

    def dataset(images: np.ndarray, labels: np.ndarray, split: str) -> ImageDataset:
        # np.frombuffer views are read-only; torch wants writable memory.
        return ImageDataset(torch.from_numpy(images.copy()).unsqueeze(1),
                            torch.from_numpy(labels.astype(np.int64)), classes, f"{name}/{split}")

    return DataSplits(dataset(train_images, train_labels, "train"), dataset(test_images, test_labels, "test"), source)


def resize_dataset(dataset: ImageDataset, size: int, chunk: int = 4096) -> ImageDataset:
    """A copy stored at size x size (bilinear, antialiased when shrinking); the same object if it already is."""
    if dataset.image_size == (size, size):
        return dataset
    shrinking = size < min(dataset.image_size)
    out = torch.empty((len(dataset), dataset.in_chans, size, size), dtype=torch.uint8)
    for start in range(0, len(dataset), chunk):
        block = dataset.images[start:start + chunk].float()
        block = torch.nn.functional.interpolate(block, size=(size, size), mode="bilinear", align_corners=False,
                                                antialias=shrinking)
        out[start:start + chunk] = block.round_().clamp_(0, 255).to(torch.uint8)
    return ImageDataset(out, dataset.labels, dataset.classes, dataset.name)


__all__ = ["DataSplits", "FASHION_MNIST_CLASSES", "ImageDataset", "bundled_provenance", "load_bundled",
           "load_data", "load_idx", "resize_dataset"]
