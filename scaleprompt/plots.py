"""Figures (matplotlib, Agg backend: no screen needed): the style and the pieces every figure of the project shares.

* :func:`paper_style`: one font size for every text of a figure, fonts embedded in PDFs (TrueType), no top / right
  spines: figures that go into a paper as they are.
* :func:`save_figure`: one figure in several formats (``pdf``, ``png``, ``svg``).
* :func:`fit_tick_labels`: rotate, then thin, the labels of a category axis until no two overlap (measured with the
  renderer: :func:`overlapping_tick_labels`); :func:`log_axis`: a log axis labelled at its decades only.
* :func:`draw_grouped_bars` / :func:`grouped_bars`: mean ± std bars, one group per row (e.g. methods), one bar per
  series (Base / Novel / HM).

The figures of runs and sweeps (``scaleprompt plot``) are :mod:`scaleprompt.report.figures` and
:mod:`scaleprompt.search.figures`; a sweep's own ``plots/`` are Optuna's (:func:`scaleprompt.search.report.write_plots`).
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

FORMATS = ("pdf", "png", "svg")  # what save_figure writes
FONT_SIZE = 9.0  # points: every text of a paper figure (a 2-column paper's body text is 9-10 pt)
DPI = 300  # raster formats (png)
TICK_ROTATIONS = (0, 30, 45, 90)  # tried in turn by fit_tick_labels


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


def paper_rc(font_size: float = FONT_SIZE) -> dict[str, Any]:
    """matplotlib settings of a paper figure: every text ``font_size`` points, TrueType fonts in PDF / PS, light
    grids, no top / right spines."""
    sizes = (
        "font.size",
        "axes.titlesize",
        "axes.labelsize",
        "xtick.labelsize",
        "ytick.labelsize",
        "legend.fontsize",
        "legend.title_fontsize",
        "figure.titlesize",
    )
    return {
        **dict.fromkeys(sizes, font_size),
        "font.family": "DejaVu Sans",  # (matplotlib's own font: the same glyphs on every machine)
        "pdf.fonttype": 42,
        "ps.fonttype": 42,
        "axes.spines.top": False,
        "axes.spines.right": False,
        "axes.titlepad": 4.0,
        "grid.alpha": 0.3,
        "lines.linewidth": 1.3,
        "errorbar.capsize": 2.0,
        "legend.frameon": False,
        "savefig.bbox": "tight",
        "savefig.pad_inches": 0.03,
    }


@contextlib.contextmanager
def paper_style(font_size: float = FONT_SIZE) -> Iterator[Any]:
    """pyplot (Agg) with :func:`paper_rc` for the block: figures made inside it have the paper style."""
    plt = _pyplot()
    import matplotlib

    rc: dict[Any, Any] = paper_rc(font_size)  # (matplotlib's stubs type the keys as a Literal of every name)
    with matplotlib.rc_context(rc):
        yield plt


def parse_formats(text: str) -> tuple[str, ...]:
    """``"pdf,png"`` -> ``("pdf", "png")``; an unknown or empty format raises ``ValueError`` naming the choices."""
    formats = tuple(dict.fromkeys(f.strip().lower().lstrip(".") for f in text.split(",") if f.strip()))
    bad = [f for f in formats if f not in FORMATS]
    if bad or not formats:
        raise ValueError(
            f"unknown figure format {', '.join(bad) or repr(text)}; choose from {', '.join(FORMATS)}"
        )
    return formats


def save_figure(fig: Any, stem: Path, formats: Sequence[str] = ("png",), dpi: int = DPI) -> list[Path]:
    """``fig`` written as ``<stem>.<format>`` for each of ``formats`` (its folder made if missing), then closed;
    the files written. PDFs carry no creation date (the same runs give the same file)."""
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = []
    for fmt in formats:
        path = stem.with_name(f"{stem.name}.{fmt}")
        metadata = {"Creator": "scaleprompt", "CreationDate": None} if fmt == "pdf" else None
        fig.savefig(path, dpi=dpi, format=fmt, metadata=metadata)
        paths.append(path)
    _pyplot().close(fig)
    return paths


# --- tick labels ------------------------------------------------------------------------------------------------
def _axis(ax: Any, axis: str) -> Any:
    if axis not in ("x", "y"):
        raise ValueError(f"axis must be 'x' or 'y', got {axis!r}")
    return ax.xaxis if axis == "x" else ax.yaxis


def shown_tick_labels(ax: Any, axis: str = "x") -> list[Any]:
    """The tick labels (major and minor) of ``ax``'s ``axis`` that a drawn figure shows: visible, not empty, at a
    tick inside the axis's view."""
    which = _axis(ax, axis)
    low, high = sorted(which.get_view_interval())
    slack = (high - low) * 1e-9
    labels = []
    for tick in [*which.get_major_ticks(), *which.get_minor_ticks()]:
        label = tick.label1
        loc = tick.get_loc()
        if loc is None or not low - slack <= loc <= high + slack:
            continue
        if tick.get_visible() and label.get_visible() and label.get_text().strip():
            labels.append(label)
    return labels


def overlapping_tick_labels(ax: Any, axis: str = "x", tolerance: float = 0.5) -> list[tuple[str, str]]:
    """The pairs of tick labels of ``ax``'s ``axis`` whose boxes on the drawn figure intersect (by more than
    ``tolerance`` pixels each way): [] when every label is readable."""
    fig = ax.figure
    if not hasattr(fig.canvas, "get_renderer"):  # (a figure closed by pyplot: drawn on a canvas of its own)
        from matplotlib.backends.backend_agg import FigureCanvasAgg

        FigureCanvasAgg(fig)
    with warnings.catch_warnings():  # (a layout tried on the way may not fit: the one saved is checked again)
        warnings.filterwarnings("ignore", "constrained_layout not applied", UserWarning)
        fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    labels = shown_tick_labels(ax, axis)
    boxes = [label.get_window_extent(renderer) for label in labels]
    pairs = []
    for i in range(len(boxes)):
        for j in range(i + 1, len(boxes)):
            a, b = boxes[i], boxes[j]
            if (
                a.x0 < b.x1 - tolerance
                and b.x0 < a.x1 - tolerance
                and a.y0 < b.y1 - tolerance
                and b.y0 < a.y1 - tolerance
            ):
                pairs.append((labels[i].get_text(), labels[j].get_text()))
    return pairs


def fit_tick_labels(ax: Any, axis: str = "x", grow: bool = True) -> tuple[int, int]:
    """Make the labels of a category axis (``ax``'s ``axis``, fixed ticks) readable: the first rotation of
    :data:`TICK_ROTATIONS` (x axis; the y axis is never rotated) at which no two labels overlap on the drawn
    figure; failing that, every k-th label only, the smallest such k. ``grow``: a figure whose rotated labels
    are taller than :data:`LABEL_ROOM` inches grows by the difference (its axes keep their height), and the
    labels are fitted again. Returns (rotation, k)."""
    rotation, k = _fit(ax, axis)
    if grow and axis == "x" and rotation:
        fig = ax.figure
        renderer = fig.canvas.get_renderer()
        tall = max((t.get_window_extent(renderer).height for t in shown_tick_labels(ax, axis)), default=0.0)
        extra = tall / fig.dpi - LABEL_ROOM
        if extra > 0:
            fig.set_figheight(fig.get_figheight() + extra)
            rotation, k = _fit(ax, axis)
    return rotation, k


LABEL_ROOM = (
    0.3  # inches: what a figure's height leaves for its category labels (one line of 9 pt text, about)
)


def _fit(ax: Any, axis: str) -> tuple[int, int]:
    which = _axis(ax, axis)
    labels = which.get_ticklabels()
    for label in labels:
        label.set_visible(True)
    for rotation in TICK_ROTATIONS if axis == "x" else (0,):
        for label in labels:
            label.set_rotation(rotation)
            label.set_rotation_mode("anchor" if 0 < rotation < 90 else "default")
            label.set_horizontalalignment("right" if 0 < rotation < 90 else "center")
        if not overlapping_tick_labels(ax, axis):
            return rotation, 1
    rotation = TICK_ROTATIONS[-1] if axis == "x" else 0
    for k in range(2, len(labels) + 1):
        for i, label in enumerate(labels):
            label.set_visible(i % k == 0)
        if not overlapping_tick_labels(ax, axis):
            return rotation, k
    return rotation, len(labels)


def log_axis(ax: Any, axis: str = "x") -> None:
    """``ax``'s ``axis`` on a log scale labelled at its powers of ten only (minor ticks drawn, never labelled:
    no crowd of 2x10^-3, 3x10^-3, ... labels)."""
    from matplotlib.ticker import LogFormatterSciNotation, LogLocator, NullFormatter

    which = _axis(ax, axis)
    (ax.set_xscale if axis == "x" else ax.set_yscale)("log")
    which.set_major_locator(LogLocator(base=10.0))
    which.set_major_formatter(LogFormatterSciNotation(base=10.0))
    which.set_minor_locator(LogLocator(base=10.0, subs=tuple(range(2, 10))))
    which.set_minor_formatter(NullFormatter())


def wants_log_axis(values: Sequence[float]) -> bool:
    """Numbers spread over at least a decade, all positive: a log axis shows them better than a linear one."""
    finite = [v for v in values if math.isfinite(v)]
    return bool(finite) and min(finite) > 0 and max(finite) / min(finite) >= 10.0


# --- bars -------------------------------------------------------------------------------------------------------
def draw_grouped_bars(
    ax: Any,
    groups: Sequence[str],
    series: Mapping[str, Sequence[tuple[float, float] | None]],
    baseline: float | None = None,
    baseline_label: str = "zero-shot HM",
    annotate: bool = False,
) -> None:
    """Grouped bars on ``ax``: one group per name of ``groups``, one bar per series of ``series``:
    ``series[name][i]`` = (mean, std) of group ``i`` (None: no bar); std drawn as an error bar (none when 0);
    ``annotate``: the mean written above each bar. ``baseline``: a dashed horizontal line labelled
    ``baseline_label``. The category labels are fitted afterwards (:func:`fit_tick_labels`)."""
    n = len(series)
    width = 0.8 / max(1, n)
    for k, (name, values) in enumerate(series.items()):
        xs = [i - 0.4 + width * (k + 0.5) for i, v in enumerate(values) if v is not None]
        present = [v for v in values if v is not None]
        means, stds = [m for m, _ in present], [s for _, s in present]
        bars = ax.bar(xs, means, width, yerr=stds if any(stds) else None, label=name, alpha=0.9)
        if annotate:
            for bar, mean, std in zip(bars, means, stds, strict=True):  # above the error bar
                ax.text(
                    bar.get_x() + bar.get_width() / 2,
                    mean + std + 0.8,
                    f"{mean:.1f}",
                    ha="center",
                    va="bottom",
                    fontsize="x-small",
                    rotation=90,
                )
    if baseline is not None:
        ax.axhline(baseline, color="0.3", ls="--", lw=1, label=baseline_label)
    ax.set_xticks(range(len(groups)), list(groups))
    ax.set_xlim(-0.6, len(groups) - 0.4)
    ax.grid(axis="y")
    ax.set_axisbelow(True)
    top = max([m + s for values in series.values() for v in values if v is not None for m, s in [v]] or [1.0])
    top = max(top, baseline or 0.0)
    ax.set_ylim(0, top * (1.18 if annotate else 1.08) + 2)


def grouped_bars(
    groups: Sequence[str],
    series: Mapping[str, Sequence[tuple[float, float] | None]],
    out: Path,
    ylabel: str,
    title: str,
    baseline: float | None = None,
) -> Path:
    """Grouped bars (:func:`draw_grouped_bars`, means written on the bars) as the image ``out`` (returned; its
    suffix is the format), in the paper style; ``ylabel``, ``title``: the axis label and the title; ``baseline``:
    a dashed line (e.g. zero-shot HM)."""
    with paper_style() as plt:
        n = len(series)
        fig, ax = plt.subplots(
            figsize=(min(10.0, max(4.0, 0.3 * len(groups) * max(1, n) + 1.5)), 3.4), layout="constrained"
        )
        draw_grouped_bars(ax, groups, series, baseline, annotate=True)
        ax.set_ylabel(ylabel)
        ax.set_title(title, wrap=True)
        ax.legend(ncol=min(4, n + (baseline is not None)), loc="upper left")
        fit_tick_labels(ax)
        (path,) = save_figure(fig, out.with_suffix(""), (out.suffix.lstrip(".") or "png",))
    return path
