"""Classification metrics on a dataset split: top-1/top-5, per-class accuracy, confusion matrix."""
from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from ..data import BatchTransform, ImageDataset, iterate_batches, load_data
from ..data.containers import require_matching_data
from ..errors import EffscaleError


@torch.inference_mode()
def evaluate(model: nn.Module, dataset: ImageDataset, *, batch_size: int = 256, precision: str = "fp32",
             channels_last: bool = True) -> dict:
    """Accuracy of `model` on `dataset`, preprocessed as the model's spec says (eval transform).

    Returns `top1`, `top5` (percent), `samples`, `per_class` (percent per class name) and
    `confusion` (rows: true class, columns: predicted class).
    """
    spec = model.spec
    num_classes = model.num_classes
    require_matching_data(model, dataset)
    transform = BatchTransform(spec.resolution, spec.mean, spec.std, train=False, in_chans=dataset.in_chans)
    was_training = model.training
    model.eval()
    confusion = torch.zeros(num_classes, num_classes, dtype=torch.long)
    top5_hits = 0
    k = min(5, num_classes)
    for images, labels in iterate_batches(dataset, batch_size, seed=0, epoch=0, shuffle=False, drop_last=False):
        inputs = transform(images)
        if channels_last:
            inputs = inputs.contiguous(memory_format=torch.channels_last)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            logits = model(inputs).float()
        predicted = logits.argmax(1)
        confusion += torch.bincount(labels * num_classes + predicted, minlength=num_classes ** 2
                                    ).view(num_classes, num_classes)
        top5_hits += (logits.topk(k, 1).indices == labels[:, None]).any(1).sum().item()
    model.train(was_training)
    samples = int(confusion.sum())
    per_class_total = confusion.sum(1).clamp(min=1)
    return {"top1": 100.0 * confusion.diag().sum().item() / samples, "top5": 100.0 * top5_hits / samples,
            "samples": samples,
            "per_class": {name: 100.0 * confusion[i, i].item() / per_class_total[i].item()
                          for i, name in enumerate(dataset.classes)},
            "confusion": confusion.tolist(), "classes": list(dataset.classes)}


def evaluate_weights(weights: str | os.PathLike, data: str, *, batch_size: int = 256,
                     runtime: str | None = None) -> dict:
    """`effscale eval`: a run directory (its model.safetensors), an effscale weights file or an
    exported artifact (on `runtime`: onnxruntime, openvino or torch; default its own), on the test
    split of `data`."""
    from ..export.manifest import is_artifact
    from ..weights import model_from_file

    path = Path(weights)
    if is_artifact(path):
        from ..export import load_exported

        model = load_exported(path, runtime)
        splits = load_data(data)
        result = evaluate(model, splits.test, batch_size=batch_size, channels_last=False)
        result.update({"weights": str(path), "data": data, "runtime": model.runtime})
        return result
    if runtime not in (None, "torch"):
        raise EffscaleError(f"runtime {runtime!r} runs exported artifacts (`effscale export`); {str(weights)!r} "
                            "is not one")
    if path.is_dir():
        path = path / "model.safetensors"
        if not path.is_file():
            raise EffscaleError(f"{weights} is a directory without model.safetensors (not a finished run)")
    model = model_from_file(path)
    splits = load_data(data)
    result = evaluate(model, splits.test, batch_size=batch_size)
    result.update({"weights": str(path), "data": data})
    return result
