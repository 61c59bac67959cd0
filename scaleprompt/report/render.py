"""Tables -> text: markdown (logged, ``results_<setting>.md``) and CSV (``results_<setting>.csv``).

A cell is ``"82.00 ± 2.00"`` (mean ± sample std over seeds), an average ``"86.00"`` (``"86.00 (1/2)"`` when it
covers only some of the table's datasets), no runs ``"—"``; the CSV has the numbers with 4 decimals, mean, std and
count in separate columns. :func:`write_tables` writes one markdown and one CSV file per setting present.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Sequence
from pathlib import Path

from scaleprompt.report.aggregate import SETTINGS, Row
from scaleprompt.report.tables import MISSING, Cell, Column, Table, make_tables


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


def csv_number(x: float | int | None) -> str:
    """``x`` in a CSV cell: an integer as is, a number with 4 decimals, None as ``""``."""
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
        header += (
            [f"{c.label} mean", f"{c.label} n_datasets"]
            if c.average
            else [f"{c.label} mean", f"{c.label} std", f"{c.label} n_seeds"]
        )
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=header, lineterminator="\n", restval="")
    writer.writeheader()
    for t in tables:
        for line in t.rows:
            record: dict[str, str] = {**t.keys, "method": line.method}
            if line.variant:
                record["variant"] = line.variant
            for col, cell in zip(t.columns, line.cells, strict=True):
                record[f"{col.label} mean"] = csv_number(cell.mean)
                if col.average:
                    record[f"{col.label} n_datasets"] = csv_number(cell.n)
                else:
                    record[f"{col.label} std"] = csv_number(cell.std)
                    record[f"{col.label} n_seeds"] = csv_number(cell.n)
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
                write_atomic(path, text)
            written[setting] = paths
    return written


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file beside it, so a reader never sees half a file."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)
