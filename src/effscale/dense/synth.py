"""The bundled dense task: Fashion-MNIST objects on textured backgrounds, in COCO format.

`make_dense_task(out)` writes, from the Fashion-MNIST subset bundled with effscale (real
photographs of clothing, MIT licence) and a fixed seed:

    out/train/images/000000.png ...   RGB scenes, size x size
    out/train/masks/000000.png ...    semantic masks: 0 background, k = category k (1..10)
    out/train/instances.json          COCO instances: boxes, uncompressed-RLE masks, categories
    out/test/...                      the same, from the subset's held-out items
    out/classes.txt, out/README.txt   category names (line k = category k) and how it was made

Each scene holds 1..`max_objects` items placed without overlap at random positions, each at a
log-uniform random size between `min_object` and `max_object` pixels, tinted with a random
colour. An item's mask is its own pixels (Fashion-MNIST intensity > `MASK_THRESHOLD` after
resizing), its box the extent of that mask. Backgrounds are sums of random oriented gratings
and smoothed noise in random colours, so an object is told apart by shape and not by a flat
background. Sizes span about 6x, so small items need resolution and large ones receptive field.
Train scenes use only the subset's training items, test scenes only its held-out ones.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import EffscaleError

MASK_THRESHOLD = 40  # of 255: Fashion-MNIST's background is exactly 0, its faint halo below this
PLACEMENT_TRIES = 30


def make_dense_task(out, *, train_images: int = 800, test_images: int = 200, size: int = 128,
                    min_object: int = 12, max_object: int = 72, max_objects: int = 4, seed: int = 0) -> dict:
    """Write the task into `out` (which must not hold one already); returns its summary."""
    from ..data.datasets import FASHION_MNIST_CLASSES, load_bundled

    for name, value, low in (("train_images", train_images, 1), ("test_images", test_images, 1),
                             ("size", size, 32), ("min_object", min_object, 4), ("max_objects", max_objects, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise EffscaleError(f"{name}={value!r} must be an integer >= {low}")
    if not isinstance(max_object, int) or not min_object <= max_object <= size:
        raise EffscaleError(f"max_object={max_object!r} must be an integer in [min_object={min_object}, "
                            f"size={size}]")
    out = Path(out)
    if (out / "train" / "instances.json").exists() or (out / "test" / "instances.json").exists():
        raise EffscaleError(f"{out} already holds a dense task; choose another directory or remove it")
    splits = load_bundled()
    rng = np.random.default_rng(seed)
    categories = [{"id": k + 1, "name": name, "supercategory": "clothing"}
                  for k, name in enumerate(FASHION_MNIST_CLASSES)]
    summary = {"size": size, "seed": seed, "min_object": min_object, "max_object": max_object,
               "max_objects": max_objects, "classes": list(FASHION_MNIST_CLASSES)}
    for split, count, source in (("train", train_images, splits.train), ("test", test_images, splits.test)):
        items = source.images[:, 0].numpy()
        labels = source.labels.numpy()
        summary[split] = _write_split(out / split, count, items, labels, categories, rng, size=size,
                                      min_object=min_object, max_object=max_object, max_objects=max_objects)
    (out / "classes.txt").write_text("".join(name + "\n" for name in FASHION_MNIST_CLASSES))
    (out / "README.txt").write_text(
        "Made by effscale.dense.make_dense_task (effscale make-dense-task) from the bundled Fashion-MNIST "
        f"subset (MIT licence).\nSettings: {json.dumps({k: v for k, v in summary.items() if k not in ('train', 'test')})}\n"
        "Layout: SPLIT/images/*.png, SPLIT/masks/*.png (0 background, k = category k), SPLIT/instances.json (COCO).\n")
    return summary


def _write_split(directory: Path, count: int, items: np.ndarray, labels: np.ndarray, categories: list[dict],
                 rng: np.random.Generator, **options) -> dict:
    (directory / "images").mkdir(parents=True, exist_ok=True)
    (directory / "masks").mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for index in range(count):
        scene, semantic, objects = _scene(items, labels, rng, **options)
        name = f"{index:06d}.png"
        Image.fromarray(scene).save(directory / "images" / name)
        Image.fromarray(semantic).save(directory / "masks" / name)
        size = options["size"]
        images.append({"id": index + 1, "file_name": name, "width": size, "height": size})
        for label, mask in objects:
            ys, xs = np.nonzero(mask)
            x0, y0, x1, y1 = int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1
            annotations.append({"id": len(annotations) + 1, "image_id": index + 1, "category_id": int(label) + 1,
                                "bbox": [x0, y0, x1 - x0, y1 - y0], "area": int(mask.sum()), "iscrowd": 0,
                                "segmentation": encode_rle(mask)})
    coco = {"info": {"description": "effscale bundled dense task (Fashion-MNIST objects on textures)"},
            "images": images, "annotations": annotations, "categories": categories}
    (directory / "instances.json").write_text(json.dumps(coco))
    areas = np.array([a["bbox"][2] * a["bbox"][3] for a in annotations])
    return {"images": count, "objects": len(annotations),
            "small": int((areas < 32 ** 2).sum()), "medium": int(((areas >= 32 ** 2) & (areas < 96 ** 2)).sum()),
            "large": int((areas >= 96 ** 2).sum())}


def _scene(items, labels, rng, *, size, min_object, max_object, max_objects):
    scene = _background(rng, size)
    semantic = np.zeros((size, size), np.uint8)
    taken = np.zeros((size, size), bool)
    objects = []
    for _ in range(int(rng.integers(1, max_objects + 1))):
        pick = int(rng.integers(len(items)))
        side = int(round(math.exp(rng.uniform(math.log(min_object), math.log(max_object)))))
        item = np.asarray(Image.fromarray(items[pick]).resize((side, side), Image.BILINEAR))
        mask = item > MASK_THRESHOLD
        if mask.sum() < 4:
            continue
        for _ in range(PLACEMENT_TRIES):
            y, x = (int(v) for v in rng.integers(0, size - side + 1, 2))
            if not (taken[y:y + side, x:x + side] & mask).any():
                break
        else:
            continue  # no free place for this one: the scene has fewer objects
        colour = rng.uniform(0.35, 1.0, 3)
        shade = item[..., None] / 255.0 * colour * 255
        region = scene[y:y + side, x:x + side]
        region[mask] = shade[mask].astype(np.uint8)
        full = np.zeros((size, size), bool)
        full[y:y + side, x:x + side] = mask
        taken |= full
        semantic[full] = int(labels[pick]) + 1
        objects.append((int(labels[pick]), full))
    if not objects:  # every placement failed (tiny scenes): try again
        return _scene(items, labels, rng, size=size, min_object=min_object, max_object=max_object,
                      max_objects=max_objects)
    return scene, semantic, objects


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """Oriented gratings plus smoothed noise, each in its own colour, at half contrast."""
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32)
    canvas = np.zeros((size, size, 3), np.float32)
    for _ in range(int(rng.integers(1, 4))):
        angle, period = rng.uniform(0, math.pi), rng.uniform(4, 32)
        wave = np.sin((xs * math.cos(angle) + ys * math.sin(angle)) * 2 * math.pi / period + rng.uniform(0, 6.3))
        canvas += wave[..., None] * rng.uniform(-1, 1, 3)
    coarse = rng.normal(size=(size // 8, size // 8, 3)).astype(np.float32)
    noise = np.asarray(Image.fromarray(((coarse - coarse.min()) / (np.ptp(coarse) + 1e-6) * 255).astype(np.uint8))
                       .resize((size, size), Image.BICUBIC), np.float32) / 127.5 - 1
    canvas += noise
    canvas = (canvas - canvas.min()) / (np.ptp(canvas) + 1e-6)
    base = rng.uniform(0.1, 0.5, 3)
    return ((base + 0.5 * (canvas - 0.5)) .clip(0, 1) * 255).astype(np.uint8)


def encode_rle(mask: np.ndarray) -> dict:
    """COCO's uncompressed RLE: run lengths over the column-major pixels, starting with a zero run."""
    flat = np.asarray(mask, bool).flatten(order="F")
    changes = np.flatnonzero(np.diff(flat.astype(np.int8))) + 1
    bounds = np.concatenate([[0], changes, [flat.size]])
    counts = np.diff(bounds).tolist()
    if flat[0]:
        counts = [0] + counts
    return {"size": [int(mask.shape[0]), int(mask.shape[1])], "counts": counts}


def decode_rle(rle: dict) -> np.ndarray:
    """A COCO RLE mask as a bool array: uncompressed (counts a list, `encode_rle`) or compressed
    (counts a string, as pycocotools writes it and COCO's crowd annotations carry)."""
    height, width = rle["size"]
    counts = rle["counts"]
    if isinstance(counts, (str, bytes)):
        counts = counts_from_string(counts.decode("ascii") if isinstance(counts, bytes) else counts)
    counts = np.asarray(counts, np.int64)
    if (counts < 0).any():
        raise ValueError("RLE counts are negative")
    if counts.sum() != height * width:
        raise ValueError(f"RLE counts sum to {int(counts.sum())}, the mask has {height * width} pixels")
    values = np.arange(len(counts)) % 2 == 1
    return np.repeat(values, counts).reshape((height, width), order="F")


def counts_from_string(text: str) -> list[int]:
    """The run lengths of a compressed RLE string (the COCO API's rleFrString): each count is a
    little-endian series of 5-bit groups stored as characters from '0' (48), bit 0x20 meaning
    "more groups follow" and bit 0x10 of the last group its sign; from the third count on, each is
    stored as its difference from the count two before."""
    counts: list[int] = []
    position = 0
    while position < len(text):
        value, shift, more = 0, 0, True
        while more:
            if position >= len(text):
                raise ValueError("compressed RLE string ends inside a count")
            code = ord(text[position]) - 48
            if not 0 <= code < 64:
                raise ValueError(f"compressed RLE has a character outside '0'..'o': {text[position]!r}")
            value |= (code & 0x1F) << shift
            more = bool(code & 0x20)
            position, shift = position + 1, shift + 5
            if not more and code & 0x10:
                value |= -1 << shift
        if len(counts) > 2:
            value += counts[-2]
        counts.append(value)
    return counts


__all__ = ["counts_from_string", "decode_rle", "encode_rle", "make_dense_task"]
