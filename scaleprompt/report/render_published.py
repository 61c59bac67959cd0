"""The published table and its comparisons with the measured averages, as markdown and CSV, logged and written.

``scaleprompt results RUNS --published``: :func:`report_comparisons` logs the comparisons of
:func:`~scaleprompt.report.compare.compare` after the measured tables and writes
``published_vs_measured_<setting>.md`` / ``.csv``; ``scaleprompt results --published`` without runs:
:func:`report_published` logs the published table itself (``published.md`` / ``.csv``).
"""

from __future__ import annotations

import csv
import io
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from scaleprompt.report.aggregate import SETTINGS, Row
from scaleprompt.report.compare import Comparison, compare
from scaleprompt.report.published import VALUE_LABELS, VALUES, Published, PublishedTable
from scaleprompt.report.render import csv_number, write_atomic
from scaleprompt.report.schema import ResultsError
from scaleprompt.report.tables import METRIC_LABELS, SETTING_TITLES, backbone_label, shots_label

logger = logging.getLogger(__name__)


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
                **c.keys,
                "method": r.method,
                "variant": r.variant,
                "published_method": r.entry.method,
                "published_variant": r.entry.variant,
                "published_epochs": csv_number(r.entry.epochs),
                "datasets": r.entry.dataset_set,
                "source": r.entry.source,
                "url": r.entry.url,
                "verified": "true" if r.entry.verified else "false",
                "note": r.entry.note,
            }
            diff = r.difference
            for v in r.entry.values:
                record |= {
                    f"measured_{v}": csv_number(r.measured[v]),
                    f"published_{v}": csv_number(r.entry.values[v]),
                    f"diff_{v}": csv_number(diff[v]),
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
        "method",
        "variant",
        "scaleprompt_method",
        "setting",
        "backbone",
        "pretrained",
        "shots",
        "datasets",
        "n_datasets",
        "metric",
        "epochs",
        "base",
        "novel",
        "hm",
        "accuracy",
        "source_label",
        "source",
        "url",
        "verified",
        "note",
    ]
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=header, lineterminator="\n", restval="")
    writer.writeheader()
    for e in table.entries:
        writer.writerow(
            {
                "method": e.method,
                "variant": e.variant,
                "scaleprompt_method": e.scaleprompt_method or "",
                "setting": e.setting,
                "backbone": e.backbone,
                "pretrained": e.pretrained,
                "shots": e.shots,
                "datasets": e.dataset_set,
                "n_datasets": len(e.datasets),
                "metric": e.metric,
                "epochs": "" if e.epochs is None else e.epochs,
                **{k: f"{v:.2f}" for k, v in e.values.items()},
                "source_label": e.source_label,
                "source": e.source,
                "url": e.url,
                "verified": "true" if e.verified else "false",
                "note": e.note,
            }
        )
    return out.getvalue()


def _write(out_dir: str | Path, files: Mapping[str, str]) -> list[Path]:
    out = Path(out_dir)
    written = []
    try:
        out.mkdir(parents=True, exist_ok=True)
        for name, text in files.items():
            path = out / name
            write_atomic(path, text)
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
