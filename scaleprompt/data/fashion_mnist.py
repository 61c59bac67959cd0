"""The embedded default dataset: a 1,800-image subset of Fashion-MNIST shipped inside the package (0.8 MB,
MIT licence, see ``assets/FASHION_MNIST_LICENSE.txt``).

``load_fashion_mnist(root)`` writes it once as a CoOp-layout dataset (``images/<class>/<id>.png`` plus
``split_zhou_FashionMNIST.json``) under ``root`` (default ``~/.cache/scaleprompt/FashionMNIST``) and reads it
back like any other benchmark, so shards, few-shot and base-to-novel work unchanged.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from scaleprompt.data.layout import (
    CACHE_ROOT,
    DatasetSplits,
    classnames_of,
    read_split_json,
    write_generated,
)

ASSET = Path(__file__).parent / "assets" / "fashion_mnist_subset.npz"
# Zalando's label order, with names a text encoder can read ("T-shirt/top" -> "t-shirt").
CLASSNAMES = [
    "t-shirt",
    "trouser",
    "pullover",
    "dress",
    "coat",
    "sandal",
    "shirt",
    "sneaker",
    "bag",
    "ankle boot",
]
SPLITS = ("train", "val", "test")
SPLIT_FILE = "split_zhou_FashionMNIST.json"
DEFAULT_ROOT = CACHE_ROOT / "FashionMNIST"


def materialize(root: Path) -> Path:
    """Write the PNG tree + split file under ``root`` (atomically; reused when already complete)."""

    def samples():
        with np.load(ASSET, allow_pickle=False) as data:
            images, labels, split = data["images"], data["labels"], data["split"]
        for img, label, s in zip(images, labels, split, strict=True):
            yield SPLITS[s], img, int(label), CLASSNAMES[int(label)]

    return write_generated(Path(root), SPLIT_FILE, samples())


def load_fashion_mnist(root: Path | None = None) -> DatasetSplits:
    """The embedded dataset, written under ``root`` (default: the user cache) on first use."""
    root = materialize(Path(root) if root else DEFAULT_ROOT)
    train, val, test = read_split_json(root / SPLIT_FILE, root / "images")
    return DatasetSplits("FashionMNIST", root / "images", train, val, test, classnames_of(train, val, test))
