"""Rows -> paper-style tables: which rows, columns and averages each setting's table has.

``make_tables(rows, "base2new")`` (or :func:`base2new_tables` / :func:`fewshot_tables` / :func:`transfer_tables`)
lays the rows of :func:`~scaleprompt.report.aggregate.aggregate` out as :class:`Table` objects;
:mod:`scaleprompt.report.render` writes them as markdown and CSV. Conventions (also written under every table):

* A cell is the mean ± the sample standard deviation (n - 1) over seeds; with one seed the std is 0.00. The
  "Seeds" column gives the number of seeds behind the row's cells (a range when they differ).
* Variants (:mod:`scaleprompt.report.variants`) are rows of their own, labelled ``provp_ref (depth=2, lr=0.05)``.
* "Backbone" is the model name AND its pretrained tag: runs of ViT-B-16/openai and ViT-B-16/laion2b are never
  averaged together (they land in separate tables).
* The selection (last epoch / best validation epoch) is in every table title.
* Base-to-novel HM: the HM cell shows, as the papers do, the harmonic mean of the Base and Novel MEANS shown next to
  it, ± the std of the per-seed HMs.
* "Average over datasets" (base-to-novel, CoCoOp / MaPLe style): Base and Novel are the averages of the
  per-dataset means; HM is the harmonic mean of those two averages, NOT the average of the per-dataset HMs
  (that is how the papers compute it). Few-shot averages (per shot) and transfer averages (over targets, source
  excluded) are likewise averages of per-dataset means. Averages have no ±; an average over only k of the
  table's N datasets is marked ``(k/N)``.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from scaleprompt.data.protocols import harmonic_mean
from scaleprompt.report.aggregate import DATASET_ORDER, METHOD_ORDER, SETTINGS, Row, Stat, order, ordered
from scaleprompt.report.variants import natural, variant_label

SELECTION_LABELS = {"last": "last epoch", "best_val": "best validation epoch"}
METRIC_LABELS = {"top1": "top-1 accuracy (%)", "mean_per_class": "mean per-class accuracy (%)"}
SETTING_TITLES = {
    "base2new": "Base-to-novel generalization",
    "fewshot": "Few-shot classification",
    "transfer": "Transfer from a source dataset to targets",
}
MISSING = "—"


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
        "setting": setting,
        "selection": selection,
        "metric": metric,
        "backbone": backbone,
        "pretrained": pretrained or "",
    }


def _line_ids(group: Iterable[Row]) -> list[tuple[str, str]]:
    """The (method, variant) lines of a table: papers' method order, then variants in natural order."""
    ids = {(r.method, r.variant) for r in group}
    return sorted(ids, key=lambda mv: (order(mv[0], METHOD_ORDER), natural(mv[1])))


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
        datasets = ordered((r.dataset for r in group), DATASET_ORDER)
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
        datasets = ordered((r.dataset for r in group), DATASET_ORDER)
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
        targets = ordered((t for r in group for t in r.targets), DATASET_ORDER)
        columns = [
            Column(f"{source} (source)"),
            *(Column(t) for t in targets),
            Column("Average over targets", True),
        ]
        body = []
        for r in sorted(group, key=lambda r: (order(r.method, METHOD_ORDER), natural(r.variant))):
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
