"""Dense data in the formats users have: COCO JSON with an image folder (boxes; masks from its
polygons or RLE), and image + mask-PNG folders for segmentation.

    coco:DIR                     DIR/train and DIR/test, each instances.json + images/ (as the
                                 bundled task is written, `make_dense_task`)
    coco:ANNOTATIONS.json,IMAGES one annotation file; every 10th image (by id) is held out
    masks:DIR                    DIR/train and DIR/test, each images/ + masks/ (same file stems);
                                 class names from DIR/classes.txt (line k = mask value k, 0 background)

Images are letterboxed into size x size (scaled so the longer side fits, padded at the bottom
and right) and held in memory as uint8, like the classification data; `scales` keeps each
image's factor so predictions map back to the file's pixels for COCO evaluation.

Malformed annotations never crash a load and are never dropped silently: each kind is counted
in `DataReport` (boxes partly outside the image are clipped, boxes with no area left, negative
sizes, unknown category or image ids are dropped, missing or unreadable image files drop the
image), and the loader warns with the counts.
"""
from __future__ import annotations

import json
import os
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from ..data.containers import DataSplits, ImageRows
from ..data.folder import DataWarning
from ..errors import EffscaleError

IGNORE = 255  # mask value that no loss or metric counts (padding, unknown values)
HOLDOUT_EVERY = 10  # coco:FILE,DIR holds out every 10th image by id
FORMS = "coco:DIR, coco:ANNOTATIONS.json,IMAGES_DIR, masks:DIR"


@dataclass
class DataReport:
    """What a load found wrong, by kind, with a few examples each."""

    counts: Counter = field(default_factory=Counter)
    examples: dict = field(default_factory=dict)

    def add(self, kind: str, example: str) -> None:
        self.counts[kind] += 1
        self.examples.setdefault(kind, [])
        if len(self.examples[kind]) < 3:
            self.examples[kind].append(example)

    def __bool__(self) -> bool:
        return bool(self.counts)

    def describe(self) -> str:
        return "; ".join(f"{count} {kind} (e.g. {', '.join(self.examples[kind])})"
                         for kind, count in sorted(self.counts.items()))

    def to_dict(self) -> dict:
        return {kind: {"count": count, "examples": self.examples[kind]} for kind, count in self.counts.items()}


@dataclass
class DenseDataset(ImageRows):
    """images uint8 N x C x S x S; labels: detection float32 N x M x 5 (x1, y1, x2, y2, class; class
    -1 pads), segmentation int64 N x S x S (class per pixel, IGNORE where unknown or padded)."""

    images: torch.Tensor
    labels: torch.Tensor
    classes: list[str]
    name: str
    kind: str  # "boxes" | "masks"
    image_ids: list[int]
    scales: torch.Tensor  # float64 N: stored pixel = file pixel * scale
    report: DataReport = field(default_factory=DataReport)
    # masks only: each image's class for a multi-task classifier, the object class covering most
    # pixels (NO_IMAGE_LABEL where the image has no object)
    image_labels: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if self.kind == "masks" and self.image_labels is None:
            self.image_labels = dominant_classes(self.labels, len(self.classes))

    @property
    def extra_labels(self) -> torch.Tensor | None:
        """Row-aligned labels that batches also carry (loader.iterate_batches)."""
        return self.image_labels

    def coco_ground_truth(self) -> dict:
        """The loaded (cleaned) boxes as a COCO dict, in the file's pixels, categories 1..K."""
        images, annotations = [], []
        for index, image_id in enumerate(self.image_ids):
            scale = float(self.scales[index])
            height, width = (round(s / scale) for s in self.image_size)
            images.append({"id": image_id, "width": width, "height": height})
            for x1, y1, x2, y2, label in self.labels[index].tolist():
                if label < 0:
                    continue
                w, h = (x2 - x1) / scale, (y2 - y1) / scale
                annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": int(label) + 1,
                                    "bbox": [x1 / scale, y1 / scale, w, h], "area": w * h, "iscrowd": 0})
        return {"images": images, "annotations": annotations,
                "categories": [{"id": k + 1, "name": name} for k, name in enumerate(self.classes)]}


NO_IMAGE_LABEL = -100  # cross_entropy's default ignore_index


def dominant_classes(masks: torch.Tensor, classes: int) -> torch.Tensor:
    """Per mask, the object class (0..classes-1) with the most pixels; NO_IMAGE_LABEL if none."""
    if len(masks) == 0:
        return torch.zeros(0, dtype=torch.long)
    flat = masks.reshape(len(masks), -1).long()
    counts = torch.zeros(len(masks), classes + 1, dtype=torch.long)
    cared = (flat >= 1) & (flat <= classes)
    counts.scatter_add_(1, torch.where(cared, flat, 0), cared.long())
    best = counts[:, 1:].argmax(1)
    return torch.where(counts[:, 1:].sum(1) > 0, best, torch.full_like(best, NO_IMAGE_LABEL))


def load_dense(spec: str, *, kind: str, size: int) -> DataSplits:
    """`spec` (see the module docstring) as boxes (kind="boxes") or semantic masks ("masks")."""
    if kind not in ("boxes", "masks"):
        raise EffscaleError(f"kind {kind!r} must be 'boxes' or 'masks'")
    if not isinstance(spec, str) or ":" not in spec:
        raise EffscaleError(f"dense data {spec!r} is not understood; allowed: {FORMS}")
    scheme, _, location = spec.partition(":")
    if scheme == "coco":
        parts = location.split(",")
        if len(parts) == 2:
            annotations, images = (Path(p) for p in parts)
            _require(annotations, spec, file=True)
            _require(images, spec)
            coco = _read_json(annotations, spec)
            ids = sorted(image["id"] for image in coco.get("images", []) if isinstance(image, dict) and "id" in image)
            held = set(ids[HOLDOUT_EVERY - 1::HOLDOUT_EVERY])
            datasets = [_from_coco(coco, images, kind, size, f"{annotations.name}/{split}",
                                   keep=(lambda i, s=split: (i in held) == (s == "test")))
                        for split in ("train", "test")]
        elif len(parts) == 1:
            root = Path(location)
            _require(root, spec)
            datasets = []
            for split in ("train", "test"):
                _require(root / split / "instances.json", spec, file=True)
                datasets.append(_from_coco(_read_json(root / split / "instances.json", spec), root / split / "images",
                                           kind, size, f"{root.name}/{split}"))
        else:
            raise EffscaleError(f"dense data {spec!r}: coco: takes DIR or ANNOTATIONS.json,IMAGES_DIR")
    elif scheme == "masks":
        if kind != "masks":
            raise EffscaleError(f"dense data {spec!r}: mask folders have no boxes; detection needs coco:...")
        root = Path(location)
        _require(root, spec)
        datasets = [_from_masks(root, split, size, spec) for split in ("train", "test")]
    else:
        raise EffscaleError(f"dense data {spec!r}: scheme {scheme + ':'!r} is unknown; allowed: {FORMS}")
    train, test = datasets
    for dataset in datasets:
        if dataset.report:
            warnings.warn(f"{dataset.name}: {dataset.report.describe()}", DataWarning, stacklevel=2)
        if len(dataset) == 0:
            raise EffscaleError(f"dense data {spec!r}: the {dataset.name} split has no usable images"
                                + (f" ({dataset.report.describe()})" if dataset.report else ""))
    return DataSplits(train, test, spec)  # it checks that both splits have the same classes and channels


def _require(path: Path, spec: str, file: bool = False) -> None:
    if not path.exists():
        raise EffscaleError(f"{'file' if file else 'directory'} {str(path)!r} (from {spec!r}) does not exist")
    if file != path.is_file():
        raise EffscaleError(f"{str(path)!r} (from {spec!r}) is not a {'file' if file else 'directory'}")
    if not os.access(path, os.R_OK):
        raise EffscaleError(f"{str(path)!r} (from {spec!r}) is not readable (permission denied)")


def _read_json(path: Path, spec: str) -> dict:
    try:
        coco = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise EffscaleError(f"{str(path)!r} (from {spec!r}) is not valid JSON: {error}") from None
    if not isinstance(coco, dict) or not isinstance(coco.get("images"), list) \
            or not isinstance(coco.get("annotations"), list) or not isinstance(coco.get("categories"), list):
        raise EffscaleError(f"{str(path)!r} (from {spec!r}) is not a COCO instances file (it needs lists "
                            "'images', 'annotations' and 'categories')")
    return coco


def _letterbox(image: Image.Image, size: int, resample) -> tuple[np.ndarray, float]:
    scale = size / max(image.width, image.height)
    width, height = max(1, round(image.width * scale)), max(1, round(image.height * scale))
    return np.asarray(image.resize((width, height), resample)), scale


def letterbox_image(image: Image.Image, size: int) -> tuple[np.ndarray, float]:
    """An RGB image scaled so its longer side is `size`, padded with zeros at the bottom and right
    to size x size (uint8 H x W x 3), and its scale (stored pixel = file pixel * scale)."""
    pixels, scale = _letterbox(image, size, Image.BILINEAR)
    canvas = np.zeros((size, size, 3), np.uint8)
    canvas[:pixels.shape[0], :pixels.shape[1]] = pixels
    return canvas, scale


def _open_image(path: Path, report: DataReport, size: int):
    if not path.is_file():
        report.add("missing image files (image dropped)", path.name)
        return None, None, None
    try:
        with Image.open(path) as image:
            image = image.convert("RGB")
            original = (image.height, image.width)
            canvas, scale = letterbox_image(image, size)
    except (OSError, ValueError) as error:
        report.add("unreadable image files (image dropped)", f"{path.name}: {error}")
        return None, None, None
    return canvas, scale, original


def _from_coco(coco: dict, images_dir: Path, kind: str, size: int, name: str, keep=lambda image_id: True):
    report = DataReport()
    categories = [c for c in coco["categories"] if isinstance(c, dict) and isinstance(c.get("id"), int)]
    categories.sort(key=lambda c: c["id"])
    index_of = {c["id"]: k for k, c in enumerate(categories)}
    classes = [str(c.get("name", c["id"])) for c in categories]
    if not classes:
        raise EffscaleError(f"{name}: the COCO file lists no categories")
    by_image: dict[int, list] = {}
    known_images = {image.get("id") for image in coco["images"] if isinstance(image, dict)}
    for annotation in coco["annotations"]:
        image_id = annotation.get("image_id") if isinstance(annotation, dict) else None
        if image_id not in known_images:
            report.add("annotations of unknown image ids (dropped)", str(image_id))
            continue
        by_image.setdefault(image_id, []).append(annotation)
    pixels, labels, ids, scales = [], [], [], []
    for image in sorted((i for i in coco["images"] if isinstance(i, dict) and "id" in i), key=lambda i: i["id"]):
        if not keep(image["id"]):
            continue
        canvas, scale, original = _open_image(images_dir / str(image.get("file_name", "")), report, size)
        if canvas is None:
            continue
        target = _boxes(by_image.get(image["id"], []), original, scale, index_of, report, image) if kind == "boxes" \
            else _mask_from_annotations(by_image.get(image["id"], []), original, scale, size, index_of, report, image)
        pixels.append(canvas)
        labels.append(target)
        ids.append(image["id"])
        scales.append(scale)
    return _dataset(pixels, labels, classes, name, kind, ids, scales, report)


def _boxes(annotations, original, scale, index_of, report, image) -> np.ndarray:
    height, width = original
    rows = []
    for annotation in annotations:
        where = f"annotation {annotation.get('id')} of {image.get('file_name')}"
        if annotation.get("category_id") not in index_of:
            report.add("unknown category ids (dropped)", f"{where}: {annotation.get('category_id')!r}")
            continue
        if annotation.get("iscrowd"):
            report.add("crowd annotations (not trained on)", where)
            continue
        box = annotation.get("bbox")
        if not (isinstance(box, list) and len(box) == 4 and all(isinstance(v, (int, float)) for v in box)):
            report.add("malformed bbox fields (dropped)", f"{where}: {box!r}")
            continue
        x, y, w, h = box
        if w <= 0 or h <= 0:
            report.add("boxes with zero or negative size (dropped)", f"{where}: {box}")
            continue
        x1, y1, x2, y2 = max(x, 0), max(y, 0), min(x + w, width), min(y + h, height)
        if x2 - x1 < 1 or y2 - y1 < 1:
            report.add("boxes outside the image (dropped)", f"{where}: {box}")
            continue
        if (x1, y1, x2, y2) != (x, y, x + w, y + h):
            report.add("boxes partly outside the image (clipped)", f"{where}: {box}")
        rows.append([x1 * scale, y1 * scale, x2 * scale, y2 * scale, index_of[annotation["category_id"]]])
    return np.asarray(rows, np.float32).reshape(-1, 5)


def _mask_from_annotations(annotations, original, scale, size, index_of, report, image) -> np.ndarray:
    """A semantic mask from instance polygons / RLE (uncompressed or compressed), painted in annotation order."""
    from .synth import decode_rle

    height, width = original
    mask = np.zeros((height, width), np.uint8)
    for annotation in annotations:
        where = f"annotation {annotation.get('id')} of {image.get('file_name')}"
        if annotation.get("category_id") not in index_of:
            report.add("unknown category ids (dropped)", f"{where}: {annotation.get('category_id')!r}")
            continue
        segmentation, value = annotation.get("segmentation"), index_of[annotation["category_id"]] + 1
        try:
            if isinstance(segmentation, dict) and isinstance(segmentation.get("counts"), (list, str, bytes)):
                region = decode_rle(segmentation)
                if region.shape != mask.shape:
                    raise ValueError(f"RLE size {list(region.shape)} is not the image's {[height, width]}")
                mask[region] = value
            elif isinstance(segmentation, list) and segmentation:
                drawing = Image.fromarray(mask)
                for polygon in segmentation:
                    if len(polygon) < 6:
                        raise ValueError(f"a polygon needs >= 3 points, got {len(polygon) // 2}")
                    ImageDraw.Draw(drawing).polygon([float(v) for v in polygon], fill=value)
                mask = np.asarray(drawing).copy()
            else:
                raise ValueError("no polygon or RLE")
        except (ValueError, TypeError) as error:
            report.add("unreadable masks (object left out of the mask)", f"{where}: {error}")
    return _letterbox_mask(Image.fromarray(mask), size)


def _letterbox_mask(mask: Image.Image, size: int) -> np.ndarray:
    pixels, _ = _letterbox(mask, size, Image.NEAREST)
    canvas = np.full((size, size), IGNORE, np.uint8)
    canvas[:pixels.shape[0], :pixels.shape[1]] = pixels
    return canvas


def _from_masks(root: Path, split: str, size: int, spec: str) -> DenseDataset:
    report = DataReport()
    images_dir, masks_dir = root / split / "images", root / split / "masks"
    _require(images_dir, spec)
    _require(masks_dir, spec)
    names_file = root / "classes.txt"
    classes = [line.strip() for line in names_file.read_text().splitlines() if line.strip()] \
        if names_file.is_file() else None
    masks = {path.stem: path for path in masks_dir.iterdir() if path.is_file()}
    pixels, labels, ids, scales = [], [], [], []
    for number, path in enumerate(sorted(p for p in images_dir.iterdir() if p.is_file())):
        if path.stem not in masks:
            report.add("images without a mask file (image dropped)", path.name)
            continue
        canvas, scale, original = _open_image(path, report, size)
        if canvas is None:
            continue
        try:
            with Image.open(masks[path.stem]) as mask_image:
                mask = mask_image.convert("L") if mask_image.mode not in ("L", "P") else mask_image.copy()
        except (OSError, ValueError) as error:
            report.add("unreadable mask files (image dropped)", f"{masks[path.stem].name}: {error}")
            continue
        if (mask.height, mask.width) != original:
            report.add("masks of another size than their image (resized)", masks[path.stem].name)
            mask = mask.resize((original[1], original[0]), Image.NEAREST)
        pixels.append(canvas)
        labels.append(_letterbox_mask(mask, size))
        ids.append(number + 1)
        scales.append(scale)
    if classes is None:
        top = max((int(m[m != IGNORE].max(initial=0)) for m in labels), default=0)
        classes = [str(k) for k in range(1, top + 1)] or ["1"]
    for index, mask in enumerate(labels):
        bad = (mask != IGNORE) & (mask > len(classes))
        if bad.any():
            report.add(f"mask pixels above the {len(classes)} classes (ignored)", f"image {ids[index]}")
            mask[bad] = IGNORE
    return _dataset(pixels, labels, classes, f"{root.name}/{split}", "masks", ids, scales, report)


def _dataset(pixels, labels, classes, name, kind, ids, scales, report) -> DenseDataset:
    images = torch.from_numpy(np.stack(pixels)).permute(0, 3, 1, 2).contiguous() if pixels \
        else torch.zeros(0, 3, 1, 1, dtype=torch.uint8)
    if kind == "boxes":
        most = max((len(rows) for rows in labels), default=0)
        padded = np.full((len(labels), max(most, 1), 5), -1, np.float32)
        for index, rows in enumerate(labels):
            padded[index, :len(rows)] = rows
        target = torch.from_numpy(padded)
    else:
        target = torch.from_numpy(np.stack(labels)).long() if labels else torch.zeros(0, 1, 1, dtype=torch.long)
        # mask value k is class k - 1; 0 (background) is class 0 of the segmenter: shift nothing,
        # the segmenter predicts background + K classes.
    return DenseDataset(images, target, list(classes), name, kind, ids, torch.tensor(scales, dtype=torch.float64),
                        report)


__all__ = ["DataReport", "DenseDataset", "letterbox_image", "IGNORE", "NO_IMAGE_LABEL", "dominant_classes", "load_dense"]
