"""Figures of runs for a paper (``scaleprompt plot``): the rows of :func:`~scaleprompt.report.aggregate.aggregate`
as grouped bars, and the runs' per-epoch history as curves with the seeds as a band.

One figure per (setting, dataset, shots, backbone + pretrained) of the rows, each with a caption file
``<stem>.txt`` that says what it was computed on (selection, metric, the seeds and the run files of every bar or
line, what the error bars and bands are):

* ``bars_<setting>_<dataset>_...``: base-to-novel: Base / Novel / HM per method (variant); few-shot: test accuracy
  per method, one bar per shot count; transfer: the source and each target per method. Bars are the mean over
  seeds, error bars the sample std over seeds; the dashed line is zero-shot CLIP (the runs' own zero-shot
  numbers, else a ``zsclip`` row).
* ``curves_<setting>_<dataset>_...``: validation accuracy and train loss per validated epoch (results.json
  ``history``), a line per method (variant): the mean over seeds, the band their min-max (``band="minmax"``) or
  ± one sample std (``band="std"``).
"""

from __future__ import annotations

import logging
import re
import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scaleprompt.data.protocols import harmonic_mean
from scaleprompt.plots import (
    draw_grouped_bars,
    fit_tick_labels,
    paper_style,
    save_figure,
)
from scaleprompt.report.aggregate import Row, Stat
from scaleprompt.report.load import LoadedRun
from scaleprompt.report.schema import SelectionResult
from scaleprompt.report.tables import METRIC_LABELS, SELECTION_LABELS

logger = logging.getLogger(__name__)

BANDS = ("minmax", "std")
BAND_LABELS = {"minmax": "band: min–max over seeds", "std": "band: mean ± 1 std over seeds"}
SETTING_LABELS = {"base2new": "base-to-novel", "fewshot": "few-shot", "transfer": "cross-dataset transfer"}


@dataclass
class FigureGroup:
    """The rows drawn in one figure: one setting, dataset, backbone + pretrained (and shot count, but for
    few-shot, whose shot counts are the bars)."""

    setting: str
    dataset: str
    backbone: str
    pretrained: str | None
    shots: int | None
    rows: list[Row] = field(default_factory=list)

    @property
    def stem(self) -> str:
        """The file name part: ``base2new_OxfordPets_16shot_ViT-B-16-openai``."""
        parts = [self.setting, self.dataset]
        if self.shots is not None:
            parts.append(f"{self.shots}shot")
        parts.append(f"{self.backbone}-{self.pretrained}" if self.pretrained else self.backbone)
        return slug("_".join(parts))

    @property
    def title(self) -> str:
        """Two short lines: ``"OxfordPets: base-to-novel, 16 shots"`` / ``"ViT-B-16 (openai)"``."""
        setting, shots, backbone = self._words()
        return f"{self.dataset}: {setting}{shots}\n{backbone}"

    @property
    def describe(self) -> str:
        """``"base-to-novel on OxfordPets, 16 shots, ViT-B-16 (openai)"``."""
        setting, shots, backbone = self._words()
        return f"{setting} on {self.dataset}{shots}, {backbone}"

    def _words(self) -> tuple[str, str, str]:
        """The setting, ``", 16 shots"`` (or nothing) and ``"ViT-B-16 (openai)"``, in words."""
        shots = f", {self.shots} shots" if self.shots is not None else ""
        tag = f" ({self.pretrained})" if self.pretrained else ""
        return SETTING_LABELS.get(self.setting, self.setting), shots, f"{self.backbone}{tag}"


def slug(text: str) -> str:
    """``text`` as a file name: anything but letters, digits, ``.``, ``_`` and ``-`` becomes ``_``."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "figure"


def figure_groups(rows: Sequence[Row]) -> list[FigureGroup]:
    """``rows`` by figure (:class:`FigureGroup`), in the rows' order."""
    groups: dict[tuple[Any, ...], FigureGroup] = {}
    for row in rows:
        shots = None if row.setting == "fewshot" else row.shots
        key = (row.setting, row.dataset, row.backbone, row.pretrained, shots)
        groups.setdefault(key, FigureGroup(*key)).rows.append(row)
    return list(groups.values())


def _seeds(ns: Sequence[int]) -> str:
    low, high = min(ns), max(ns)
    return f"{low} seed{'s' if low != 1 else ''}" if low == high else f"{low}–{high} seeds"


def _stat(s: Stat | None) -> str:
    return "—" if s is None else f"{s.mean:.2f} ± {s.std:.2f}"


def _zero_shot(group: FigureGroup, runs: Mapping[str, LoadedRun], metric: str) -> tuple[float, str] | None:
    """The zero-shot line of a figure: the mean of its runs' own zero-shot numbers (HM for base-to-novel, the
    test split otherwise), else the ``zsclip`` row's; with what it is."""
    values = []
    for row in group.rows:
        for path in row.paths:
            zs: SelectionResult | None = runs[path].result.zero_shot if path in runs else None
            if zs is None:
                continue
            if group.setting == "base2new" and zs.base is not None and zs.novel is not None:
                values.append(harmonic_mean(getattr(zs.base, metric), getattr(zs.novel, metric)))
            elif group.setting != "base2new" and zs.test is not None:
                values.append(getattr(zs.test, metric))
    what = "HM" if group.setting == "base2new" else "test"
    if values:
        return statistics.fmean(
            values
        ), f"zero-shot CLIP {what} (mean of {len(values)} runs' zero-shot numbers)"
    zs_row = next((r for r in group.rows if r.method == "zsclip"), None)
    if zs_row is not None:
        value = zs_row.values["hm"].mean if group.setting == "base2new" else zs_row.values["test"].mean
        return value, f"zero-shot CLIP {what} (the zsclip row, {_seeds([zs_row.n])})"
    return None


def _bar_series(
    group: FigureGroup,
) -> tuple[list[str], dict[str, list[tuple[float, float] | None]], list[str]]:
    """(category labels, series, caption table lines) of a bar figure."""
    if group.setting == "base2new":
        labels = [r.label for r in group.rows]
        series: dict[str, list[tuple[float, float] | None]] = {
            name: [(r.values[key].mean, r.values[key].std) for r in group.rows]
            for key, name in (("base", "Base"), ("novel", "Novel"), ("hm", "HM"))
        }
        table = ["| method | seeds | Base | Novel | HM |", "|:---|:---|---:|---:|---:|"]
        table += [
            f"| {r.label} | {', '.join(map(str, r.seeds))} | {_stat(r.values['base'])} | "
            f"{_stat(r.values['novel'])} | {_stat(r.values['hm'])} |"
            for r in group.rows
        ]
        return labels, series, table
    if group.setting == "fewshot":
        labels = list(dict.fromkeys(r.label for r in group.rows))
        shots = sorted({r.shots for r in group.rows})
        cell = {(r.label, r.shots): r for r in group.rows}
        series = {}
        for k in shots:
            name = f"{k} shot{'s' if k != 1 else ''}"
            series[name] = [
                (cell[lb, k].values["test"].mean, cell[lb, k].values["test"].std) if (lb, k) in cell else None
                for lb in labels
            ]
        table = ["| method | shots | seeds | test |", "|:---|---:|:---|---:|"]
        table += [
            f"| {r.label} | {r.shots} | {', '.join(map(str, r.seeds))} | {_stat(r.values['test'])} |"
            for r in group.rows
        ]
        return labels, series, table
    labels = [r.label for r in group.rows]  # transfer: the source, then every target
    targets = list(dict.fromkeys(t for r in group.rows for t in r.targets))
    series = {
        f"{group.dataset} (source)": [(r.values["test"].mean, r.values["test"].std) for r in group.rows]
    }
    for t in targets:
        series[t] = [(r.targets[t].mean, r.targets[t].std) if t in r.targets else None for r in group.rows]
    table = [f"| method | seeds | {group.dataset} (source) | {' | '.join(targets)} |"]
    table += ["|:---|:---|" + "---:|" * (1 + len(targets))]
    table += [
        f"| {r.label} | {', '.join(map(str, r.seeds))} | {_stat(r.values['test'])} | "
        + " | ".join(_stat(r.targets.get(t)) for t in targets)
        + " |"
        for r in group.rows
    ]
    return labels, series, table


def bars_figure(
    group: FigureGroup,
    stem: Path,
    runs: Mapping[str, LoadedRun] | None = None,
    formats: Sequence[str] = ("pdf", "png"),
    font_size: float = 9.0,
    title: str | None = None,
    caption: bool = True,
) -> list[Path]:
    """The grouped bars of ``group`` as ``<stem>.<format>`` for each of ``formats`` (and the caption
    ``<stem>.txt``); ``runs`` (by source): the runs behind the rows, for the zero-shot line; ``title``: the
    figure's title (default: what the group is). Returns the files written."""
    rows = group.rows
    selection, metric = rows[0].selection, rows[0].metric
    labels, series, table = _bar_series(group)
    ns = [r.n for r in rows]
    if len(set(ns)) > 1:  # the seeds of each bar on its label when they differ
        labels = [f"{lb} (n={n})" for lb, n in zip(labels, _label_ns(group, labels), strict=True)]
    zero_shot = _zero_shot(group, runs or {}, metric)
    with paper_style(font_size) as plt:
        width = min(7.0, max(3.6, 1.2 + 0.18 * len(labels) * max(1, len(series))))
        fig, ax = plt.subplots(figsize=(width, 3.2), layout="constrained")
        draw_grouped_bars(
            ax,
            labels,
            series,
            baseline=zero_shot[0] if zero_shot else None,
            baseline_label="zero-shot CLIP",
        )
        ax.set_ylabel(METRIC_LABELS[metric])
        ax.set_xlabel("method")
        fig.suptitle(title or f"{group.title}; {SELECTION_LABELS[selection]}")
        entries = len(series) + (zero_shot is not None)
        ax.legend(
            title=f"mean ± std over {_seeds(ns)}",
            ncol=entries if width >= 1.3 * entries + 0.5 else 2,
            loc="lower left",
            bbox_to_anchor=(0.0, 1.01),
            borderaxespad=0.0,
        )
        fit_tick_labels(ax)
        paths = save_figure(fig, stem, formats)
    if caption:
        lines = [
            f"{stem.name}.{{{','.join(formats)}}}: {group.describe}.",
            f"Selection: {SELECTION_LABELS[selection]}; metric: {METRIC_LABELS[metric]}.",
            "Bars: mean over seeds; error bars: sample standard deviation over seeds (none with one seed); "
            f"{sum(ns)} runs, {_seeds(ns)} per bar.",
        ]
        if zero_shot is not None:
            lines.append(f"Dashed line: {zero_shot[1]} = {zero_shot[0]:.2f}.")
        lines += ["", *table, "", "Runs:", *(f"- {p}" for r in rows for p in r.paths)]
        paths.append(_write_caption(stem, lines))
    return paths


def _label_ns(group: FigureGroup, labels: Sequence[str]) -> list[str]:
    """Per category label: the seed count of its bar(s) (``"2"``, or ``"1–3"`` for few-shot bars that differ)."""
    out = []
    for label in labels:
        ns = sorted({r.n for r in group.rows if r.label == label})
        out.append(str(ns[0]) if len(ns) == 1 else f"{ns[0]}–{ns[-1]}")
    return out


def _write_caption(stem: Path, lines: Sequence[str]) -> Path:
    path = stem.with_name(f"{stem.name}.txt")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


# --- per-epoch curves -------------------------------------------------------------------------------------------
@dataclass
class Curve:
    """One line of a curves panel: per epoch the values of each seed."""

    label: str
    by_epoch: dict[int, list[float]]
    seeds: tuple[int, ...]


def _curves(
    group: FigureGroup, runs: Mapping[str, LoadedRun], value: Callable[[Mapping[str, Any]], Any]
) -> list[Curve]:
    """A :class:`Curve` per row of ``group`` whose runs (``runs`` by source) have a history: ``value`` of each
    history entry (None: not recorded at that epoch)."""
    out = []
    for row in group.rows:
        by_epoch: dict[int, list[float]] = {}
        for path in row.paths:
            run = runs.get(path)
            for entry in run.result.history if run is not None else []:
                x = value(entry)
                if isinstance(x, int | float) and not isinstance(x, bool):
                    by_epoch.setdefault(int(entry["epoch"]), []).append(float(x))
        if by_epoch:
            label = row.label if group.setting != "fewshot" else f"{row.label}, {row.shots} shots"
            out.append(Curve(label, dict(sorted(by_epoch.items())), row.seeds))
    return out


def _band(values: Sequence[float], band: str) -> tuple[float, float, float]:
    mean = statistics.fmean(values)
    if band == "std":
        std = statistics.stdev(values) if len(values) > 1 else 0.0
        return mean, mean - std, mean + std
    return mean, min(values), max(values)


def curves_figure(
    group: FigureGroup,
    stem: Path,
    runs: Mapping[str, LoadedRun],
    formats: Sequence[str] = ("pdf", "png"),
    band: str = "minmax",
    font_size: float = 9.0,
) -> list[Path]:
    """Validation accuracy (the rows' metric) and train loss per validated epoch of ``group``'s rows, from their
    runs' ``history`` (``runs`` by source), as ``<stem>.<format>`` (and ``<stem>.txt``): a line per row, the mean
    over seeds, with a band (``band``: ``minmax`` or ``std``) where two or more seeds have the epoch. [] when no
    run of the group has a history (nothing trained)."""
    if band not in BANDS:
        raise ValueError(f"band must be one of {list(BANDS)}, got {band!r}")
    from matplotlib.patches import Patch
    from matplotlib.ticker import MaxNLocator

    metric = group.rows[0].metric
    panels = [
        (
            f"validation {METRIC_LABELS[metric]}",
            _curves(group, runs, lambda h: (h.get("val") or {}).get(metric)),
        ),
        ("train loss (epoch mean)", _curves(group, runs, lambda h: h.get("train_loss"))),
    ]
    panels = [(label, curves) for label, curves in panels if curves]
    if not panels:
        return []
    lines = [
        f"{stem.name}.{{{','.join(formats)}}}: {group.describe}; per validated epoch, from each run's "
        "results.json history.",
        f"Lines: mean over seeds; {BAND_LABELS[band]} (where two or more seeds have the epoch).",
    ]
    with paper_style(font_size) as plt:
        fig, axes = plt.subplots(
            1, len(panels), figsize=(3.4 * len(panels) + 0.4, 3.0), layout="constrained", squeeze=False
        )
        colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
        for ax, (ylabel, curves) in zip(axes[0], panels, strict=True):
            lines += ["", f"{ylabel}:"]
            for i, curve in enumerate(curves):
                color = colors[i % len(colors)]
                epochs = list(curve.by_epoch)
                stats = [_band(v, band) for v in curve.by_epoch.values()]
                n = len(curve.seeds)
                ax.plot(
                    epochs,
                    [m for m, _, _ in stats],
                    color=color,
                    marker="o" if len(epochs) < 12 else None,
                    markersize=3,
                    label=f"{curve.label} ({n} seed{'s' if n != 1 else ''})",
                )
                several = [len(v) > 1 for v in curve.by_epoch.values()]
                if any(several):
                    ax.fill_between(
                        epochs,
                        [lo for _, lo, _ in stats],
                        [hi for _, _, hi in stats],
                        where=several,
                        color=color,
                        alpha=0.2,
                        linewidth=0,
                    )
                lines.append(
                    f"- {curve.label} (seeds {', '.join(map(str, curve.seeds))}): "
                    + "; ".join(
                        f"epoch {e}: {m:.4g} [{lo:.4g}, {hi:.4g}]"
                        for e, (m, lo, hi) in zip(epochs, stats, strict=True)
                    )
                )
            ax.set_xlabel("epoch")
            ax.set_ylabel(ylabel)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.grid(True)
        handles, labels = axes[0][0].get_legend_handles_labels()
        handles.append(Patch(color="0.5", alpha=0.3, linewidth=0))
        labels.append(BAND_LABELS[band])
        fig.legend(handles, labels, loc="outside lower center", ncol=min(3, len(labels)))
        fig.suptitle(f"{group.title}; per validated epoch")
        paths = save_figure(fig, stem, formats)
    paths.append(_write_caption(stem, lines))
    return paths


def run_figures(
    runs: Sequence[LoadedRun],
    rows: Sequence[Row],
    out: Path,
    formats: Sequence[str] = ("pdf", "png"),
    band: str = "minmax",
    font_size: float = 9.0,
) -> list[Path]:
    """Every figure of ``rows`` (from ``runs``) in the folder ``out``: per :class:`FigureGroup` its bars and, when
    its runs recorded epochs, its curves. Returns the files written (figures and captions)."""
    by_source = {r.source: r for r in runs}
    written: list[Path] = []
    for group in figure_groups(rows):
        written += bars_figure(group, out / f"bars_{group.stem}", by_source, formats, font_size)
        written += curves_figure(group, out / f"curves_{group.stem}", by_source, formats, band, font_size)
    return written
