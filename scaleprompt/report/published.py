"""The papers' published averages, as data with their sources, laid beside scaleprompt's measured averages.

The table is package data, ``scaleprompt/report/published.json`` (format ``scaleprompt.published/1``)::

    {"format": "scaleprompt.published/1", "about": "...",
     "dataset_sets": {"coop11": ["ImageNet", "Caltech101", ...]},
     "entries": [{"method": "IVLP", "scaleprompt_method": "ivlp", "variant": "5 epochs",
                  "source_label": "Independent V-L Prompting", "setting": "base2new", "backbone": "ViT-B-16",
                  "pretrained": "openai", "shots": 16, "datasets": "coop11", "metric": "top1", "epochs": 5,
                  "base": 82.15, "novel": 74.07, "hm": 77.90, "source": "MaPLe README, Model Zoo ...",
                  "url": "https://github.com/...", "verified": true, "note": ""}, ...]}

One entry = one published average: ``base2new`` has ``base`` / ``novel`` / ``hm``, ``fewshot`` has ``accuracy`` (%).
``scaleprompt_method`` is the scaleprompt method it is compared with (``null``: a method scaleprompt does not have,
e.g. KgCoOp: a reference line that matches no measured cell). ``verified``: the number was checked digit for digit
against the text of ``source``; ``false`` (a secondary quote) needs a ``note`` saying so. :func:`load_published`
validates the file and raises :class:`PublishedError` (one line naming the file, the entry and the field): every
number finite and in [0, 100], ``hm`` = 2·B·N/(B+N) of ``base`` / ``novel`` to :data:`HM_TOLERANCE` (the papers
round to 2 decimals), a non-empty source on every entry, no two entries with the same (method, variant, setting,
backbone, pretrained, shots, source), no unknown field.

``scaleprompt results RUNS... --published`` (:func:`compare`): after the measured tables, one comparison per
measured table: each method's Average cell (Base / Novel / HM of base-to-novel, the k-shot average of few-shot) beside
every published entry of that method whose setting, backbone and pretrained tag, shots and metric match, when the
measured average covers exactly the entry's datasets (the 11 benchmarks); otherwise one line says why nothing is
comparable ("coop: measured on 3 of the 11 datasets ...", "backbone sp-micro-clip (microworld): no published
numbers"). A method with several entries (IVLP at 5 and 20 epochs, sources that disagree) gets one row per entry,
never an average of them. Published numbers never enter the measured tables, their CSV or any average: the
comparison is its own markdown / CSV (``published_vs_measured_<setting>.md`` / ``.csv``). ``scaleprompt results
--published`` without runs prints the published table itself (``published.md`` / ``.csv`` with ``--out-dir``).

Convention: scaleprompt's "Average over datasets" (:mod:`scaleprompt.report.tables`) is the CoOp / CoCoOp / MaPLe
one (Base and Novel: the plain mean over the datasets of the per-dataset means; HM: the harmonic mean of those two
averages), so a measured Average cell and a published average are the same quantity.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, TypeGuard

from scaleprompt.data.datasets import BENCHMARKS, DG_TARGETS
from scaleprompt.data.protocols import harmonic_mean
from scaleprompt.report.schema import METRICS, ResultsError
from scaleprompt.report.tables import (
    METHOD_ORDER,
    METRIC_LABELS,
    SETTING_TITLES,
    SETTINGS,
    Row,
    Table,
    _number,
    backbone_label,
    make_tables,
    shots_label,
)

logger = logging.getLogger("scaleprompt.report.published")

FORMAT = "scaleprompt.published/1"
PACKAGED = "published.json"  # in this package (scaleprompt/report/)
HM_TOLERANCE = 0.02  # published hm vs 2BN/(B+N) of the published (2-decimal) base / novel
VALUES: dict[str, tuple[str, ...]] = {"base2new": ("base", "novel", "hm"), "fewshot": ("accuracy",)}
VALUE_LABELS = {"base": "Base", "novel": "Novel", "hm": "HM", "accuracy": "Accuracy"}
KNOWN_DATASETS = (*BENCHMARKS, *DG_TARGETS)
# scaleprompt methods a published entry may name (tables.METHOD_ORDER: the registered methods, papers' order)
KNOWN_METHODS: tuple[str, ...] = METHOD_ORDER
_REQUIRED: dict[str, tuple[type, ...]] = {
    "method": (str,), "scaleprompt_method": (str, type(None)), "variant": (str,), "setting": (str,),
    "backbone": (str,), "pretrained": (str,), "shots": (int,), "datasets": (str, list), "metric": (str,),
    "source": (str,), "verified": (bool,),
}  # fmt: skip
_OPTIONAL: dict[str, tuple[type, ...]] = {
    "source_label": (str,), "epochs": (int, type(None)), "url": (str,), "note": (str,),
}  # fmt: skip


class PublishedError(ResultsError):
    """The published table is not valid. The message names the file, the entry and the field."""


@dataclass(frozen=True)
class Published:
    """One published average: ``values`` = ``{"base", "novel", "hm"}`` (base2new) or ``{"accuracy"}`` (fewshot),
    in %, over ``datasets`` (the set named ``dataset_set``), as ``source`` printed it."""

    method: str
    scaleprompt_method: str | None
    variant: str
    setting: str
    backbone: str
    pretrained: str
    shots: int
    dataset_set: str
    datasets: tuple[str, ...]
    metric: str
    values: Mapping[str, float]
    source: str
    verified: bool
    source_label: str = ""
    epochs: int | None = None
    url: str = ""
    note: str = ""

    @property
    def label(self) -> str:
        """``"IVLP (5 epochs)"``; ``"MaPLe"`` without a variant."""
        return f"{self.method} ({self.variant})" if self.variant else self.method

    @property
    def key(self) -> tuple[str, str, str, str, str, int, str]:
        """What must be unique in a table: (method, variant, setting, backbone, pretrained, shots, source)."""
        return (
            self.method, self.variant, self.setting, self.backbone, self.pretrained, self.shots, self.source
        )  # fmt: skip


@dataclass(frozen=True)
class PublishedTable:
    """The validated published table: ``path`` = the file read, ``about`` = its description."""

    path: str
    about: str
    entries: tuple[Published, ...]

    def for_method(self, method: str) -> list[Published]:
        """The entries compared with scaleprompt method ``method``."""
        return [e for e in self.entries if e.scaleprompt_method == method]


# ----------------------------------------------------------------------------------------------- loading


def packaged_path() -> Path:
    """The packaged table (``scaleprompt/report/published.json``)."""
    return Path(str(resources.files("scaleprompt.report").joinpath(PACKAGED)))


def _is_number(x: Any) -> TypeGuard[float]:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)


def _type_names(types: tuple[type, ...]) -> str:
    names = {str: "a string", int: "an integer", bool: "true or false", list: "a list", type(None): "null"}
    return " or ".join(names.get(t, t.__name__) for t in types)


def _dataset_sets(data: Mapping[str, Any], where: str) -> dict[str, tuple[str, ...]]:
    sets = data.get("dataset_sets", {})
    if not isinstance(sets, Mapping):
        raise PublishedError(f"{where}: 'dataset_sets' must be an object {{name: [datasets]}}, got {sets!r}")
    out = {}
    for name, datasets in sets.items():
        out[name] = _datasets(datasets, f"{where}: dataset_sets.{name}")
    return out


def _datasets(value: Any, where: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not value or not all(isinstance(d, str) for d in value):
        raise PublishedError(f"{where} must be a non-empty list of dataset names, got {value!r}")
    unknown = [d for d in value if d not in KNOWN_DATASETS]
    if unknown:
        raise PublishedError(
            f"{where}: unknown dataset {unknown[0]!r} (the published averages are over the benchmark datasets: "
            f"{', '.join(KNOWN_DATASETS)})"
        )
    repeated = sorted({d for d in value if value.count(d) > 1})
    if repeated:
        raise PublishedError(f"{where}: {repeated[0]!r} is listed twice")
    return tuple(value)


def _entry(item: Any, index: int, sets: Mapping[str, tuple[str, ...]], where: str) -> Published:
    if not isinstance(item, Mapping):
        raise PublishedError(f"{where}: entry {index} must be an object, got {item!r}")
    name = item.get("method")
    at = f"{where}: entry {index}" + (f" ({name})" if isinstance(name, str) and name else "")
    setting = item.get("setting")
    if setting not in VALUES:
        raise PublishedError(f"{at}: 'setting' must be one of {list(VALUES)}, got {setting!r}")
    allowed = {**_REQUIRED, **_OPTIONAL, **dict.fromkeys(VALUES[setting], (float,))}
    unknown = [k for k in item if k not in allowed]
    if unknown:
        raise PublishedError(
            f"{at}: unknown field {unknown[0]!r} (a {setting} entry has: {', '.join(allowed)})"
        )
    for key, types in {**_REQUIRED, **_OPTIONAL}.items():
        if key not in item:
            if key in _REQUIRED:
                raise PublishedError(f"{at}: missing {key!r}")
            continue
        value = item[key]
        # bool is an int in Python: an integer field must not take true / false
        if not isinstance(value, types) or (bool not in types and isinstance(value, bool)):
            raise PublishedError(f"{at}: {key!r} must be {_type_names(types)}, got {value!r}")
    for key in ("method", "source", "backbone", "pretrained"):
        if not item[key].strip():
            raise PublishedError(f"{at}: {key!r} is empty (every published number needs its {key})")
    if item["scaleprompt_method"] is not None and item["scaleprompt_method"] not in KNOWN_METHODS:
        raise PublishedError(
            f"{at}: 'scaleprompt_method' {item['scaleprompt_method']!r} is not a scaleprompt method "
            f"({', '.join(KNOWN_METHODS)}; null for a method scaleprompt does not have)"
        )
    if item["shots"] <= 0:
        raise PublishedError(f"{at}: 'shots' must be a positive integer, got {item['shots']!r}")
    if item["metric"] not in METRICS:
        raise PublishedError(f"{at}: 'metric' must be one of {list(METRICS)}, got {item['metric']!r}")
    if not item["verified"] and not str(item.get("note", "")).strip():
        raise PublishedError(
            f"{at}: 'verified' is false: the 'note' must say what the number was not checked against"
        )
    datasets = item["datasets"]
    if isinstance(datasets, str):
        if datasets not in sets:
            raise PublishedError(
                f"{at}: 'datasets' names {datasets!r}, which is not in 'dataset_sets' ({', '.join(sets) or 'none'})"
            )
        dataset_set, names = datasets, sets[datasets]
    else:
        names = _datasets(datasets, f"{at}: 'datasets'")
        dataset_set = f"{len(names)} datasets"
    values = {}
    for key in VALUES[setting]:
        x = item.get(key)
        if not _is_number(x) or not 0 <= x <= 100:
            raise PublishedError(f"{at}: {key!r} must be a percentage in [0, 100], got {x!r}")
        values[key] = float(x)
    if setting == "base2new":
        expected = harmonic_mean(values["base"], values["novel"])
        if abs(values["hm"] - expected) > HM_TOLERANCE:
            raise PublishedError(
                f"{at}: 'hm' {values['hm']:.2f} is not 2·B·N/(B+N) = {expected:.2f} of its base "
                f"{values['base']:.2f} and novel {values['novel']:.2f} (tolerance {HM_TOLERANCE})"
            )
    return Published(
        method=item["method"], scaleprompt_method=item["scaleprompt_method"], variant=item["variant"],
        setting=setting, backbone=item["backbone"], pretrained=item["pretrained"], shots=item["shots"],
        dataset_set=dataset_set, datasets=names, metric=item["metric"], values=values, source=item["source"],
        verified=item["verified"], source_label=item.get("source_label", ""), epochs=item.get("epochs"),
        url=item.get("url", ""), note=item.get("note", ""),
    )  # fmt: skip


def parse_published(data: Any, source: str | Path) -> PublishedTable:
    """Validate a published table already read from JSON (``source``: the file, for the messages)."""
    where = str(source)
    if not isinstance(data, Mapping):
        raise PublishedError(f"{where}: the published table must be a JSON object, got {type(data).__name__}")
    if data.get("format") != FORMAT:
        raise PublishedError(f"{where}: 'format' must be {FORMAT!r}, got {data.get('format')!r}")
    unknown = [k for k in data if k not in ("format", "about", "dataset_sets", "entries")]
    if unknown:
        raise PublishedError(f"{where}: unknown field {unknown[0]!r} (format, about, dataset_sets, entries)")
    sets = _dataset_sets(data, where)
    items = data.get("entries")
    if not isinstance(items, list) or not items:
        raise PublishedError(f"{where}: 'entries' must be a non-empty list, got {items!r}")
    entries: list[Published] = []
    seen: dict[tuple[Any, ...], int] = {}
    for i, item in enumerate(items):
        entry = _entry(item, i, sets, where)
        if entry.key in seen:
            raise PublishedError(
                f"{where}: entry {i} ({entry.label}) repeats entry {seen[entry.key]}: the same method, variant, "
                f"setting, backbone, shots and source ({entry.source!r})"
            )
        seen[entry.key] = i
        entries.append(entry)
    about = data.get("about", "")
    return PublishedTable(where, about if isinstance(about, str) else "", tuple(entries))


def load_published(path: str | Path | None = None) -> PublishedTable:
    """Read and validate a published table (default: the packaged one). A file that cannot be read, is not JSON or
    breaks a rule raises :class:`PublishedError` naming the file."""
    file = packaged_path() if path is None else Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise PublishedError(f"{file}: cannot read the published table ({exc})") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise PublishedError(f"{file}: not valid JSON ({exc})") from None
    return parse_published(data, file)


# ----------------------------------------------------------------------------------------------- comparison


@dataclass(frozen=True)
class ComparisonRow:
    """A measured Average cell (``measured``: the values of :data:`VALUES`) beside one published entry."""

    method: str
    variant: str
    measured: Mapping[str, float]
    entry: Published

    @property
    def label(self) -> str:
        return f"{self.method} ({self.variant})" if self.variant else self.method

    @property
    def difference(self) -> dict[str, float]:
        """Measured − published, per value."""
        return {k: self.measured[k] - self.entry.values[k] for k in self.entry.values}


@dataclass
class Comparison:
    """The comparison of one measured table: its rows, and one line per measured method (or for the whole table)
    saying why nothing is comparable."""

    setting: str
    title: str
    keys: dict[str, str]
    rows: list[ComparisonRow] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)


def _table_rows(rows: Sequence[Row], keys: Mapping[str, str]) -> list[Row]:
    """The rows behind the measured table with ``keys`` (its setting, selection, metric, backbone, pretrained,
    and shots where the table has one)."""
    return [
        r
        for r in rows
        if r.setting == keys["setting"] and r.selection == keys["selection"] and r.metric == keys["metric"]
        and r.backbone == keys["backbone"] and (r.pretrained or "") == keys["pretrained"]
        and ("shots" not in keys or str(r.shots) == keys["shots"])
    ]  # fmt: skip


def _coverage_problem(measured: set[str], published: Published) -> str:
    """Why a measured average over ``measured`` is not the published one's average ("" when it is)."""
    wanted = set(published.datasets)
    if measured == wanted:
        return ""
    n = len(wanted)
    missing = [d for d in published.datasets if d not in measured]
    extra = sorted(measured - wanted)
    parts = []
    if missing:
        parts.append(
            f"measured on {len(measured & wanted)} of the {n} datasets of the published average "
            f"(missing: {', '.join(missing)})"
        )
    if extra:
        parts.append(f"its average also covers {', '.join(extra)}, which the published average does not")
    return "; ".join(parts)


def _average_cells(table: Table, labels: Sequence[str]) -> list[int]:
    index = {c.label: i for i, c in enumerate(table.columns)}
    return [index[label] for label in labels if label in index]


def _compare_table(table: Table, rows: Sequence[Row], published: PublishedTable) -> Comparison:
    keys = table.keys
    setting = table.setting
    title = f"Published (source) vs measured — {table.title}"
    out = Comparison(setting, title, dict(keys))
    candidates = [e for e in published.entries if e.setting == setting]
    if not candidates:
        out.reasons.append(f"{SETTING_TITLES[setting]}: no published numbers for this setting")
        return out
    backbone, pretrained = keys["backbone"], keys["pretrained"]
    here = [e for e in candidates if (e.backbone, e.pretrained) == (backbone, pretrained)]
    if not here:
        known = ", ".join(sorted({backbone_label(e.backbone, e.pretrained) for e in candidates}))
        out.reasons.append(
            f"backbone {backbone_label(backbone, pretrained or None)}: no published numbers (published: {known})"
        )
        return out
    metric = keys["metric"]
    if not any(e.metric == metric for e in here):
        known = ", ".join(sorted({METRIC_LABELS[e.metric] for e in here}))
        out.reasons.append(f"metric {METRIC_LABELS[metric]}: the published numbers are {known}")
        return out
    here = [e for e in here if e.metric == metric]
    mine = _table_rows(rows, keys)
    shots_measured = sorted(
        {r.shots for r in mine}
    )  # base-to-novel: one; few-shot: its "Average k-shot" columns
    published_shots = sorted({e.shots for e in here})
    comparable_shots = [k for k in shots_measured if k in published_shots]
    other_shots = [k for k in shots_measured if k not in published_shots]
    if other_shots:
        out.reasons.append(
            f"{', '.join(shots_label(k) for k in other_shots)}: no published numbers (published: "
            f"{', '.join(shots_label(k) for k in published_shots)})"
        )
    for line in table.rows:
        entries = [e for e in here if e.scaleprompt_method == line.method]
        if not entries:
            out.reasons.append(f"{line.label}: no published number for this method")
            continue
        for shots in comparable_shots:
            at_shots = [e for e in entries if e.shots == shots]
            if not at_shots:
                out.reasons.append(f"{line.label}: no published {shots_label(shots)} number")
                continue
            labels = (
                ["Average Base", "Average Novel", "Average HM"]
                if setting == "base2new"
                else [f"Average {shots_label(shots)}"]
            )
            cells = [line.cells[i] for i in _average_cells(table, labels)]
            if len(cells) != len(labels) or any(c.mean is None for c in cells):
                out.reasons.append(f"{line.label}: no measured {shots_label(shots)} average")
                continue
            measured = dict(zip(VALUES[setting], (float(c.mean or 0.0) for c in cells), strict=True))
            datasets = {
                r.dataset
                for r in mine
                if (r.method, r.variant, r.shots) == (line.method, line.variant, shots)
            }
            said: set[str] = set()
            for entry in at_shots:
                problem = _coverage_problem(datasets, entry)
                if problem:
                    if problem not in said:  # entries over the same datasets: one line
                        out.reasons.append(f"{line.label}: {problem}")
                        said.add(problem)
                    continue
                out.rows.append(ComparisonRow(line.method, line.variant, measured, entry))
    return out


def compare(rows: Sequence[Row], published: PublishedTable) -> list[Comparison]:
    """One :class:`Comparison` per measured table (the tables of :func:`~scaleprompt.report.tables.make_tables`,
    in their order): every measured Average cell beside each matching published entry, or the reasons why none
    matches. ``rows`` are not changed; nothing published enters them."""
    out = []
    for setting in SETTINGS:
        for table in make_tables(rows, setting):
            out.append(_compare_table(table, rows, published))
    return out


# ----------------------------------------------------------------------------------------------- rendering


def _signed(x: float) -> str:
    return f"{x:+.2f}"


def _md(text: str) -> str:
    return text.replace("|", "\\|")


def _source_cell(entry: Published) -> str:
    text = entry.source + (f" <{entry.url}>" if entry.url else "")
    if not entry.verified:
        text += f" — not verified: {entry.note}"
    return _md(text)


def _comparison_notes(comparison: Comparison) -> list[str]:
    entries = [r.entry for r in comparison.rows]
    notes = []
    if entries:
        sets = {e.dataset_set: e.datasets for e in entries}
        over = "; ".join(f"{name}: {', '.join(names)}" for name, names in sets.items())
        what = (
            "Base and Novel: the plain mean over the datasets of the per-dataset means, HM: the harmonic mean of "
            "those two averages"
            if comparison.setting == "base2new"
            else "the plain mean over the datasets of the per-dataset means"
        )
        notes += [
            f"Measured: the Average cells of the measured table ({what}: the papers' convention), over the same "
            f"datasets as the published average ({over}). Published: the papers' numbers as printed by the source "
            "in each row, never part of the measured tables, their CSV or any average. Δ = measured − published.",
            "A method with several published entries (epoch counts, sources that disagree) has one row per entry; "
            "they are never averaged. Sources may disagree on the same baseline: compare within one source.",
        ]
    notes += [f"Nothing comparable: {reason}" for reason in comparison.reasons]
    return notes


def comparison_markdown(comparisons: Sequence[Comparison]) -> str:
    """Each comparison as ``### title``, a table (Method | Published as | per value: Measured, Published, Δ |
    Epochs | Source) when it has rows, and its notes (why the other cells are not comparable)."""
    parts = []
    for c in comparisons:
        lines = [f"### {c.title}", ""]
        if c.rows:
            names = VALUES[c.setting]
            header = ["Method", "Published as"]
            for k in names:
                label = VALUE_LABELS[k]
                header += [f"Measured {label}", f"Published {label}", f"Δ {label}"]
            header += ["Epochs (published)", "Source"]
            lines += [
                "| " + " | ".join(header) + " |",
                "|"
                + "|".join([":---", ":---", *("---:" for _ in names for _ in range(3)), "---:", ":---"])
                + "|",
            ]
            for r in c.rows:
                cells = [_md(r.label), _md(r.entry.label)]
                diff = r.difference
                for k in names:
                    cells += [f"{r.measured[k]:.2f}", f"{r.entry.values[k]:.2f}", _signed(diff[k])]
                cells += ["—" if r.entry.epochs is None else str(r.entry.epochs), _source_cell(r.entry)]
                lines.append("| " + " | ".join(cells) + " |")
            lines.append("")
        lines += [f"- {note}" for note in _comparison_notes(c)]
        parts.append("\n".join(lines))
    return "\n\n".join(parts) + "\n" if parts else ""


def comparison_csv(comparisons: Sequence[Comparison]) -> str:
    """The comparison rows as CSV: the measured table's keys, ``method``, ``variant``, the published entry
    (``published_method``, ``published_variant``), per value ``measured_<v>``, ``published_<v>``, ``diff_<v>``
    (measured − published, 4 decimals), then ``published_epochs``, ``datasets``, ``source``, ``url``,
    ``verified``, ``note``."""
    key_names: list[str] = []
    value_names: list[str] = []
    for c in comparisons:
        key_names += [k for k in c.keys if k not in key_names]
        value_names += [v for v in VALUES.get(c.setting, ()) if v not in value_names and c.rows]
    header = [*key_names, "method", "variant", "published_method", "published_variant"]
    for v in value_names:
        header += [f"measured_{v}", f"published_{v}", f"diff_{v}"]
    header += ["published_epochs", "datasets", "source", "url", "verified", "note"]
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=header, lineterminator="\n", restval="")
    writer.writeheader()
    for c in comparisons:
        for r in c.rows:
            record = {
                **c.keys, "method": r.method, "variant": r.variant, "published_method": r.entry.method,
                "published_variant": r.entry.variant, "published_epochs": _number(r.entry.epochs),
                "datasets": r.entry.dataset_set, "source": r.entry.source, "url": r.entry.url,
                "verified": "true" if r.entry.verified else "false", "note": r.entry.note,
            }  # fmt: skip
            diff = r.difference
            for v in r.entry.values:
                record |= {
                    f"measured_{v}": _number(r.measured[v]),
                    f"published_{v}": _number(r.entry.values[v]),
                    f"diff_{v}": _number(diff[v]),
                }
            writer.writerow(record)
    return out.getvalue()


def published_markdown(table: PublishedTable) -> str:
    """The published table itself: one markdown table per (setting, backbone, pretrained, shots, datasets,
    metric), every number with its source."""
    groups: dict[tuple[Any, ...], list[Published]] = {}
    for e in table.entries:
        groups.setdefault((e.setting, e.backbone, e.pretrained, e.shots, e.dataset_set, e.metric), []).append(
            e
        )
    parts = []
    for (setting, backbone, pretrained, shots, dataset_set, metric), entries in sorted(
        groups.items(), key=lambda kv: (list(VALUES).index(kv[0][0]), *map(str, kv[0][1:]))
    ):
        names = VALUES[setting]
        n = len(entries[0].datasets)
        title = (
            f"Published averages — {SETTING_TITLES[setting]} — {backbone_label(backbone, pretrained)}, "
            f"{shots_label(shots)}, average over {n} datasets — {METRIC_LABELS[metric]}"
        )
        header = [
            "Method",
            "scaleprompt method",
            "Epochs",
            *(VALUE_LABELS[k] for k in names),
            "Verified",
            "Source",
        ]
        lines = [
            f"### {title}",
            "",
            "| " + " | ".join(header) + " |",
            "|" + "|".join([":---", ":---", "---:", *("---:" for _ in names), ":---", ":---"]) + "|",
        ]
        for e in entries:
            cells = [
                _md(e.label),
                e.scaleprompt_method or "— (not a scaleprompt method)",
                "—" if e.epochs is None else str(e.epochs),
                *(f"{e.values[k]:.2f}" for k in names),
                "yes" if e.verified else "no",
                _source_cell(e)
                if e.verified
                else _md(e.source + (f" <{e.url}>" if e.url else "")) + f" — {_md(e.note)}",
            ]
            lines.append("| " + " | ".join(cells) + " |")
        lines += ["", f"- Datasets ({dataset_set}): {', '.join(entries[0].datasets)}."]
        notes = [
            f"{e.label} ({e.source_label or e.method}): {e.note}" for e in entries if e.verified and e.note
        ]
        lines += [f"- {_md(note)}" for note in notes]
        parts.append("\n".join(lines))
    about = f"- {table.about}\n" if table.about else ""
    return "\n\n".join(parts) + "\n\n" + about + f"- Table: {table.path}\n"


def published_csv(table: PublishedTable) -> str:
    """The published table as CSV, one row per entry (values with 2 decimals, as published)."""
    header = [
        "method", "variant", "scaleprompt_method", "setting", "backbone", "pretrained", "shots", "datasets",
        "n_datasets", "metric", "epochs", "base", "novel", "hm", "accuracy", "source_label", "source", "url",
        "verified", "note",
    ]  # fmt: skip
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=header, lineterminator="\n", restval="")
    writer.writeheader()
    for e in table.entries:
        writer.writerow({
            "method": e.method, "variant": e.variant, "scaleprompt_method": e.scaleprompt_method or "",
            "setting": e.setting, "backbone": e.backbone, "pretrained": e.pretrained, "shots": e.shots,
            "datasets": e.dataset_set, "n_datasets": len(e.datasets), "metric": e.metric,
            "epochs": "" if e.epochs is None else e.epochs, **{k: f"{v:.2f}" for k, v in e.values.items()},
            "source_label": e.source_label, "source": e.source, "url": e.url,
            "verified": "true" if e.verified else "false", "note": e.note,
        })  # fmt: skip
    return out.getvalue()


def _write(out_dir: str | Path, files: Mapping[str, str]) -> list[Path]:
    out = Path(out_dir)
    written = []
    try:
        out.mkdir(parents=True, exist_ok=True)
        for name, text in files.items():
            path = out / name
            tmp = path.with_name(path.name + ".tmp")
            tmp.write_text(text, encoding="utf-8")
            tmp.replace(path)
            written.append(path)
    except OSError as exc:
        raise ResultsError(f"cannot write the published comparison to {out}: {exc}") from None
    return written


def report_comparisons(
    rows: Sequence[Row], published: PublishedTable, out_dir: str | Path | None = None
) -> list[Comparison]:
    """``scaleprompt results RUNS --published``: log the comparisons (after the measured tables); with
    ``out_dir``, write ``published_vs_measured_<setting>.md`` / ``.csv`` per setting present."""
    comparisons = compare(rows, published)
    markdown = comparison_markdown(comparisons)
    logger.info("## Published (source) vs measured\n\n%s", markdown)
    if out_dir is not None:
        files = {}
        for setting in SETTINGS:
            mine = [c for c in comparisons if c.setting == setting]
            if mine:
                files[f"published_vs_measured_{setting}.md"] = comparison_markdown(mine)
                files[f"published_vs_measured_{setting}.csv"] = comparison_csv(mine)
        paths = _write(out_dir, files)
        for md, table_csv in zip(paths[::2], paths[1::2], strict=True):
            logger.info("wrote %s and %s", md, table_csv)
    return comparisons


def report_published(published: PublishedTable, out_dir: str | Path | None = None) -> str:
    """``scaleprompt results --published`` without runs: log the published table; with ``out_dir``, write
    ``published.md`` / ``published.csv``. Returns the markdown."""
    markdown = published_markdown(published)
    logger.info("%s", markdown)
    if out_dir is not None:
        md, table_csv = _write(out_dir, {"published.md": markdown, "published.csv": published_csv(published)})
        logger.info("wrote %s and %s", md, table_csv)
    return markdown
