"""The IDX format of MNIST and Fashion-MNIST: four files, gzipped or not.

An IDX file is a 4-byte magic (two zero bytes, a type code, the number of dimensions), one
big-endian uint32 per dimension, then the values. Images are `idx3` (N x H x W uint8), labels
`idx1` (N uint8). Both the `train-images-idx3-ubyte` and the `train-images.idx3-ubyte` spelling
are found in the wild; each may carry a `.gz` suffix.
"""
from __future__ import annotations

import gzip
import hashlib
from pathlib import Path

import numpy as np

from ..errors import EffscaleError

UBYTE = 0x08
SPLIT_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def find_idx_file(directory: Path, stem: str) -> Path:
    """The file for `stem` in `directory` (any of the usual spellings), or an error naming them."""
    dotted = stem.replace("-idx", ".idx")
    candidates = [directory / f"{name}{suffix}" for name in (stem, dotted) for suffix in ("", ".gz")]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise EffscaleError(f"IDX directory {str(directory)!r} has no {stem} file "
                        f"(looked for {', '.join(c.name for c in candidates)})")


def read_bytes(path: Path) -> bytes:
    """The file's content, decompressed when it is gzip (detected by its magic, not its name)."""
    try:
        raw = path.read_bytes()
        return gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw
    except (OSError, EOFError, gzip.BadGzipFile) as error:
        raise EffscaleError(f"IDX file {str(path)!r} cannot be read ({type(error).__name__}: {error})") from None


def parse_idx(content: bytes, path: Path | str = "<bytes>", *, ndim: int | None = None) -> np.ndarray:
    """The uint8 array stored in IDX `content`; `ndim` checks the number of dimensions."""
    if len(content) < 4 or content[0] != 0 or content[1] != 0:
        raise EffscaleError(f"{str(path)!r} is not an IDX file (bad magic {content[:4].hex() or 'empty'})")
    if content[2] != UBYTE:
        raise EffscaleError(f"{str(path)!r} holds IDX type 0x{content[2]:02x}; "
                            "only unsigned bytes (0x08) are supported")
    dims = content[3]
    if ndim is not None and dims != ndim:
        raise EffscaleError(f"{str(path)!r} has {dims} dimensions, expected {ndim}")
    header = 4 + 4 * dims
    if len(content) < header:
        raise EffscaleError(f"{str(path)!r} is truncated inside its header")
    shape = tuple(int(v) for v in np.frombuffer(content, dtype=">u4", count=dims, offset=4))
    expected = int(np.prod(shape, dtype=np.int64))
    if len(content) - header != expected:
        raise EffscaleError(f"{str(path)!r} holds {len(content) - header} bytes of data, "
                            f"its header {shape} says {expected}")
    return np.frombuffer(content, dtype=np.uint8, offset=header).reshape(shape)


def read_split(directory: Path, split: str) -> tuple[np.ndarray, np.ndarray, bytes]:
    """(images N x H x W, labels N, the decompressed label bytes) of the 'train' or 't10k' pair."""
    image_stem, label_stem = SPLIT_FILES[split]
    image_path, label_path = find_idx_file(directory, image_stem), find_idx_file(directory, label_stem)
    images = parse_idx(read_bytes(image_path), image_path, ndim=3)
    label_bytes = read_bytes(label_path)
    labels = parse_idx(label_bytes, label_path, ndim=1)
    if len(images) != len(labels):
        raise EffscaleError(f"{str(image_path)!r} holds {len(images)} images but "
                            f"{str(label_path)!r} holds {len(labels)} labels")
    if len(images) == 0:
        raise EffscaleError(f"{str(image_path)!r} holds no images")
    return images, labels, label_bytes


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
