"""Detection and segmentation as tasks of the one training loop (trainer.py): the same
checkpoints, exact resume, DDP, EMA, progress and bf16, with the dense spec, data, loss and
metric in place of the classifier's.

    effscale train --task detection --data coco:DIR [--model efficientdet@-3,anchor_scale=2]
    effscale train --task segmentation --data masks:DIR [--model segmenter@-3,resolution=128]

The default models are the EfficientDet and segmenter rules at phi = -3 (128 px input), sized
for the bundled task on a CPU. The detector's default anchor_scale is 2, half the reference's,
because the bundled objects are 12-72 px: with the reference's 4 the smallest anchor is 32 px
and most small objects would match it only through the low-quality rule.

Augmentation: random horizontal flips with boxes and masks following (the images are letterboxed
at load, so no resizing is needed per batch). The global RNG the loop reseeds each step draws
them, so resume stays exact.
"""
from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import EffscaleError
from ..spec import check_trainable_macs
from ..dense.boxes import BOX_LOSSES, anchor_boxes, detection_loss, flatten_outputs, postprocess, select_detections
from ..dense.cost import dense_cost
from ..dense.data import IGNORE, load_dense
from ..dense.io import save_dense_weights
from ..dense.metrics import coco_map, confusion_matrix, detections_to_coco, segmentation_scores
from ..dense.modules import build_dense_model
from ..dense.spec import DetectorSpec, SegmenterSpec, resolve_dense_spec
from .checkpoint import check_output_dir, estimate_run_bytes
from .init_weights import load_init, read_init

DENSE_TASKS = ("detection", "segmentation", "multitask")
TASKS = ("classification",) + DENSE_TASKS
MASK_LOSSES = ("ce", "ce+dice")
DEFAULT_MODELS = {"detection": "efficientdet@-3,anchor_scale=2", "segmentation": "segmenter@-3,resolution=128",
                  "multitask": "multitask@-3,resolution=128"}
FAMILY = {"detection": "efficientdet", "segmentation": "segmenter", "multitask": "multitask"}
EVAL_BATCH = 32


def _init_backbone(backbone, run, path: str):
    """The backbone spec as `--init PATH` makes it: the checkpoint's BN eps, padding and activation
    (an effscale file's, or the layout's for a foreign checkpoint) and, for an effscale file, its
    preprocessing; its stages must be the backbone's (the detector's resolution is kept)."""
    from ..weights import COMPUTE_FIELDS, checkpoint_fields, read_state_dict

    spec, run.init_source = read_init(path)
    if spec is None:  # a foreign checkpoint (timm, torchvision, lukemelas): ImageNet preprocessing stays
        _, fields, _ = checkpoint_fields(read_state_dict(run.init_source), origin=str(run.init_source))
        return backbone.replace(**fields)
    if _structure(spec) != _structure(backbone):
        raise EffscaleError(f"--init {path!r} is a {spec.name} ({_describe(spec)}); the {run.config.task} model's "
                            f"backbone is {backbone.name} ({_describe(backbone)}): choose a model whose backbone has "
                            "the same stages")
    return backbone.replace(mean=spec.mean, std=spec.std, **{name: getattr(spec, name) for name in COMPUTE_FIELDS})


def _structure(spec) -> list[tuple]:
    return [(b.block, b.in_channels, b.out_channels, b.kernel, b.stride, b.expand_ratio, b.se_ratio)
            for b in spec.blocks()] + [spec.stem_channels]


def _describe(spec) -> str:
    blocks = spec.blocks()
    return f"{len(blocks)} blocks, stem {spec.stem_channels}, last stage {blocks[-1].out_channels} channels"


def validate_dense_config(config) -> None:
    """One-line errors for what dense training does not take, before any data is read."""
    if config.task not in TASKS:
        raise EffscaleError(f"task {config.task!r} is unknown; allowed: {', '.join(TASKS)}")
    for option, flag in (("teacher", "--teacher"), ("linear_probe", "--linear-probe"), ("qat", "--qat"),
                         ("grad_checkpointing", "--grad-checkpointing")):
        if getattr(config, option):
            raise EffscaleError(f"{flag} is for classification; --task {config.task} does not take it yet")
    if config.box_loss not in BOX_LOSSES:
        raise EffscaleError(f"box loss {config.box_loss!r} is unknown; allowed: {', '.join(BOX_LOSSES)}")
    if config.mask_loss not in MASK_LOSSES:
        raise EffscaleError(f"mask loss {config.mask_loss!r} is unknown; allowed: {', '.join(MASK_LOSSES)}")
    if config.model is not None and config.phi is not None:
        raise EffscaleError(f"give phi inside the model name ({FAMILY[config.task]}@PHI), not with --phi")
    if not str(config.data).startswith(("coco:", "masks:")):
        raise EffscaleError(f"--task {config.task} reads coco:DIR, coco:ANNOTATIONS.json,IMAGES_DIR"
                            f"{' or masks:DIR' if config.task != 'detection' else ''}; got {config.data!r}")
    weights = config.loss_weights
    if not (isinstance(weights, (tuple, list)) and len(weights) == 2
            and all(isinstance(w, (int, float)) and math.isfinite(w) and w >= 0 for w in weights) and any(weights)):
        raise EffscaleError(f"loss weights {weights!r} must be two finite numbers >= 0, not both 0 "
                            "(masks, image classes)")
    jitter = config.scale_jitter
    if jitter is not None and not (isinstance(jitter, (tuple, list)) and len(jitter) == 2
                                   and all(isinstance(v, (int, float)) and math.isfinite(v) for v in jitter)
                                   and 0 < jitter[0] <= jitter[1] <= 4):
        shown = ",".join(f"{v:g}" if isinstance(v, (int, float)) else repr(v) for v in jitter) \
            if isinstance(jitter, (tuple, list)) else repr(jitter)
        raise EffscaleError(f"scale jitter {shown} must be two numbers LO,HI with 0 < LO <= HI <= 4 "
                            "(e.g. 0.75,1.33)")


def dense_task(config):
    return {"detection": DetectionTask, "segmentation": SegmentationTask, "multitask": MultiTask}[config.task](config)


def model_reference(config) -> str:
    if config.model is not None:
        return config.model
    if config.phi is not None:
        return f"{FAMILY[config.task]}@{config.phi:g}"
    return DEFAULT_MODELS[config.task]


class DenseTransform:
    """uint8 images -> normalised float inputs; in training, random horizontal flips that move
    boxes (x1, x2 -> W - x2, W - x1) and masks with their image, and with `scale_jitter` (lo, hi)
    a random zoom per image (`_jitter`)."""

    def __init__(self, mean, std, *, train: bool, device, boxes: bool = False,
                 scale_jitter: tuple[float, float] | None = None):
        self.boxes = boxes  # labels are box rows (N x M x 5) rather than masks (N x H x W)
        self.mean = torch.tensor(mean, dtype=torch.float32, device=device).view(1, -1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32, device=device).view(1, -1, 1, 1)
        self.train, self.device, self.scale_jitter = train, device, scale_jitter

    def __call__(self, images: torch.Tensor, labels: torch.Tensor):
        images, labels = images.to(self.device), labels.to(self.device)
        pixels = images.float()
        if self.train and self.scale_jitter is not None:
            pixels, labels = _jitter(pixels, labels, self.scale_jitter, self.boxes)
        inputs = (pixels / 255 - self.mean[:, :images.shape[1]]) / self.std[:, :images.shape[1]]
        if self.train:
            flip = torch.rand(len(images)) < 0.5
            if flip.any():
                inputs[flip] = inputs[flip].flip(-1)
                if self.boxes:
                    width = images.shape[-1]
                    rows = labels[flip].clone()
                    real = rows[..., 4] >= 0
                    x1, x2 = rows[..., 0].clone(), rows[..., 2].clone()
                    rows[..., 0] = torch.where(real, width - x2, x1)
                    rows[..., 2] = torch.where(real, width - x1, x2)
                    labels = labels.clone()
                    labels[flip] = rows
                else:  # masks
                    labels = labels.clone()
                    labels[flip] = labels[flip].flip(-1)
        return inputs, labels


MIN_KEPT_FRACTION = 0.3  # a jittered box is kept when at least this share of its area stays in view


def _jitter(pixels: torch.Tensor, labels: torch.Tensor, bounds: tuple[float, float], boxes: bool):
    """Random zoom per image, as EfficientDet's scale jitter: scale s uniform in `bounds`, then a
    random crop (s > 1) or placement on a black canvas (s < 1) at the input size, i.e. pixel
    coordinates x -> s * x + t. Boxes follow, clipped to the image; a box with less than
    MIN_KEPT_FRACTION of its area left in view (or under 1 px on a side) is dropped (class -1).
    Masks follow by nearest sampling, uncovered pixels becoming IGNORE."""
    batch, size = len(pixels), pixels.shape[-1]
    low, high = bounds
    scale = low + (high - low) * torch.rand(batch, device=pixels.device)
    span = size - scale * size  # t in [min(0, span), max(0, span)] keeps the view inside the zoomed image
    shift = torch.minimum(span, torch.zeros_like(span))[:, None] + span.abs()[:, None] * torch.rand(
        batch, 2, device=pixels.device)
    # output pixel centre U maps to input X = (U - t) / s; grid_sample's coordinates (align_corners=False)
    theta = torch.zeros(batch, 2, 3, device=pixels.device)
    theta[:, 0, 0] = theta[:, 1, 1] = 1 / scale
    theta[:, :, 2] = (1 - 2 * shift / size) / scale[:, None] - 1
    grid = F.affine_grid(theta, list(pixels.shape), align_corners=False)
    pixels = F.grid_sample(pixels, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    if not boxes:
        shifted = F.grid_sample((labels.float() + 1)[:, None], grid, mode="nearest", padding_mode="zeros",
                                align_corners=False)[:, 0].long() - 1
        return pixels, torch.where(shifted < 0, torch.full_like(shifted, IGNORE), shifted)
    rows = labels.clone()
    real = rows[..., 4] >= 0
    factor, offset = scale[:, None, None], torch.cat([shift, shift], 1)[:, None, :]
    moved = rows[..., :4] * factor + offset
    clipped = moved.clamp(0, size)
    width, height = clipped[..., 2] - clipped[..., 0], clipped[..., 3] - clipped[..., 1]
    area = (moved[..., 2] - moved[..., 0]) * (moved[..., 3] - moved[..., 1])
    kept = real & (width >= 1) & (height >= 1) & (width * height >= MIN_KEPT_FRACTION * area)
    rows[..., :4] = torch.where(kept[..., None], clipped, rows[..., :4])
    rows[..., 4] = torch.where(kept, rows[..., 4], torch.full_like(rows[..., 4], -1))
    return pixels, rows


class _DenseTask:
    kind = ""  # data kind: boxes | masks

    def __init__(self, config):
        self.config = config

    def spec_and_data(self, run):
        config = run.config
        reference = model_reference(config)  # a name, or a spec (the dense study passes its models)
        spec = reference if isinstance(reference, (DetectorSpec, SegmenterSpec)) \
            else resolve_dense_spec(reference, num_classes=1)
        self.check_spec(spec)
        splits = load_dense(config.data, kind=self.kind, size=spec.resolution)
        spec = dataclasses.replace(spec, num_classes=splits.num_classes)
        check_trainable_macs(dense_cost(spec)["macs"], f"{spec.name} has", "per image",
                             "choose a smaller model (a lower phi)")
        run.init_source = None
        if config.init:  # the backbone starts from a classifier's weights, computing and preprocessing as it did
            return dataclasses.replace(spec, backbone=_init_backbone(spec.backbone, run, config.init)), splits
        mean, std = splits.train.preprocessing_stats()
        return dataclasses.replace(spec, backbone=spec.backbone.replace(mean=mean, std=std)), splits

    def network(self, spec):
        return spec.backbone

    def check_spec(self, spec) -> None:
        wanted = {"detection": "a detector (efficientdet...)", "segmentation": "a segmenter (segmenter@PHI)",
                  "multitask": "a multi-task model (multitask@PHI)"}[self.name]
        kind = "detection" if isinstance(spec, DetectorSpec) else ("multitask" if spec.classify else "segmentation")
        if kind != self.name:
            reference = model_reference(self.config)
            shown = reference if isinstance(reference, str) else reference.name
            raise EffscaleError(f"--task {self.name} trains {wanted}; --model {shown!r} is a {kind} model")

    def with_recipe(self, spec, recipe):
        backbone = spec.backbone.replace(dropout=recipe.dropout, drop_path_rate=recipe.drop_path_rate,
                                         bn_momentum=recipe.bn_momentum or spec.backbone.bn_momentum)
        return dataclasses.replace(spec, backbone=backbone)

    def build(self, run) -> nn.Module:
        model = build_dense_model(run.spec, run.splits.in_chans)
        if run.dist.main:
            check_output_dir(run.out, estimate_run_bytes(model))
        if run.init_source is not None:
            load_init(model.backbone, run.init_source, run.config.init)
        run.teacher = None
        return model

    def transform(self, run):
        backbone = run.spec.backbone
        return DenseTransform(backbone.mean, backbone.std, train=True, device=run.dist.device,
                              scale_jitter=run.config.scale_jitter,
                              boxes=self.kind == "boxes")

    def summary(self, run, result: dict) -> dict:
        counted = dense_cost(run.spec)
        return {**{f"test_{k}": v for k, v in result.items() if k not in ("samples", "iou")},
                "test_samples": result["samples"], "params": counted["params"], "macs": counted["macs"],
                "data_report": {split: getattr(run.splits, split).report.to_dict() for split in ("train", "test")}}

    def save(self, run, model, result: dict) -> None:
        save_dense_weights(model, run.out / "model.safetensors",
                           extra={"classes": list(run.splits.classes), "data": run.config.data, "task": self.name,
                                  **self.metric_record(result)})


class DetectionTask(_DenseTask):
    name, kind = "detection", "boxes"

    def build(self, run):
        model = super().build(run)
        self.anchors = anchor_boxes(run.spec).to(run.dist.device)
        return model

    def micro_loss(self, run, batch) -> torch.Tensor:
        inputs, targets = run.transform(*batch[:2])
        class_maps, box_maps = run.ddp_model(inputs.contiguous(memory_format=run.memory_format))
        logits, offsets = flatten_outputs(class_maps, box_maps, run.spec.num_classes)
        return detection_loss(logits.float(), offsets.float(), self.anchors, targets, run.config.box_loss)["loss"]

    def evaluate(self, model, split, recipe, channels_last: bool = True) -> dict:
        return evaluate_detector(model, split, precision=recipe.precision)

    def metric_record(self, result: dict) -> dict:
        return {"test_map": result["map"], "test_map_50": result["map_50"]}

    def describe(self, result: dict) -> str:
        return f"test mAP {result['map']:.2f}, mAP@.5 {result['map_50']:.2f}"


class SegmentationTask(_DenseTask):
    name, kind = "segmentation", "masks"

    def micro_loss(self, run, batch) -> torch.Tensor:
        inputs, masks = run.transform(*batch[:2])
        logits = run.ddp_model(inputs.contiguous(memory_format=run.memory_format)).float()
        return segmentation_loss(logits, masks, run.config.mask_loss)

    def evaluate(self, model, split, recipe, channels_last: bool = True) -> dict:
        return evaluate_segmenter(model, split, precision=recipe.precision)

    def metric_record(self, result: dict) -> dict:
        return {"test_miou": result["miou"], "test_pixel_accuracy": result["pixel_accuracy"]}

    def describe(self, result: dict) -> str:
        return f"test mIoU {result['miou']:.2f} %, pixel accuracy {result['pixel_accuracy']:.2f} %"


class MultiTask(SegmentationTask):
    """One backbone, a segmentation head and an image classifier (the class covering most pixels);
    loss = w_masks * segmentation loss + w_image * cross-entropy (`loss_weights`)."""

    name, kind = "multitask", "masks"

    def micro_loss(self, run, batch) -> torch.Tensor:
        images, masks, image_labels = batch
        inputs, masks = run.transform(images, masks)
        mask_logits, image_logits = run.ddp_model(inputs.contiguous(memory_format=run.memory_format))
        w_masks, w_image = run.config.loss_weights
        return (w_masks * segmentation_loss(mask_logits.float(), masks, run.config.mask_loss)
                + w_image * F.cross_entropy(image_logits.float(), image_labels.to(image_logits.device)))

    def metric_record(self, result: dict) -> dict:
        return {**super().metric_record(result), "test_top1": result["top1"]}

    def describe(self, result: dict) -> str:
        return f"{super().describe(result)}, image top-1 {result['top1']:.2f} %"


def segmentation_loss(logits: torch.Tensor, masks: torch.Tensor, kind: str = "ce") -> torch.Tensor:
    """Per-pixel cross-entropy (IGNORE pixels left out), plus the soft Dice loss averaged over the
    classes present in the batch for "ce+dice"."""
    loss = F.cross_entropy(logits, masks, ignore_index=IGNORE)
    if kind == "ce+dice":
        cared = (masks != IGNORE).unsqueeze(1)
        probabilities = logits.softmax(1) * cared
        onehot = F.one_hot(masks.clamp(max=logits.shape[1] - 1), logits.shape[1]).permute(0, 3, 1, 2) * cared
        inter = (probabilities * onehot).sum((0, 2, 3))
        total = probabilities.sum((0, 2, 3)) + onehot.sum((0, 2, 3))
        present = onehot.sum((0, 2, 3)) > 0
        dice = 1 - (2 * inter + 1) / (total + 1)
        loss = loss + dice[present].mean()
    return loss


def _eval_outputs(model, images: torch.Tensor, precision: str):
    """The model's raw outputs on uint8 images, EVAL_BATCH at a time, in eval mode (restored after)
    under the precision's autocast: the one inference loop of the dense predictions."""
    device = _device(model)
    transform = DenseTransform(model.spec.backbone.mean, model.spec.backbone.std, train=False, device=device)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(images), EVAL_BATCH):
            chunk = images[start:start + EVAL_BATCH]
            inputs, _ = transform(chunk, torch.zeros(len(chunk)))
            with torch.no_grad(), torch.autocast(device.type, dtype=dtype or torch.float32,
                                                 enabled=dtype is not None):
                output = model(inputs)
            yield output  # outside the contexts: the caller's post-processing runs in its own modes
    finally:
        model.train(was_training)


def _device(model) -> torch.device:
    """Where the model runs: its parameters' device; the CPU for an exported artifact (no parameters)."""
    first = next(iter(model.parameters()), None) if isinstance(model, torch.nn.Module) else None
    return first.device if first is not None else torch.device("cpu")


def detector_predictions(model, images: torch.Tensor, precision: str = "fp32", **options) -> list[dict]:
    """Boxes (in the stored image's pixels), scores and labels for uint8 images N x C x S x S; `model`
    is the PyTorch detector (per-level maps) or an exported one (deployed scores and boxes)."""
    deployed = getattr(model, "task", None) == "detection"  # export.ExportedModel of a detector
    anchors = None if deployed else anchor_boxes(model.spec).to(_device(model))
    out = []
    for output in _eval_outputs(model, images, precision):
        if deployed:
            scores, boxes = output
            out.extend(select_detections(scores.float(), boxes.float(), **options))
            continue
        class_maps, box_maps = output
        logits, offsets = flatten_outputs([m.float() for m in class_maps], [m.float() for m in box_maps],
                                          model.spec.num_classes)
        out.extend(postprocess(logits, offsets, anchors, **options))
    return out


def evaluate_detector(model, split, precision: str = "fp32") -> dict:
    """COCO box metrics of `model` on a DenseDataset of boxes (see dense.metrics.coco_map)."""
    predictions = detector_predictions(model, split.images, precision)
    detections = detections_to_coco(predictions, split.image_ids, split.scales.tolist())
    return {**coco_map(split.coco_ground_truth(), detections), "samples": len(split)}


def segmenter_predictions(model, images: torch.Tensor, precision: str = "fp32") -> torch.Tensor:
    """Class per pixel (0 background, k = class k), N x S x S; for a multi-task model also the
    image classes N, as a pair."""
    out, image_classes = [], []
    for output in _eval_outputs(model, images, precision):
        masks, classes = output if isinstance(output, tuple) else (output, None)
        out.append(masks.float().argmax(1).cpu())
        if classes is not None:
            image_classes.append(classes.float().argmax(1).cpu())
    masks = torch.cat(out) if out else torch.zeros(0, *images.shape[-2:], dtype=torch.long)
    return (masks, torch.cat(image_classes)) if image_classes else masks


def evaluate_segmenter(model, split, precision: str = "fp32") -> dict:
    """mIoU and pixel accuracy of `model` on a DenseDataset of masks (see dense.metrics)."""
    predicted = segmenter_predictions(model, split.images, precision)
    predicted, image_classes = predicted if isinstance(predicted, tuple) else (predicted, None)
    classes = model.spec.num_classes + 1
    confusion = confusion_matrix(predicted, split.labels, classes)
    scores = segmentation_scores(confusion, ["background"] + list(split.classes))
    if image_classes is not None:  # multi-task: image top-1 over images that have an object
        labelled = split.image_labels >= 0
        scores["top1"] = round(100 * float((image_classes[labelled] == split.image_labels[labelled]).float().mean()), 3) \
            if labelled.any() else 0.0
    return {**scores, "samples": len(split)}


__all__ = ["DENSE_TASKS", "DenseTransform", "DetectionTask", "SegmentationTask", "TASKS", "detector_predictions",
           "evaluate_detector", "evaluate_segmenter", "segmentation_loss", "segmenter_predictions",
           "validate_dense_config"]
