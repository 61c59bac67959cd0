"""What ``scaleprompt analyze variance`` writes: the CSVs (their column names are a contract: the findings bench
reads them), UPT's figure, and the tables it logs."""

from __future__ import annotations

import csv
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from scaleprompt.analysis.variance.gains import METRIC_OF_SETTING, Fit, Gain
from scaleprompt.analysis.variance.stats import STATISTICS, DatasetStatistics
from scaleprompt.plots import _pyplot, _save

STAT_LABELS = {
    "intra_visual_variance": "intra-class visual variance: "
    r"$\mathrm{mean}_c\ \mathrm{mean}_{i \in c}\ \|x_i - \mu_c\|^2$"
    "\n(x: unit frozen image features, "
    r"$\mu_c$: class mean)",
    "inter_text_variance": "inter-class text variance: "
    r"$\mathrm{mean}_c\ \|w_c - \bar{w}\|^2$"
    "\n(w: unit class-name text embeddings with the dataset's template)",
}
STATISTICS_COLUMNS = (
    "dataset",
    "split",
    "n_images",
    "n_classes",
    "model",
    "pretrained",
    "intra_visual_variance",
    "inter_text_variance",
    "inter_text_variance_bare",
    "template",
    "cache_key",
)
GAINS_COLUMNS = (
    "dataset",
    "method",
    "setting",
    "shots",
    "metric",
    "n_seeds",
    "accuracy_mean",
    "accuracy_std",
    "zero_shot",
    "zero_shot_source",
    "gain_mean",
    "gain_std",
    "per_seed_gains",
    "intra_visual_variance",
    "inter_text_variance",
)
FITS_COLUMNS = ("method", "statistic", "slope", "intercept", "pearson_r", "n_datasets", "per_seed_slopes")


def seeded(values: Mapping[int, float], fmt: str = ".4f") -> str:
    """``values`` (seed -> value) as ``seed=value;...`` in seed order, each value in the format ``fmt``."""
    return ";".join(f"{s}={v:{fmt}}" for s, v in sorted(values.items()))


def write_csv(
    path: Path, columns: Sequence[str], rows: Sequence[Mapping[str, Any]], per_seed: str = ""
) -> Path:
    """Write ``rows`` to the CSV file ``path`` (its folder made if missing) and return ``path``. The columns:
    ``columns``, then (``per_seed``: a prefix) one column per seed of any row, ``<prefix><seed>``, in seed order
    (empty where a row has no such seed)."""
    seeds = sorted({int(k[len(per_seed) :]) for r in rows for k in r if per_seed and k.startswith(per_seed)})
    fields = [*columns, *(f"{per_seed}{s}" for s in seeds)]
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields, restval="")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: row[k] for k in fields if k in row})
    return path


def gain_rows(gains: Sequence[Gain], stats: Mapping[str, DatasetStatistics]) -> list[dict[str, Any]]:
    """The rows of ``variance_gains.csv``: one per gain of ``gains``, with the statistics of its dataset in
    ``stats`` (display name -> statistics)."""
    return [
        {
            "dataset": g.dataset,
            "method": g.method,
            "setting": g.setting,
            "shots": g.shots,
            "metric": METRIC_OF_SETTING[g.setting],
            "n_seeds": len(g.seeds),
            "accuracy_mean": f"{g.accuracy_mean:.4f}",
            "accuracy_std": f"{g.accuracy_std:.4f}",
            "zero_shot": f"{g.zero_shot:.4f}",
            "zero_shot_source": g.zero_shot_source,
            "gain_mean": f"{g.gain_mean:.4f}",
            "gain_std": f"{g.gain_std:.4f}",
            "per_seed_gains": seeded(g.per_seed_gains),
            "intra_visual_variance": f"{stats[g.dataset].intra_visual_variance:.8g}",
            "inter_text_variance": f"{stats[g.dataset].inter_text_variance:.8g}",
            **{f"gain_seed{k}": f"{v:.4f}" for k, v in g.per_seed_gains.items()},
        }
        for g in gains
    ]


def fit_rows(fits: Sequence[Fit]) -> list[dict[str, Any]]:
    """The rows of ``variance_fits.csv``: one per line of ``fits``."""
    return [
        {
            "method": f.method,
            "statistic": f.statistic,
            "slope": f"{f.slope:.6g}",
            "intercept": f"{f.intercept:.6g}",
            "pearson_r": f"{f.pearson_r:.4f}",
            "n_datasets": f.n_datasets,
            "per_seed_slopes": seeded(f.per_seed_slopes, ".6g"),
            **{f"slope_seed{k}": f"{v:.6g}" for k, v in f.per_seed_slopes.items()},
        }
        for f in fits
    ]


def plot_gains(
    gains: Sequence[Gain],
    fits: Sequence[Fit],
    stats: Mapping[str, DatasetStatistics],
    out: Path,
    title: str,
    ylabel: str,
) -> Path:
    """UPT's Fig. 1 d/e as the PNG file ``out`` (returned): two panels (gain against each statistic), a point per
    dataset and method of ``gains`` (± the std over seeds, the dataset named on the point, its statistics from
    ``stats``), the line of ``fits`` per method with its slope and r in the legend; ``title`` above the figure,
    ``ylabel`` on the gain axis."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(12.5, 5.2), sharey=True)
    methods = list(dict.fromkeys(g.method for g in gains))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    markers = "osD^vP*X"
    for ax, name in zip(axes, STATISTICS, strict=True):
        for k, method in enumerate(methods):
            colour, marker = colours[k % len(colours)], markers[k % len(markers)]
            mine = [g for g in gains if g.method == method]
            xs = [getattr(stats[g.dataset], name) for g in mine]
            ys = [g.gain_mean for g in mine]
            fit = next(f for f in fits if f.method == method and f.statistic == name)
            flat = math.isnan(fit.slope)
            ax.errorbar(
                xs,
                ys,
                yerr=[g.gain_std for g in mine],
                fmt=marker,
                color=colour,
                capsize=2,
                ms=6,
                alpha=0.9,
                label=f"{method}: no line (one value of the statistic)" if flat else None,
            )
            for g, x, y in zip(mine, xs, ys, strict=True):
                ax.annotate(
                    g.dataset, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7, color=colour
                )
            if flat:
                continue
            lo, hi = min(xs), max(xs)
            line_x = [lo - 0.05 * (hi - lo), hi + 0.05 * (hi - lo)]
            ax.plot(
                line_x,
                [fit.slope * v + fit.intercept for v in line_x],
                "-",
                color=colour,
                lw=1.3,
                label=f"{method}: slope {fit.slope:+.4g}, r = {fit.pearson_r:+.2f} ({fit.n_datasets} datasets)",
            )
        ax.axhline(0.0, color="0.5", ls=":", lw=0.8)
        ax.set_xlabel(STAT_LABELS[name], fontsize=8.5)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7.5, loc="best")
    axes[0].set_ylabel(ylabel)
    axes[0].set_title("gain vs intra-class visual variance", fontsize=10)
    axes[1].set_title("gain vs inter-class text variance", fontsize=10)
    fig.suptitle(title, fontsize=10.5)
    return _save(plt, fig, out)


def text_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """``header`` and ``rows`` as a plain-text table: columns left-aligned, a dashed line under the header."""
    cells = [[str(c) for c in header], *[[str(c) for c in r] for r in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def statistics_table(stats: Iterable[DatasetStatistics]) -> str:
    """The logged table of the statistics ``stats`` (one row per dataset)."""
    header = ("dataset", "images", "classes", "intra visual", "inter text", "inter text (bare)", "template")
    rows = [
        (
            s.dataset,
            s.n_images,
            s.n_classes,
            f"{s.intra_visual_variance:.4f}",
            f"{s.inter_text_variance:.4f}",
            f"{s.inter_text_variance_bare:.4f}",
            s.template,
        )
        for s in stats
    ]
    return text_table(header, rows)


def gains_table(gains: Sequence[Gain]) -> str:
    """The logged table of ``gains`` (one row per method and dataset)."""
    header = ("dataset", "method", "seeds", "accuracy", "zero-shot", "source", "gain")
    rows = [
        (
            g.dataset,
            g.method,
            len(g.seeds),
            f"{g.accuracy_mean:.2f} ± {g.accuracy_std:.2f}",
            f"{g.zero_shot:.2f}",
            g.zero_shot_source,
            f"{g.gain_mean:+.2f} ± {g.gain_std:.2f}",
        )
        for g in gains
    ]
    return text_table(header, rows)


def fits_table(fits: Sequence[Fit]) -> str:
    """The logged table of the fitted lines ``fits`` (one row per method and statistic)."""
    header = ("method", "statistic", "slope", "r", "datasets", "slope per seed")
    rows = [
        (
            f.method,
            f.statistic,
            f"{f.slope:+.2f}",
            f"{f.pearson_r:+.3f}",
            f.n_datasets,
            seeded(f.per_seed_slopes) or "-",
        )
        for f in fits
    ]
    return text_table(header, rows)
