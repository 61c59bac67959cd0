"""Figures of a finished sweep for a paper (``scaleprompt plot SWEEP``), drawn from the sweep's own files, so that
every trial is named by the id report.md and trials.csv give it (Tune's trial id), never by Optuna's trial number
(Optuna numbers trials in the order it sampled them, which is not Tune's).

:func:`load_sweep` reads ``trials.csv`` (the trials in report.md's order: ids, statuses, parameters, the metric
at each trial's last epoch), ``summary.json`` (metric, mode, best trial, importances) and, where the trial folders
are still there, each trial's ``run/results.json`` history (its metric per validated epoch).
:func:`sweep_figures` draws:

* ``sweep_<name>_objective``: the metric of each trial, trial ids on the axis, with the best-so-far line;
* ``sweep_<name>_params``: the metric against each searched parameter (Optuna's "slice" view): categories on a
  category axis, a parameter spread over decades on a log axis labelled at its decades only;
* ``sweep_<name>_curves``: the metric per epoch of each trial (Optuna's "intermediate values"), where the trials'
  folders are present;
* ``sweep_<name>_importances``: the parameter importances of summary.json, where the sweep computed them;

each with a caption file ``<stem>.txt`` (the sweep, the metric, and every trial's id, status, parameters and
value).
"""

from __future__ import annotations

import csv
import json
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scaleprompt.plots import fit_tick_labels, log_axis, paper_style, save_figure, wants_log_axis
from scaleprompt.report.figures import slug
from scaleprompt.report.schema import ResultsError

logger = logging.getLogger(__name__)

TRIALS_FILE, SUMMARY_FILE, REPORT_FILE = "trials.csv", "summary.json", "report.md"
METRIC_LABELS = {
    "val_top1": "validation top-1 accuracy (%)",
    "val_mean_per_class": "validation mean per-class accuracy (%)",
    "train_loss": "train loss",
}
MARKERS = {"finished": ("o", "finished"), "stopped": ("o", "stopped early")}  # (its value: at its last epoch)


@dataclass
class SweepTrial:
    """One trial as the sweep's files record it."""

    trial_id: str
    status: str
    params: dict[str, Any]
    value: float | None  # the sweep's metric at the trial's last epoch
    folder: Path | None = None  # <sweep>/trial_<id>, where it still exists
    history: list[dict[str, Any]] = field(default_factory=list)  # run/results.json, where readable

    @property
    def kind(self) -> str:
        """``finished``, ``stopped`` (by the scheduler) or ``failed`` (failed, or ended without a valid
        results.json), as report.md counts them."""
        if self.status == "finished":
            return "finished"
        if self.status.startswith("stopped early") and "without results" not in self.status:
            return "stopped"
        return "failed"


@dataclass
class Sweep:
    """A sweep folder's trials (report.md's order), metric and mode, best trial and importances."""

    folder: Path
    metric: str
    mode: str
    params: list[str]
    trials: list[SweepTrial]
    best: str | None = None
    importances: dict[str, float] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.folder.name

    def metric_label(self) -> str:
        return METRIC_LABELS.get(self.metric, self.metric)


def is_sweep(folder: Path) -> bool:
    """``folder`` holds a sweep's files (trials.csv with summary.json or report.md)."""
    return (folder / TRIALS_FILE).is_file() and any(
        (folder / name).is_file() for name in (SUMMARY_FILE, REPORT_FILE)
    )


def _value(text: str | None) -> Any:
    """A trials.csv cell as the value it was: None, a bool, an int, a float, else the text."""
    if text is None or text == "":
        return None
    if text in ("True", "False"):
        return text == "True"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            continue
    return text


def _number(text: str | None) -> float | None:
    value = _value(text)
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    return float(value) if ok else None


def _history(folder: Path | None) -> list[dict[str, Any]]:
    path = folder / "run" / "results.json" if folder is not None else None
    if path is None or not path.is_file():
        return []
    try:
        history = json.loads(path.read_text(encoding="utf-8")).get("history")
    except (OSError, ValueError, AttributeError):
        return []
    return [h for h in history if isinstance(h, dict) and isinstance(h.get("epoch"), int)] if history else []


def load_sweep(folder: str | Path) -> Sweep:
    """The sweep in ``folder`` (its trials.csv and summary.json; trial folders where present). A folder without
    trials.csv, or a trials.csv without trial ids, raises :class:`ResultsError`."""
    folder = Path(folder)
    path = folder / TRIALS_FILE
    try:
        with path.open(newline="", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
    except OSError as exc:
        raise ResultsError(f"{folder}: not a sweep folder ({TRIALS_FILE}: {exc.strerror or exc})") from None
    if rows and "trial_id" not in rows[0]:
        raise ResultsError(f"{path}: no trial_id column; not a sweep's {TRIALS_FILE}")
    summary: dict[str, Any] = {}
    if (folder / SUMMARY_FILE).is_file():
        try:
            summary = json.loads((folder / SUMMARY_FILE).read_text(encoding="utf-8"))
        except ValueError as exc:
            raise ResultsError(f"{folder / SUMMARY_FILE}: not valid JSON ({exc})") from None
    metric = str(summary.get("metric") or "val_top1")
    params = [k.removeprefix("param.") for k in (rows[0] if rows else {}) if k.startswith("param.")]
    trials = []
    for row in rows:
        trial_id = str(row["trial_id"])
        trial_folder = folder / f"trial_{trial_id}"
        if not trial_folder.is_dir() and row.get("trial_dir"):
            trial_folder = Path(row["trial_dir"])
        found = trial_folder if trial_folder.is_dir() else None
        trials.append(
            SweepTrial(
                trial_id,
                str(row.get("status") or ""),
                {k: _value(row.get(f"param.{k}")) for k in params},
                _number(row.get(metric)),
                found,
                _history(found),
            )
        )
    importances = {str(k): float(v) for k, v in (summary.get("importances") or {}).items()}
    return Sweep(
        folder,
        metric,
        str(summary.get("mode") or "max"),
        params,
        trials,
        summary.get("best_trial"),
        importances,
    )


def report_trial_ids(report: Path) -> list[str]:
    """The trial ids of report.md's ``## Trials`` table, in its order."""
    ids, inside = [], False
    for line in report.read_text(encoding="utf-8").splitlines():
        if line.startswith("## "):
            inside = line.strip() == "## Trials"
            continue
        if inside and line.startswith("| ") and not line.startswith("| trial |"):
            ids.append(line.split("|")[1].strip())
    return ids


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _best(sweep: Sweep) -> SweepTrial | None:
    """The sweep's best trial: summary.json's, else the best finished value (the earliest on ties)."""
    if sweep.best is not None:
        return next((t for t in sweep.trials if t.trial_id == sweep.best), None)
    done = [t for t in sweep.trials if t.kind == "finished" and t.value is not None]
    if not done:
        return None
    sign = 1.0 if sweep.mode == "max" else -1.0
    return max(done, key=lambda t: (sign * (t.value or 0.0), -sweep.trials.index(t)))


def _caption(sweep: Sweep, stem: Path, formats: Sequence[str], what: str) -> Path:
    counts = {k: sum(t.kind == k for t in sweep.trials) for k in ("finished", "stopped", "failed")}
    best = _best(sweep)
    lines = [
        f"{stem.name}.{{{','.join(formats)}}}: sweep {sweep.name} ({sweep.folder}): {what}.",
        f"Metric: {sweep.metric} ({sweep.metric_label()}, {sweep.mode}imized) at each trial's last epoch. "
        f"{len(sweep.trials)} trials: {counts['finished']} finished, {counts['stopped']} stopped early, "
        f"{counts['failed']} failed. Trial ids as in the sweep's report.md and trials.csv (not Optuna's trial "
        "numbers).",
    ]
    if best is not None:
        lines.append(f"Best trial: {best.trial_id} ({sweep.metric} = {_fmt(best.value)}).")
    lines += ["", f"| trial | status | {' | '.join(sweep.params)} | {sweep.metric} |"]
    lines += ["|:---|:---|" + "---:|" * (len(sweep.params) + 1)]
    lines += [
        f"| {t.trial_id} | {t.status} | "
        + " | ".join(_fmt(t.params.get(k)) for k in sweep.params)
        + f" | {'—' if t.value is None else _fmt(t.value)} |"
        for t in sweep.trials
    ]
    path = stem.with_name(f"{stem.name}.txt")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _scatter(ax: Any, xs: Sequence[Any], trials: Sequence[SweepTrial], best: SweepTrial | None) -> None:
    """The trials' values at ``xs``: finished filled, stopped hollow, the best a star."""
    for kind, (marker, label) in MARKERS.items():
        points = [
            (x, t.value) for x, t in zip(xs, trials, strict=True) if t.kind == kind and t.value is not None
        ]
        if points:
            hollow = kind == "stopped"
            ax.scatter(
                [x for x, _ in points],
                [v for _, v in points],
                s=18,
                marker=marker,
                facecolors="none" if hollow else "C0",
                edgecolors="C1" if hollow else "C0",
                label=label,
                zorder=3,
            )
    if best is not None and best.value is not None and best in trials:
        x = xs[list(trials).index(best)]
        ax.scatter([x], [best.value], s=70, marker="*", color="C3", label=f"best: {best.trial_id}", zorder=4)


def objective_figure(
    sweep: Sweep, stem: Path, formats: Sequence[str] = ("pdf", "png"), font_size: float = 9.0
) -> list[Path]:
    """The metric of every trial (report.md's order and ids) with the best-so-far line of the finished trials,
    as ``<stem>.<format>`` and ``<stem>.txt``."""
    trials, best = sweep.trials, _best(sweep)
    ids = [t.trial_id for t in trials]
    with paper_style(font_size) as plt:
        fig, ax = plt.subplots(
            figsize=(min(7.0, max(3.6, 1.2 + 0.2 * len(trials))), 3.2), layout="constrained"
        )
        xs = list(range(len(trials)))
        _scatter(ax, xs, trials, best)
        sign = 1.0 if sweep.mode == "max" else -1.0
        running: list[tuple[int, float]] = []
        for x, t in zip(xs, trials, strict=True):
            if t.kind == "finished" and t.value is not None:
                if not running or sign * t.value > sign * running[-1][1]:
                    running.append((x, t.value))
                else:
                    running.append((x, running[-1][1]))
        if running:
            ax.step(
                [x for x, _ in running],
                [v for _, v in running],
                where="post",
                color="0.4",
                lw=1,
                label="best so far",
            )
        failed = [x for x, t in zip(xs, trials, strict=True) if t.value is None]
        if failed:
            ax.scatter(
                failed,
                [0.0] * len(failed),
                marker="x",
                color="C3",
                s=18,
                transform=ax.get_xaxis_transform(),
                clip_on=False,
                label="failed",
                zorder=3,
            )
        ax.set_xticks(xs, ids)
        ax.set_xlim(-0.6, len(trials) - 0.4)
        ax.set_xlabel("trial (id as in report.md)")
        ax.set_ylabel(sweep.metric_label())
        ax.grid(axis="y")
        fig.legend(loc="outside lower center", ncol=3)
        fig.suptitle(f"Sweep {sweep.name}: {sweep.metric} per trial")
        fit_tick_labels(ax)
        paths = save_figure(fig, stem, formats)
    paths.append(_caption(sweep, stem, formats, f"{sweep.metric} per trial"))
    return paths


def _categorical(values: Sequence[Any]) -> bool:
    return any(isinstance(v, str | bool) for v in values if v is not None)


def params_figure(
    sweep: Sweep, stem: Path, formats: Sequence[str] = ("pdf", "png"), font_size: float = 9.0
) -> list[Path]:
    """The metric against each searched parameter, one panel each (shared metric axis), as ``<stem>.<format>``
    and ``<stem>.txt``; [] for a sweep without parameters or values."""
    from matplotlib.ticker import MaxNLocator

    trials = [t for t in sweep.trials if t.value is not None]
    if not sweep.params or not trials:
        return []
    best = _best(sweep)
    ncols = min(3, len(sweep.params))
    nrows = math.ceil(len(sweep.params) / ncols)
    with paper_style(font_size) as plt:
        fig, axes = plt.subplots(
            nrows,
            ncols,
            figsize=(2.4 * ncols + 0.6, 2.3 * nrows + 0.5),
            layout="constrained",
            sharey=True,
            squeeze=False,
        )
        for i, key in enumerate(sweep.params):
            ax = axes[i // ncols][i % ncols]
            members = [t for t in trials if t.params.get(key) is not None]
            values = [t.params[key] for t in members]
            if _categorical(values):
                categories = list(dict.fromkeys(_fmt(v) for v in values))
                _scatter(ax, [categories.index(_fmt(v)) for v in values], members, best)
                ax.set_xticks(range(len(categories)), categories)
                ax.set_xlim(-0.5, len(categories) - 0.5)
            else:
                _scatter(ax, values, members, best)
                if wants_log_axis([float(v) for v in values]):
                    log_axis(ax, "x")
                elif all(isinstance(v, int) for v in values):
                    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
                else:
                    ax.xaxis.set_major_locator(MaxNLocator(nbins=4))
            ax.set_xlabel(key)
            ax.grid(True)
            if i % ncols == 0:
                ax.set_ylabel(sweep.metric_label())
        for j in range(len(sweep.params), nrows * ncols):
            axes[j // ncols][j % ncols].set_visible(False)
        handles, labels = axes[0][0].get_legend_handles_labels()
        for ax in axes.flat[1 : len(sweep.params)]:  # (a marker kind only some panels have)
            for h, lb in zip(*ax.get_legend_handles_labels(), strict=True):
                if lb not in labels:
                    handles.append(h)
                    labels.append(lb)
        fig.legend(handles, labels, loc="outside lower center", ncol=len(labels))
        fig.suptitle(f"Sweep {sweep.name}: {sweep.metric} by parameter")
        for i, key in enumerate(sweep.params):
            ax = axes[i // ncols][i % ncols]
            if _categorical([t.params.get(key) for t in trials]):
                fit_tick_labels(ax)
        paths = save_figure(fig, stem, formats)
    paths.append(_caption(sweep, stem, formats, f"{sweep.metric} against each searched parameter"))
    return paths


def _epoch_value(entry: dict[str, Any], metric: str) -> float | None:
    """``metric`` (``val_top1``, ``train_loss``, ...) of one history entry."""
    value = (entry.get("val") or {}).get(metric[4:]) if metric.startswith("val_") else entry.get(metric)
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


MAX_LABELLED_CURVES = 10  # more trials than this: the best one labelled, the others grey


def curves_figure(
    sweep: Sweep, stem: Path, formats: Sequence[str] = ("pdf", "png"), font_size: float = 9.0
) -> list[Path]:
    """The metric per validated epoch of each trial whose folder holds its results (a line per trial, labelled
    with its id; beyond :data:`MAX_LABELLED_CURVES` trials only the best is coloured), as ``<stem>.<format>`` and
    ``<stem>.txt``; [] when no trial folder has a history."""
    from matplotlib.ticker import MaxNLocator

    curves = []
    for t in sweep.trials:
        points = [(h["epoch"], v) for h in t.history if (v := _epoch_value(h, sweep.metric)) is not None]
        if points:
            curves.append((t, points))
    if not curves:
        return []
    best = _best(sweep)
    many = len(curves) > MAX_LABELLED_CURVES
    with paper_style(font_size) as plt:
        fig, ax = plt.subplots(figsize=(4.6 if not many else 3.6, 2.9), layout="constrained")
        others = 0
        for t, points in curves:
            is_best = best is not None and t.trial_id == best.trial_id
            style = "--" if t.kind == "stopped" else "-"
            if many and not is_best:
                label = "other trials" if others == 0 else None
                others += 1
                ax.plot(*zip(*points, strict=True), ls=style, color="0.7", lw=0.8, label=label)
                continue
            label = (
                t.trial_id + (" (best)" if is_best else "") + (" (stopped)" if t.kind == "stopped" else "")
            )
            marker = "o" if len(points) < 12 else None
            ax.plot(
                *zip(*points, strict=True),
                ls=style,
                marker=marker,
                markersize=3,
                color=None if not many else "C3",
                label=label,
            )
        ax.set_xlabel("epoch")
        ax.set_ylabel(sweep.metric_label())
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(True)
        ax.legend(
            title="trial (id as in report.md)",
            loc="center left" if not many else "lower right",
            bbox_to_anchor=(1.01, 0.5) if not many else None,
        )
        fig.suptitle(f"Sweep {sweep.name}: {sweep.metric} per epoch")
        paths = save_figure(fig, stem, formats)
    paths.append(_caption(sweep, stem, formats, f"{sweep.metric} per validated epoch of each trial"))
    return paths


def importances_figure(
    sweep: Sweep, stem: Path, formats: Sequence[str] = ("pdf", "png"), font_size: float = 9.0
) -> list[Path]:
    """summary.json's parameter importances as horizontal bars (``<stem>.<format>``, ``<stem>.txt``); [] when the
    sweep computed none (too few finished trials)."""
    if not sweep.importances:
        return []
    items = sorted(sweep.importances.items(), key=lambda kv: kv[1])
    with paper_style(font_size) as plt:
        fig, ax = plt.subplots(figsize=(3.6, 0.8 + 0.3 * len(items)), layout="constrained")
        ax.barh([k for k, _ in items], [v for _, v in items], color="C0")
        for y, (_, v) in enumerate(items):
            ax.text(v, y, f" {v:.2f}", va="center")
        ax.set_xlabel("importance (normalized: the parameters sum to 1)")
        ax.set_xlim(0, max(v for _, v in items) * 1.25)
        ax.grid(axis="x")
        fig.suptitle(f"Sweep {sweep.name}: parameter importances")
        paths = save_figure(fig, stem, formats)
    paths.append(_caption(sweep, stem, formats, "Optuna's parameter importances (summary.json)"))
    return paths


def sweep_figures(
    sweep: Sweep, out: Path, formats: Sequence[str] = ("pdf", "png"), font_size: float = 9.0
) -> list[Path]:
    """Every figure of ``sweep`` (module docstring) in the folder ``out``; the files written."""
    stem = out / f"sweep_{slug(sweep.name)}"
    written: list[Path] = []
    for view, draw in (
        ("objective", objective_figure),
        ("params", params_figure),
        ("curves", curves_figure),
        ("importances", importances_figure),
    ):
        written += draw(sweep, stem.with_name(f"{stem.name}_{view}"), formats, font_size)
    return written
