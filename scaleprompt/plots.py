"""PNG figures of result tables (matplotlib, Agg backend: no screen needed). Sweeps are drawn by Optuna's own
figures (:func:`scaleprompt.search.report.write_plots`).

* :func:`grouped_bars`: mean ± std bars, one group per row (e.g. methods), one bar per series (Base / Novel / HM).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path


def _pyplot():
    """matplotlib's pyplot on the Agg backend (no screen needed)."""
    # (import cost: matplotlib, 1-3 s; the report and analysis modules import this module at their top)
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt  # (after the backend is chosen)

    return plt


def _save(plt, fig, out: Path) -> Path:
    """``fig`` (of pyplot ``plt``) laid out and written to ``out`` (PNG, its folder made if missing), then closed;
    ``out``."""
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def grouped_bars(
    groups: Sequence[str],
    series: Mapping[str, Sequence[tuple[float, float]]],
    out: Path,
    ylabel: str,
    title: str,
    baseline: float | None = None,
) -> Path:
    """Grouped bars as the PNG file ``out`` (returned): one group per name of ``groups``, one bar per series of
    ``series``: ``series[name][i]`` = (mean, std) of group ``i``; std drawn as an error bar, the mean written on the
    bar. ``ylabel``, ``title``: the axis label and the title; ``baseline``: a dashed horizontal line (e.g.
    zero-shot HM)."""
    plt = _pyplot()
    n = len(series)
    width = 0.8 / max(1, n)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.35 * len(groups) * max(1, n) + 1.5), 4.4))
    for k, (name, values) in enumerate(series.items()):
        xs = [i - 0.4 + width * (k + 0.5) for i in range(len(groups))]
        means, stds = [m for m, _ in values], [s for _, s in values]
        bars = ax.bar(xs, means, width, yerr=stds, capsize=2, label=name, alpha=0.9)
        for bar, mean, std in zip(bars, means, stds, strict=True):  # above the error bar
            ax.text(
                bar.get_x() + bar.get_width() / 2,
                mean + std + 0.8,
                f"{mean:.1f}",
                ha="center",
                va="bottom",
                fontsize=6.5,
                rotation=90,
            )
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
