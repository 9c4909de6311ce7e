"""Deterministic batches from an in-memory dataset, sharded for data-parallel ranks.

The order of an epoch is a permutation drawn from a private torch.Generator seeded by
(seed, epoch) alone: no global RNG, no worker processes, so a run resumed at (epoch, batch)
sees exactly the batches an uninterrupted run would have seen.

Data parallel (world_size > 1): rank r takes positions r, r + W, r + 2W, ... of the epoch's
permutation, so the shards are disjoint. So that every rank runs the same number of steps:
with drop_last the permutation is cut to a multiple of W (and each rank's shard to whole
batches); without it the permutation is padded by repeating its first elements (as
torch's DistributedSampler does), so at most W - 1 samples appear twice in the epoch.
"""
from __future__ import annotations

import math
from typing import Iterator

import numpy as np
import torch

from ..errors import EffscaleError
from .containers import ImageDataset


def _check_int(name: str, value, minimum: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise EffscaleError(f"{name}={value!r} must be an integer >= {minimum}")


def _per_rank(count: int, world_size: int, drop_last: bool) -> int:
    return count // world_size if drop_last else math.ceil(count / world_size)


def batches_per_epoch(dataset, batch_size: int, *, drop_last: bool, world_size: int = 1) -> int:
    """Batches each rank gets per epoch; `dataset` is an ImageDataset or its length."""
    _check_int("batch_size", batch_size, 1)
    _check_int("world_size", world_size, 1)
    count = dataset if isinstance(dataset, int) else len(dataset)
    per_rank = _per_rank(count, world_size, drop_last)
    return per_rank // batch_size if drop_last else math.ceil(per_rank / batch_size)


def epoch_seed(seed: int, epoch: int) -> int:
    """A 63-bit generator seed mixing (seed, epoch) so nearby pairs give unrelated permutations."""
    words = [seed & 0xFFFFFFFF, (seed >> 32) & 0xFFFFFFFF, epoch & 0xFFFFFFFF, (epoch >> 32) & 0xFFFFFFFF]
    state = np.random.SeedSequence(words).generate_state(2, dtype=np.uint32)
    return (int(state[0]) << 31) ^ int(state[1])


def epoch_indices(count: int, *, seed: int, epoch: int, shuffle: bool, drop_last: bool, rank: int = 0,
                  world_size: int = 1) -> torch.Tensor:
    """The sample indices this rank visits in this epoch, in order (int64)."""
    if shuffle:
        generator = torch.Generator().manual_seed(epoch_seed(seed, epoch))
        order = torch.randperm(count, generator=generator)
    else:
        order = torch.arange(count)
    per_rank = _per_rank(count, world_size, drop_last)
    total = per_rank * world_size
    if total > count:  # pad by wrapping around (possibly more than once for tiny datasets)
        order = order.repeat(math.ceil(total / count))[:total]
    return order[rank:total:world_size]


def iterate_batches(dataset: ImageDataset, batch_size: int, *, seed: int, epoch: int, shuffle: bool,
                    drop_last: bool, rank: int = 0, world_size: int = 1,
                    start_batch: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(uint8 images B x C x H x W, int64 labels B) for one epoch of one rank.

    `start_batch` skips that many batches of this epoch without changing the order (exact resume).
    Without drop_last the last batch may be smaller; with it, a rank whose shard is smaller than
    one batch gets no batches (see `batches_per_epoch`).
    """
    # any in-memory dataset with row-aligned `images` and `labels` (ImageDataset, dense.DenseDataset)
    if not (isinstance(getattr(dataset, "images", None), torch.Tensor)
            and isinstance(getattr(dataset, "labels", None), torch.Tensor)):
        raise EffscaleError(f"expected an ImageDataset, got {type(dataset).__name__}")
    _check_int("seed", seed, -(2 ** 63))
    _check_int("epoch", epoch, 0)
    _check_int("world_size", world_size, 1)
    _check_int("rank", rank, 0)
    if rank >= world_size:
        raise EffscaleError(f"rank={rank} must be in [0, {world_size - 1}] for world_size={world_size}")
    total_batches = batches_per_epoch(dataset, batch_size, drop_last=drop_last, world_size=world_size)
    _check_int("start_batch", start_batch, 0)
    if start_batch > total_batches:
        raise EffscaleError(f"start_batch={start_batch} is past the end of the epoch "
                            f"({total_batches} batches of {batch_size})")
    indices = epoch_indices(len(dataset), seed=seed, epoch=epoch, shuffle=shuffle, drop_last=drop_last,
                            rank=rank, world_size=world_size)
    return _batches(dataset, indices, batch_size, start_batch, total_batches)


def _batches(dataset: ImageDataset, indices: torch.Tensor, batch_size: int, start_batch: int,
             total_batches: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    for batch in range(start_batch, total_batches):
        chosen = indices[batch * batch_size:(batch + 1) * batch_size]
        batch = (dataset.images.index_select(0, chosen), dataset.labels.index_select(0, chosen))
        extra = getattr(dataset, "extra_labels", None)  # e.g. a multi-task dataset's image classes
        yield batch if extra is None else batch + (extra.index_select(0, chosen),)
