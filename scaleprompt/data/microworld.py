"""Downstream datasets drawn from the micro-world, registered like the benchmarks (few-shot, base-to-novel and
cross-dataset work unchanged, via shards).

Each is generated once, deterministically, into CoOp's layout under ``<root>/microworld/<name>-<definition hash>``
(default root: the user cache; the hash covers everything that shapes the pixels and labels, so a changed
definition is never served from an old folder) with 24 train, 8 val and 50 test images per class.

The calibrated shifts (64 colour-shape classes, ordered so that Dassl's base half -- the first 32 labels -- and
novel half each hold every colour and every shape: base = pairs whose colour index + shape index is even; novel
classes are unseen *combinations* of seen colours and shapes):

* ``MicroWorld``: the pretraining distribution (zero-shot is high; a cross-dataset source).
* ``MicroWorldSketch``: half of the objects drawn as outlines, on plain backgrounds, faded colours (saturation
  0.4), slightly blurred.
* ``MicroWorldClutter``: background textures never seen in pretraining (noise, waves, colourful), pixel noise
  (std 12), lower saturation (0.65).

The shifts are calibrated so that the shipped backbone's 64-way zero-shot accuracy lands between 35% and 50%
(93.5% on ``MicroWorld``): Sketch 45.3%, Clutter 41.5% on the test splits (tests/test_microworld.py checks).

The findings worlds (docs/findings.md; defined from the papers' stated mechanisms before any method ran on them):

* ``MicroWorldNovelShapes`` / ``MicroWorldNovelColours``: base-to-novel worlds whose novel classes differ from
  the base classes in what distinguishes them -- four shapes (colours) never seen in the base half -- in the
  Clutter style.
* ``MicroVar<text>-<visual>``: UPT's Figure 1 in miniature, 8 classes each. ``<text>``: how the class names
  differ for the text tower -- ``Shape`` (one colour, the 8 shapes: names differ in the shape word only),
  ``Colour`` (one shape, the 8 colours) or ``Both`` (colour i with shape i: both words differ). ``<visual>``: how
  varied one class's images are -- ``Tight`` (plain backgrounds, filled, no rotation, no colour jitter, faded and
  blurred) or ``Loose`` (the Clutter backgrounds and pixel noise, filled / outline / striped objects, rotation up
  to 45 degrees).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from scaleprompt.data.layout import (
    CACHE_ROOT,
    DatasetSplits,
    classnames_of,
    read_split_json,
    write_generated,
)
from scaleprompt.microworld import world

PER_CLASS = {"train": 24, "val": 8, "test": 50}
SPLIT_FILE = "split_microworld.json"
GENERATOR_VERSION = 1  # bump when world.render / sample_scenes change what a seed draws


@dataclass(frozen=True)
class MicroDataset:
    """One generated dataset: its seed, its style and its classes as (colour, shape) index pairs, in label order
    (for base-to-novel, Dassl's rule makes the first half base)."""

    seed: int
    style: world.WorldStyle
    classes: tuple[tuple[int, int], ...]

    def classnames(self) -> list[str]:
        """Its class names (``"<colour> <shape>"``), in label order."""
        return [f"{world.COLOURS[c]} {world.SHAPES[s]}" for c, s in self.classes]

    def fingerprint(self) -> str:
        """Hash of everything that shapes the pixels and labels (for the folder name)."""
        spec = {
            "seed": self.seed,
            "style": asdict(self.style),
            "classes": self.classes,
            "per_class": PER_CLASS,
            "generator": GENERATOR_VERSION,
        }
        return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:10]


def class_order() -> list[tuple[int, int]]:
    """(colour, shape) of each label: the 32 even pairs (base), then the 32 odd ones (novel)."""
    pairs = [(c, s) for c in range(len(world.COLOURS)) for s in range(len(world.SHAPES))]
    return [p for p in pairs if sum(p) % 2 == 0] + [p for p in pairs if sum(p) % 2 == 1]


def classnames() -> list[str]:
    """The 64 class names (``"<colour> <shape>"``) in :func:`class_order`."""
    return [f"{world.COLOURS[c]} {world.SHAPES[s]}" for c, s in class_order()]


CLUTTER = world.WorldStyle(backgrounds=world.NEW_BACKGROUNDS, saturation=0.65, noise=12.0)
TIGHT = world.WorldStyle(backgrounds=("plain",), saturation=0.5, blur=1, colour_jitter=0.0, max_rotation=0.0)
LOOSE = world.WorldStyle(
    backgrounds=world.NEW_BACKGROUNDS,
    object_styles=world.OBJECT_STYLES,
    saturation=0.65,
    noise=12.0,
    max_rotation=45.0,
)
_ALL = tuple(range(8))
VARIANCE_TEXT = {  # name -> classes (colour, shape): how the 8 class names differ
    "Shape": tuple((0, s) for s in _ALL),  # red circle, red square, ...
    "Colour": tuple((c, 0) for c in _ALL),  # red circle, orange circle, ...
    "Both": tuple((i, i) for i in _ALL),  # red circle, orange square, yellow triangle, ...
}
VARIANCE_VISUAL = {"Tight": TIGHT, "Loose": LOOSE}

DATASETS: dict[str, MicroDataset] = {
    "MicroWorld": MicroDataset(101, world.WorldStyle(), tuple(class_order())),
    "MicroWorldSketch": MicroDataset(
        102,
        world.WorldStyle(backgrounds=("plain",), object_styles=("filled", "outline"), saturation=0.4, blur=1),
        tuple(class_order()),
    ),
    "MicroWorldClutter": MicroDataset(103, CLUTTER, tuple(class_order())),
    # base: the 8 colours x circle, square, triangle, star; novel: x cross, ring, crescent, heart
    "MicroWorldNovelShapes": MicroDataset(
        111,
        CLUTTER,
        tuple((c, s) for s in range(4) for c in _ALL) + tuple((c, s) for s in range(4, 8) for c in _ALL),
    ),
    # base: red, yellow, cyan, purple x the 8 shapes; novel: orange, green, blue, pink (each between two base hues)
    "MicroWorldNovelColours": MicroDataset(
        112,
        CLUTTER,
        tuple((c, s) for c in (0, 2, 4, 6) for s in _ALL) + tuple((c, s) for c in (1, 3, 5, 7) for s in _ALL),
    ),
}
for _i, (_text, _classes) in enumerate(VARIANCE_TEXT.items()):
    for _j, (_visual, _style) in enumerate(VARIANCE_VISUAL.items()):
        DATASETS[f"MicroVar{_text}-{_visual}"] = MicroDataset(120 + 2 * _i + _j, _style, _classes)

SHIFTS = {name: (d.seed, d.style) for name, d in DATASETS.items()}  # (kept for callers of the old mapping)
VARIANCE_DATASETS = [name for name in DATASETS if name.startswith("MicroVar")]


def samples(name: str, size: int = 64):
    """Yield ``(split, image, label, classname)`` of dataset ``name`` (images ``size`` x ``size``), deterministic by
    its seed."""
    spec = DATASETS[name]
    rng = np.random.default_rng(spec.seed)
    order = np.array(spec.classes)
    names = spec.classnames()
    for split, per_class in PER_CLASS.items():
        labels = np.repeat(np.arange(len(order)), per_class)
        scenes = world.sample_scenes(
            rng, len(labels), spec.style, shape=order[labels, 1], colour=order[labels, 0]
        )
        images = world.render(scenes, rng, size, spec.style)
        for image, label in zip(images, labels, strict=True):
            yield split, image, int(label), names[label]


def load_microworld(name: str, root: Path | None = None) -> DatasetSplits:
    """Dataset ``name`` of :data:`DATASETS`, written under ``root/microworld/<name>-<hash>`` on first use
    (``root``: default the user cache)."""
    folder = Path(root or CACHE_ROOT) / "microworld" / f"{name}-{DATASETS[name].fingerprint()}"
    folder = write_generated(folder, SPLIT_FILE, samples(name))
    train, val, test = read_split_json(folder / SPLIT_FILE, folder / "images")
    return DatasetSplits(name, folder / "images", train, val, test, classnames_of(train, val, test))
