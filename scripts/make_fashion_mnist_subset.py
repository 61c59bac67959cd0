"""Rebuild scaleprompt/data/assets/fashion_mnist_subset.npz from Debian's dataset-fashion-mnist package.

    apt-get install dataset-fashion-mnist && python scripts/make_fashion_mnist_subset.py

Takes, per class and in file order, the first 64 + 16 training images (train + val) and the first 100 test
images. Deterministic: the same package gives the same file.
"""

from __future__ import annotations

import argparse
import gzip
import io
from pathlib import Path

import numpy as np

DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
OUT = Path(__file__).resolve().parents[1] / "scaleprompt" / "data" / "assets" / "fashion_mnist_subset.npz"
PER_CLASS = {"train": 64, "val": 16, "test": 100}


def read_idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as fh:
        data = fh.read()
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def first_per_class(labels: np.ndarray, counts: list[int]) -> list[np.ndarray]:
    """Indices of the first sum(counts) images of every class, cut into consecutive groups of `counts`."""
    groups: list[list[int]] = [[] for _ in counts]
    for c in range(10):
        idx = np.flatnonzero(labels == c)
        start = 0
        for g, n in enumerate(counts):
            groups[g] += idx[start : start + n].tolist()
            start += n
    return [np.array(sorted(g)) for g in groups]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--source", type=Path, default=DEBIAN_DIR)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    train_x = read_idx(args.source / "train-images-idx3-ubyte.gz")
    train_y = read_idx(args.source / "train-labels-idx1-ubyte.gz")
    test_x = read_idx(args.source / "t10k-images-idx3-ubyte.gz")
    test_y = read_idx(args.source / "t10k-labels-idx1-ubyte.gz")
    tr, va = first_per_class(train_y, [PER_CLASS["train"], PER_CLASS["val"]])
    (te,) = first_per_class(test_y, [PER_CLASS["test"]])
    images = np.concatenate([train_x[tr], train_x[va], test_x[te]])
    labels = np.concatenate([train_y[tr], train_y[va], test_y[te]])
    split = np.concatenate([np.zeros(len(tr)), np.ones(len(va)), np.full(len(te), 2)]).astype(np.uint8)
    buf = io.BytesIO()
    np.savez_compressed(buf, images=images, labels=labels, split=split)
    args.out.write_bytes(buf.getvalue())
    print(f"wrote {args.out}: {len(images)} images, {args.out.stat().st_size / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
