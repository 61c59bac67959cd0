"""What a dataset is on disk and in memory, shared by every reader: :class:`Datum`, :class:`DatasetSplits`, CoOp's
split files and generated datasets written in CoOp's layout.

The bottom of the data layer (no scaleprompt import but the errors): the dataset registry
(:mod:`scaleprompt.data.datasets`), the embedded dataset (:mod:`scaleprompt.data.fashion_mnist`) and the micro-world's
datasets (:mod:`scaleprompt.data.microworld`) build on it.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from scaleprompt.errors import ScalepromptError


def cache_root() -> Path:
    """scaleprompt's user cache as the environment names it now: ``$SCALEPROMPT_CACHE``, else
    ``~/.cache/scaleprompt``."""
    return Path(os.environ.get("SCALEPROMPT_CACHE", Path.home() / ".cache" / "scaleprompt"))


# where generated / shipped datasets are written when no root is given (read at import)
CACHE_ROOT = cache_root()


class DatasetError(ScalepromptError, FileNotFoundError):
    """A dataset folder, split file or image is missing or malformed (the message names it)."""


@dataclass(frozen=True)
class Datum:
    path: str  # absolute path of the image
    label: int
    classname: str


@dataclass
class DatasetSplits:
    name: str
    image_root: Path  # paths in shard metadata are stored relative to this
    train: list[Datum] = field(default_factory=list)
    val: list[Datum] = field(default_factory=list)
    test: list[Datum] = field(default_factory=list)
    classnames: list[str] = field(default_factory=list)  # index = label
    # no official val split: the protocol draws val shots from unused train images
    val_from_train: bool = False

    def split(self, name: str) -> list[Datum]:
        """The items of the split ``name`` (train, val or test)."""
        if name not in ("train", "val", "test"):
            raise ValueError(f"unknown split {name!r}: train, val or test")
        return getattr(self, name)

    def counts(self) -> dict[str, int]:
        """Items per split."""
        return {s: len(self.split(s)) for s in ("train", "val", "test")}


def classnames_of(*splits: list[Datum]) -> list[str]:
    """Label -> class name over the ``splits`` (Dassl's ``get_lab2cname``); labels must be 0..C-1 and consistent."""
    mapping: dict[int, str] = {}
    for items in splits:
        for d in items:
            if mapping.setdefault(d.label, d.classname) != d.classname:
                raise DatasetError(
                    f"label {d.label} has two class names: {mapping[d.label]!r} and {d.classname!r}"
                )
    if not mapping:
        return []
    if min(mapping) < 0:
        raise DatasetError(f"negative label {min(mapping)} (labels must be 0..C-1)")
    missing = sorted(set(range(max(mapping) + 1)) - set(mapping))
    if missing:
        raise DatasetError(f"labels {missing[:10]} have no image in any split")
    return [mapping[i] for i in range(len(mapping))]


def require_dir(path: Path, what: str) -> Path:
    """``path`` if it is a folder, else a :class:`DatasetError` naming it as ``what``."""
    if not path.is_dir():
        raise DatasetError(f"{what} folder not found: {path}")
    return path


def require_file(path: Path, what: str) -> Path:
    """``path`` if it is a file, else a :class:`DatasetError` naming it as ``what``."""
    if not path.is_file():
        raise DatasetError(f"{what} not found: {path}")
    return path


def read_split_json(split_file: Path, image_root: Path) -> tuple[list[Datum], list[Datum], list[Datum]]:
    """The train, val and test items of ``split_file``, ``{"train"|"val"|"test": [[relpath, label, classname],
    ...]}`` (CoOp's ``split_zhou_*.json``), paths relative to ``image_root``."""
    require_file(split_file, "split file")
    try:
        data = json.loads(split_file.read_text())
        out = []
        for split in ("train", "val", "test"):
            out.append([Datum(str(image_root / p), int(y), str(c)) for p, y, c in data.get(split, [])])
    except (ValueError, TypeError, AttributeError) as exc:
        raise DatasetError(f"split file {split_file} is malformed: {exc}") from exc
    return out[0], out[1], out[2]


def write_generated(root: Path, split_file: str, samples: Iterable[tuple[str, Any, int, str]]) -> Path:
    """Write a generated dataset in CoOp's layout under ``root`` (``images/<class>/<split>_<i>.png`` + the split
    JSON ``split_file``), atomically: a complete tree appears at once or not at all; an existing complete one is reused.
    ``samples`` yields ``(split, uint8 HxWx3 or HxW image, label, classname)``."""
    root = Path(root)
    if (root / split_file).is_file():
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.", dir=root.parent))
    try:
        rows: dict[str, list] = {s: [] for s in ("train", "val", "test")}
        for i, (split, image, label, name) in enumerate(samples):
            rel = f"{name.replace(' ', '_')}/{split}_{i:05d}.png"
            (tmp / "images" / rel).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).save(tmp / "images" / rel)
            rows[split].append([rel, int(label), name])
        (tmp / split_file).write_text(json.dumps(rows))
        try:
            os.replace(tmp, root)
        except OSError:  # another process finished first (or root exists but is incomplete)
            if not (root / split_file).is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return root
