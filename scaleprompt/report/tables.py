"""Run results -> paper-style tables: mean ± std over seeds, as markdown and CSV.

Every training run writes one ``<output_dir>/results.json`` (:class:`~scaleprompt.report.schema.RunResult`,
validated on load by the schema)::

    {"format": "scaleprompt.run/3", "method": "provp_ref", "dataset": "OxfordPets", "setting": "base2new",
     "shots": 16, "seed": 1, "backbone": "ViT-B-16", "pretrained": "openai", ...,
     "results": {"last": {...}, "best_val": {...}}, "config": {...}, "timing": {...}}

``results.<selection>`` (``last`` = last epoch, ``best_val`` = epoch chosen on the validation split; a run without
validation has no ``best_val``) holds, per setting, splits of the form ``{"top1": %, "mean_per_class": %}``:
``fewshot`` -> ``val``, ``test``; ``base2new`` -> ``val``, ``base``, ``novel`` and ``hm`` (a number);
``transfer`` -> ``val``, ``test`` (the source dataset) and ``targets: {name: split}``. ``val`` may be absent or
null (no validation split); it is checked when present but never tabulated (it is the selection split).

Pipeline (every step a pure function)::

    runs = load_runs(["runs/", "more/*/results.json"])      # validated dicts; "_path" = the file read
    rows = aggregate(runs, selection="last", metric="top1")  # one Row per group (and variant), over its seeds
    tables = make_tables(rows, "base2new")                  # or base2new_tables / fewshot_tables / transfer_tables
    to_markdown(tables), to_csv(tables)

CLI: ``scaleprompt results RUNS...`` or ``python -m scaleprompt.report.tables RUNS... [--selection last|best_val] [--metric top1|mean_per_class]
[--out-dir DIR]`` writes ``results_<setting>.md`` and ``.csv`` per setting present and logs the markdown.
``--published`` adds, separately, each measured average beside the papers' published numbers
(:mod:`scaleprompt.report.published`).

Conventions (also written under every table):

* A cell is the mean ± the sample standard deviation (n - 1) over seeds; with one seed the std is 0.00. The
  "Seeds" column gives the number of seeds behind the row's cells (a range when they differ).
* The seeds of a cell must have been tested on the same data: runs whose test image counts (``images`` of each
  test split, base / novel, transfer target) differ are refused with an error naming them and their counts, never
  averaged (a run tested on 1 image next to runs tested on 1600).
* Variants: runs are grouped by (setting, method, dataset, shots, backbone, pretrained), and within a group only
  runs of the same configuration are averaged over seeds. The run configs (``results.json`` ``config``,
  flattened) are compared, ignoring :data:`VARIANT_IGNORED` (the seed, paths, logging, checkpointing, ...); the
  fields whose values differ define the variants, each its own row labelled ``provp_ref (depth=2, lr=0.05)``.
  A run stopped early by a search scheduler (``stopped_early``) is its own variant (``...; stopped at epoch 1``),
  never averaged with finished runs. A group whose runs share one configuration keeps the plain method label.
* "Backbone" is the model name AND its pretrained tag: runs of ViT-B-16/openai and ViT-B-16/laion2b are never
  averaged together (they land in separate tables).
* The selection (last epoch / best validation epoch) is in every table title. With ``best_val``, runs that have
  no ``best_val`` results are left out (logged), never replaced by their last epoch.
* Base-to-novel HM: each seed's HM = 2·B·N/(B+N) is recomputed from that seed's Base and Novel in the chosen
  metric (the stored ``hm`` is top-1; a mismatch with its top-1 Base/Novel is logged). The HM cell shows, as the
  papers do, the harmonic mean of the Base and Novel MEANS shown next to it, ± the std of the per-seed HMs.
* "Average over datasets" (base-to-novel, CoCoOp / MaPLe style): Base and Novel are the averages of the
  per-dataset means; HM is the harmonic mean of those two averages, NOT the average of the per-dataset HMs
  (that is how the papers compute it). Few-shot averages (per shot) and transfer averages (over targets, source
  excluded) are likewise averages of per-dataset means. Averages have no ±; an average over only k of the
  table's N datasets is marked ``(k/N)``.
"""

from __future__ import annotations

import argparse
import csv
import glob
import io
import json
import logging
import re
import statistics
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, NamedTuple

from scaleprompt.data.datasets import BENCHMARKS, DG_TARGETS
from scaleprompt.data.protocols import harmonic_mean
from scaleprompt.identity import MAY_CHANGE, flatten
from scaleprompt.report.schema import METRICS, SELECTIONS, ResultsError, RunResult

logger = logging.getLogger("scaleprompt.report.tables")  # not __name__: "__main__" under -m

Selection = Literal["last", "best_val"]
Metric = Literal["top1", "mean_per_class"]

RESULTS_FILE = "results.json"
SETTINGS: tuple[str, ...] = ("base2new", "fewshot", "transfer")  # the order of the tables
SELECTION_LABELS = {"last": "last epoch", "best_val": "best validation epoch"}
METRIC_LABELS = {"top1": "top-1 accuracy (%)", "mean_per_class": "mean per-class accuracy (%)"}
SETTING_TITLES = {
    "base2new": "Base-to-novel generalization",
    "fewshot": "Few-shot classification",
    "transfer": "Transfer from a source dataset to targets",
}
# row / column order of the papers; names not listed follow, alphabetically
METHOD_ORDER = ("zsclip", "coop", "cocoop", "vpt_deep", "ivlp", "maple", "upt", "provp", "provp_ref")
DATASET_ORDER = (*BENCHMARKS, *DG_TARGETS)
HM_TOLERANCE = 0.05  # stored hm vs 2BN/(B+N) of the stored top-1 base / novel (rounding slack)
MISSING = "—"


# ----------------------------------------------------------------------------------------------- loading


def validate_run(data: Any, source: str | Path) -> dict[str, Any]:
    """Check that ``data`` is a scaleprompt run (:meth:`RunResult.from_dict`); return it. Errors are
    :class:`ResultsError` messages that start with ``source`` (the file)."""
    RunResult.from_dict(data, source)
    return data


def _read_run(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ResultsError(f"{path}: not valid JSON ({exc})") from None
    run = dict(validate_run(data, path))
    run["_path"] = str(path)
    return run


def _expand(item: str | Path) -> list[Path]:
    """A file -> itself; a directory -> its results.json files (recursive); else a glob pattern."""
    path = Path(item)
    if path.is_dir():
        found = sorted(path.rglob(RESULTS_FILE))
        if not found:
            raise FileNotFoundError(f"no {RESULTS_FILE} under {path}")
        return found
    if path.is_file():
        return [path]
    text = str(item)
    if any(c in text for c in "*?["):
        out: list[Path] = []
        for match in sorted(glob.glob(text, recursive=True)):
            p = Path(match)
            out.extend(sorted(p.rglob(RESULTS_FILE)) if p.is_dir() else [p])
        if not out:
            raise FileNotFoundError(f"no run results match {text}")
        return out
    raise FileNotFoundError(f"no such file or directory: {text}")


def load_runs(paths: str | Path | Iterable[str | Path]) -> list[dict[str, Any]]:
    """Read run results from files, directories (searched recursively for ``results.json``) and glob patterns.

    Returns the validated run dicts in argument order (files sorted within a directory / pattern; a file reached
    twice is read once), each with ``"_path"`` set to the file it came from. A file that is not valid JSON or
    not a scaleprompt run raises :class:`ResultsError` (a ``ValueError``) naming the file; a path or
    pattern that yields no file raises ``FileNotFoundError``.
    """
    items = [paths] if isinstance(paths, str | Path) else list(paths)
    if not items:
        raise ValueError("no run paths given")
    seen: set[Path] = set()
    runs: list[dict[str, Any]] = []
    for item in items:
        for path in _expand(item):
            key = path.resolve()
            if key not in seen:
                seen.add(key)
                runs.append(_read_run(path))
    logger.debug("loaded %d runs", len(runs))
    return runs


# ----------------------------------------------------------------------------------------------- aggregation


@dataclass(frozen=True)
class Stat:
    """Mean and sample std (n - 1; 0.0 when n == 1) of ``n`` per-seed values."""

    mean: float
    std: float
    n: int

    @classmethod
    def of(cls, values: Sequence[float]) -> Stat:
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


def _order(name: str, preferred: Sequence[str]) -> tuple[int, str]:
    return (preferred.index(name) if name in preferred else len(preferred), name)


def _ordered(names: Iterable[str], preferred: Sequence[str]) -> list[str]:
    return sorted(set(names), key=lambda n: _order(n, preferred))


def variant_label(method: str, variant: str) -> str:
    return f"{method} ({variant})" if variant else method


def _describe(key: tuple[Any, ...], variant: str = "") -> str:
    setting, method, dataset, shots, backbone, pretrained = key
    return f"{setting} {variant_label(method, variant)} on {dataset} ({shots} shots, {backbone}/{pretrained})"


# ----------------------------------------------------------------------------------------------- variants

# Run-config fields (flattened ``RunConfig.to_dict()`` keys) that do NOT define the experiment: runs of one group
# that differ only in these are seeds of one configuration and are averaged together. It is
# identity.MAY_CHANGE — output / cache / data paths, logging and TensorBoard, checkpoint frequency and retention,
# evaluation frequency and batch size, extra transfer targets and their root, gradient checkpointing — plus
# ``train.seed`` (what is averaged over), minus :data:`VARIANT_DEFINING_MAY_CHANGE`.
VARIANT_DEFINING_MAY_CHANGE = frozenset({
    "optim.epochs",  # a resume may extend it, but the results.json config holds the final value: what was trained
    "train.max_steps",  # > 0 stops training after that many steps: different numbers
})  # fmt: skip
VARIANT_IGNORED: frozenset[str] = (MAY_CHANGE - VARIANT_DEFINING_MAY_CHANGE) | {"train.seed"}
# ... except, per selection, the fields that change which epoch it picks (validating every 2 epochs instead of
# every epoch can choose another best_val epoch; it cannot change the last epoch)
SELECTION_DEFINING: dict[str, frozenset[str]] = {
    "last": frozenset(),
    "best_val": frozenset({"eval.every_epochs"}),
}
_ABSENT = "<absent>"  # the comparison key of a field a run's config does not have


def ignored_fields(selection: str) -> frozenset[str]:
    """The config fields that do not tell variants apart when tabulating ``selection``."""
    return VARIANT_IGNORED - SELECTION_DEFINING.get(selection, frozenset())


@dataclass
class _Member:
    run: Mapping[str, Any]
    result: Mapping[str, Any]
    source: str


def _canon(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def _experiment_config(run: Mapping[str, Any], ignored: frozenset[str]) -> dict[str, Any]:
    """The run's flattened config without the ignored fields (and without empty sections: ``method.args: {}``)."""
    config = run.get("config")
    flat = flatten(dict(config)) if isinstance(config, Mapping) else {}
    return {k: v for k, v in flat.items() if k not in ignored and v != {}}


def _resolved_args(run: Mapping[str, Any]) -> dict[str, Any] | None:
    """``method.args.*`` with the method's defaults filled in (so ``depth`` given as its default and ``depth`` left
    out are one configuration), or None when the method or its args cannot be resolved here."""
    try:
        from scaleprompt.config import to_dict
        from scaleprompt.methods import make_config

        args = run["config"]["method"].get("args") or {}
        return flatten(to_dict(make_config(run["method"], args)), "method.args.")
    except (ImportError, KeyError, TypeError, AttributeError, ValueError):  # ConfigError is a ValueError
        return None


def _with_args(flat: Mapping[str, Any], args: Mapping[str, Any]) -> dict[str, Any]:
    """``flat`` with its ``method.args.*`` replaced by ``args``, in their place (after ``method.name``)."""
    out: dict[str, Any] = {}
    for k, v in flat.items():
        if not k.startswith("method.args."):
            out[k] = v
        if k == "method.name":
            out.update(args)
    return out if "method.name" in flat else {**out, **args}


def _differing(flats: Sequence[Mapping[str, Any]]) -> list[str]:
    """The keys (in config order) whose value — or presence — is not the same in all ``flats``."""
    keys = list(dict.fromkeys(k for flat in flats for k in flat))
    return [k for k in keys if len({_canon(flat[k]) if k in flat else _ABSENT for flat in flats}) > 1]


def _format_value(value: Any, precise: bool) -> str:
    """Compact (floats to 4 significant digits); ``precise``: the JSON text (every digit, strings quoted)."""
    if precise:
        return _canon(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, int | str):
        return str(value)
    if value is None:
        return "null"
    return json.dumps(value, separators=(",", ":"), default=str)


def _stopped_at(run: Mapping[str, Any]) -> str:
    """``"stopped at epoch k"`` for a search trial stopped early by its scheduler, ``""`` for a finished run.
    (``stopped_early`` is optional in results.json: absent or null = finished.)"""
    stopped = run.get("stopped_early")
    if not stopped:
        return ""
    epoch = stopped.get("epoch") if isinstance(stopped, Mapping) else None
    return f"stopped at epoch {epoch}" if epoch is not None else "stopped early"


def _fewer_shots(run: Mapping[str, Any]) -> str:
    """``"10-12 of 16 shots per class"`` for a run that trained on fewer images per class than its ``shots`` say
    (``data.allow_fewer_shots``: results.json's ``data.train_shots_per_class``), ``""`` otherwise."""
    data = run.get("data")
    per = data.get("train_shots_per_class") if isinstance(data, Mapping) else None
    shots = run.get("shots")
    if not isinstance(per, Mapping) or not isinstance(shots, int) or shots <= 0:
        return ""
    low, high = per.get("min"), per.get("max")
    if not isinstance(low, int) or low >= shots:
        return ""
    return f"{low}{f'-{high}' if isinstance(high, int) and high != low else ''} of {shots} shots per class"


def _variant_labels(
    keys: Sequence[str], values: Sequence[Mapping[str, Any]], stops: Sequence[str], precise: bool
) -> list[str]:
    names = {}
    for k in keys:  # the last component, or the whole key when two differing keys share their last component
        last = k.rsplit(".", 1)[-1]
        names[k] = last if sum(1 for o in keys if o.rsplit(".", 1)[-1] == last) == 1 else k
    labels = []
    for flat, stop in zip(values, stops, strict=True):
        shown = ", ".join(
            f"{names[k]}={_format_value(flat[k], precise) if k in flat else 'unset'}" for k in keys
        )
        labels.append("; ".join(part for part in (shown, stop) if part))
    return labels


def _split_variants(
    members: Sequence[_Member], selection: str, key: tuple[Any, ...] | None = None
) -> dict[str, list[_Member]]:
    """The runs of one group by variant label (``""``: all runs share one configuration).

    The runs' flattened configs are compared without :func:`ignored_fields`; the fields whose values (or presence)
    differ define the variants (``method.args`` compared with the method's defaults filled in when it can be
    resolved). ``stopped_early`` is part of the variant. Labels: ``key=value`` per differing field (the key's last
    component, the whole key when two differing keys share it), then ``stopped at epoch k``."""
    ignored = ignored_fields(selection)
    flats = [_experiment_config(m.run, ignored) for m in members]
    differing = _differing(flats)
    if any(k.startswith("method.args.") for k in differing):
        for i, m in enumerate(members):
            resolved = _resolved_args(m.run)
            if resolved is not None:
                flats[i] = _with_args(flats[i], resolved)
        differing = _differing(flats)
    # a run stopped early, or trained on fewer shots than its label, is a variant of its own
    stops = ["; ".join(p for p in (_stopped_at(m.run), _fewer_shots(m.run)) if p) for m in members]
    labels = _variant_labels(differing, flats, stops, precise=False)
    distinct = {
        (tuple(_canon(f.get(k)) if k in f else _ABSENT for k in differing), s)
        for f, s in zip(flats, stops, strict=True)
    }
    if len(set(labels)) < len(distinct):  # e.g. values that differ only past 4 significant digits
        labels = _variant_labels(differing, flats, stops, precise=True)
    out: dict[str, list[_Member]] = {}
    for label, m in zip(labels, members, strict=True):
        out.setdefault(label, []).append(m)
    if len(out) > 1 and key is not None:
        logger.info(
            "%s: %d variants (differing in %s)", _describe(key), len(out),
            ", ".join([*differing, *(["stopped_early"] if any(stops) else [])]),
        )  # fmt: skip
    return out


_NUMBER = re.compile(r"(-?\d+(?:\.\d+)?(?:e[-+]?\d+)?)")


def _natural(label: str) -> tuple[tuple[int, float, str], ...]:
    """Sort key: numbers in a label compare as numbers (``depth=2`` before ``depth=10``); ``""`` first."""
    return tuple(
        (0, float(part), "") if i % 2 else (1, 0.0, part)
        for i, part in enumerate(_NUMBER.split(label))
        if part
    )


def aggregate(
    runs: Iterable[Mapping[str, Any]], selection: Selection | str = "last", metric: Metric | str = "top1"
) -> list[Row]:
    """Group runs by (setting, method, dataset, shots, backbone + pretrained), split each group into its variants
    (:func:`_split_variants`: runs whose configs differ in a field that defines the experiment, or that were
    stopped early, are different variants), and take mean / sample std over the seeds of each variant of
    ``results[selection]`` in ``metric``. One :class:`Row` per variant.

    Runs without ``results[selection]`` (``best_val`` of a run without validation) are left out and logged.
    Two runs of one variant with the same seed raise :class:`ResultsError` naming both files. Rows come sorted by
    setting, backbone, method (papers' order), variant, dataset, shots.
    """
    if selection not in SELECTIONS:
        raise ValueError(f"selection must be one of {list(SELECTIONS)}, got {selection!r}")
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {list(METRICS)}, got {metric!r}")
    groups: dict[tuple[Any, ...], list[_Member]] = {}
    skipped: list[str] = []
    for i, run in enumerate(runs):
        source = str(run.get("_path", f"<run {i}>"))
        validate_run(run, source)
        result = run["results"].get(selection)
        if result is None:
            skipped.append(source)
            continue
        key = (
            run["setting"],
            run["method"],
            run["dataset"],
            run["shots"],
            run["backbone"],
            run.get("pretrained"),
        )
        groups.setdefault(key, []).append(_Member(run, result, source))
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
        for variant, members in _split_variants(group, selection, key).items():
            by_seed: dict[int, tuple[Mapping[str, Any], str]] = {}
            for m in members:
                seed = m.run["seed"]
                if seed in by_seed:
                    raise ResultsError(
                        f"two runs of {_describe(key, variant)} with seed {seed}: {by_seed[seed][1]} and {m.source}"
                    )
                by_seed[seed] = (m.result, m.source)
            check_same_test_data(members, key[0], _describe(key, variant))
            rows.append(_make_row(key, by_seed, selection, metric, variant))
    rows.sort(
        key=lambda r: (
            SETTINGS.index(r.setting), r.backbone, r.pretrained or "", _order(r.method, METHOD_ORDER),
            _natural(r.variant), _order(r.dataset, DATASET_ORDER), r.shots,
        )
    )  # fmt: skip
    return rows


def tested_on(result: Mapping[str, Any], setting: str) -> dict[str, int]:
    """The test images behind one selection's numbers, by split (``test``; ``base`` / ``novel``; ``target X``), as
    far as the run recorded them (``images``: results.json of scaleprompt.run/2 and later)."""
    splits = {"base2new": ("base", "novel")}.get(setting, ("test",))
    counts = {s: result[s].get("images") for s in splits if isinstance(result.get(s), Mapping)}
    if setting == "transfer":
        counts.update({f"target {t}": v.get("images") for t, v in (result.get("targets") or {}).items()})
    return {k: v for k, v in counts.items() if isinstance(v, int)}


def check_same_test_data(members: Sequence[_Member], setting: str, cell: str) -> None:
    """The seeds of one cell must have been tested on the same data: the same test image count per split. A run
    tested on 1 image is never averaged with runs tested on 1600: :class:`ResultsError` naming the cell, the split,
    and the runs with each count. (The data fingerprint in results.json cannot be compared: it covers each seed's own
    few-shot training sample.)"""
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


def _make_row(
    key: tuple[Any, ...],
    members: Mapping[int, tuple[Mapping[str, Any], str]],
    selection: str,
    metric: str,
    variant: str = "",
) -> Row:
    setting, method, dataset, shots, backbone, pretrained = key
    seeds = tuple(sorted(members))
    results = [members[s][0] for s in seeds]
    paths = tuple(members[s][1] for s in seeds)
    values: dict[str, Stat] = {}
    targets: dict[str, Stat] = {}
    if setting == "base2new":
        for res, source in zip(results, paths, strict=True):
            stored = harmonic_mean(res["base"]["top1"], res["novel"]["top1"])
            if abs(res["hm"] - stored) > HM_TOLERANCE:
                logger.warning(
                    "%s: stored hm %.2f differs from 2BN/(B+N) = %.2f of its top-1 base / novel; "
                    "the tables use the recomputed HM", source, res["hm"], stored,
                )  # fmt: skip
        values["base"] = Stat.of([r["base"][metric] for r in results])
        values["novel"] = Stat.of([r["novel"][metric] for r in results])
        values["hm"] = Stat.of([harmonic_mean(r["base"][metric], r["novel"][metric]) for r in results])
    else:
        values["test"] = Stat.of([r["test"][metric] for r in results])
    if setting == "transfer":
        names = _ordered((t for r in results for t in r["targets"]), DATASET_ORDER)
        targets = {t: Stat.of([r["targets"][t][metric] for r in results if t in r["targets"]]) for t in names}
    return Row(
        setting=setting, method=method, dataset=dataset, shots=shots, backbone=backbone, pretrained=pretrained,
        selection=selection, metric=metric, seeds=seeds, values=values, targets=targets, paths=paths,
        variant=variant,
    )  # fmt: skip


# ----------------------------------------------------------------------------------------------- tables


@dataclass(frozen=True)
class Cell:
    """A table cell: ``mean`` None = no runs; ``std`` None = an average (no ±); ``n`` = seeds, or datasets
    for an average; ``partial`` = "k/N" when an average covers only k of the table's N datasets."""

    mean: float | None = None
    std: float | None = None
    n: int | None = None
    partial: str = ""


@dataclass(frozen=True)
class Column:
    label: str
    average: bool = False


class TableRow(NamedTuple):
    """A table line: the method, its variant (``""``: none; see :attr:`Row.variant`), one :class:`Cell` per
    column."""

    method: str
    variant: str
    cells: list[Cell]

    @property
    def label(self) -> str:
        return variant_label(self.method, self.variant)


@dataclass
class Table:
    """One paper-style table: ``rows`` = one :class:`TableRow` per method (and variant); ``keys`` = what
    identifies the table (CSV key columns); ``notes`` = the conventions written under it."""

    setting: str
    title: str
    keys: dict[str, str]
    columns: list[Column]
    rows: list[TableRow]
    notes: list[str]


def shots_label(shots: int) -> str:
    return f"{shots}-shot" if shots > 0 else "all-shot"


def backbone_label(backbone: str, pretrained: str | None) -> str:
    return f"{backbone} ({pretrained if pretrained else 'random init'})"


def _stat_cell(stat: Stat | None, mean: float | None = None) -> Cell:
    if stat is None:
        return Cell()
    return Cell(stat.mean if mean is None else mean, stat.std, stat.n)


def _average(means: Sequence[float], total: int) -> Cell:
    if not means:
        return Cell()
    return Cell(
        statistics.fmean(means), None, len(means), "" if len(means) == total else f"{len(means)}/{total}"
    )


def _tables_by(
    rows: Iterable[Row], setting: str, extra: Callable[[Row], tuple[Any, ...]]
) -> dict[tuple, list[Row]]:
    out: dict[tuple, list[Row]] = {}
    for r in rows:
        if r.setting == setting:
            out.setdefault((r.selection, r.metric, r.backbone, r.pretrained, *extra(r)), []).append(r)
    return out


def _title(setting: str, selection: str, metric: str, what: str) -> str:
    return (
        f"{SETTING_TITLES[setting]} — {what} — {METRIC_LABELS[metric]} — "
        f"selection: {SELECTION_LABELS[selection]}"
    )


def _keys(setting: str, selection: str, metric: str, backbone: str, pretrained: str | None) -> dict[str, str]:
    return {
        "setting": setting, "selection": selection, "metric": metric,
        "backbone": backbone, "pretrained": pretrained or "",
    }  # fmt: skip


def _line_ids(group: Iterable[Row]) -> list[tuple[str, str]]:
    """The (method, variant) lines of a table: papers' method order, then variants in natural order."""
    ids = {(r.method, r.variant) for r in group}
    return sorted(ids, key=lambda mv: (_order(mv[0], METHOD_ORDER), _natural(mv[1])))


VARIANT_NOTE = (
    "method (key=value, ...): a variant — runs of this method, dataset and shots whose configurations differ in "
    "the fields shown (fields that do not change the numbers, such as the seed, paths, logging and checkpointing, "
    'are not compared); each variant is averaged over its own seeds only. "stopped at epoch k": a search '
    "trial stopped early by its scheduler after k epochs, never averaged with finished runs."
)


def _common_notes(selection: str, tables_rows: Sequence[TableRow]) -> list[str]:
    notes = [
        "Cells: mean ± sample standard deviation (n − 1) over seeds (± 0.00 with one seed); "
        f"Seeds: seeds per cell; {MISSING}: no runs.",
        {
            "last": "Selection: last epoch — the model after the final training epoch.",
            "best_val": "Selection: best validation epoch — the epoch with the best validation accuracy "
            "(never chosen on test); runs without validation are left out.",
        }[selection],
    ]
    if any(line.variant for line in tables_rows):
        notes.append(VARIANT_NOTE)
    if any(c.partial for line in tables_rows for c in line.cells):
        notes.append(
            "(k/N): the method has results on only k of the table's N datasets; its average covers those k "
            "and is not comparable with complete rows."
        )
    return notes


def base2new_tables(rows: Iterable[Row]) -> list[Table]:
    """Base-to-novel: rows = methods; an "Average over datasets" block (Base, Novel, HM of the averages) first,
    as in CoCoOp / MaPLe, then Base / Novel / HM per dataset. One table per (selection, metric, backbone,
    shots)."""
    tables = []
    for (selection, metric, backbone, pretrained, shots), group in _tables_by(
        rows, "base2new", lambda r: (r.shots,)
    ).items():
        datasets = _ordered((r.dataset for r in group), DATASET_ORDER)
        by = {(r.method, r.variant, r.dataset): r for r in group}
        columns = [Column(f"Average {part}", True) for part in ("Base", "Novel", "HM")]
        columns += [Column(f"{d} {part}") for d in datasets for part in ("Base", "Novel", "HM")]
        body = []
        for method, variant in _line_ids(group):
            mine = [by[method, variant, d] for d in datasets if (method, variant, d) in by]
            base = _average([r.values["base"].mean for r in mine], len(datasets))
            novel = _average([r.values["novel"].mean for r in mine], len(datasets))
            # every method of the table has >= 1 dataset, so both averages exist
            hm = Cell(harmonic_mean(base.mean or 0.0, novel.mean or 0.0), None, base.n, base.partial)
            cells = [base, novel, hm]
            for d in datasets:
                r = by.get((method, variant, d))
                if r is None:
                    cells += [Cell(), Cell(), Cell()]
                else:
                    v = r.values
                    cells += [
                        _stat_cell(v["base"]),
                        _stat_cell(v["novel"]),
                        _stat_cell(v["hm"], r.hm_of_means),
                    ]
            body.append(TableRow(method, variant, cells))
        notes = _common_notes(selection, body) + [
            "HM = 2·B·N/(B+N) of the Base and Novel means shown (the papers' convention); its ± is the std over "
            "seeds of each seed's HM.",
            "Average over datasets: Base and Novel are the averages of the per-dataset means; its HM is the "
            "harmonic mean of those two averages (as in CoCoOp / MaPLe), not the average of the per-dataset HMs. "
            "Averages have no ±.",
        ]
        what = f"{backbone_label(backbone, pretrained)}, {shots_label(shots)}"
        keys = _keys("base2new", selection, metric, backbone, pretrained) | {"shots": str(shots)}
        tables.append(
            Table("base2new", _title("base2new", selection, metric, what), keys, columns, body, notes)
        )
    return tables


def fewshot_tables(rows: Iterable[Row]) -> list[Table]:
    """Few-shot: rows = methods; columns = the shots (1/2/4/8/16) of each dataset, then the average over datasets
    per shot. One table per (selection, metric, backbone)."""
    tables = []
    for (selection, metric, backbone, pretrained), group in _tables_by(rows, "fewshot", lambda r: ()).items():
        datasets = _ordered((r.dataset for r in group), DATASET_ORDER)
        all_shots = sorted({r.shots for r in group}, key=lambda k: (k <= 0, k))
        by = {(r.method, r.variant, r.dataset, r.shots): r for r in group}
        pairs = [
            (d, k) for d in datasets for k in all_shots if any(r.dataset == d and r.shots == k for r in group)
        ]
        columns = [Column(f"{d} {shots_label(k)}") for d, k in pairs]
        columns += [Column(f"Average {shots_label(k)}", True) for k in all_shots]
        body = []
        for method, variant in _line_ids(group):
            cells = [
                _stat_cell(
                    by[method, variant, d, k].values["test"] if (method, variant, d, k) in by else None
                )
                for d, k in pairs
            ]
            for k in all_shots:
                total = sum(1 for _, kk in pairs if kk == k)
                means = [
                    by[method, variant, d, k].values["test"].mean
                    for d, kk in pairs
                    if kk == k and (method, variant, d, k) in by
                ]
                cells.append(_average(means, total))
            body.append(TableRow(method, variant, cells))
        notes = _common_notes(selection, body) + [
            "Average k-shot: the average over datasets of the per-dataset means at k shots (no ±)."
        ]
        title = _title("fewshot", selection, metric, backbone_label(backbone, pretrained))
        tables.append(
            Table(
                "fewshot",
                title,
                _keys("fewshot", selection, metric, backbone, pretrained),
                columns,
                body,
                notes,
            )
        )
    return tables


def transfer_tables(rows: Iterable[Row]) -> list[Table]:
    """Transfer: rows = methods; columns = the source dataset, each target, then the average over targets
    (source excluded). One table per (selection, metric, backbone, source dataset, shots)."""
    tables = []
    for (selection, metric, backbone, pretrained, source, shots), group in _tables_by(
        rows, "transfer", lambda r: (r.dataset, r.shots)
    ).items():
        targets = _ordered((t for r in group for t in r.targets), DATASET_ORDER)
        columns = [
            Column(f"{source} (source)"),
            *(Column(t) for t in targets),
            Column("Average over targets", True),
        ]
        body = []
        for r in sorted(group, key=lambda r: (_order(r.method, METHOD_ORDER), _natural(r.variant))):
            cells = [_stat_cell(r.values["test"]), *(_stat_cell(r.targets.get(t)) for t in targets)]
            cells.append(_average([r.targets[t].mean for t in targets if t in r.targets], len(targets)))
            body.append(TableRow(r.method, r.variant, cells))
        notes = _common_notes(selection, body) + [
            f"Source: test accuracy on {source}, the training dataset. Average over targets: the average of the "
            "per-target means, source excluded (no ±)."
        ]
        what = f"{backbone_label(backbone, pretrained)}, source {source}, {shots_label(shots)}"
        keys = _keys("transfer", selection, metric, backbone, pretrained) | {
            "source": source,
            "shots": str(shots),
        }
        tables.append(
            Table("transfer", _title("transfer", selection, metric, what), keys, columns, body, notes)
        )
    return tables


TABLE_BUILDERS: dict[str, Callable[[Iterable[Row]], list[Table]]] = {
    "base2new": base2new_tables,
    "fewshot": fewshot_tables,
    "transfer": transfer_tables,
}


def make_tables(rows: Iterable[Row], setting: str) -> list[Table]:
    """The paper-style tables of one setting (empty when no row has it)."""
    if setting not in TABLE_BUILDERS:
        raise ValueError(f"setting must be one of {list(SETTINGS)}, got {setting!r}")
    return TABLE_BUILDERS[setting](rows)


# ----------------------------------------------------------------------------------------------- rendering


def format_cell(cell: Cell) -> str:
    """``"82.00 ± 2.00"``; an average ``"86.00"`` (``"86.00 (1/2)"`` when partial); no runs ``"—"``."""
    if cell.mean is None:
        return MISSING
    if cell.std is None:
        return f"{cell.mean:.2f}" + (f" ({cell.partial})" if cell.partial else "")
    return f"{cell.mean:.2f} ± {cell.std:.2f}"


def _seeds_cell(columns: Sequence[Column], cells: Sequence[Cell]) -> str:
    ns = [c.n for col, c in zip(columns, cells, strict=True) if not col.average and c.n]
    if not ns:
        return MISSING
    return str(min(ns)) if min(ns) == max(ns) else f"{min(ns)}–{max(ns)}"


def to_markdown(tables: Sequence[Table]) -> str:
    """Each table as ``### title``, a markdown table (Method | columns... | Seeds) and its notes."""
    parts = []
    for t in tables:
        header = ["Method", *(c.label for c in t.columns), "Seeds"]
        lines = [
            f"### {t.title}",
            "",
            "| " + " | ".join(header) + " |",
            "|" + "|".join([":---", *("---:" for _ in header[1:])]) + "|",
        ]
        for line in t.rows:
            label = line.label.replace("|", "\\|")  # a "|" in a variant's value would end the cell
            row = [label, *(format_cell(c) for c in line.cells), _seeds_cell(t.columns, line.cells)]
            lines.append("| " + " | ".join(row) + " |")
        lines.append("")
        lines += [f"- {note}" for note in t.notes]
        parts.append("\n".join(lines))
    return "\n\n".join(parts) + "\n" if parts else ""


def _number(x: float | int | None) -> str:
    if x is None:
        return ""
    return str(x) if isinstance(x, int) else f"{x:.4f}"


def to_csv(tables: Sequence[Table]) -> str:
    """The tables as one CSV (stdlib ``csv``): key columns (setting, selection, metric, backbone, pretrained,
    shots / source), ``method``, ``variant`` (only when some row is a variant: ``depth=2, lr=0.05``, empty for
    the others), then per column ``<label> mean``, ``<label> std``, ``<label> n_seeds`` (averages:
    ``<label> mean``, ``<label> n_datasets``). Numbers with 4 decimals; empty = no runs."""
    key_names: list[str] = []
    cell_columns: dict[str, Column] = {}
    for t in tables:
        key_names += [k for k in t.keys if k not in key_names]
        for c in t.columns:
            cell_columns.setdefault(c.label, c)
    header = [*key_names, "method"]
    if any(line.variant for t in tables for line in t.rows):
        header.append("variant")
    for c in cell_columns.values():
        header += [f"{c.label} mean", f"{c.label} n_datasets"] if c.average else [
            f"{c.label} mean", f"{c.label} std", f"{c.label} n_seeds"
        ]  # fmt: skip
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=header, lineterminator="\n", restval="")
    writer.writeheader()
    for t in tables:
        for line in t.rows:
            record: dict[str, str] = {**t.keys, "method": line.method}
            if line.variant:
                record["variant"] = line.variant
            for col, cell in zip(t.columns, line.cells, strict=True):
                record[f"{col.label} mean"] = _number(cell.mean)
                if col.average:
                    record[f"{col.label} n_datasets"] = _number(cell.n)
                else:
                    record[f"{col.label} std"] = _number(cell.std)
                    record[f"{col.label} n_seeds"] = _number(cell.n)
            writer.writerow(record)
    return out.getvalue()


def render(rows: Iterable[Row], setting: str) -> tuple[str, str]:
    """(markdown, CSV) of one setting's tables."""
    tables = make_tables(rows, setting)
    return to_markdown(tables), to_csv(tables)


def write_tables(rows: Sequence[Row], out_dir: str | Path) -> dict[str, tuple[Path, Path]]:
    """Write ``results_<setting>.md`` and ``results_<setting>.csv`` for every setting present in ``rows``
    (each file replaced atomically); return ``{setting: (md_path, csv_path)}``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = {}
    for setting in SETTINGS:
        if any(r.setting == setting for r in rows):
            markdown, table_csv = render(rows, setting)
            paths = (out / f"results_{setting}.md", out / f"results_{setting}.csv")
            for path, text in zip(paths, (markdown, table_csv), strict=True):
                tmp = path.with_name(path.name + ".tmp")
                tmp.write_text(text, encoding="utf-8")
                tmp.replace(path)
            written[setting] = paths
    return written


# ----------------------------------------------------------------------------------------------- CLI


def main(argv: Sequence[str] | None = None) -> int:
    """Errors (an unreadable results.json, no rows, an unwritable folder) are one line, exit code 2."""
    from scaleprompt.errors import run_entry_point

    return run_entry_point(_main, argv, prog="scaleprompt results")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="scaleprompt results",
        description="Aggregate run results (results.json) over seeds into paper-style markdown / CSV tables.",
    )
    parser.add_argument(
        "runs",
        nargs="*",
        metavar="RUNS",
        help="results.json files, directories (searched recursively) or globs (none: with --published, the "
        "published table alone)",
    )
    parser.add_argument(
        "--selection", choices=SELECTIONS, default="last",
        help="last = last epoch; best_val = epoch chosen on the validation split (default: last)",
    )  # fmt: skip
    parser.add_argument(
        "--metric", choices=METRICS, default="top1", help="accuracy to tabulate (default: top1)"
    )
    parser.add_argument(
        "--out-dir", type=Path, default=None,
        help="write results_<setting>.md / .csv here (default: only log the tables)",
    )  # fmt: skip
    parser.add_argument(
        "--published", action="store_true",
        help="after the tables, each measured average beside the papers' published numbers (with their "
        "sources; published_vs_measured_<setting>.md / .csv); without RUNS, the published table itself",
    )  # fmt: skip
    parser.add_argument(
        "--published-file", type=Path, default=None, metavar="FILE",
        help="the published table to use (implies --published; default: the packaged "
        "scaleprompt/report/published.json)",
    )  # fmt: skip
    return parser


def _main(argv: Sequence[str]) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    logging.getLogger("scaleprompt").setLevel(logging.INFO)
    published = None
    if args.published or args.published_file is not None:  # validated first: a bad table costs nothing
        from scaleprompt.report import published as pub

        published = pub.load_published(args.published_file)
        if not args.runs:
            pub.report_published(published, args.out_dir)
            return 0
    if not args.runs:
        raise ResultsError("no RUNS given: pass results.json files, folders or globs (or --published alone)")
    try:
        runs = load_runs(args.runs)
        rows = aggregate(runs, args.selection, args.metric)
    except (ValueError, OSError) as exc:
        raise exc if isinstance(exc, ResultsError) else ResultsError(str(exc)) from None
    if not rows:
        raise ResultsError(f"none of the {len(runs)} runs has {args.selection!r} results")
    logger.info("%d runs -> %d rows (selection: %s)", len(runs), len(rows), SELECTION_LABELS[args.selection])
    for setting in SETTINGS:
        if any(r.setting == setting for r in rows):
            logger.info("%s", render(rows, setting)[0])
    if args.out_dir is not None:
        try:
            written = write_tables(rows, args.out_dir)
        except OSError as exc:
            raise ResultsError(f"cannot write the tables to {args.out_dir}: {exc}") from None
        for md_path, csv_path in written.values():
            logger.info("wrote %s and %s", md_path, csv_path)
    if published is not None:  # its own section and files: never part of the measured tables or their CSV
        pub.report_comparisons(rows, published, args.out_dir)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
