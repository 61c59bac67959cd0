"""Data protocols as pure functions: Dassl-identical few-shot sampling, validation shots,
base / novel class subsets with relabelling, and the evaluation sets of cross-dataset and DG transfer.

Few-shot sampling reproduces Dassl's ``generate_fewshot_dataset`` call for call: a ``random.Random(seed)`` gives
the same stream as Dassl's ``random.seed(seed)`` at start-up; items are grouped by label in order of first
appearance; each label takes ``rng.sample(items, K)`` (all items when fewer); train is sampled first, then val with
``min(K, 4)`` shots, from the same stream.

Dassl takes every image of a class that has fewer than K. Here that is refused unless asked for
(:func:`fewer_shots_problem`, checked by the shard writer and the shard cache): a class-folder dataset with 10
training images per class asked for 16 shots would otherwise train on 10 and be labelled 16-shot. When every class
has K images the draw is Dassl's, unchanged.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Literal

from scaleprompt.config import check_types, require
from scaleprompt.data.datasets import (
    CROSS_DATASET_TARGETS,
    DG_TARGETS,
    DatasetError,
    DatasetSplits,
    Datum,
    classnames_of,
)

Subset = Literal["all", "base", "new"]


@dataclass(frozen=True)
class Protocol:
    """``shots`` <= 0 keeps every training image; ``subset`` selects base / novel (``"new"``) classes."""

    shots: int = 16
    seed: int = 1
    subset: Subset = "all"

    def __post_init__(self) -> None:
        check_types(self)
        require(self.seed >= 0, "seed", f"must be >= 0, got {self.seed}")

    @property
    def val_shots(self) -> int:
        """Validation images per class: ``min(shots, 4)`` (CoOp's)."""
        return min(self.shots, 4)

    def tag(self) -> str:
        """The protocol in a folder name: ``16shot-seed1-all``, ``full-seed1-base``."""
        shots = f"{self.shots}shot" if self.shots > 0 else "full"
        return f"{shots}-seed{self.seed}-{self.subset}"


def split_by_label(items: Sequence[Datum]) -> dict[int, list[Datum]]:
    """``items`` grouped by label, labels in order of first appearance (Dassl's ``split_dataset_by_label``)."""
    groups: dict[int, list[Datum]] = {}
    for d in items:
        groups.setdefault(d.label, []).append(d)
    return groups


def fewshot(items: Sequence[Datum], shots: int, rng: random.Random) -> list[Datum]:
    """``shots`` of the ``items`` per label with ``rng.sample`` (all of a label's items when it has fewer)."""
    if shots < 1:
        return list(items)
    out: list[Datum] = []
    for group in split_by_label(items).values():
        out.extend(rng.sample(group, shots) if len(group) >= shots else group)
    return out


def fewer_shots_problem(
    dataset: str, classnames: Sequence[str], counts: Sequence[int], shots: int
) -> str | None:
    """What is wrong when some of ``classnames`` of ``dataset`` have fewer than ``shots`` training images
    (``counts``: the images per class after the protocol, i.e. min(shots, available)): one line naming them (first
    few + count); None when every class has ``shots`` (or ``shots`` <= 0: all images)."""
    if shots < 1:
        return None
    short = [f"{name!r} ({n})" for name, n in zip(classnames, counts, strict=True) if n < shots]
    if not short:
        return None
    more = f" and {len(short) - 5} more" if len(short) > 5 else ""
    return (
        f"{dataset}: {len(short)} of {len(classnames)} classes have fewer than {shots} training images for "
        f"{shots}-shot: {', '.join(short[:5])}{more}"
    )


def subsample_classes(*splits: Sequence[Datum], subset: Subset = "all") -> tuple[list[Datum], ...]:
    """Dassl's ``subsample_classes``: labels of the FIRST of ``splits`` sorted, base = first ceil(C/2), new = the
    rest; every split filtered to the labels of ``subset`` (``all``, ``base``, ``new``) and relabelled 0..k-1."""
    if subset == "all":
        return tuple(list(s) for s in splits)
    labels = sorted({d.label for d in splits[0]})
    m = math.ceil(len(labels) / 2)
    selected = labels[:m] if subset == "base" else labels[m:]
    relabel = {y: i for i, y in enumerate(selected)}
    return tuple(
        [Datum(d.path, relabel[d.label], d.classname) for d in s if d.label in relabel] for s in splits
    )


def apply_protocol(ds: DatasetSplits, protocol: Protocol) -> DatasetSplits:
    """``ds`` after ``protocol``: few-shot train / val, then the class subset; class names follow the relabelled
    labels."""
    rng = random.Random(protocol.seed)
    train = fewshot(ds.train, protocol.shots, rng)
    if ds.val_from_train:  # no official val (ImageNet): val shots from train images the few-shot draw left
        taken = {d.path for d in train}
        val = (
            fewshot([d for d in ds.train if d.path not in taken], protocol.val_shots, rng)
            if protocol.shots > 0
            else []
        )
    else:
        val = fewshot(ds.val, protocol.val_shots, rng) if protocol.shots > 0 else list(ds.val)
    reference = train if train else ds.test  # eval-only datasets: classes come from the test split
    if protocol.subset != "all" and len({d.label for d in reference}) < 2:
        raise DatasetError(
            f"base-to-novel needs at least 2 classes (half base, half novel): {ds.name} has "
            f"{len({d.label for d in reference})} ({', '.join(ds.classnames) or 'none'})"
        )
    first, train, val, test = subsample_classes(reference, train, val, ds.test, subset=protocol.subset)
    return replace(ds, train=train, val=val, test=test, classnames=classnames_of(first, train, val, test))


def evaluation_targets(setting: Literal["cross_dataset", "domain_generalization"]) -> list[str]:
    """Datasets a prompt trained on ImageNet is evaluated on in ``setting`` (test split, all classes)."""
    return list(CROSS_DATASET_TARGETS if setting == "cross_dataset" else DG_TARGETS)


def harmonic_mean(base: float, novel: float) -> float:
    """The harmonic mean of the ``base`` and ``novel`` accuracies, 2 B N / (B + N) (0 when both are 0)."""
    return 0.0 if base + novel == 0 else 2 * base * novel / (base + novel)
