"""A task for the scaling lab: labelled data of one kind (images, series) and how to feed it to a
spec at any resolution.

The lab needs three splits. Search ranks candidates on a *minival* split carved from the training
data (as the paper did), so the test split is never used to choose; the study and the demo report
test accuracy. Inputs are stored raw (uint8 images, native-length float signals) and resampled to
each candidate's resolution per batch, so one dataset in memory serves every scaled model.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

from ..errors import EffscaleError

IMAGE_DATA_FORMS = "fashion-mnist (bundled), idx:DIR, folder:DIR"
SERIES_DATA_FORMS = "synthetic-series[:seed=N,n=M] (generated)"
MINIVAL_FRACTION = 1 / 6


@dataclass
class Task:
    """Raw inputs and int64 labels for train / minival / test, and `inputs(raw, resolution, train)`
    that turns a raw batch into the float tensor a model of that resolution takes."""

    name: str
    kind: str
    classes: list[str]
    in_chans: int
    train: tuple[torch.Tensor, torch.Tensor]
    minival: tuple[torch.Tensor, torch.Tensor]
    test: tuple[torch.Tensor, torch.Tensor]
    make_inputs: Callable[[torch.Tensor, int, bool], torch.Tensor] = field(repr=False)
    # Normalisation the inputs get (images: per-channel over 0..1 pixels, as NetworkSpec.mean/std).
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def inputs(self, raw: torch.Tensor, resolution: int, train: bool) -> torch.Tensor:
        return self.make_inputs(raw, resolution, train)

    def check_spec(self, spec) -> None:
        """The spec must take this task's kind of input."""
        kind = getattr(spec, "kind", None)
        if kind != self.kind:
            forms = IMAGE_DATA_FORMS if kind == "image" else SERIES_DATA_FORMS
            raise EffscaleError(f"model {spec.name!r} takes {kind} inputs but data {self.name!r} is {self.kind} "
                                f"data; use {kind} data ({forms})")


def _carve_minival(inputs: torch.Tensor, labels: torch.Tensor, seed: int):
    """A seeded, class-stratified 1/6 of the training data as minival (the rest stays train)."""
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(labels), generator=generator)
    held = torch.zeros(len(labels), dtype=torch.bool)
    for label in labels.unique():
        members = order[labels[order] == label]
        held[members[:max(1, int(len(members) * MINIVAL_FRACTION))]] = True
    return (inputs[~held], labels[~held]), (inputs[held], labels[held])


def _image_task(data: str, seed: int) -> Task:
    from ..data import BatchTransform, load_data

    splits = load_data(data)
    images = splits.train.images
    sample = images[:5000].float() / 255
    mean = sample.mean((0, 2, 3)).tolist()
    std = sample.std((0, 2, 3)).clamp(min=1e-3).tolist()
    transforms: dict[tuple[int, bool], BatchTransform] = {}

    def make_inputs(raw: torch.Tensor, resolution: int, train: bool) -> torch.Tensor:
        key = (resolution, train)
        if key not in transforms:
            # A light crop only: proxy runs are a few hundred steps, too short for heavy augmentation.
            transforms[key] = BatchTransform(resolution, mean, std, train=train, augment="crop",
                                             in_chans=splits.in_chans, scale=(0.8, 1.0))
        return transforms[key](raw).contiguous(memory_format=torch.channels_last)

    train, minival = _carve_minival(images, splits.train.labels, seed)
    spec_stats = (tuple(mean * 3), tuple(std * 3)) if len(mean) == 1 else (tuple(mean), tuple(std))
    return Task(name=data, kind="image", classes=list(splits.classes), in_chans=splits.in_chans, train=train,
                minival=minival, test=(splits.test.images, splits.test.labels), make_inputs=make_inputs,
                mean=spec_stats[0], std=spec_stats[1])


def _series_task(data: str, seed: int) -> Task:
    from ..series.data import load_series_task_data, series_inputs

    series = load_series_task_data(data)

    def make_inputs(raw: torch.Tensor, resolution: int, train: bool) -> torch.Tensor:
        return series_inputs(raw, resolution, train)

    train, minival = _carve_minival(series.train_x, series.train_y, seed)
    return Task(name=data, kind="series", classes=list(series.classes), in_chans=series.train_x.shape[1],
                train=train, minival=minival, test=(series.val_x, series.val_y), make_inputs=make_inputs)


def load_task(data: str, *, seed: int = 0) -> Task:
    """`data` is an image data spec (see `effscale.data.load_data`) or `synthetic-series[:...]`."""
    if not isinstance(data, str) or not data:
        raise EffscaleError(f"data={data!r} must be a data spec: {IMAGE_DATA_FORMS}, or {SERIES_DATA_FORMS}")
    if data.split(":", 1)[0] == "synthetic-series":
        return _series_task(data, seed)
    return _image_task(data, seed)
