"""Data: the bundled subset, IDX and image-folder loading, deterministic sharded batches, transforms."""
from __future__ import annotations

import gzip
import hashlib
import warnings
from importlib import resources
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from effscale.data import (FASHION_MNIST_CLASSES, BatchTransform, DataWarning, ImageDataset, batches_per_epoch,
                           bundled_provenance, iterate_batches, load_data)
from effscale.errors import EffscaleError

# -- bundled ---------------------------------------------------------------------------------------


def test_bundled_fashion_mnist_is_balanced_uint8():
    # How fast it loads is a benchmark figure, not a test: a clock here fails on a busy machine.
    splits = load_data("fashion-mnist")
    assert splits.source == "fashion-mnist"
    for dataset, count in ((splits.train, 12000), (splits.test, 2000)):
        assert dataset.images.shape == (count, 1, 28, 28) and dataset.images.dtype == torch.uint8
        assert dataset.labels.shape == (count,) and dataset.labels.dtype == torch.int64
        assert dataset.class_counts() == [count // 10] * 10
        assert dataset.classes == list(FASHION_MNIST_CLASSES) and dataset.classes[0] == "T-shirt/top"
        assert dataset.in_chans == 1 and dataset.num_classes == 10 and len(dataset) == count
    assert splits.train.images.float().mean() > 50  # real images, not zeros


def test_bundled_provenance_matches_the_asset():
    record = bundled_provenance()
    asset = resources.files("effscale.data").joinpath("assets", "fashion_mnist_subset.npz").read_bytes()
    assert record["file"]["sha256"] == hashlib.sha256(asset).hexdigest()
    assert len(asset) <= 8 * 1024 * 1024
    assert record["counts"]["train"]["total"] == 12000 and record["counts"]["test"]["total"] == 2000
    assert len(record["source"]["sha256"]) == 4 and record["license"] == "MIT"
    assert "Zalando" in record["attribution"]


# -- IDX --------------------------------------------------------------------------------------------


def write_idx(path: Path, array: np.ndarray, gz: bool) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + np.asarray(array.shape, dtype=">u4").tobytes()
    content = header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()
    if gz:
        path.with_name(path.name + ".gz").write_bytes(gzip.compress(content))
    else:
        path.write_bytes(content)


def make_idx_dir(directory: Path, gz: bool, train: int = 30, test: int = 12, classes: int = 3) -> dict:
    rng = np.random.default_rng(1)
    arrays = {"train": (rng.integers(0, 256, (train, 6, 5)), np.arange(train) % classes),
              "t10k": (rng.integers(0, 256, (test, 6, 5)), np.arange(test) % classes)}
    directory.mkdir(parents=True, exist_ok=True)
    for split, (images, labels) in arrays.items():
        write_idx(directory / f"{split}-images-idx3-ubyte", images, gz)
        write_idx(directory / f"{split}-labels-idx1-ubyte", labels, gz)
    return arrays


@pytest.mark.parametrize("gz", [False, True])
def test_idx_directory_loads_gzipped_or_not(tmp_path, gz):
    arrays = make_idx_dir(tmp_path / "digits", gz)
    splits = load_data(f"idx:{tmp_path / 'digits'}")
    assert splits.train.images.shape == (30, 1, 6, 5) and splits.test.images.shape == (12, 1, 6, 5)
    assert torch.equal(splits.train.images[:, 0], torch.from_numpy(arrays["train"][0].astype(np.uint8)))
    assert splits.test.labels.tolist() == (np.arange(12) % 3).tolist()
    assert splits.train.classes == ["0", "1", "2"]
    resized = load_data(f"idx:{tmp_path / 'digits'}", image_size=8)
    assert resized.train.images.shape == (30, 1, 8, 8) and resized.train.images.dtype == torch.uint8


def test_idx_class_names_from_classes_txt(tmp_path):
    make_idx_dir(tmp_path, gz=True)
    (tmp_path / "classes.txt").write_text("cat\ndog\nbird\n")
    assert load_data(f"idx:{tmp_path}").train.classes == ["cat", "dog", "bird"]


def test_idx_errors_name_the_file(tmp_path):
    make_idx_dir(tmp_path, gz=False)
    (tmp_path / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(EffscaleError, match="t10k-labels-idx1-ubyte"):
        load_data(f"idx:{tmp_path}")
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(b"garbage!")
    with pytest.raises(EffscaleError, match="not an IDX file"):
        load_data(f"idx:{tmp_path}")
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.zeros(5), gz=False)
    with pytest.raises(EffscaleError, match="12 images but .* 5 labels"):
        load_data(f"idx:{tmp_path}")


# -- image folders ----------------------------------------------------------------------------------

COLOURS = {"apple": (220, 30, 30), "leaf": (30, 220, 30), "sky": (30, 30, 220)}


def save_image(path: Path, colour, size=(40, 30), mode="RGB") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.new("RGB", size, colour)
    image.convert(mode).save(path)


def make_folder_tree(root: Path, per_class: int = 10, mode="RGB") -> None:
    for name, colour in COLOURS.items():
        for index in range(per_class):
            size = (40 + index, 30) if index % 2 else (30, 44)
            save_image(root / name / f"{index:02d}.{'jpg' if index % 3 == 0 else 'png'}", colour, size, mode)


def test_folder_split_fraction_is_deterministic_per_class(tmp_path):
    make_folder_tree(tmp_path)
    (tmp_path / "leaf" / "notes.txt").write_text("not an image")  # ignored: not an image extension
    splits = load_data(f"folder:{tmp_path}", split_fraction=0.2, seed=3, image_size=16)
    assert splits.classes == ["apple", "leaf", "sky"] and splits.in_chans == 3
    assert splits.train.images.shape == (24, 3, 16, 16) and splits.test.images.shape == (6, 3, 16, 16)
    assert splits.train.class_counts() == [8, 8, 8] and splits.test.class_counts() == [2, 2, 2]
    for dataset in (splits.train, splits.test):  # each image carries its class's colour
        dominant = dataset.images.float().mean((2, 3)).argmax(1)
        assert torch.equal(dominant, dataset.labels)
    again = load_data(f"folder:{tmp_path}", split_fraction=0.2, seed=3, image_size=16)
    assert torch.equal(again.test.images, splits.test.images)
    assert load_data(f"folder:{tmp_path}").train.images.shape[-2:] == (64, 64)  # the default stored size


def test_folder_split_depends_on_seed(tmp_path):
    for index in range(20):
        save_image(tmp_path / "a" / f"{index:02d}.png", (index * 10, 0, 0), (8, 8))
        save_image(tmp_path / "b" / f"{index:02d}.png", (0, index * 10, 0), (8, 8))
    held = {seed: sorted(load_data(f"folder:{tmp_path}", seed=seed, split_fraction=0.25, image_size=8)
                         .test.images[:, :2, 0, 0].sum(1).tolist()) for seed in (0, 1)}
    assert held[0] != held[1] and len(held[0]) == 10


def test_folder_train_val_layout_and_class_mismatch(tmp_path):
    make_folder_tree(tmp_path / "train", per_class=4)
    make_folder_tree(tmp_path / "val", per_class=2)
    splits = load_data(f"folder:{tmp_path}", image_size=12)
    assert len(splits.train) == 12 and len(splits.test) == 6 and splits.test.class_counts() == [2, 2, 2]
    save_image(tmp_path / "val" / "stone" / "0.png", (90, 90, 90))
    with pytest.raises(EffscaleError, match="same class folders.*stone"):
        load_data(f"folder:{tmp_path}")


def test_folder_skips_corrupt_images_with_one_warning(tmp_path):
    make_folder_tree(tmp_path, per_class=5)
    (tmp_path / "apple" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")
    good = (tmp_path / "sky" / "01.png").read_bytes()
    (tmp_path / "sky" / "truncated.png").write_bytes(good[: len(good) // 2])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        splits = load_data(f"folder:{tmp_path}", split_fraction=0.2, image_size=8)
    ours = [w for w in caught if issubclass(w.category, DataWarning)]
    assert len(ours) == 1 and len(caught) == 1
    message = str(ours[0].message)
    assert "skipped 2 unreadable image(s) of 17" in message and "broken.jpg" in message and "truncated.png" in message
    assert len(splits.train) + len(splits.test) == 15
    for dataset in (splits.train, splits.test):
        assert torch.equal(dataset.images.float().mean((2, 3)).argmax(1), dataset.labels)


def test_folder_empty_class_or_unreadable_class_is_an_error_naming_it(tmp_path):
    make_folder_tree(tmp_path, per_class=3)
    (tmp_path / "zebra").mkdir()
    with pytest.raises(EffscaleError, match=r"zebra.*has no images"):
        load_data(f"folder:{tmp_path}")
    (tmp_path / "zebra" / "0.png").write_bytes(b"not a png")
    (tmp_path / "zebra" / "1.png").write_bytes(b"not a png either")
    with pytest.warns(DataWarning), pytest.raises(EffscaleError, match=r"zebra.*no readable images"):
        load_data(f"folder:{tmp_path}")


def test_folder_grayscale_is_one_channel_unless_mixed(tmp_path):
    make_folder_tree(tmp_path / "gray", per_class=3, mode="L")
    splits = load_data(f"folder:{tmp_path / 'gray'}", split_fraction=0.3, image_size=8)
    assert splits.in_chans == 1 and splits.train.images.shape[1:] == (1, 8, 8)
    save_image(tmp_path / "gray" / "apple" / "colour.png", (200, 10, 10))
    mixed = load_data(f"folder:{tmp_path / 'gray'}", split_fraction=0.3, image_size=8)
    assert mixed.in_chans == 3
    gray_rows = mixed.train.images[(mixed.train.labels == 2)]  # "sky": all grayscale, copied to 3 channels
    assert torch.equal(gray_rows[:, 0], gray_rows[:, 1]) and torch.equal(gray_rows[:, 0], gray_rows[:, 2])


# -- bad specs --------------------------------------------------------------------------------------


def test_bad_specs_name_the_value_and_the_forms(tmp_path):
    with pytest.raises(EffscaleError, match=r"'cifar10'.*fashion-mnist.*idx:DIR.*folder:DIR"):
        load_data("cifar10")
    with pytest.raises(EffscaleError, match="names no directory"):
        load_data("idx:")
    missing = tmp_path / "nowhere"
    with pytest.raises(EffscaleError, match=str(missing)):
        load_data(f"folder:{missing}")
    with pytest.raises(EffscaleError, match="did you mean folder:"):
        load_data(str(tmp_path))
    with pytest.raises(EffscaleError, match="split_fraction"):
        make_folder_tree(tmp_path / "t", per_class=2)
        load_data(f"folder:{tmp_path / 't'}", split_fraction=1.5)


# -- batches ----------------------------------------------------------------------------------------


def index_dataset(count: int) -> ImageDataset:
    """Label i on sample i, so batches reveal which samples they hold."""
    return ImageDataset(torch.zeros((count, 1, 2, 2), dtype=torch.uint8), torch.arange(count),
                        [str(i) for i in range(count)], "indices")


def labels_of(batches) -> list[int]:
    return [label for _, labels in batches for label in labels.tolist()]


def test_iterate_batches_is_deterministic_and_leaves_the_global_rng_alone():
    dataset = index_dataset(50)
    state = torch.get_rng_state()
    first = labels_of(iterate_batches(dataset, 8, seed=1, epoch=2, shuffle=True, drop_last=False))
    torch.manual_seed(1234)
    second = labels_of(iterate_batches(dataset, 8, seed=1, epoch=2, shuffle=True, drop_last=False))
    assert first == second and sorted(first) == list(range(50)) and first != list(range(50))
    torch.set_rng_state(state)
    next(iterate_batches(dataset, 8, seed=1, epoch=2, shuffle=True, drop_last=False))
    assert torch.equal(torch.get_rng_state(), state)
    assert labels_of(iterate_batches(dataset, 8, seed=1, epoch=3, shuffle=True, drop_last=False)) != first
    assert labels_of(iterate_batches(dataset, 8, seed=2, epoch=2, shuffle=True, drop_last=False)) != first
    assert labels_of(iterate_batches(dataset, 8, seed=1, epoch=2, shuffle=False, drop_last=False)) == list(range(50))
    images, labels = next(iterate_batches(dataset, 8, seed=0, epoch=0, shuffle=True, drop_last=True))
    assert images.dtype == torch.uint8 and images.shape == (8, 1, 2, 2) and labels.dtype == torch.int64


@pytest.mark.parametrize("drop_last", [False, True])
def test_start_batch_resumes_with_the_tail_of_the_epoch(drop_last):
    dataset = index_dataset(45)
    full = [labels.tolist() for _, labels in iterate_batches(dataset, 4, seed=7, epoch=1, shuffle=True,
                                                              drop_last=drop_last, rank=1, world_size=2)]
    assert len(full) == batches_per_epoch(dataset, 4, drop_last=drop_last, world_size=2)
    for start in (0, 3, len(full)):
        tail = [labels.tolist() for _, labels in iterate_batches(dataset, 4, seed=7, epoch=1, shuffle=True,
                                                                  drop_last=drop_last, rank=1, world_size=2,
                                                                  start_batch=start)]
        assert tail == full[start:]
    with pytest.raises(EffscaleError, match="start_batch"):
        iterate_batches(dataset, 4, seed=7, epoch=1, shuffle=True, drop_last=drop_last, start_batch=len(full) * 2 + 9)


@pytest.mark.parametrize("count, world_size, batch_size", [(100, 3, 8), (96, 4, 8), (10, 4, 3), (7, 2, 16)])
def test_ddp_shards_are_disjoint_equal_and_cover_the_epoch(count, world_size, batch_size):
    dataset = index_dataset(count)
    for drop_last in (False, True):
        shards = [[labels.tolist() for _, labels in iterate_batches(
            dataset, batch_size, seed=0, epoch=5, shuffle=True, drop_last=drop_last, rank=rank,
            world_size=world_size)] for rank in range(world_size)]
        expected = batches_per_epoch(dataset, batch_size, drop_last=drop_last, world_size=world_size)
        assert all(len(shard) == expected for shard in shards)
        assert len({tuple(len(b) for b in shard) for shard in shards}) == 1  # same batch sizes on every rank
        seen = [label for shard in shards for batch in shard for label in batch]
        if drop_last:
            assert len(seen) == len(set(seen))  # disjoint
            assert all(len(b) == batch_size for shard in shards for b in shard)
        else:
            assert set(seen) == set(range(count))  # covering; padding repeats fewer than world_size samples
            assert len(seen) - count == -count % world_size


def test_batch_argument_errors():
    dataset = index_dataset(10)
    with pytest.raises(EffscaleError, match="rank=2"):
        iterate_batches(dataset, 4, seed=0, epoch=0, shuffle=True, drop_last=False, rank=2, world_size=2)
    with pytest.raises(EffscaleError, match="batch_size=0"):
        iterate_batches(dataset, 0, seed=0, epoch=0, shuffle=True, drop_last=False)
    assert batches_per_epoch(10, 4, drop_last=False) == 3 and batches_per_epoch(dataset, 4, drop_last=True) == 2


# -- transforms -------------------------------------------------------------------------------------


def test_eval_transform_resizes_and_normalises():
    images = torch.full((4, 3, 28, 28), 204, dtype=torch.uint8)  # 0.8 after scaling
    out = BatchTransform(32, (0.5, 0.6, 0.7), (0.25, 0.5, 0.1), train=False)(images)
    assert out.shape == (4, 3, 32, 32) and out.dtype == torch.float32 and out.is_contiguous()
    expected = torch.tensor([(0.8 - 0.5) / 0.25, (0.8 - 0.6) / 0.5, (0.8 - 0.7) / 0.1]).view(1, 3, 1, 1)
    assert torch.allclose(out, expected.expand_as(out), atol=1e-5)
    same = BatchTransform(28, (0.5,), (0.5,), train=False, in_chans=3)(images)
    assert same.shape == (4, 3, 28, 28) and torch.allclose(same, torch.full_like(same, 0.6), atol=1e-6)


def test_grayscale_transform_reduces_rgb_statistics():
    images = torch.full((2, 1, 28, 28), 204, dtype=torch.uint8)
    out = BatchTransform(32, (0.4, 0.5, 0.6), (0.2, 0.3, 0.4), train=False, in_chans=1)(images)
    assert out.shape == (2, 1, 32, 32)
    assert torch.allclose(out, torch.full_like(out, (0.8 - 0.5) / 0.3), atol=1e-5)


@pytest.mark.parametrize("augment", ["none", "crop", "basic", "randaugment"])
@pytest.mark.parametrize("in_chans", [1, 3])
def test_train_transform_shapes(augment, in_chans):
    torch.manual_seed(0)
    images = torch.randint(0, 256, (70, in_chans, 28, 28), dtype=torch.uint8)
    transform = BatchTransform(32, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), train=True, augment=augment,
                               in_chans=in_chans)
    out = transform(images)
    assert out.shape == (70, in_chans, 32, 32) and out.dtype == torch.float32 and out.is_contiguous()
    assert torch.isfinite(out).all()
    if augment != "none":
        torch.manual_seed(1)
        assert not torch.equal(transform(images), out)  # random per call, from the global RNG


def test_transform_errors():
    with pytest.raises(EffscaleError, match="augment='fancy'"):
        BatchTransform(32, (0.5,), (0.5,), train=True, augment="fancy")
    with pytest.raises(EffscaleError, match="in_chans=4"):
        BatchTransform(32, (0.5,), (0.5,), train=True, in_chans=4)
    with pytest.raises(EffscaleError, match="std="):
        BatchTransform(32, (0.5,), (0.5, 0.5), train=False)
    transform = BatchTransform(32, (0.5,), (0.5,), train=False, in_chans=1)
    with pytest.raises(EffscaleError, match="uint8 N x 1"):
        transform(torch.zeros(2, 3, 8, 8, dtype=torch.uint8))
    with pytest.raises(EffscaleError, match="uint8"):
        transform(torch.zeros(2, 1, 8, 8))


def test_real_fashion_mnist_idx_is_recognised():
    directory = Path("/usr/share/datasets/fashion-mnist")
    if not (directory / "train-labels-idx1-ubyte.gz").exists():
        pytest.skip("the Debian package dataset-fashion-mnist is not installed")
    splits = load_data(f"idx:{directory}")
    assert len(splits.train) == 60000 and len(splits.test) == 10000
    assert splits.classes == list(FASHION_MNIST_CLASSES)
