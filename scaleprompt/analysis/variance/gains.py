"""The gain of each method over zero-shot per dataset (:func:`method_gains`: the rules are in
:mod:`scaleprompt.analysis.variance`) and the lines fitted through the gains against each statistic
(:func:`fit_gains`)."""

from __future__ import annotations

import logging
import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from scaleprompt.analysis.features import AnalysisError
from scaleprompt.analysis.variance.stats import STATISTICS, DatasetStatistics, fit_line
from scaleprompt.data.protocols import harmonic_mean
from scaleprompt.report.aggregate import METHOD_ORDER, aggregate

logger = logging.getLogger(__name__)

ZSCLIP = "zsclip"
METRIC_OF_SETTING = {"fewshot": "test top-1", "base2new": "HM of base / novel top-1"}


@dataclass(frozen=True)
class Gain:
    """One method on one dataset: accuracy over seeds and its gain over zero-shot (percentage points)."""

    dataset: str
    method: str
    setting: str
    shots: int
    seeds: tuple[int, ...]
    accuracy_mean: float
    accuracy_std: float
    zero_shot: float
    zero_shot_source: str
    per_seed_gains: dict[int, float]

    @property
    def gain_mean(self) -> float:
        """The mean of the per-seed gains."""
        return statistics.fmean(self.per_seed_gains.values())

    @property
    def gain_std(self) -> float:
        """The sample std of the per-seed gains (0 for one seed)."""
        values = list(self.per_seed_gains.values())
        return statistics.stdev(values) if len(values) > 1 else 0.0


@dataclass(frozen=True)
class Fit:
    """A line through one method's per-dataset mean gains against one statistic, and its slope per seed."""

    method: str
    statistic: str
    slope: float
    intercept: float
    pearson_r: float
    n_datasets: int
    per_seed_slopes: dict[int, float]


def _run_value(result: Mapping[str, Any], setting: str) -> float:
    """The accuracy a gain is measured in: few-shot test top-1; base-to-novel HM of base / novel top-1."""
    if setting == "base2new":
        return harmonic_mean(result["base"]["top1"], result["novel"]["top1"])
    return float(result["test"]["top1"])


def _recorded_zero_shot(run: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The zero-shot results ``run`` recorded (``eval.zero_shot_baseline=true``), or None."""
    zero_shot = run.get("zero_shot")
    return zero_shot if isinstance(zero_shot, Mapping) else None


def method_gains(
    runs: Sequence[Mapping[str, Any]],
    datasets: Sequence[str],
    methods: Sequence[str] | None = None,
    selection: str = "last",
) -> tuple[str, list[Gain]]:
    """The setting of ``runs`` (results.json dicts, each with its ``_path``) and the gain of every trained method
    on every dataset it has runs of (see :mod:`scaleprompt.analysis.variance`). ``datasets``: the display names
    analysed (runs of others are refused); ``methods``: None = every method of the runs but zero-shot;
    ``selection``: the results read (``last`` or ``best_val``). One configuration per method and dataset (one row
    of :func:`~scaleprompt.report.aggregate.aggregate`), else an error."""
    rows = aggregate(runs, selection, "top1")
    if not rows:
        raise AnalysisError(f"no run has {selection!r} results")
    settings = sorted({r.setting for r in rows})
    if len(settings) > 1 or settings[0] not in METRIC_OF_SETTING:
        raise AnalysisError(
            f"the runs are of the settings {', '.join(settings)}: pass the runs of one setting, fewshot (gain in "
            "test top-1) or base2new (gain in HM)"
        )
    setting = settings[0]
    outside = sorted({r.dataset for r in rows} - set(datasets))
    if outside:
        example = next(r.paths[0] for r in rows if r.dataset == outside[0])
        raise AnalysisError(
            f"runs of {', '.join(outside)} (e.g. {example}) but --datasets has {', '.join(datasets)}: add the "
            "dataset or leave its runs out"
        )
    by_path = {str(run.get("_path", f"<run {i}>")): run for i, run in enumerate(runs)}  # (aggregate's names)
    present = [m for m in METHOD_ORDER if any(r.method == m for r in rows)]
    present += sorted({r.method for r in rows} - set(present))
    wanted = [m for m in present if m != ZSCLIP] if methods is None else list(methods)
    if not wanted:
        raise AnalysisError(
            "the runs hold no trained method (only zero-shot CLIP): nothing to measure a gain of"
        )
    gains = []
    for method in wanted:
        mine = [r for r in rows if r.method == method]
        if not mine:
            raise AnalysisError(
                f"--methods {method}: no run of {method} (the runs hold {', '.join(present)})"
            )
        for dataset in datasets:
            cell = [r for r in mine if r.dataset == dataset]
            if not cell:
                continue
            if len(cell) > 1:
                configs = "; ".join(
                    f"{r.shots} shots{' ' + r.variant if r.variant else ''} ({r.paths[0]})" for r in cell
                )
                raise AnalysisError(
                    f"{method} on {dataset}: runs of {len(cell)} configurations ({configs}): pass one configuration "
                    "per method and dataset"
                )
            row = cell[0]
            values = {
                seed: _run_value(by_path[p]["results"][selection], setting)
                for seed, p in zip(row.seeds, row.paths, strict=True)
            }
            zs_rows = [r for r in rows if r.method == ZSCLIP and r.dataset == dataset]
            if zs_rows:
                zs_values = [
                    _run_value(by_path[p]["results"][selection], setting) for r in zs_rows for p in r.paths
                ]
                zero = statistics.fmean(zs_values)
                source = f"zsclip runs ({len(zs_values)})"
                per_seed = {s: v - zero for s, v in values.items()}
            else:
                recorded = {
                    s: _recorded_zero_shot(by_path[p]) for s, p in zip(row.seeds, row.paths, strict=True)
                }
                missing = [p for (s, z), p in zip(recorded.items(), row.paths, strict=True) if z is None]
                if missing:
                    raise AnalysisError(
                        f"no zero-shot accuracy for {method} on {dataset}: no zsclip run of {dataset}, and "
                        f"{missing[0]} records no zero-shot baseline; add zsclip runs or train with "
                        "eval.zero_shot_baseline=true"
                    )
                zs = {s: _run_value(z, setting) for s, z in recorded.items() if z is not None}
                zero = statistics.fmean(zs.values())
                source = "recorded baseline (eval.zero_shot_baseline)"
                per_seed = {s: v - zs[s] for s, v in values.items()}
            stat = row.values["hm" if setting == "base2new" else "test"]
            gains.append(
                Gain(
                    dataset=dataset,
                    method=method,
                    setting=setting,
                    shots=row.shots,
                    seeds=row.seeds,
                    accuracy_mean=stat.mean,
                    accuracy_std=stat.std,
                    zero_shot=zero,
                    zero_shot_source=source,
                    per_seed_gains=per_seed,
                )
            )
    return setting, gains


def check_fittable(gains: Sequence[Gain]) -> None:
    """Every method of ``gains`` has gains on at least 2 datasets (a line needs 2 points), else an error naming it."""
    for method in dict.fromkeys(g.method for g in gains):
        mine = [g.dataset for g in gains if g.method == method]
        if len(mine) < 2:
            raise AnalysisError(
                f"{method} has runs on {len(mine)} dataset ({', '.join(mine)}): a line needs at least 2; add runs "
                "or leave it out with --methods"
            )


def fit_gains(gains: Sequence[Gain], stats: Mapping[str, DatasetStatistics]) -> list[Fit]:
    """Per method of ``gains`` and statistic: the line through the per-dataset mean gains against the statistic of
    each dataset in ``stats`` (display name -> statistics), and the slope per seed (the seeds every dataset of the
    method has). A method with gains on fewer than 2 datasets is an error."""
    check_fittable(gains)
    fits = []
    for method in dict.fromkeys(g.method for g in gains):
        mine = [g for g in gains if g.method == method]
        common = sorted(set.intersection(*(set(g.per_seed_gains) for g in mine)))
        for name in STATISTICS:
            x = [getattr(stats[g.dataset], name) for g in mine]
            if len(set(x)) < 2:  # (datasets with the same class names and template share the text statistic)
                logger.warning(
                    "%s: every dataset it has runs on has the same %s (%.6g): no line fitted (nan in the fits)",
                    method,
                    name,
                    x[0],
                )
                fits.append(Fit(method, name, math.nan, math.nan, math.nan, len(mine), {}))
                continue
            slope, intercept, r = fit_line(x, [g.gain_mean for g in mine])
            per_seed = {s: fit_line(x, [g.per_seed_gains[s] for g in mine])[0] for s in common}
            fits.append(Fit(method, name, slope, intercept, r, len(mine), per_seed))
    return fits
