"""The embedded default dataset: a 1,800-image subset of Fashion-MNIST shipped inside the package (0.8 MB,
MIT licence, see ``assets/FASHION_MNIST_LICENSE.txt``).

``load_fashion_mnist(root)`` writes it once as a CoOp-layout dataset (``images/<class>/<id>.png`` plus
``split_zhou_FashionMNIST.json``) under ``root`` (default ``~/.cache/scaleprompt/FashionMNIST``) and reads it
back like any other benchmark, so shards, few-shot and base-to-novel work unchanged.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from scaleprompt.data.datasets import DatasetSplits, classnames_of, read_split_json

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
DEFAULT_ROOT = (
    Path(os.environ.get("SCALEPROMPT_CACHE", Path.home() / ".cache" / "scaleprompt")) / "FashionMNIST"
)


def materialize(root: Path) -> Path:
    """Write the PNG tree + split file under ``root`` (atomically; reused when already complete)."""
    root = Path(root)
    if (root / SPLIT_FILE).is_file():
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.", dir=root.parent))
    try:
        with np.load(ASSET, allow_pickle=False) as data:
            images, labels, split = data["images"], data["labels"], data["split"]
        rows: dict[str, list] = {s: [] for s in SPLITS}
        for i, (img, label, s) in enumerate(zip(images, labels, split, strict=True)):
            name = CLASSNAMES[int(label)]
            rel = f"{name.replace(' ', '_')}/{SPLITS[s]}_{i:05d}.png"
            (tmp / "images" / rel).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(img).save(tmp / "images" / rel)
            rows[SPLITS[s]].append([rel, int(label), name])
        (tmp / SPLIT_FILE).write_text(json.dumps(rows))
        try:
            os.replace(tmp, root)
        except OSError:  # another process finished first (or root exists but is incomplete)
            if not (root / SPLIT_FILE).is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return root


def load_fashion_mnist(root: Path | None = None) -> DatasetSplits:
    """The embedded dataset, written under ``root`` (default: the user cache) on first use."""
    root = materialize(Path(root) if root else DEFAULT_ROOT)
    train, val, test = read_split_json(root / SPLIT_FILE, root / "images")
    return DatasetSplits("FashionMNIST", root / "images", train, val, test, classnames_of(train, val, test))
