"""The in-memory dataset containers every loader returns: `ImageDataset` (one uint8 tensor
N x C x H x W plus int64 labels) and `DataSplits` (train and held-out). Their own module so that
each loader (bundled, IDX, image folders) imports them without importing the others."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import EffscaleError


class ImageRows:
    """What every in-memory dataset with `images` (uint8 N x C x H x W) and `classes` answers:
    shared by ImageDataset and dense.DenseDataset."""

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def in_chans(self) -> int:
        return int(self.images.shape[1])

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def image_size(self) -> tuple[int, int]:
        """(H, W) of the stored images."""
        return int(self.images.shape[2]), int(self.images.shape[3])

    def preprocessing_stats(self, samples: int = 5000) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """Per-channel mean and std of the first `samples` images on [0, 1], rounded to 4 places:
        the preprocessing a model trained from scratch on this data keeps in its spec (which
        stores 3 values; grayscale repeats its one)."""
        images = self.images[:samples].float() / 255
        mean = images.mean((0, 2, 3)).tolist()
        std = images.std((0, 2, 3)).clamp(min=1e-3).tolist()
        if len(mean) == 1:
            mean, std = mean * 3, std * 3
        return tuple(round(m, 4) for m in mean), tuple(round(s, 4) for s in std)


@dataclass
class ImageDataset(ImageRows):
    """Images held in memory: uint8 N x C x H x W (C = 1 grayscale or 3 RGB) and int64 labels."""

    images: torch.Tensor
    labels: torch.Tensor
    classes: list[str]
    name: str

    def __post_init__(self) -> None:
        images, labels = self.images, self.labels
        if not (isinstance(images, torch.Tensor) and images.dtype == torch.uint8 and images.dim() == 4
                and images.shape[1] in (1, 3)):
            raise EffscaleError(f"dataset {self.name!r}: images must be a uint8 tensor N x C x H x W with C 1 or 3, "
                                f"got {getattr(images, 'dtype', type(images).__name__)} "
                                f"{tuple(getattr(images, 'shape', ()))}")
        if not (isinstance(labels, torch.Tensor) and labels.dtype == torch.int64 and labels.dim() == 1
                and len(labels) == len(images)):
            raise EffscaleError(f"dataset {self.name!r}: labels must be an int64 tensor of length {len(images)}, "
                                f"got {getattr(labels, 'dtype', type(labels).__name__)} "
                                f"{tuple(getattr(labels, 'shape', ()))}")
        self.classes = [str(c) for c in self.classes]
        if not self.classes:
            raise EffscaleError(f"dataset {self.name!r} has no classes")
        if len(labels) and (int(labels.min()) < 0 or int(labels.max()) >= len(self.classes)):
            raise EffscaleError(f"dataset {self.name!r}: labels span {int(labels.min())}..{int(labels.max())}, "
                                f"allowed 0..{len(self.classes) - 1} for {len(self.classes)} classes")

    def class_counts(self) -> list[int]:
        return torch.bincount(self.labels, minlength=self.num_classes).tolist()

    def __repr__(self) -> str:
        n, c, h, w = self.images.shape
        return f"ImageDataset(name={self.name!r}, images={n}x{c}x{h}x{w} uint8, classes={self.num_classes})"


@dataclass
class DataSplits:
    """The train split and the held-out (test / val) split of one data spec."""

    train: ImageDataset
    test: ImageDataset
    source: str

    def __post_init__(self) -> None:
        if self.train.classes != self.test.classes:
            raise EffscaleError(f"data {self.source!r}: train and test classes differ "
                                f"({self.train.classes} vs {self.test.classes})")
        if self.train.in_chans != self.test.in_chans:
            raise EffscaleError(f"data {self.source!r}: train has {self.train.in_chans} channels, "
                                f"test {self.test.in_chans}")

    @property
    def classes(self) -> list[str]:
        return self.train.classes

    @property
    def num_classes(self) -> int:
        return self.train.num_classes

    @property
    def in_chans(self) -> int:
        return self.train.in_chans


def require_matching_data(model, dataset: ImageDataset) -> None:
    """The model's classes and input channels are the dataset's, or an EffscaleError naming both."""
    if model.num_classes != dataset.num_classes:
        raise EffscaleError(f"the model predicts {model.num_classes} classes but {dataset.name} has "
                            f"{dataset.num_classes}; use data with the model's classes")
    if model.in_chans != dataset.in_chans:
        raise EffscaleError(f"the model takes {model.in_chans} input channels but {dataset.name} has "
                            f"{dataset.in_chans}")
