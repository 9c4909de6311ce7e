"""Build the Fashion-MNIST subset bundled with effscale (`--data fashion-mnist`).

Reads the four IDX files of the Debian package `dataset-fashion-mnist`
(`apt-get install dataset-fashion-mnist`; they land in /usr/share/datasets/fashion-mnist) and
writes a class-balanced subset into the package:

    src/effscale/data/assets/fashion_mnist_subset.npz   train/test images (N x 28 x 28 uint8),
                                                        labels (uint8) and source indices
    src/effscale/data/assets/fashion_mnist_subset.json  provenance: SHA-256 of the source files,
                                                        selection seed, counts, licence

Selection: for each class, `--train-per-class` images of the official training split and
`--test-per-class` of the official test split, drawn without replacement by
numpy.random.default_rng(seed) (classes visited in label order) and kept in their original
order. The archive is written with fixed zip timestamps, so the same inputs and arguments
give byte-identical outputs.

    python scripts/build_fashion_mnist_subset.py [--source DIR] [--seed 0]
"""
from __future__ import annotations

import argparse
import hashlib
import io
import json
import sys
import zipfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from effscale.data.datasets import FASHION_MNIST_CLASSES  # noqa: E402
from effscale.data.idx import SPLIT_FILES, find_idx_file, parse_idx, read_bytes, sha256  # noqa: E402

DEFAULT_SOURCE = Path("/usr/share/datasets/fashion-mnist")
DEFAULT_OUT = REPO / "src" / "effscale" / "data" / "assets"
MAX_BYTES = 8 * 1024 * 1024
ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)


def select(labels: np.ndarray, per_class: int, rng: np.random.Generator) -> np.ndarray:
    """Sorted indices of `per_class` examples of every class."""
    chosen = []
    for label in range(len(FASHION_MNIST_CLASSES)):
        pool = np.flatnonzero(labels == label)
        if len(pool) < per_class:
            raise SystemExit(f"class {label} has only {len(pool)} examples, {per_class} requested")
        chosen.append(rng.choice(pool, size=per_class, replace=False))
    return np.sort(np.concatenate(chosen))


def write_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """What np.savez_compressed writes, but with fixed timestamps so rebuilds are byte-identical."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as archive:
        for name, array in arrays.items():
            buffer = io.BytesIO()
            np.lib.format.write_array(buffer, np.ascontiguousarray(array), allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=ZIP_EPOCH)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            archive.writestr(info, buffer.getvalue(), compresslevel=9)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", type=Path, default=DEFAULT_SOURCE, help="directory of the four IDX files")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="directory for the .npz and .json")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--train-per-class", type=int, default=1200)
    parser.add_argument("--test-per-class", type=int, default=200)
    args = parser.parse_args(argv)

    rng = np.random.default_rng(args.seed)
    arrays, sources, counts = {}, {}, {}
    for split, per_class in (("train", args.train_per_class), ("test", args.test_per_class)):
        image_path, label_path = (find_idx_file(args.source, stem) for stem in SPLIT_FILES[split])
        image_raw, label_raw = image_path.read_bytes(), label_path.read_bytes()
        sources[image_path.name] = sha256(image_raw)
        sources[label_path.name] = sha256(label_raw)
        images = parse_idx(read_bytes(image_path), image_path, ndim=3)
        labels = parse_idx(read_bytes(label_path), label_path, ndim=1)
        index = select(labels, per_class, rng)
        arrays[f"{split}_images"] = images[index]
        arrays[f"{split}_labels"] = labels[index]
        arrays[f"{split}_source_index"] = index.astype(np.int32)
        counts[split] = {"total": int(len(index)), "per_class": per_class, "source_total": int(len(labels))}

    args.out.mkdir(parents=True, exist_ok=True)
    npz_path = args.out / "fashion_mnist_subset.npz"
    write_npz(npz_path, arrays)
    size = npz_path.stat().st_size
    if size > MAX_BYTES:
        raise SystemExit(f"{npz_path} is {size} bytes, over the {MAX_BYTES}-byte budget")

    provenance = {
        "dataset": "Fashion-MNIST (class-balanced subset)",
        "source": {"package": "dataset-fashion-mnist (Debian)", "directory": str(args.source),
                   "sha256": dict(sorted(sources.items()))},
        "selection": {"seed": args.seed, "generator": "numpy.random.default_rng(seed).choice per class, "
                      "classes in label order, train split first; indices kept sorted"},
        "counts": counts,
        "image_shape": [28, 28],
        "classes": list(FASHION_MNIST_CLASSES),
        "arrays": {name: {"shape": list(array.shape), "dtype": str(array.dtype)} for name, array in arrays.items()},
        "file": {"name": npz_path.name, "bytes": size, "sha256": hashlib.sha256(npz_path.read_bytes()).hexdigest()},
        "license": "MIT",
        "attribution": "Fashion-MNIST by Zalando Research (Han Xiao, Kashif Rasul, Roland Vollgraf), "
                       "https://github.com/zalandoresearch/fashion-mnist, MIT licence, "
                       "Copyright (c) 2017 Zalando SE. Paper: arXiv:1708.07747.",
    }
    (args.out / "fashion_mnist_subset.json").write_text(json.dumps(provenance, indent=2) + "\n")
    print(f"wrote {npz_path} ({size / 1e6:.2f} MB): "
          f"{counts['train']['total']} train + {counts['test']['total']} test images")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
