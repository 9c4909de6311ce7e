"""Datasets held in memory as uint8 tensors, deterministic sharded batches, batch transforms.

    splits = load_data("fashion-mnist")            # or "idx:DIR", "folder:DIR"
    transform = BatchTransform(32, spec.mean, spec.std, train=True, in_chans=splits.in_chans)
    for images, labels in iterate_batches(splits.train, 256, seed=0, epoch=0, shuffle=True, drop_last=True):
        inputs = transform(images)                 # float32 N x C x 32 x 32, normalised
"""
from .containers import DataSplits, ImageDataset
from .datasets import FASHION_MNIST_CLASSES, bundled_provenance, load_data
from .folder import DEFAULT_IMAGE_SIZE, DataWarning
from .loader import batches_per_epoch, iterate_batches
from .transforms import BatchTransform, calibration_images

__all__ = [
    "BatchTransform", "DEFAULT_IMAGE_SIZE", "DataSplits", "DataWarning", "FASHION_MNIST_CLASSES", "ImageDataset",
    "batches_per_epoch", "bundled_provenance", "calibration_images", "iterate_batches", "load_data",
]
