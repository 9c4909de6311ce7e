"""`eval` and `predict` for detectors and segmenters: the model, its classes and preprocessing
come from its weights file (dense.io), as for classifiers.

predict writes, per image, a PNG with the detections drawn (box, class, score) or the predicted
mask blended over the image, and returns the same as JSON-able rows (boxes in the file's pixels).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from .dense.data import letterbox_image, load_dense
from .dense.io import load_dense_model
from .dense.spec import DetectorSpec
from .errors import EffscaleError

PALETTE = np.array([[0, 0, 0], [230, 25, 75], [60, 180, 75], [255, 225, 25], [0, 130, 200], [245, 130, 48],
                    [145, 30, 180], [70, 240, 240], [240, 50, 230], [210, 245, 60], [250, 190, 212],
                    [0, 128, 128], [220, 190, 255], [170, 110, 40], [255, 250, 200], [128, 0, 0]], np.uint8)
SCORE_THRESHOLD = 0.3  # drawn and listed; eval uses every detection above 0.05, as COCO mAP expects


def open_dense_model(weights, runtime: str | None = None):
    """The detector / segmenter in `weights`: an effscale dense weights file or run directory (the
    PyTorch model), or an exported artifact directory (run on `runtime`, default its own; it gives
    the deployed outputs, dense/deploy.py)."""
    from .export.manifest import is_artifact

    if is_artifact(weights):
        from .export import load_exported

        model = load_exported(weights, runtime)
        if model.task == "classification":
            raise EffscaleError(f"{str(weights)!r} is an exported classifier, not a detector / segmenter")
        return model
    if runtime is not None:
        raise EffscaleError(f"--runtime is for exported artifact directories; {str(weights)!r} runs in PyTorch")
    return load_dense_model(weights)


def evaluate_dense_weights(weights, data: str, runtime: str | None = None) -> dict:
    """mAP (detector) or mIoU (segmenter) of the model in `weights` (or an exported artifact, on
    `runtime`) on `data`'s test split."""
    from .train.dense_task import evaluate_detector, evaluate_segmenter

    model = open_dense_model(weights, runtime)
    detector = isinstance(model.spec, DetectorSpec)
    splits = load_dense(data, kind="boxes" if detector else "masks", size=model.spec.resolution)
    if model.classes and list(model.classes) != list(splits.classes):
        raise EffscaleError(f"the model's classes {model.classes} are not the data's {splits.classes}")
    result = evaluate_detector(model, splits.test) if detector else evaluate_segmenter(model, splits.test)
    task = "detection" if detector else ("multitask" if model.spec.classify else "segmentation")
    ran = getattr(model, "runtime", None)
    return {"weights": str(weights), "data": data, "task": task, "model": model.spec.name,
            "runtime": ran["runtime"] if ran else "torch", **result, "data_report": splits.test.report.to_dict()}


def predict_dense(images: list[str], weights, out_dir, score_threshold: float = SCORE_THRESHOLD,
                  runtime: str | None = None) -> list[dict]:
    """Detections or masks for image files; drawings into `out_dir` (created)."""
    from .train.dense_task import detector_predictions, segmenter_predictions

    if not 0 <= score_threshold <= 1:
        raise EffscaleError(f"score threshold {score_threshold!r} must be in [0, 1]")
    missing = [path for path in images if not Path(path).is_file()]
    if missing:
        raise EffscaleError(f"image file {missing[0]!r} does not exist" + (f" (and {len(missing) - 1} more)"
                                                                            if len(missing) > 1 else ""))
    model = open_dense_model(weights, runtime)
    size = model.spec.resolution
    names = list(model.classes or [str(k) for k in range(model.spec.num_classes)])
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for path in images:
        try:
            with Image.open(path) as opened:
                image = opened.convert("RGB")
        except (OSError, ValueError) as error:
            raise EffscaleError(f"cannot read image {path!r}: {error}") from None
        canvas, scale = letterbox_image(image, size)  # as the data it was trained on was stored
        batch = torch.from_numpy(canvas).permute(2, 0, 1)[None].contiguous()
        drawing = out_dir / f"{Path(path).stem}.png"
        if isinstance(model.spec, DetectorSpec):
            found = detector_predictions(model, batch, score_threshold=score_threshold)[0]
            boxes = (found["boxes"].double() / scale).tolist()
            detections = [{"label": names[int(k)], "class": int(k), "score": round(float(p), 4),
                           "box_xyxy": [round(v, 1) for v in box]}
                          for box, p, k in zip(boxes, found["scores"], found["labels"])]
            _draw_boxes(image, detections).save(drawing)
            rows.append({"image": path, "detections": detections, "drawing": str(drawing)})
        else:
            predicted = segmenter_predictions(model, batch)
            predicted, image_class = predicted if isinstance(predicted, tuple) else (predicted, None)
            height, width = max(1, round(image.height * scale)), max(1, round(image.width * scale))
            mask = predicted[0][:height, :width].numpy().astype(np.uint8)
            mask = np.asarray(Image.fromarray(mask).resize(image.size, Image.NEAREST))
            counts = np.bincount(mask.ravel(), minlength=len(names) + 1)
            _overlay(image, mask).save(drawing)
            rows.append({"image": path, "drawing": str(drawing),
                         "pixels": {(["background"] + names)[k]: int(c) for k, c in enumerate(counts) if c}})
            if image_class is not None:
                rows[-1]["image_class"] = names[int(image_class[0])]
    return rows


def _draw_boxes(image: Image.Image, detections: list[dict]) -> Image.Image:
    canvas = image.copy()
    draw = ImageDraw.Draw(canvas)
    for detection in detections:
        colour = tuple(int(v) for v in PALETTE[1 + detection["class"] % (len(PALETTE) - 1)])
        x1, y1, x2, y2 = detection["box_xyxy"]
        draw.rectangle([x1, y1, x2, y2], outline=colour, width=2)
        draw.text((x1 + 2, max(0, y1 - 11)), f"{detection['label']} {detection['score']:.2f}", fill=colour)
    return canvas


def _overlay(image: Image.Image, mask: np.ndarray) -> Image.Image:
    colours = PALETTE[mask % len(PALETTE)].astype(np.float32)
    pixels = np.asarray(image, np.float32)
    blended = np.where(mask[..., None] > 0, 0.45 * pixels + 0.55 * colours, pixels)
    return Image.fromarray(blended.astype(np.uint8))


__all__ = ["evaluate_dense_weights", "open_dense_model", "predict_dense"]
