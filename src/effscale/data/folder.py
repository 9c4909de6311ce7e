"""Image-folder trees (`--data folder:DIR`): one subfolder per class, the format users have.

Layouts:
    DIR/train/<class>/*.jpg and DIR/val/<class>/*.jpg (or DIR/test/)   fixed split
    DIR/train/<class>/*.jpg alone, or DIR/<class>/*.jpg                 split per class by `split_fraction`

Classes are the sorted subfolder names; train and val must have the same ones. Files are found
recursively inside a class folder by extension (hidden files and folders are ignored). Each image
is decoded once with PIL, turned upright per EXIF, and stored at `image_size` x `image_size`
(default 64): the central square of the image, resized (bicubic). That is "resize the shorter
side, then centre-crop" in one step. Images are RGB (C = 3) unless every image in the tree is
grayscale, then C = 1. A file that cannot be decoded is skipped; one warning counts them and
names the first few.
"""
from __future__ import annotations

import os
import warnings
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from ..errors import EffscaleError
from .containers import DataSplits, ImageDataset

DEFAULT_IMAGE_SIZE = 64
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm", ".pbm")
GRAY_MODES = ("1", "L", "LA", "La", "I", "F")
HELD_OUT_NAMES = ("val", "test")
NAMED_IN_WARNING = 5


class DataWarning(UserWarning):
    """Something in the data was skipped; the data still loaded."""


def load_folder(root: Path, source: str, *, split_fraction: float = 0.1, seed: int = 0,
                image_size: int | None = None) -> DataSplits:
    size = DEFAULT_IMAGE_SIZE if image_size is None else image_size
    if not (isinstance(split_fraction, (int, float)) and 0 < split_fraction < 1):
        raise EffscaleError(f"split_fraction={split_fraction!r} must be in (0, 1)")
    train_dir = root / "train"
    held_dir = next((root / name for name in HELD_OUT_NAMES if (root / name).is_dir()), None)
    if train_dir.is_dir() and held_dir is not None:
        train_files, test_files = class_files(train_dir), class_files(held_dir)
        if list(train_files) != list(test_files):
            only_train = sorted(set(train_files) - set(test_files))
            only_held = sorted(set(test_files) - set(train_files))
            raise EffscaleError(f"{str(train_dir)!r} and {str(held_dir)!r} must have the same class folders; "
                                f"only in {train_dir.name}/: {only_train or 'none'}, "
                                f"only in {held_dir.name}/: {only_held or 'none'}")
        folders = {"train": train_dir, "test": held_dir}
        require_every_class = {"train": True, "test": True}
    else:
        base = train_dir if train_dir.is_dir() else root
        train_files, test_files = split_by_class(class_files(base), split_fraction, seed)
        folders = {"train": base, "test": base}
        require_every_class = {"train": True, "test": False}

    classes = list(train_files)
    entries = {split: [(path, label) for label, name in enumerate(classes) for path in files[name]]
               for split, files in (("train", train_files), ("test", test_files))}
    if not entries["test"]:
        raise EffscaleError(f"the held-out split of {str(root)!r} is empty: split_fraction={split_fraction} of "
                            "each class rounds to 0 images; raise it or add images")
    all_paths = [path for split in ("train", "test") for path, _ in entries[split]]
    images, gray, failures = decode_all(all_paths, size)

    if failures:
        named = ", ".join(f"{os.path.relpath(path, root)} ({reason})" for path, reason in failures[:NAMED_IN_WARNING])
        more = f" and {len(failures) - NAMED_IN_WARNING} more" if len(failures) > NAMED_IN_WARNING else ""
        warnings.warn(f"skipped {len(failures)} unreadable image(s) of {len(all_paths)} in {str(root)!r}: "
                      f"{named}{more}", DataWarning, stacklevel=3)
    failed = {path for path, _ in failures}
    ok = np.array([path not in failed for path in all_paths]) if failures else None
    all_gray = bool(gray[ok].all()) if ok is not None else bool(gray.all())
    channels = slice(0, 1) if all_gray else slice(0, 3)

    splits, offset = {}, 0
    for split in ("train", "test"):
        count = len(entries[split])
        keep = np.ones(count, dtype=bool) if ok is None else ok[offset:offset + count]
        labels = torch.tensor([label for (_, label), kept in zip(entries[split], keep) if kept], dtype=torch.int64)
        split_images = images[offset:offset + count]
        if not keep.all():
            split_images = split_images[torch.from_numpy(keep)]
        split_images = split_images[:, channels].contiguous()
        offset += count
        found = torch.bincount(labels, minlength=len(classes)).tolist()
        for name, number in zip(classes, found):
            if number == 0 and require_every_class[split]:
                raise EffscaleError(f"class folder {str(folders[split] / name)!r} has no readable images")
        if len(labels) == 0:
            raise EffscaleError(f"the {split} split of {str(folders[split])!r} has no readable images")
        splits[split] = ImageDataset(split_images, labels, classes, f"{root.name or root}/{split}")
    return DataSplits(splits["train"], splits["test"], source)


def class_files(directory: Path) -> dict[str, list[Path]]:
    """{class name: its image files}, classes sorted; an empty class folder is an error naming it."""
    try:
        class_dirs = sorted((entry for entry in directory.iterdir() if entry.is_dir() and not entry.name.startswith(".")),
                            key=lambda entry: entry.name)
    except OSError as error:  # unreadable (permissions), vanished, or not a folder after all
        raise EffscaleError(f"cannot list the data folder {str(directory)!r}: {error.strerror or error}") from None
    if not class_dirs:
        raise EffscaleError(f"{str(directory)!r} has no class subfolders (expected one folder of images per class)")
    found = {}
    for class_dir in class_dirs:
        try:
            files = sorted((path for path in class_dir.rglob("*")
                            if path.suffix.lower() in IMAGE_EXTENSIONS and path.is_file()
                            and not any(part.startswith(".") for part in path.relative_to(class_dir).parts)),
                           key=lambda path: path.relative_to(class_dir).as_posix())
        except OSError as error:
            raise EffscaleError(f"cannot list the class folder {str(class_dir)!r}: {error.strerror or error}") from None
        if not files:
            raise EffscaleError(f"class folder {str(class_dir)!r} has no images "
                                f"(looked for {', '.join(IMAGE_EXTENSIONS)})")
        found[class_dir.name] = files
    return found


def split_by_class(files: dict[str, list[Path]], fraction: float, seed: int):
    """(train, held-out) file lists: round(fraction * n) of each class held out, at least 1 when
    the class has 2 or more images and never all of them. The draw depends only on the seed and
    the class name, so adding a class does not reshuffle the others."""
    train, held = {}, {}
    for name, paths in files.items():
        count = len(paths)
        held_count = min(max(round(count * fraction), 1), count - 1) if count >= 2 else 0
        rng = np.random.default_rng([seed & 0xFFFFFFFF, (seed >> 32) & 0xFFFFFFFF, zlib.crc32(name.encode())])
        order = rng.permutation(count)
        held_index = set(order[:held_count].tolist())
        train[name] = [path for index, path in enumerate(paths) if index not in held_index]
        held[name] = [path for index, path in enumerate(paths) if index in held_index]
    return train, held


def decode_all(paths: list[Path], size: int) -> tuple[torch.Tensor, np.ndarray, list[tuple[Path, str]]]:
    """(uint8 N x 3 x size x size, is-grayscale per image, [(path, reason) of failures]).

    Grayscale images fill channel 0 and are copied to channels 1 and 2 only if some image is
    colour. PIL releases the GIL while decoding and resizing, so threads give real parallelism.
    """
    images = torch.zeros((len(paths), 3, size, size), dtype=torch.uint8)
    target = images.numpy()
    gray = np.zeros(len(paths), dtype=bool)
    errors: list[str | None] = [None] * len(paths)

    def work(index: int) -> None:
        try:
            array = decode(paths[index], size)
        except Exception as error:  # noqa: BLE001 - any failure on one file must only skip that file
            errors[index] = f"{type(error).__name__}: {error}"[:200]
            return
        if array.ndim == 2:
            gray[index] = True
            target[index, 0] = array
        else:
            target[index] = array.transpose(2, 0, 1)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # PIL's per-file chatter (EXIF, palettes); failures are reported once
        workers = min(8, os.cpu_count() or 1, max(1, len(paths) // 64))
        if workers > 1:
            with ThreadPoolExecutor(workers) as pool:
                list(pool.map(work, range(len(paths))))
        else:
            for index in range(len(paths)):
                work(index)
    colour = ~gray
    if colour.any() and gray.any():
        images[torch.from_numpy(gray), 1:] = images[torch.from_numpy(gray), :1]
    failures = [(paths[i], reason) for i, reason in enumerate(errors) if reason is not None]
    return images, gray, failures


def decode(path: Path, size: int) -> np.ndarray:
    """One file -> uint8 size x size (grayscale) or size x size x 3 (colour), central square resized."""
    with Image.open(path) as image:
        image.draft(None, (size, size))  # JPEG: decode at a reduced scale when the image is much larger
        image.load()
        image = ImageOps.exif_transpose(image)
        if image.mode.startswith("I;16") or image.mode == "I":
            wide = np.asarray(image, dtype=np.int64)
            image = Image.fromarray(np.clip(wide / 257.0, 0, 255).round().astype(np.uint8))
        elif image.mode in GRAY_MODES:
            image = image.convert("L")
        elif image.mode != "RGB":
            image = image.convert("RGB")
        width, height = image.size
        side = min(width, height)
        if side < 1:
            raise ValueError("empty image")
        left, top = (width - side) / 2, (height - side) / 2
        image = image.resize((size, size), Image.BICUBIC, box=(left, top, left + side, top + side))
        return np.asarray(image, dtype=np.uint8)
