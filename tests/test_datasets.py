"""The dataset registry reads tiny synthetic trees in the CoOp / Dassl on-disk layout (DATASETS.md of CoOp).

Every benchmark, DG target and user-data format is built under ``tmp_path`` with 8x8 images, so the tests check
the layout each reader expects, the items per split (absolute paths, labels, class names), the label order of
``classnames``, ``counts()``, alias lookup and the errors that name what is missing or malformed.
"""

from __future__ import annotations

import csv
import json
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from PIL import Image

from scaleprompt.data import datasets as datasets_module
from scaleprompt.data import fashion_mnist
from scaleprompt.data.datasets import (
    BENCHMARKS,
    CROSS_DATASET_TARGETS,
    DG_TARGETS,
    DatasetError,
    DatasetSplits,
    Datum,
    get_dataset,
    list_datasets,
    load_dataset,
    register_dataset,
)
from scaleprompt.data.shards import write_shards

SPLITS = ("train", "val", "test")


def make_image(path: Path, seed: int = 0) -> Path:
    """An 8x8 RGB image; the format follows the suffix (.jpg, .JPEG, .png, ...)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), ((seed * 37) % 256, (seed * 91) % 256, (seed * 53) % 256)).save(path)
    return path


def check_splits(
    ds: DatasetSplits,
    name: str,
    image_root: Path,
    expected: dict[str, list[Datum]],
    classnames: list[str],
    counts: dict[str, int],
) -> None:
    assert ds.name == name
    assert Path(ds.image_root) == image_root
    for split in SPLITS:
        assert ds.split(split) == expected[split], split
        for d in ds.split(split):
            assert Path(d.path).is_absolute(), d.path
            assert Path(d.path).is_file(), d.path
            assert type(d.label) is int
            assert ds.classnames[d.label] == d.classname
    assert ds.classnames == classnames
    assert ds.counts() == counts


def check_aliases(canonical: str, aliases: tuple[str, ...], root: Path, ds: DatasetSplits) -> None:
    for alias in (canonical, canonical.lower(), canonical.upper(), *aliases):
        assert get_dataset(alias).name == canonical, alias
        assert load_dataset(alias, root) == ds, alias
    assert load_dataset(canonical, str(root)) == ds  # a str root works like a Path


# --- the registry ---------------------------------------------------------------------------------------------
def test_registry_lists_the_benchmarks_dg_targets_and_embedded_default():
    benchmarks = [
        "ImageNet", "Caltech101", "OxfordPets", "StanfordCars", "OxfordFlowers", "Food101",
        "FGVCAircraft", "SUN397", "DescribableTextures", "EuroSAT", "UCF101",
    ]  # fmt: skip
    targets = ["ImageNetV2", "ImageNetSketch", "ImageNetA", "ImageNetR"]
    assert benchmarks == BENCHMARKS
    assert targets == DG_TARGETS
    assert benchmarks[1:] == CROSS_DATASET_TARGETS
    generated = ["FashionMNIST", "MicroWorld", "MicroWorldSketch", "MicroWorldClutter", "MicroWorldNovelShapes",
                 "MicroWorldNovelColours", *(f"MicroVar{t}-{v}" for t in ("Shape", "Colour", "Both")
                                              for v in ("Tight", "Loose"))]  # fmt: skip
    assert sorted(list_datasets()) == sorted([*benchmarks, *targets, *generated])
    for name in list_datasets():
        assert get_dataset(name).eval_only == (name in targets), name
        assert get_dataset(name).generated == (name in generated), name


def test_an_extension_registers_a_dataset(tmp_path, monkeypatch):
    """register_dataset is how the built-in datasets (the micro-world's too) are registered, and a user's."""
    monkeypatch.setattr(
        datasets_module, "DATASETS", dict(datasets_module.DATASETS)
    )  # (this test's entry only)
    ds = DatasetSplits("MyData", tmp_path, test=[Datum(str(tmp_path / "a.png"), 0, "a")], classnames=["a"])
    roots = []
    spec = register_dataset(
        "MyData", lambda root: roots.append(root) or ds, aliases=("My_Data",), eval_only=True
    )
    assert spec.aliases == ("my_data",) and get_dataset("my_data") is spec and "MyData" in list_datasets()
    assert load_dataset("MY_DATA", tmp_path) is ds and roots == [tmp_path.absolute()]
    with pytest.raises(DatasetError, match="needs the root folder"):
        load_dataset("MyData")
    for name, aliases in (("mydata", ()), ("Other", ("pets",))):
        with pytest.raises(ValueError, match="already names a registered dataset"):
            register_dataset(name, spec.reader, aliases=aliases)


@pytest.mark.slow  # (quick-loop budget: an end-to-end run / processes / a timeout)
def test_the_registries_import_without_a_cycle_or_torch():
    """The data layer (shard-writer processes import it) stays torch-free; the micro-world's datasets are
    registered by scaleprompt.data.datasets, which the micro-world's modules never import."""
    code = (
        "import sys; import scaleprompt.data.datasets as d, scaleprompt.data.shards; "
        "assert 'torch' not in sys.modules, 'torch'; assert d.get_dataset('microworld_clutter').generated; "
        "assert not [m for m in sys.modules if m.startswith('scaleprompt.backbone')]"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
    for module in (
        "scaleprompt.data.microworld",
        "scaleprompt.data.fashion_mnist",
        "scaleprompt.backbone",
    ):
        subprocess.run([sys.executable, "-c", f"import {module}"], check=True)  # each one first: no cycle


def test_split_rejects_unknown_split_name():
    ds = DatasetSplits("x", Path("/x"), train=[Datum("/x/a.jpg", 0, "a")], classnames=["a"])
    assert ds.split("train") == [Datum("/x/a.jpg", 0, "a")]
    with pytest.raises(ValueError, match="unknown split 'dev'"):
        ds.split("dev")


def test_unknown_dataset_is_named():
    with pytest.raises(DatasetError, match=r"unknown dataset 'imagenet-z'.*DescribableTextures"):
        load_dataset("imagenet-z", "/nonexistent")
    with pytest.raises(DatasetError, match="unknown dataset 'texture'"):
        get_dataset("texture")


def test_registered_dataset_needs_a_root():
    with pytest.raises(DatasetError, match="DescribableTextures needs the root folder"):
        load_dataset("dtd")


# --- split-JSON benchmarks (CoOp's split_zhou_*.json) ---------------------------------------------------------
# name, dataset folder, image folder ("" = the dataset folder itself), split file, relpath style, aliases
SPLIT_JSON = [
    ("Caltech101", "caltech-101", "101_ObjectCategories", "split_zhou_Caltech101.json", "nested", ("caltech101",)),
    ("OxfordPets", "oxford_pets", "images", "split_zhou_OxfordPets.json", "flat", ("oxford_pets", "pets")),
    ("StanfordCars", "stanford_cars", "", "split_zhou_StanfordCars.json", "cars", ("stanford_cars", "cars")),
    ("OxfordFlowers", "oxford_flowers", "jpg", "split_zhou_OxfordFlowers.json", "flat", ("flowers102", "flowers")),
    ("Food101", "food-101", "images", "split_zhou_Food101.json", "nested", ("food101",)),
    ("SUN397", "sun397", "SUN397", "split_zhou_SUN397.json", "sun", ("sun397",)),
    ("DescribableTextures", "dtd", "images", "split_zhou_DescribableTextures.json", "nested", ("dtd",)),
    ("EuroSAT", "eurosat", "2750", "split_zhou_EuroSAT.json", "nested", ("eurosat",)),
    ("UCF101", "ucf101", "UCF-101-midframes", "split_zhou_UCF101.json", "nested", ("ucf101",)),
]  # fmt: skip
SPLIT_JSON_IDS = [row[0] for row in SPLIT_JSON]
# label -> (folder on disk, class name in the split file): label order is neither alphabetical nor file order
JSON_CLASSES = [("Faces_easy", "face"), ("water_lilly", "water lilly"), ("accordion", "accordion")]
JSON_PER_SPLIT = {"train": (2, 2, 2), "val": (1, 1, 1), "test": (3, 1, 1)}  # images per label
JSON_COUNTS = {"train": 6, "val": 3, "test": 5}


def json_relpath(style: str, split: str, folder: str, n: int) -> str:
    if style == "cars":  # Stanford Cars: relative to the dataset folder, train and val share cars_train
        return f"cars_{'test' if split == 'test' else 'train'}/{n:05d}.jpg"
    if style == "sun":  # SUN397: /<letter>/<category>/sun_*.jpg
        return f"{folder[0].lower()}/{folder}/sun_{n:04d}.jpg"
    if style == "flat":  # Pets, Flowers: one folder of images
        return f"image_{n:05d}.jpg"
    return f"{folder}/{folder}_{n:04d}.jpg"


def build_split_json(root: Path, directory: str, image_dir: str, split_file: str, style: str):
    """The dataset tree; returns (image folder, expected items per split)."""
    base = root / directory
    images = base / image_dir if image_dir else base
    data: dict[str, list] = {}
    n = 0
    for split in SPLITS:
        rows = []
        for label in (2, 0, 1):
            folder, classname = JSON_CLASSES[label]
            for _ in range(JSON_PER_SPLIT[split][label]):
                n += 1
                rel = json_relpath(style, split, folder, n)
                make_image(images / rel, n)
                rows.append([rel, label, classname])
        data[split] = rows
    (base / split_file).write_text(json.dumps(data))
    expected = {s: [Datum(str(images / rel), y, c) for rel, y, c in rows] for s, rows in data.items()}
    return images, expected


@pytest.mark.parametrize("name,directory,image_dir,split_file,style,aliases", SPLIT_JSON, ids=SPLIT_JSON_IDS)
def test_split_json_benchmark(tmp_path, name, directory, image_dir, split_file, style, aliases):
    images, expected = build_split_json(tmp_path, directory, image_dir, split_file, style)
    ds = load_dataset(name, tmp_path)
    check_splits(ds, name, images, expected, [c for _, c in JSON_CLASSES], JSON_COUNTS)
    assert ds.val_from_train is False
    assert not get_dataset(name).eval_only
    check_aliases(name, aliases, tmp_path, ds)


def test_stanford_cars_paths_are_relative_to_the_dataset_folder(tmp_path):
    build_split_json(tmp_path, "stanford_cars", "", "split_zhou_StanfordCars.json", "cars")
    ds = load_dataset("cars", tmp_path)
    assert ds.train[0].path == str(tmp_path / "stanford_cars" / "cars_train" / "00001.jpg")
    assert ds.test[0].path == str(tmp_path / "stanford_cars" / "cars_test" / "00010.jpg")


def test_split_json_reads_every_split_but_does_not_stat_images(tmp_path):
    images, expected = build_split_json(
        tmp_path, "dtd", "images", "split_zhou_DescribableTextures.json", "nested"
    )
    gone = Path(expected["test"][0].path)
    gone.unlink()
    ds = load_dataset("dtd", tmp_path)  # a missing image is reported when the shards are written
    assert ds.test == expected["test"]


@pytest.mark.parametrize("name,directory,image_dir,split_file,style,aliases", SPLIT_JSON, ids=SPLIT_JSON_IDS)
def test_split_json_missing_split_file_is_named(
    tmp_path, name, directory, image_dir, split_file, style, aliases
):
    build_split_json(tmp_path, directory, image_dir, split_file, style)
    (tmp_path / directory / split_file).unlink()
    path = tmp_path / directory / split_file
    with pytest.raises(DatasetError, match=f"split file not found: {re.escape(str(path))}$"):
        load_dataset(name, tmp_path)


@pytest.mark.parametrize(
    "name,directory,image_dir",
    [(r[0], r[1], r[2]) for r in SPLIT_JSON if r[2]],
    ids=[r[0] for r in SPLIT_JSON if r[2]],
)
def test_split_json_missing_image_folder_is_named(tmp_path, name, directory, image_dir):
    (tmp_path / directory).mkdir()
    (tmp_path / directory / f"split_zhou_{name}.json").write_text(
        json.dumps({"train": [], "val": [], "test": []})
    )
    with pytest.raises(
        DatasetError,
        match=f"{name} image folder not found: {re.escape(str(tmp_path / directory / image_dir))}$",
    ):
        load_dataset(name, tmp_path)


@pytest.mark.parametrize(
    "text",
    [
        "{not json",
        '{"train": [["a/1.jpg", 0]]}',  # two fields
        '{"train": [["a/1.jpg", 0, "a", "extra"]]}',  # four fields
        '{"train": [["a/1.jpg", "zero", "a"]]}',  # label not an integer
        '{"train": [["a/1.jpg", null, "a"]]}',
        '{"train": 5}',
        '{"train": [5]}',
        '[["a/1.jpg", 0, "a"]]',  # not an object
        '"train"',
    ],
)
def test_malformed_split_json_is_named(tmp_path, text):
    base = tmp_path / "dtd"
    make_image(base / "images" / "a" / "1.jpg")
    split_file = base / "split_zhou_DescribableTextures.json"
    split_file.write_text(text)
    with pytest.raises(DatasetError, match=f"split file {re.escape(str(split_file))} is malformed"):
        load_dataset("dtd", tmp_path)


def test_split_json_label_with_two_class_names_is_named(tmp_path):
    base = tmp_path / "eurosat"
    (base / "2750").mkdir(parents=True)
    rows = {"train": [["a/1.jpg", 0, "Forest"]], "val": [], "test": [["a/2.jpg", 0, "River"]]}
    (base / "split_zhou_EuroSAT.json").write_text(json.dumps(rows))
    with pytest.raises(DatasetError, match="label 0 has two class names: 'Forest' and 'River'"):
        load_dataset("eurosat", tmp_path)


def test_split_json_label_without_images_is_named(tmp_path):
    base = tmp_path / "eurosat"
    (base / "2750").mkdir(parents=True)
    rows = {"train": [["a/1.jpg", 0, "Forest"], ["c/1.jpg", 2, "River"]], "val": [], "test": []}
    (base / "split_zhou_EuroSAT.json").write_text(json.dumps(rows))
    with pytest.raises(DatasetError, match=r"labels \[1\] have no image"):
        load_dataset("eurosat", tmp_path)


def test_split_json_negative_label_is_an_error(tmp_path):
    base = tmp_path / "eurosat"
    (base / "2750").mkdir(parents=True)
    rows = {"train": [["a/1.jpg", 0, "Forest"], ["c/1.jpg", -1, "River"]], "val": [], "test": []}
    (base / "split_zhou_EuroSAT.json").write_text(json.dumps(rows))
    with pytest.raises(DatasetError, match="-1"):
        load_dataset("eurosat", tmp_path)


# --- FGVC-Aircraft -----------------------------------------------------------------------------------------------
FGVC_VARIANTS = ["Boeing 707-320", "A300B4", "Cessna 172"]
FGVC_SPLITS = {
    "train": [("1025794", "Cessna 172"), ("0034309", "Boeing 707-320"), ("1340192", "A300B4"), ("0056978", "Boeing 707-320")],
    "val": [("2204125", "A300B4"), ("0062765", "Cessna 172")],
    "test": [("1514522", "Boeing 707-320"), ("0749312", "A300B4"), ("2252149", "Cessna 172")],
}  # fmt: skip


def build_fgvc(root: Path, splits=FGVC_SPLITS) -> Path:
    base = root / "fgvc_aircraft"
    (base / "variants.txt").parent.mkdir(parents=True)
    (base / "variants.txt").write_text("\n".join(FGVC_VARIANTS) + "\n\n")  # a trailing blank line
    for n, (split, rows) in enumerate(splits.items()):
        (base / f"images_variant_{split}.txt").write_text("".join(f"{i} {v}\n" for i, v in rows) + "\n")
        for k, (image_id, _) in enumerate(rows):
            make_image(base / "images" / f"{image_id}.jpg", 10 * n + k)
    return base / "images"


def test_fgvc_aircraft(tmp_path):
    images = build_fgvc(tmp_path)
    expected = {
        split: [Datum(str(images / f"{i}.jpg"), FGVC_VARIANTS.index(v), v) for i, v in rows]
        for split, rows in FGVC_SPLITS.items()
    }
    assert expected["train"][0] == Datum(str(images / "1025794.jpg"), 2, "Cessna 172")
    ds = load_dataset("FGVCAircraft", tmp_path)
    check_splits(ds, "FGVCAircraft", images, expected, FGVC_VARIANTS, {"train": 4, "val": 2, "test": 3})
    assert ds.val_from_train is False
    check_aliases("FGVCAircraft", ("fgvc_aircraft", "aircraft"), tmp_path, ds)


def test_fgvc_unknown_variant_is_named(tmp_path):
    splits = dict(FGVC_SPLITS, val=[("2204125", "A300B4"), ("0062766", "Boeing 747-400")])
    build_fgvc(tmp_path, splits)
    split_file = tmp_path / "fgvc_aircraft" / "images_variant_val.txt"
    with pytest.raises(
        DatasetError, match=f"{re.escape(str(split_file))}: variant 'Boeing 747-400' is not in variants.txt"
    ):
        load_dataset("aircraft", tmp_path)


@pytest.mark.parametrize(
    "missing",
    ["variants.txt", "images_variant_train.txt", "images_variant_val.txt", "images_variant_test.txt"],
)
def test_fgvc_missing_list_file_is_named(tmp_path, missing):
    build_fgvc(tmp_path)
    (tmp_path / "fgvc_aircraft" / missing).unlink()
    with pytest.raises(
        DatasetError, match=f"not found: {re.escape(str(tmp_path / 'fgvc_aircraft' / missing))}$"
    ):
        load_dataset("fgvc_aircraft", tmp_path)


def test_fgvc_missing_image_folder_is_named(tmp_path):
    build_fgvc(tmp_path)
    for p in (tmp_path / "fgvc_aircraft" / "images").iterdir():
        p.unlink()
    (tmp_path / "fgvc_aircraft" / "images").rmdir()
    with pytest.raises(DatasetError, match="FGVCAircraft image folder not found: .*fgvc_aircraft/images$"):
        load_dataset("fgvc_aircraft", tmp_path)


# --- ImageNet ----------------------------------------------------------------------------------------------------
IMAGENET_CLASSES = [("n01440764", "tench"), ("n01484850", "great white shark"), ("n02085620", "Chihuahua")]
IMAGENET_TRAIN = {"n01440764": 2, "n01484850": 1, "n02085620": 3}
IMAGENET_VAL = {"n01440764": 1, "n01484850": 2, "n02085620": 1}


def build_imagenet(root: Path) -> Path:
    base = root / "imagenet"
    images = base / "images"
    n = 0
    for split, per_class in (("train", IMAGENET_TRAIN), ("val", IMAGENET_VAL)):
        for wnid, count in reversed(per_class.items()):  # created out of order: the reader sorts
            for k in reversed(range(count)):
                n += 1
                make_image(images / split / wnid / f"{wnid}_{split}_{k:04d}.JPEG", n)
            (images / split / wnid / "notes.txt").write_text("not an image")
            make_image(images / split / wnid / ".hidden.JPEG")
    (images / "train" / "LOC_synset_mapping.txt").write_text("a file next to the class folders")
    (base / "classnames.txt").write_text("".join(f"{w} {c}\n" for w, c in IMAGENET_CLASSES))
    return images


def test_imagenet(tmp_path):
    images = build_imagenet(tmp_path)
    expected = {"val": []}
    for split, folder, per_class in (("train", "train", IMAGENET_TRAIN), ("test", "val", IMAGENET_VAL)):
        expected[split] = [
            Datum(str(images / folder / wnid / f"{wnid}_{folder}_{k:04d}.JPEG"), label, name)
            for label, (wnid, name) in enumerate(IMAGENET_CLASSES)
            for k in range(per_class[wnid])
        ]
    ds = load_dataset("ImageNet", tmp_path)
    check_splits(
        ds,
        "ImageNet",
        images,
        expected,
        ["tench", "great white shark", "Chihuahua"],
        {"train": 6, "val": 0, "test": 4},
    )
    assert ds.val_from_train is True  # no official val split: val shots come from unused train images
    check_aliases("ImageNet", ("imagenet",), tmp_path, ds)


def test_imagenet_class_folder_not_in_classnames_is_named(tmp_path):
    images = build_imagenet(tmp_path)
    make_image(images / "val" / "n09999999" / "x.JPEG")
    with pytest.raises(
        DatasetError,
        match=f"class folder {re.escape(str(images / 'val' / 'n09999999'))} is not in classnames.txt",
    ):
        load_dataset("imagenet", tmp_path)


@pytest.mark.parametrize(
    "remove,named",
    [
        ("imagenet/classnames.txt", "class-name list not found: .*imagenet/classnames.txt$"),
        ("imagenet/images/val", "ImageNet val folder not found: .*imagenet/images/val$"),
        ("imagenet/images/train", "ImageNet train folder not found: .*imagenet/images/train$"),
        ("imagenet/images", "ImageNet image folder not found: .*imagenet/images$"),
    ],
)
def test_imagenet_missing_parts_are_named(tmp_path, remove, named):
    import shutil

    build_imagenet(tmp_path)
    target = tmp_path / remove
    shutil.rmtree(target) if target.is_dir() else target.unlink()
    with pytest.raises(DatasetError, match=named):
        load_dataset("imagenet", tmp_path)


# --- ImageNetV2: folders named by the integer label ------------------------------------------------------------
def build_imagenetv2(root: Path, num_classes: int = 11) -> tuple[Path, list[str]]:
    base = root / "imagenetv2"
    images = base / "imagenetv2-matched-frequency-format-val"
    names = [f"class number {i}" for i in range(num_classes)]
    (base / "classnames.txt").parent.mkdir(parents=True)
    (base / "classnames.txt").write_text("".join(f"n{i:08d} {c}\n" for i, c in enumerate(names)))
    for label in range(num_classes):
        for k in range(label % 2 + 1):
            make_image(images / str(label) / f"{k}_{label}.jpeg", label)
    return images, names


def test_imagenetv2(tmp_path):
    # 11 classes: folder "10" sorts before "2" as text, the labels must follow the integer
    images, names = build_imagenetv2(tmp_path)
    test = [
        Datum(str(images / str(label) / f"{k}_{label}.jpeg"), label, names[label])
        for label in range(11)
        for k in range(label % 2 + 1)
    ]
    ds = load_dataset("ImageNetV2", tmp_path)
    check_splits(
        ds,
        "ImageNetV2",
        images,
        {"train": [], "val": [], "test": test},
        names,
        {"train": 0, "val": 0, "test": 16},
    )
    assert get_dataset("ImageNetV2").eval_only
    check_aliases("ImageNetV2", ("imagenetv2", "imagenet_v2"), tmp_path, ds)


def test_imagenetv2_missing_label_folder_is_named(tmp_path):
    images, _ = build_imagenetv2(tmp_path, num_classes=3)
    with (tmp_path / "imagenetv2" / "classnames.txt").open("a") as fh:
        fh.write("n00000003 one more class\n")
    with pytest.raises(DatasetError, match=f"class folder not found: {re.escape(str(images / '3'))}$"):
        load_dataset("imagenet_v2", tmp_path)


# --- ImageNet-Sketch / -A / -R: labels = index among the sorted class folders present ---------------------------
SORTED_FOLDER = [
    ("ImageNetSketch", "imagenet-sketch", "images", ".JPEG", ("imagenet_sketch",)),
    ("ImageNetA", "imagenet-adversarial", "imagenet-a", ".jpg", ("imagenet_a",)),
    ("ImageNetR", "imagenet-rendition", "imagenet-r", ".jpg", ("imagenet_r",)),
]
# classnames.txt lists more wnids than there are folders (as the 1000-class list does for -A / -R)
ALL_WNIDS = [("n01443537", "goldfish"), ("n01484850", "great white shark"), ("n01491361", "tiger shark"),
             ("n01494475", "hammerhead shark"), ("n01496331", "electric ray")]  # fmt: skip
PRESENT = {"n01494475": 2, "n01484850": 1, "n01491361": 3}  # sorted: 484850, 491361, 494475


def build_sorted_folder(root: Path, directory: str, image_dir: str, suffix: str) -> Path:
    base = root / directory
    images = base / image_dir
    for n, (wnid, count) in enumerate(PRESENT.items()):
        for k in range(count):
            make_image(images / wnid / f"sketch_{k}{suffix}", n + k)
        (images / wnid / "Thumbs.db").write_bytes(b"\0")
    (images / "README.txt").write_text("ImageNet-A: 200 classes ...")
    (images / ".cache").mkdir()  # a hidden folder is not a class
    (base / "classnames.txt").write_text("".join(f"{w} {c}\n" for w, c in ALL_WNIDS))
    return images


@pytest.mark.parametrize(
    "name,directory,image_dir,suffix,aliases", SORTED_FOLDER, ids=[r[0] for r in SORTED_FOLDER]
)
def test_sorted_folder_dg_target(tmp_path, name, directory, image_dir, suffix, aliases):
    images = build_sorted_folder(tmp_path, directory, image_dir, suffix)
    order = [
        ("n01484850", "great white shark"),
        ("n01491361", "tiger shark"),
        ("n01494475", "hammerhead shark"),
    ]
    test = [
        Datum(str(images / wnid / f"sketch_{k}{suffix}"), label, cname)
        for label, (wnid, cname) in enumerate(order)
        for k in range(PRESENT[wnid])
    ]
    ds = load_dataset(name, tmp_path)
    check_splits(
        ds,
        name,
        images,
        {"train": [], "val": [], "test": test},
        [c for _, c in order],
        {"train": 0, "val": 0, "test": 6},
    )
    assert get_dataset(name).eval_only
    check_aliases(name, aliases, tmp_path, ds)


@pytest.mark.parametrize(
    "name,directory,image_dir,suffix,aliases", SORTED_FOLDER, ids=[r[0] for r in SORTED_FOLDER]
)
def test_sorted_folder_class_not_in_classnames_is_named(
    tmp_path, name, directory, image_dir, suffix, aliases
):
    images = build_sorted_folder(tmp_path, directory, image_dir, suffix)
    make_image(images / "n09999999" / f"x{suffix}")
    with pytest.raises(
        DatasetError, match=f"class folder {re.escape(str(images / 'n09999999'))} is not in classnames.txt"
    ):
        load_dataset(name, tmp_path)


@pytest.mark.parametrize(
    "name,directory,image_dir,suffix,aliases", SORTED_FOLDER, ids=[r[0] for r in SORTED_FOLDER]
)
def test_sorted_folder_missing_classnames_is_named(tmp_path, name, directory, image_dir, suffix, aliases):
    build_sorted_folder(tmp_path, directory, image_dir, suffix)
    (tmp_path / directory / "classnames.txt").unlink()
    with pytest.raises(
        DatasetError,
        match=f"class-name list not found: {re.escape(str(tmp_path / directory / 'classnames.txt'))}$",
    ):
        load_dataset(name, tmp_path)


# --- a missing dataset folder, for every registered benchmark and target ----------------------------------------
DATASET_FOLDERS = [(r[0], r[1]) for r in SPLIT_JSON] + [
    ("FGVCAircraft", "fgvc_aircraft"),
    ("ImageNet", "imagenet"),
    ("ImageNetV2", "imagenetv2"),
    *[(r[0], r[1]) for r in SORTED_FOLDER],
]


def test_dataset_folders_cover_every_registered_dataset():
    assert sorted(n for n, _ in DATASET_FOLDERS) == sorted(
        n for n in list_datasets() if not get_dataset(n).generated
    )


@pytest.mark.parametrize("name,directory", DATASET_FOLDERS, ids=[n for n, _ in DATASET_FOLDERS])
def test_missing_dataset_folder_is_named(tmp_path, name, directory):
    (tmp_path / "some_other_dataset").mkdir()
    with pytest.raises(
        DatasetError, match=f"{name} folder not found: {re.escape(str(tmp_path / directory))}$"
    ):
        load_dataset(name, tmp_path)


# --- user data: image folders -------------------------------------------------------------------------------
def test_image_folder_with_split_folders(tmp_path):
    root = tmp_path / "my_data"
    layout = {
        "train": {"dogs": 2, "cats": 3, "birds": 1},
        "val": {"cats": 1},  # a split may lack classes
        "test": {"dogs": 1, "birds": 2},
    }
    n = 0
    for split, per_class in layout.items():
        for c, count in per_class.items():
            for k in range(count):
                n += 1
                make_image(root / split / c / f"{c}_{k}.png", n)
    (root / "train" / "cats" / "labels.csv").write_text("not an image")
    classes = ["birds", "cats", "dogs"]  # labels follow sorted class names
    expected = {
        split: [
            Datum(str(root / split / c / f"{c}_{k}.png"), label, c)
            for label, c in enumerate(classes)
            for k in range(per_class.get(c, 0))
        ]
        for split, per_class in layout.items()
    }
    ds = load_dataset(f"folder:{root}")
    check_splits(ds, "my_data", root, expected, classes, {"train": 6, "val": 1, "test": 3})


def test_image_folder_without_val_folder(tmp_path):
    root = tmp_path / "d"
    make_image(root / "train" / "a" / "1.jpg")
    make_image(root / "test" / "a" / "2.jpg")
    ds = load_dataset(f"folder:{root}")
    assert ds.counts() == {"train": 1, "val": 0, "test": 1}
    assert ds.test == [Datum(str(root / "test" / "a" / "2.jpg"), 0, "a")]


def test_image_folder_class_not_in_train_is_named(tmp_path):
    root = tmp_path / "d"
    make_image(root / "train" / "a" / "1.jpg")
    make_image(root / "test" / "zebra" / "1.jpg")
    with pytest.raises(
        DatasetError, match=f"class folder {re.escape(str(root / 'test' / 'zebra'))} does not exist in"
    ):
        load_dataset(f"folder:{root}")


def build_class_folders(root: Path, per_class: dict[str, int]) -> list[Path]:
    paths = []
    for c, count in per_class.items():
        for k in range(count):
            paths.append(make_image(root / c / f"{k:03d}.png", k))
        (root / c / "desktop.ini").write_text("")
        make_image(root / c / ".hidden.png")
    return paths


def test_image_folder_seeded_split(tmp_path, caplog):
    root = tmp_path / "plain"
    per_class = {"zebra": 10, "ant": 20, "mole": 10}
    paths = build_class_folders(root, per_class)
    with caplog.at_level("INFO", logger="scaleprompt"):
        ds = load_dataset(f"folder:{root}")
    assert [r.getMessage() for r in caplog.records] == [  # (the split rule, said when the folder is read)
        f"{root}: no train/ folder: each class split 50 / 20 / 30 % into train / val / test (shuffled, seed 0)"
    ]
    assert ds.name == "plain" and Path(ds.image_root) == root
    assert ds.classnames == ["ant", "mole", "zebra"]
    # every image lands in exactly one split
    listed = [d.path for s in SPLITS for d in ds.split(s)]
    assert len(listed) == len(set(listed)) == 40
    assert set(listed) == {str(p) for p in paths}
    # per class: round(0.5 n) train, round(0.2 n) val, the rest test
    for label, c in enumerate(ds.classnames):
        n = per_class[c]
        got = {s: [d for d in ds.split(s) if d.label == label] for s in SPLITS}
        assert {s: len(v) for s, v in got.items()} == {
            "train": n // 2,
            "val": n // 5,
            "test": n - n // 2 - n // 5,
        }
        assert all(d.classname == c and Path(d.path).parent == root / c for v in got.values() for d in v)
        # shuffled before the cut: train is not simply the first files
        assert (
            sorted(d.path for d in got["train"])
            != sorted(str(p) for p in paths if p.parent.name == c)[: n // 2]
        )
    assert ds.counts() == {"train": 20, "val": 8, "test": 12}
    # deterministic: a second read (and a copy of the tree elsewhere) gives the same split
    assert load_dataset(f"folder:{root}") == ds
    other = tmp_path / "copy" / "plain"
    build_class_folders(other, per_class)
    again = load_dataset(f"folder:{other}")
    for s in SPLITS:
        assert [Path(d.path).relative_to(other) for d in again.split(s)] == [
            Path(d.path).relative_to(root) for d in ds.split(s)
        ]


def test_image_folder_errors_name_the_folder(tmp_path):
    with pytest.raises(DatasetError, match=f"dataset folder not found: {re.escape(str(tmp_path / 'nope'))}$"):
        load_dataset(f"folder:{tmp_path / 'nope'}")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no class folder here")
    with pytest.raises(
        DatasetError, match=f"no class folders with images under {re.escape(str(tmp_path / 'empty'))}$"
    ):
        load_dataset(f"folder:{tmp_path / 'empty'}")
    (tmp_path / "empty" / "cls").mkdir()  # a class folder without an image is named (not a missing label)
    with pytest.raises(
        DatasetError, match=f"class folder {re.escape(str(tmp_path / 'empty' / 'cls'))} holds no"
    ):
        load_dataset(f"folder:{tmp_path / 'empty'}")
    make_image(tmp_path / "split" / "train" / "a" / "1.png")
    (tmp_path / "split" / "train" / "b").mkdir()
    with pytest.raises(
        DatasetError, match=f"class folder {re.escape(str(tmp_path / 'split' / 'train' / 'b'))} holds no"
    ):
        load_dataset(f"folder:{tmp_path / 'split'}")
    (tmp_path / "nothing" / "train").mkdir(parents=True)
    with pytest.raises(DatasetError, match="no class folders with images under .*nothing/train$"):
        load_dataset(f"folder:{tmp_path / 'nothing'}")


# --- user data: split files ----------------------------------------------------------------------------------
CSV_ROWS = [
    ("train", "imgs/red_0.png", 1, "red car"),
    ("train", "imgs/blue_0.png", 0, "blue car"),
    ("train", "imgs/red_1.png", 1, "red car"),
    ("val", "imgs/blue_1.png", 0, "blue car"),
    ("test", "imgs/sub/red_2.png", 1, "red car"),
    ("test", "imgs/blue_2.png", 0, "blue car"),
    ("test", "imgs/blue_3.png", 0, "blue car"),
]


def write_csv(path: Path, rows=CSV_ROWS, header=("split", "path", "label", "classname", "note")) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        for row in rows:
            w.writerow([*row, "x"][: len(header)])


def test_csv_split_file(tmp_path):
    split_file = tmp_path / "mine" / "cars.csv"
    write_csv(split_file)
    for i, (_, rel, _, _) in enumerate(CSV_ROWS):
        make_image(split_file.parent / rel, i)
    expected = {
        s: [Datum(str(split_file.parent / r), y, c) for sp, r, y, c in CSV_ROWS if sp == s] for s in SPLITS
    }
    ds = load_dataset(str(split_file))
    check_splits(
        ds, "cars", split_file.parent, expected, ["blue car", "red car"], {"train": 3, "val": 1, "test": 3}
    )


def test_csv_split_file_with_image_root(tmp_path):
    split_file = tmp_path / "splits" / "cars.csv"
    write_csv(split_file)
    images = tmp_path / "elsewhere"
    for i, (_, rel, _, _) in enumerate(CSV_ROWS):
        make_image(images / rel, i)
    ds = load_dataset(str(split_file), images)
    assert Path(ds.image_root) == images
    assert ds.train[0] == Datum(str(images / "imgs/red_0.png"), 1, "red car")
    assert all(Path(d.path).is_file() for s in SPLITS for d in ds.split(s))


def test_csv_missing_column_is_named(tmp_path):
    split_file = tmp_path / "cars.csv"
    write_csv(split_file, header=("split", "path", "label"))
    with pytest.raises(DatasetError, match=f"{re.escape(str(split_file))} needs the columns .*'classname'"):
        load_dataset(str(split_file))


def test_csv_unknown_split_is_named(tmp_path):
    split_file = tmp_path / "cars.csv"
    write_csv(split_file, rows=[("dev", "a.png", 0, "a")])
    with pytest.raises(DatasetError, match="unknown split 'dev'"):
        load_dataset(str(split_file))


def test_missing_split_file_is_named(tmp_path):
    for name in ("absent.csv", "absent.json"):
        with pytest.raises(DatasetError, match=f"split file not found: {re.escape(str(tmp_path / name))}$"):
            load_dataset(str(tmp_path / name))


def test_json_split_file(tmp_path):
    split_file = tmp_path / "mine" / "flowers.json"
    split_file.parent.mkdir()
    data = {
        "train": [["b/1.jpg", 1, "rose"], ["a/1.jpg", 0, "tulip"]],
        "val": [["a/2.jpg", 0, "tulip"]],
        "test": [["b/2.jpg", 1, "rose"], ["b/3.jpg", 1, "rose"], ["a/3.jpg", 0, "tulip"]],
    }
    split_file.write_text(json.dumps(data))
    for n, (rel, _, _) in enumerate(r for s in SPLITS for r in data[s]):
        make_image(split_file.parent / rel, n)
    expected = {s: [Datum(str(split_file.parent / r), y, c) for r, y, c in data[s]] for s in SPLITS}
    ds = load_dataset(str(split_file))
    check_splits(
        ds, "flowers", split_file.parent, expected, ["tulip", "rose"], {"train": 2, "val": 1, "test": 3}
    )


def test_relative_roots_give_absolute_paths(tmp_path, monkeypatch):
    build_split_json(tmp_path / "data", "dtd", "images", "split_zhou_DescribableTextures.json", "nested")
    build_class_folders(tmp_path / "plain", {"a": 2, "b": 2})
    write_csv(tmp_path / "cars.csv")
    monkeypatch.chdir(tmp_path)
    for ds in (load_dataset("dtd", "data"), load_dataset("folder:plain"), load_dataset("cars.csv")):
        assert Path(ds.image_root).is_absolute()
        assert all(Path(d.path).is_absolute() for s in SPLITS for d in ds.split(s)), ds.name
    assert load_dataset("dtd", "data") == load_dataset("dtd", tmp_path / "data")


# --- the embedded default --------------------------------------------------------------------------------------
def test_fashion_mnist_embedded(tmp_path, monkeypatch):
    ds = load_dataset("FashionMNIST", tmp_path)
    root = tmp_path / "fashion_mnist"
    assert (root / "split_zhou_FashionMNIST.json").is_file()
    assert ds.name == "FashionMNIST" and Path(ds.image_root) == root / "images"
    assert ds.counts() == {"train": 640, "val": 160, "test": 1000}
    assert len(ds.classnames) == 10 and ds.classnames[0] == "t-shirt"
    assert ds.classnames == ["t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker",
                             "bag", "ankle boot"]  # fmt: skip
    items = [d for s in SPLITS for d in ds.split(s)]
    assert len({d.path for d in items}) == 1800
    assert {d.label for d in ds.test} == set(range(10))
    for d in items[::97]:
        assert Path(d.path).is_file() and Path(d.path).is_relative_to(root / "images")
        assert ds.classnames[d.label] == d.classname
        with Image.open(d.path) as img:
            assert img.size == (28, 28)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fashion_mnist"]  # no temporary folder left behind

    # a second load reuses the tree: the packaged archive is not read again
    def no_reload(*args, **kwargs):
        raise AssertionError("the embedded dataset was written again")

    monkeypatch.setattr(fashion_mnist.np, "load", no_reload)
    assert load_dataset("fashion_mnist", tmp_path) == ds
    monkeypatch.setattr(fashion_mnist, "DEFAULT_ROOT", root)  # no root: the user cache
    assert load_dataset("embedded") == ds


# --- images are checked when the shards are written -------------------------------------------------------------
def test_write_shards_of_a_benchmark(tmp_path):
    build_split_json(tmp_path / "data", "stanford_cars", "", "split_zhou_StanfordCars.json", "cars")
    ds = load_dataset("StanfordCars", tmp_path / "data")
    manifest = write_shards(ds, tmp_path / "shards")
    assert manifest["classnames"] == ["face", "water lilly", "accordion"]
    assert {s: manifest["splits"][s]["count"] for s in SPLITS} == JSON_COUNTS
    assert manifest["splits"]["test"]["class_counts"] == [3, 1, 1]
    with tarfile.open(tmp_path / "shards" / manifest["splits"]["train"]["shards"][0]["name"]) as tar:
        metas = [json.load(tar.extractfile(m)) for m in tar.getmembers() if m.name.endswith(".json")]
    assert sorted(m["path"] for m in metas) == [f"cars_train/{n:05d}.jpg" for n in range(1, 7)]
    assert {(m["label"], m["classname"]) for m in metas} == {
        (0, "face"),
        (1, "water lilly"),
        (2, "accordion"),
    }


def test_write_shards_names_a_missing_image(tmp_path):
    images, expected = build_split_json(
        tmp_path, "dtd", "images", "split_zhou_DescribableTextures.json", "nested"
    )
    gone = Path(expected["train"][3].path)
    gone.unlink()
    ds = load_dataset("dtd", tmp_path)
    out = tmp_path / "shards"
    with pytest.raises(DatasetError, match=f"image not found: {re.escape(str(gone))}$"):
        write_shards(ds, out)
    assert not list(out.glob("*.tar")) and not list(out.glob(".*.tmp-*"))  # no shard looks finished
    assert not (out / "manifest.json").exists()


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_write_shards_names_an_undecodable_image(tmp_path, damage):
    images, expected = build_split_json(tmp_path, "eurosat", "2750", "split_zhou_EuroSAT.json", "nested")
    bad = Path(expected["test"][1].path)
    # garbage: not an image at all; truncated: the header opens, the pixel data does not decode
    data = b"this is not a JPEG file" if damage == "garbage" else bad.read_bytes()[:-10]
    bad.write_bytes(data)
    ds = load_dataset("EuroSAT", tmp_path)
    with pytest.raises(DatasetError, match=f"image cannot be decoded: {re.escape(str(bad))}"):
        write_shards(ds, tmp_path / "shards")
    assert bad.read_bytes() == data  # the source is left alone
