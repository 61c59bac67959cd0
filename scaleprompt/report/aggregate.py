"""Runs -> rows: the mean and sample standard deviation over seeds of each group's variants.

``aggregate(runs, selection="last", metric="top1")`` groups the runs (:class:`~scaleprompt.report.variants.GroupKey`),
splits each group into its variants (:func:`~scaleprompt.report.variants.split_variants`) and gives one :class:`Row`
per variant: its seeds, and a :class:`Stat` per split of ``results[selection]`` in ``metric``.

* A row is the mean ± the sample standard deviation (n - 1) over seeds; with one seed the std is 0.00.
* The seeds of a row must have been tested on the same data: runs whose test image counts (``images`` of each
  test split, base / novel, transfer target) differ are refused with an error naming them and their counts, never
  averaged (a run tested on 1 image next to runs tested on 1600).
* With ``best_val``, runs that have no ``best_val`` results are left out (logged), never replaced by their last
  epoch.
* Duplicates (two runs of one variant with the same seed: a copied folder, a rerun) are never averaged twice:
  ``duplicates="error"`` (the default of :func:`aggregate`) refuses them naming the files; ``"skip"`` (the
  ``results`` and ``plot`` commands) keeps the run whose file path sorts first and names the others in one warning
  line per duplicate set.
* Base-to-novel HM: each seed's HM = 2·B·N/(B+N) is recomputed from that seed's Base and Novel in the chosen
  metric (the stored ``hm`` is top-1; a mismatch with its top-1 Base/Novel is logged).
"""

from __future__ import annotations

import logging
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from scaleprompt.data.datasets import BENCHMARKS, DG_TARGETS
from scaleprompt.data.protocols import harmonic_mean
from scaleprompt.report.load import LoadedRun, as_loaded
from scaleprompt.report.schema import METRICS, SELECTIONS, Accuracy, ResultsError, RunResult, SelectionResult
from scaleprompt.report.variants import GroupKey, Member, natural, split_variants, variant_label

logger = logging.getLogger(__name__)

Selection = Literal["last", "best_val"]
Metric = Literal["top1", "mean_per_class"]
Duplicates = Literal["error", "skip"]
DUPLICATES: tuple[str, ...] = ("skip", "error")  # what to do with two runs of one variant and seed

SETTINGS: tuple[str, ...] = ("base2new", "fewshot", "transfer")  # the order of the tables
# row / column order of the papers; names not listed follow, alphabetically
METHOD_ORDER = ("zsclip", "coop", "cocoop", "vpt_deep", "ivlp", "maple", "upt", "provp", "provp_ref")
DATASET_ORDER = (*BENCHMARKS, *DG_TARGETS)
HM_TOLERANCE = 0.05  # stored hm vs 2BN/(B+N) of the stored top-1 base / novel (rounding slack)


def order(name: str, preferred: Sequence[str]) -> tuple[int, str]:
    """Sort key of ``name``: its place in ``preferred``, names not in it after them, alphabetically."""
    return (preferred.index(name) if name in preferred else len(preferred), name)


def ordered(names: Iterable[str], preferred: Sequence[str]) -> list[str]:
    """The distinct ``names``, sorted by :func:`order` in ``preferred``."""
    return sorted(set(names), key=lambda n: order(n, preferred))


@dataclass(frozen=True)
class Stat:
    """Mean and sample std (n - 1; 0.0 when n == 1) of ``n`` per-seed values."""

    mean: float
    std: float
    n: int

    @classmethod
    def of(cls, values: Sequence[float]) -> Stat:
        """The statistics of ``values`` (at least one)."""
        if not values:
            raise ValueError("Stat.of needs at least one value")
        std = statistics.stdev(values) if len(values) > 1 else 0.0
        return cls(statistics.fmean(values), std, len(values))


@dataclass
class Row:
    """One (setting, method, dataset, shots, backbone + pretrained) group — one variant of it — over its seeds.

    ``values``: fewshot -> ``test``; base2new -> ``base``, ``novel``, ``hm`` (the per-seed HMs of the chosen
    metric); transfer -> ``test`` (source). ``targets`` (transfer): one :class:`Stat` per target dataset.
    ``variant``: what sets this row's runs apart from the other runs of its group (``"depth=2, lr=0.05"``,
    ``"lr=0.05; stopped at epoch 1"``); ``""`` when the group's runs share one configuration.
    """

    setting: str
    method: str
    dataset: str
    shots: int
    backbone: str
    pretrained: str | None
    selection: str
    metric: str
    seeds: tuple[int, ...]
    values: dict[str, Stat]
    targets: dict[str, Stat] = field(default_factory=dict)
    paths: tuple[str, ...] = ()
    variant: str = ""

    @property
    def n(self) -> int:
        return len(self.seeds)

    @property
    def label(self) -> str:
        """The Method column: ``"provp_ref"``, or ``"provp_ref (depth=2, lr=0.05)"`` for a variant."""
        return variant_label(self.method, self.variant)

    @property
    def hm_of_means(self) -> float:
        """Base-to-novel: 2·B·N/(B+N) of the mean Base and mean Novel (the papers' HM)."""
        return harmonic_mean(self.values["base"].mean, self.values["novel"].mean)


def aggregate(
    runs: Iterable[LoadedRun | RunResult | Mapping[str, Any]],
    selection: Selection | str = "last",
    metric: Metric | str = "top1",
    duplicates: Duplicates | str = "error",
) -> list[Row]:
    """Group ``runs`` by (setting, method, dataset, shots, backbone + pretrained), split each group into its
    variants (:func:`~scaleprompt.report.variants.split_variants`: runs whose configs differ in a field that defines
    the experiment, or that were stopped early, are different variants), and take mean / sample std over the seeds
    of each variant of ``results[selection]`` in ``metric``. One :class:`Row` per variant.

    ``runs``: :func:`~scaleprompt.report.load.load_runs`' runs, or results (dicts are validated, see
    :func:`~scaleprompt.report.load.as_loaded`). Runs without ``results[selection]`` (``best_val`` of a run without
    validation) are left out and logged. Two runs of one variant with the same seed (``duplicates``): ``"error"``
    raises :class:`ResultsError` naming both files; ``"skip"`` keeps the one whose source sorts first and logs one
    warning per duplicate set naming the kept and the skipped files (:func:`drop_duplicates`). Rows come sorted by
    setting, backbone, method (papers' order), variant, dataset, shots.
    """
    if selection not in SELECTIONS:
        raise ValueError(f"selection must be one of {list(SELECTIONS)}, got {selection!r}")
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {list(METRICS)}, got {metric!r}")
    if duplicates not in DUPLICATES:
        raise ValueError(f"duplicates must be one of {list(DUPLICATES)}, got {duplicates!r}")
    groups: dict[GroupKey, list[Member]] = {}
    skipped: list[str] = []
    for loaded in as_loaded(runs):
        member = Member.of(loaded, selection)
        if member is None:
            skipped.append(loaded.source)
            continue
        groups.setdefault(GroupKey.of(loaded.result), []).append(member)
    if skipped:
        shown = ", ".join(skipped[:5]) + (f" and {len(skipped) - 5} more" if len(skipped) > 5 else "")
        logger.warning(
            "%d run(s) have no %r results (no validation) and are left out: %s",
            len(skipped),
            selection,
            shown,
        )
    rows = []
    for key, group in groups.items():
        for variant, members in split_variants(group, selection, key).items():
            if duplicates == "skip":
                members = drop_duplicates(members, key.describe(variant))
            by_seed: dict[int, Member] = {}
            for m in members:
                seed = m.run.seed
                if seed in by_seed:
                    raise ResultsError(
                        f"two runs of {key.describe(variant)} with seed {seed}: {by_seed[seed].source} and "
                        f"{m.source} (scaleprompt results / plot: --duplicates skip keeps one)"
                    )
                by_seed[seed] = m
            check_same_test_data(members, key.setting, key.describe(variant))
            rows.append(_make_row(key, by_seed, selection, metric, variant))
    rows.sort(key=_row_order)
    return rows


def drop_duplicates(members: Sequence[Member], cell: str) -> list[Member]:
    """``members`` (the runs of one variant, ``cell`` names it) with one run per seed: of the runs sharing a seed,
    the one whose source sorts first is kept (whatever the order the runs were given in); one warning per
    duplicate set names the kept run and the skipped ones."""
    by_seed: dict[int, list[Member]] = {}
    for m in members:
        by_seed.setdefault(m.run.seed, []).append(m)
    kept = []
    for seed, same in by_seed.items():
        same = sorted(same, key=lambda m: m.source)
        kept.append(same[0])
        if len(same) > 1:
            logger.warning(
                "duplicate runs of %s with seed %d: keeping %s, skipping %s (--duplicates error stops instead)",
                cell,
                seed,
                same[0].source,
                ", ".join(m.source for m in same[1:]),
            )
    return kept


def _row_order(r: Row) -> tuple[Any, ...]:
    return (
        SETTINGS.index(r.setting),
        r.backbone,
        r.pretrained or "",
        order(r.method, METHOD_ORDER),
        natural(r.variant),
        order(r.dataset, DATASET_ORDER),
        r.shots,
    )


def tested_on(result: SelectionResult, setting: str) -> dict[str, int]:
    """The test images behind one selection's numbers ``result`` in ``setting``, by split (``test``; ``base`` /
    ``novel``; ``target X``), as far as the run recorded them (``images``: results.json of scaleprompt.run/2 and
    later)."""
    splits = {"base2new": ("base", "novel")}.get(setting, ("test",))
    counts: dict[str, int | None] = {}
    for s in splits:
        acc: Accuracy | None = getattr(result, s)
        if acc is not None:
            counts[s] = acc.images
    if setting == "transfer":
        counts.update({f"target {t}": acc.images for t, acc in result.targets.items()})
    return {k: v for k, v in counts.items() if isinstance(v, int)}


def check_same_test_data(members: Sequence[Member], setting: str, cell: str) -> None:
    """The seeds of one cell (``members``, of ``setting``; ``cell`` names it) must have been tested on the same
    data: the same test image count per split. A run tested on 1 image is never averaged with runs tested on 1600:
    :class:`ResultsError` naming the cell, the split, and the runs with each count. (The data fingerprint in
    results.json cannot be compared: it covers each seed's own few-shot training sample.)"""
    by_split: dict[str, dict[int, list[str]]] = {}
    for m in members:
        for split, images in tested_on(m.result, setting).items():
            by_split.setdefault(split, {}).setdefault(images, []).append(m.source)
    for split, counts in by_split.items():
        if len(counts) > 1:
            shown = "; ".join(
                f"{n} image{'s' if n != 1 else ''} ({', '.join(sources)})"
                for n, sources in sorted(counts.items())
            )
            raise ResultsError(
                f"{cell}: its runs were tested on different data, not averaged: {split} split with {shown}; pass "
                "only the runs of one test set, or rerun the others on it"
            )


def _metric(acc: Accuracy | None, metric: str) -> float:
    assert acc is not None, "the schema checked that every selection has the setting's splits"
    return float(getattr(acc, metric))


def _make_row(
    key: GroupKey, members: Mapping[int, Member], selection: str, metric: str, variant: str = ""
) -> Row:
    seeds = tuple(sorted(members))
    results = [members[s].result for s in seeds]
    paths = tuple(members[s].source for s in seeds)
    values: dict[str, Stat] = {}
    targets: dict[str, Stat] = {}
    if key.setting == "base2new":
        for res, source in zip(results, paths, strict=True):
            stored = harmonic_mean(_metric(res.base, "top1"), _metric(res.novel, "top1"))
            hm = res.hm if res.hm is not None else stored
            if abs(hm - stored) > HM_TOLERANCE:
                logger.warning(
                    "%s: stored hm %.2f differs from 2BN/(B+N) = %.2f of its top-1 base / novel; "
                    "the tables use the recomputed HM",
                    source,
                    hm,
                    stored,
                )
        values["base"] = Stat.of([_metric(r.base, metric) for r in results])
        values["novel"] = Stat.of([_metric(r.novel, metric) for r in results])
        values["hm"] = Stat.of(
            [harmonic_mean(_metric(r.base, metric), _metric(r.novel, metric)) for r in results]
        )
    else:
        values["test"] = Stat.of([_metric(r.test, metric) for r in results])
    if key.setting == "transfer":
        names = ordered((t for r in results for t in r.targets), DATASET_ORDER)
        targets = {
            t: Stat.of([_metric(r.targets[t], metric) for r in results if t in r.targets]) for t in names
        }
    return Row(
        *key,
        selection=selection,
        metric=metric,
        seeds=seeds,
        values=values,
        targets=targets,
        paths=paths,
        variant=variant,
    )
