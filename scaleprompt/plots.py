"""PNG figures of sweeps and result tables (matplotlib, Agg backend: no screen needed).

* :func:`metric_vs_params`: one panel per searched parameter, the metric of every finished trial against it.
* :func:`parallel_coordinates`: one polyline per finished trial across all parameters and the metric.
* :func:`grouped_bars`: mean ± std bars, one group per row (e.g. methods), one bar per series (Base / Novel / HM).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

Axis = tuple[str, str, Sequence[Any] | None]  # (name, kind: "float" | "log" | "categorical", categories)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(plt, fig, out: Path) -> Path:
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def _position(value: Any, kind: str, categories: Sequence[Any] | None) -> float:
    """Where a value sits on its axis: a category's index, log10 for log axes, else the value."""
    if kind == "categorical":
        as_text = [str(c) for c in categories or ()]
        return float(as_text.index(str(value))) if str(value) in as_text else math.nan
    value = float(value)
    return math.log10(value) if kind == "log" else value


def _log_ticks(ax, xs: Sequence[float]) -> None:
    """Four readable ticks over the data's range (a narrow log range otherwise gets crowded minor labels)."""
    from matplotlib.ticker import FixedLocator, NullFormatter, NullLocator

    finite = [x for x in xs if x > 0 and math.isfinite(x)]
    if not finite:
        return
    lo, hi = math.log10(min(finite)), math.log10(max(finite))
    ticks = [10 ** (lo + (hi - lo) * k / 3) for k in range(4)] if hi > lo else [10**lo]
    ax.xaxis.set_major_locator(FixedLocator(ticks))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xticks(ticks, [f"{t:.2g}" for t in ticks])


def metric_vs_params(trials: Sequence[Mapping[str, Any]], axes: Sequence[Axis], metric: str, out: Path,
                     mode: str = "max") -> Path:  # fmt: skip
    """``trials``: dicts with each axis name and ``metric``. The best trial is drawn as a star."""
    plt = _pyplot()
    cols = min(3, len(axes))
    rows = math.ceil(len(axes) / cols)
    fig, grid = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.4 * rows), squeeze=False)
    values = [float(t[metric]) for t in trials]
    best = (max if mode == "max" else min)(range(len(values)), key=values.__getitem__) if values else None
    for i, (name, kind, categories) in enumerate(axes):
        ax = grid[i // cols][i % cols]
        xs = [_position(t[name], kind, categories) for t in trials]
        if kind == "categorical":
            jitter = [0.08 * ((j * 7919) % 11 - 5) / 5 for j in range(len(xs))]  # fixed, spreads equal x
            xs = [x + d for x, d in zip(xs, jitter, strict=True)]
            ax.set_xticks(range(len(categories or ())), [str(c) for c in categories or ()])
            ax.set_xlim(-0.5, len(categories or ()) - 0.5)
        elif kind == "log":
            xs = [10**x for x in xs]
            ax.set_xscale("log")
            _log_ticks(ax, xs)
        ax.scatter(xs, values, s=28, alpha=0.75, color="tab:blue")
        if best is not None:
            ax.scatter([xs[best]], [values[best]], s=160, marker="*", color="tab:red", label="best", zorder=3)
        ax.set_xlabel(name)
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
    for j in range(len(axes), rows * cols):
        grid[j // cols][j % cols].axis("off")
    fig.suptitle(f"{metric} of {len(trials)} finished trials against each parameter")
    return _save(plt, fig, out)


def parallel_coordinates(
    trials: Sequence[Mapping[str, Any]], axes: Sequence[Axis], metric: str, out: Path
) -> Path:
    """Every axis scaled to [0, 1] (log axes in log space, categories by index); lines coloured by the metric."""
    plt = _pyplot()
    columns: list[tuple[str, list[float], list[str]]] = []
    for name, kind, categories in [*axes, (metric, "float", None)]:
        raw = [_position(t[name], kind, categories) for t in trials]
        if kind == "categorical":
            lo, hi = 0.0, float(max(1, len(categories or ()) - 1))
            ticks = [str(c) for c in categories or ()]
        else:
            finite = [x for x in raw if math.isfinite(x)] or [0.0]
            lo, hi = min(finite), max(finite)
            show = (lambda x: f"{10**x:.3g}") if kind == "log" else (lambda x: f"{x:.3g}")
            ticks = [show(lo), show(hi)]
        span = hi - lo or 1.0
        columns.append((name, [(x - lo) / span for x in raw], ticks))
    scores = [float(t[metric]) for t in trials]
    plt_cm = plt.get_cmap("viridis")
    lo, hi = (min(scores), max(scores)) if scores else (0.0, 1.0)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.8 * len(columns)), 4.2))
    order = sorted(range(len(trials)), key=scores.__getitem__)  # best drawn last (on top)
    for i in order:
        ys = [col[1][i] for col in columns]
        ax.plot(
            range(len(columns)), ys, color=plt_cm((scores[i] - lo) / ((hi - lo) or 1.0)), alpha=0.85, lw=1.6
        )
    for k, (_, _, ticks) in enumerate(columns):
        ax.axvline(k, color="0.4", lw=0.8)
        if len(ticks) == 2:
            ax.text(k, -0.06, ticks[0], ha="center", va="top", fontsize=8)
            ax.text(k, 1.04, ticks[1], ha="center", va="bottom", fontsize=8)
        else:
            for j, label in enumerate(ticks):
                ax.text(k + 0.04, j / max(1, len(ticks) - 1), label, fontsize=8, va="center")
    ax.set_xticks(range(len(columns)), [c[0] for c in columns], rotation=15)
    ax.set_yticks([])
    ax.set_ylim(-0.15, 1.15)
    sm = plt.cm.ScalarMappable(cmap=plt_cm, norm=plt.Normalize(lo, hi))
    fig.colorbar(sm, ax=ax, label=metric)
    ax.set_title(f"parallel coordinates of {len(trials)} finished trials")
    return _save(plt, fig, out)


def grouped_bars(groups: Sequence[str], series: Mapping[str, Sequence[tuple[float, float]]], out: Path,
                 ylabel: str, title: str, baseline: float | None = None) -> Path:  # fmt: skip
    """``series[name][i]`` = (mean, std) of group ``i``; std drawn as an error bar, the mean written on the bar.
    ``baseline``: a dashed horizontal line (e.g. zero-shot HM)."""
    plt = _pyplot()
    n = len(series)
    width = 0.8 / max(1, n)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.35 * len(groups) * max(1, n) + 1.5), 4.4))
    for k, (name, values) in enumerate(series.items()):
        xs = [i - 0.4 + width * (k + 0.5) for i in range(len(groups))]
        means, stds = [m for m, _ in values], [s for _, s in values]
        bars = ax.bar(xs, means, width, yerr=stds, capsize=2, label=name, alpha=0.9)
        for bar, mean, std in zip(bars, means, stds, strict=True):  # above the error bar
            ax.text(bar.get_x() + bar.get_width() / 2, mean + std + 0.8, f"{mean:.1f}", ha="center",
                    va="bottom", fontsize=6.5, rotation=90)  # fmt: skip
    if baseline is not None:
        ax.axhline(baseline, color="0.3", ls="--", lw=1, label="zero-shot HM")
    ax.set_xticks(range(len(groups)), list(groups), rotation=20)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, ncol=min(4, n + (baseline is not None)))
    top = max([m + s for values in series.values() for m, s in values] or [1.0])
    ax.set_ylim(0, top * 1.15 + 5)
    return _save(plt, fig, out)
