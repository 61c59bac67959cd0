"""The measured averages beside the papers' published ones (:mod:`scaleprompt.report.published`).

``scaleprompt results RUNS... --published`` (:func:`compare`; written by :mod:`scaleprompt.report.render_published`): after the measured tables, one comparison per
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
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from scaleprompt.report.aggregate import SETTINGS, Row
from scaleprompt.report.published import VALUES, Published, PublishedTable
from scaleprompt.report.tables import (
    METRIC_LABELS,
    SETTING_TITLES,
    Table,
    backbone_label,
    make_tables,
    shots_label,
)


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
        if r.setting == keys["setting"]
        and r.selection == keys["selection"]
        and r.metric == keys["metric"]
        and r.backbone == keys["backbone"]
        and (r.pretrained or "") == keys["pretrained"]
        and ("shots" not in keys or str(r.shots) == keys["shots"])
    ]


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
