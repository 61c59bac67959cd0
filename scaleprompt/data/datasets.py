"""Dataset registry: the 11 benchmarks, the 4 domain-generalization targets, user data, the embedded default and
the micro-world's datasets, every one registered through :func:`register_dataset` (as an extension adds its own).

Each reader takes the folder that holds the datasets (Dassl's ``DATASET.ROOT``) in the layout of the CoOp
instructions and returns :class:`DatasetSplits` of :class:`Datum` (absolute path, label, class name). Images are
listed in sorted order (the releases list directories in file-system order; sorting makes it reproducible).
"""

from __future__ import annotations

import csv
import logging
import os
import random
import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import cast

from scaleprompt import plugins
from scaleprompt.data.fashion_mnist import load_fashion_mnist
from scaleprompt.data.layout import (
    DatasetError,
    DatasetSplits,
    Datum,
    classnames_of,
    read_split_json,
    require_dir,
    require_file,
)
from scaleprompt.data.microworld import DATASETS as MICRO_DATASETS
from scaleprompt.data.microworld import load_microworld

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff", ".ppm"}
SPLITS = ("train", "val", "test")

# root -> splits; root is None only for a generated dataset loaded without a root folder (see register_dataset)
DatasetReader = Callable[[Path | None], DatasetSplits]


def list_images(folder: Path) -> list[Path]:
    """The images of ``folder`` (by suffix, hidden files left out), sorted."""
    return sorted(
        p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")
    )


def list_class_folders(folder: Path) -> list[str]:
    """The names of the sub-folders of ``folder`` (hidden ones left out), sorted."""
    return sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _finish(
    name: str, image_root: Path, train: list[Datum], val: list[Datum], test: list[Datum]
) -> DatasetSplits:
    return DatasetSplits(name, image_root, train, val, test, classnames_of(train, val, test))


# --- readers --------------------------------------------------------------------------------------------------
def split_json_reader(
    name: str, directory: str, image_dir: str, split_file: str
) -> Callable[[Path], DatasetSplits]:
    """The reader of the dataset ``name`` released with a CoOp split file: ``<root>/<directory>/<split_file>``,
    the images under ``<root>/<directory>/<image_dir>`` (empty: the folder itself)."""

    def read(root: Path) -> DatasetSplits:
        base = require_dir(Path(root) / directory, name)
        images = require_dir(base / image_dir, f"{name} image") if image_dir else base
        train, val, test = read_split_json(base / split_file, images)
        return _finish(name, images, train, val, test)

    return read


def read_fgvc_aircraft(root: Path) -> DatasetSplits:
    """FGVCAircraft under ``root/fgvc_aircraft``: ``variants.txt`` (the classes) and the release's
    ``images_variant_{train,val,test}.txt`` splits."""
    base = require_dir(Path(root) / "fgvc_aircraft", "FGVCAircraft")
    images = require_dir(base / "images", "FGVCAircraft image")
    classnames = [
        ln.strip() for ln in require_file(base / "variants.txt", "variant list").read_text().splitlines()
    ]
    classnames = [c for c in classnames if c]
    label_of = {c: i for i, c in enumerate(classnames)}
    splits: dict[str, list[Datum]] = {}
    for split in SPLITS:
        items = []
        path = require_file(base / f"images_variant_{split}.txt", "split file")
        for line in path.read_text().splitlines():
            if not line.strip():
                continue
            image_id, _, variant = line.strip().partition(" ")
            if variant not in label_of:
                raise DatasetError(f"{path}: variant {variant!r} is not in variants.txt")
            items.append(Datum(str(images / f"{image_id}.jpg"), label_of[variant], variant))
        splits[split] = items
    return DatasetSplits("FGVCAircraft", images, splits["train"], splits["val"], splits["test"], classnames)


def read_imagenet_classnames(path: Path) -> dict[str, str]:
    """The file ``path`` (``classnames.txt``: ``<wnid> <class name>`` per line, in label order) as wnid -> class
    name."""
    out: dict[str, str] = {}
    for line in require_file(path, "class-name list").read_text().splitlines():
        wnid, _, name = line.strip().partition(" ")
        if wnid:
            out[wnid] = name
    return out


def read_class_folders(folder: Path, classnames: dict[str, str], labels: dict[str, int]) -> list[Datum]:
    """The images of every wnid folder of ``folder``, labelled by ``labels`` and named by ``classnames`` (wnid ->
    label / class name); a folder missing from either is an error."""
    items = []
    for wnid in list_class_folders(folder):
        if wnid not in labels or wnid not in classnames:
            raise DatasetError(f"class folder {folder / wnid} is not in classnames.txt")
        items += [Datum(str(p), labels[wnid], classnames[wnid]) for p in list_images(folder / wnid)]
    return items


def read_imagenet(root: Path) -> DatasetSplits:
    """ImageNet under ``root/imagenet``: ``images/train`` and ``images/val`` (the test split) per wnid, the class
    names from ``classnames.txt``."""
    base = require_dir(Path(root) / "imagenet", "ImageNet")
    images = require_dir(base / "images", "ImageNet image")
    names = read_imagenet_classnames(base / "classnames.txt")
    labels = {w: i for i, w in enumerate(names)}
    train = read_class_folders(require_dir(images / "train", "ImageNet train"), names, labels)
    test = read_class_folders(require_dir(images / "val", "ImageNet val"), names, labels)
    # ImageNet has no val split: the release evaluates on val = test; we draw val shots from unused train images
    return DatasetSplits("ImageNet", images, train, [], test, list(names.values()), val_from_train=True)


def read_imagenetv2(root: Path) -> DatasetSplits:
    """ImageNetV2 (matched frequency) under ``root/imagenetv2``: a test split, one folder per integer label."""
    base = require_dir(Path(root) / "imagenetv2", "ImageNetV2")
    images = require_dir(base / "imagenetv2-matched-frequency-format-val", "ImageNetV2 image")
    names = list(read_imagenet_classnames(base / "classnames.txt").values())
    test = []
    for label, name in enumerate(names):  # folders are named by the integer label
        test += [Datum(str(p), label, name) for p in list_images(require_dir(images / str(label), "class"))]
    return DatasetSplits("ImageNetV2", images, [], [], test, names)


def sorted_folder_reader(name: str, directory: str, image_dir: str) -> Callable[[Path], DatasetSplits]:
    """The reader of ImageNet-Sketch / -A / -R (the dataset ``name``): one folder per wnid under
    ``<root>/<directory>/<image_dir>``; label = index in the sorted folders present."""

    def read(root: Path) -> DatasetSplits:
        base = require_dir(Path(root) / directory, name)
        images = require_dir(base / image_dir, f"{name} image")
        names = read_imagenet_classnames(base / "classnames.txt")
        folders = list_class_folders(images)
        labels = {w: i for i, w in enumerate(folders)}
        test = read_class_folders(images, names, labels)
        return DatasetSplits(name, images, [], [], test, [names[w] for w in folders])

    return read


def _class_folder_images(folder: Path) -> dict[str, list[Path]]:
    """Class name -> its images, for every class folder under ``folder``; a class folder without an image is an
    error naming it (it would otherwise vanish from the labels, or leave a label without images)."""
    out = {}
    for c in list_class_folders(folder):
        images = list_images(folder / c)
        if not images:
            raise DatasetError(
                f"class folder {folder / c} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))}); add images "
                "or remove the folder"
            )
        out[c] = images
    return out


def read_image_folder(root: Path, p_train: float = 0.5, p_val: float = 0.2, seed: int = 0) -> DatasetSplits:
    """User data: ``root/{train,val,test}/<class>/*`` or ``root/<class>/*`` (split per class ``p_train`` /
    ``p_val`` / rest after a shuffle seeded with ``seed``, like Dassl's ``read_and_split_data``). Labels follow
    sorted class names. Every class folder must hold at least one image."""
    root = require_dir(Path(root), "dataset")
    if (root / "train").is_dir():
        found = {
            split: _class_folder_images(root / split) if (root / split).is_dir() else {} for split in SPLITS
        }
        labels = {c: i for i, c in enumerate(found["train"])}
        if not labels:
            raise DatasetError(f"no class folders with images under {root / 'train'}")
        splits: dict[str, list[Datum]] = {}
        for split, classes in found.items():
            items = []
            for c, paths in classes.items():
                if c not in labels:
                    raise DatasetError(f"class folder {root / split / c} does not exist in {root / 'train'}")
                items += [Datum(str(p), labels[c], c) for p in paths]
            splits[split] = items
        return _finish(root.name, root, splits["train"], splits["val"], splits["test"])
    logger.info(
        "%s: no train/ folder: each class split %g / %g / %g %% into train / val / test (shuffled, seed %d)",
        root,
        100 * p_train,
        100 * p_val,
        100 * (1 - p_train - p_val),
        seed,
    )
    rng = random.Random(seed)
    train: list[Datum] = []
    val: list[Datum] = []
    test: list[Datum] = []
    for label, (c, paths) in enumerate(_class_folder_images(root).items()):
        data = [Datum(str(p), label, c) for p in paths]
        rng.shuffle(data)
        n_train, n_val = round(len(data) * p_train), round(len(data) * p_val)
        train += data[:n_train]
        val += data[n_train : n_train + n_val]
        test += data[n_train + n_val :]
    if not train:
        raise DatasetError(f"no class folders with images under {root}")
    return _finish(root.name, root, train, val, test)


def read_split_file(split_file: Path, image_root: Path | None = None) -> DatasetSplits:
    """User data from ``split_file``, a JSON split (CoOp format) or a CSV with columns
    ``split,path,label,classname``; image paths are relative to ``image_root`` (default: the file's folder)."""
    split_file = require_file(Path(split_file), "split file")
    image_root = Path(image_root) if image_root else split_file.parent
    if split_file.suffix.lower() == ".csv":
        out: dict[str, list[Datum]] = {"train": [], "val": [], "test": []}
        with split_file.open(newline="") as fh:
            reader = csv.DictReader(fh)
            need = {"split", "path", "label", "classname"}
            if not need <= set(reader.fieldnames or []):
                raise DatasetError(f"{split_file} needs the columns {sorted(need)}, has {reader.fieldnames}")
            for row in reader:
                if row["split"] not in out:
                    raise DatasetError(f"{split_file}: unknown split {row['split']!r} (train, val or test)")
                out[row["split"]].append(
                    Datum(str(image_root / row["path"]), int(row["label"]), row["classname"])
                )
        return _finish(split_file.stem, image_root, out["train"], out["val"], out["test"])
    return _finish(split_file.stem, image_root, *read_split_json(split_file, image_root))


# --- the registry ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DatasetSpec:
    name: str
    reader: DatasetReader  # root -> splits (root None: a generated dataset, no root)
    aliases: tuple[str, ...] = ()
    eval_only: bool = False  # DG targets: a test split only
    generated: bool = False  # shipped or generated: no root folder needed (written under the cache or root)


DATASETS: dict[str, DatasetSpec] = {}


def register_dataset(
    name: str,
    reader: Callable[[Path], DatasetSplits],
    *,
    aliases: tuple[str, ...] = (),
    eval_only: bool = False,
    generated: bool = False,
) -> DatasetSpec:
    """Make ``load_dataset(name, root)`` (and a recipe's ``data.dataset``) read a dataset; how an extension adds
    one, and how the built-in datasets below are registered.

    ``name``: the registry name; ``reader(root)`` returns its :class:`DatasetSplits`, ``root`` being the folder
    that holds the datasets; ``aliases``: other names it is found by (case-insensitive); ``eval_only``: a test split
    only (domain-generalization targets); ``generated``: shipped or generated, loaded without a root too, when its
    reader is called with None (write it under ``scaleprompt.data.layout.CACHE_ROOT`` then)."""
    aliases = tuple(a.lower() for a in aliases)
    taken = {key for spec in DATASETS.values() for key in (spec.name.lower(), *spec.aliases)}
    clash = sorted({name.lower(), *aliases} & taken)
    if clash:
        raise ValueError(f"dataset {name!r}: {', '.join(clash)} already names a registered dataset")
    # (only a generated dataset's reader is ever called with None: load_dataset refuses the others without a root)
    spec = DatasetSpec(name, cast(DatasetReader, reader), aliases, eval_only, generated)
    DATASETS[name] = spec
    return spec


# --- the built-in datasets, registered like an extension's ------------------------------------------------------
def _json(name: str, directory: str, image_dir: str, split: str, *aliases: str) -> None:
    register_dataset(name, split_json_reader(name, directory, image_dir, split), aliases=aliases)


def _micro_alias(name: str) -> str:
    """``MicroWorldNovelShapes`` -> ``microworld_novel_shapes``, ``MicroVarShape-Tight`` -> ``microvar_shape_tight``."""
    flat = name.replace("MicroWorld", "Microworld").replace("MicroVar", "Microvar").replace("-", "")
    return re.sub(r"(?<!^)(?=[A-Z])", "_", flat).lower()


def _fashion_mnist(root: Path | None) -> DatasetSplits:
    return load_fashion_mnist(Path(root) / "fashion_mnist" if root else None)


register_dataset("ImageNet", read_imagenet, aliases=("imagenet",))
_json("Caltech101", "caltech-101", "101_ObjectCategories", "split_zhou_Caltech101.json", "caltech101")
_json("OxfordPets", "oxford_pets", "images", "split_zhou_OxfordPets.json", "oxford_pets", "pets")
_json("StanfordCars", "stanford_cars", "", "split_zhou_StanfordCars.json", "stanford_cars", "cars")
_json("OxfordFlowers", "oxford_flowers", "jpg", "split_zhou_OxfordFlowers.json", "flowers102", "flowers")
_json("Food101", "food-101", "images", "split_zhou_Food101.json", "food101")
register_dataset("FGVCAircraft", read_fgvc_aircraft, aliases=("fgvc_aircraft", "aircraft"))
_json("SUN397", "sun397", "SUN397", "split_zhou_SUN397.json", "sun397")
_json("DescribableTextures", "dtd", "images", "split_zhou_DescribableTextures.json", "dtd")
_json("EuroSAT", "eurosat", "2750", "split_zhou_EuroSAT.json", "eurosat")
_json("UCF101", "ucf101", "UCF-101-midframes", "split_zhou_UCF101.json", "ucf101")
register_dataset("ImageNetV2", read_imagenetv2, aliases=("imagenetv2", "imagenet_v2"), eval_only=True)
for _name, _directory, _images, _alias in (
    ("ImageNetSketch", "imagenet-sketch", "images", "imagenet_sketch"),
    ("ImageNetA", "imagenet-adversarial", "imagenet-a", "imagenet_a"),
    ("ImageNetR", "imagenet-rendition", "imagenet-r", "imagenet_r"),
):
    register_dataset(
        _name, sorted_folder_reader(_name, _directory, _images), aliases=(_alias,), eval_only=True
    )
register_dataset("FashionMNIST", _fashion_mnist, aliases=("fashion_mnist", "embedded"), generated=True)
# the micro-world's downstream datasets (scaleprompt.data.microworld)
for _name in MICRO_DATASETS:
    register_dataset(_name, partial(load_microworld, _name), aliases=(_micro_alias(_name),), generated=True)

BENCHMARKS = [
    "ImageNet",
    "Caltech101",
    "OxfordPets",
    "StanfordCars",
    "OxfordFlowers",
    "Food101",
    "FGVCAircraft",
    "SUN397",
    "DescribableTextures",
    "EuroSAT",
    "UCF101",
]
DG_TARGETS = ["ImageNetV2", "ImageNetSketch", "ImageNetA", "ImageNetR"]
CROSS_DATASET_TARGETS = [b for b in BENCHMARKS if b != "ImageNet"]


_plugins: list[plugins.Plugin] | None = None  # the scaleprompt.datasets entry points, once loaded


def _load_plugins() -> list[plugins.Plugin]:
    """The installed ``scaleprompt.datasets`` entry points (each a :class:`DatasetSpec`), registered at the first
    call (once per process) as :func:`register_dataset` registers one."""
    global _plugins
    if _plugins is None:
        _plugins = []
        for plugin in plugins.load_group(plugins.DATASETS_GROUP):
            spec = plugin.obj
            if plugin.error is None and not isinstance(spec, DatasetSpec):
                plugin = plugins.failed(plugin, f"names a {type(spec).__name__}, not a DatasetSpec")
            elif plugin.error is None and DATASETS.get(spec.name) is not spec:
                try:
                    register_dataset(
                        spec.name,
                        spec.reader,
                        aliases=spec.aliases,
                        eval_only=spec.eval_only,
                        generated=spec.generated,
                    )
                except ValueError as exc:
                    plugin = plugins.failed(plugin, str(exc))
            _plugins.append(plugin)
    return _plugins


def list_datasets() -> list[str]:
    """The names of the registered datasets, in registration order (the installed plug-ins' last)."""
    _load_plugins()
    return list(DATASETS)


def get_dataset(name: str) -> DatasetSpec:
    """The registered dataset called ``name`` or one of its aliases (case-insensitive); else an error listing them."""
    broken = [p.where() for p in _load_plugins() if p.error is not None]
    key = name.lower()
    for spec in DATASETS.values():
        if key == spec.name.lower() or key in spec.aliases:
            return spec
    hint = f"; plug-ins that failed to load: {'; '.join(broken)}" if broken else ""
    raise DatasetError(
        f"unknown dataset {name!r}; registered: {', '.join(DATASETS)} (or 'folder:' / a split file){hint}"
    )


def dataset_display_name(dataset: str) -> str:
    """Readable name of the dataset spec ``dataset``: the registry name; ``folder:<path>`` and split files are named after their
    folder / file (``folder:/a/flowers`` -> ``flowers``). Not unique: the shard cache adds a hash of the source."""
    if dataset.startswith("folder:"):
        folder = dataset[len("folder:") :]
        return Path(os.path.abspath(folder)).name or folder
    if dataset.endswith((".json", ".csv")):
        return Path(dataset).stem
    return get_dataset(dataset).name


def load_dataset(name: str, root: str | Path | None = None) -> DatasetSplits:
    """Read the dataset ``name``: a registered name with the datasets' ``root`` folder; ``folder:<path>`` for an image
    folder per class; or the path of a JSON / CSV split file."""
    if name.startswith("folder:"):
        return read_image_folder(Path(name[len("folder:") :]).absolute())
    if name.endswith((".json", ".csv")):
        return read_split_file(Path(name).absolute(), Path(root).absolute() if root else None)
    spec = get_dataset(name)
    if root is None and not spec.generated:
        raise DatasetError(f"dataset {spec.name} needs the root folder that holds the datasets")
    return spec.reader(Path(root).absolute() if root else None)
