"""``scaleprompt analyze variance``: UPT's motivating statistics (Fig. 1 d/e) per dataset, and the paper's figure.

UPT plots, over datasets, the gain of text prompt tuning (CoOp) against the INTRA-class variance of the frozen
visual features (the gain falls as it grows) and the gain of visual prompt tuning (VPT) against the INTER-class
variance of the frozen class-name text embeddings (the gain rises as it grows). Here, on unit (L2-normalised)
features, with the population (1/n) convention:

* intra-class visual variance = mean over classes c of mean_i ||x_i - mu_c||^2 over the class's images
  (= 1 - ||mu_c||^2 averaged over classes for unit x_i): :func:`intra_class_variance`;
* inter-class text variance = mean over classes of ||w_c - w_bar||^2, w_c the class's unit text embedding, w_bar
  their mean (= 1 - ||w_bar||^2): :func:`inter_class_variance`. w_c is the zero-shot classifier weight: the
  dataset's hand-crafted template (``data.template_set``, as the engine's zero-shot CLIP uses it); the bare class
  names (template ``"{}"``) are reported too.

Image features: every image of the chosen split (default ``test``: the images the gains are measured on), all
classes, no sampling, computed once through the shard cache (:mod:`scaleprompt.analysis.features`).

With ``--results``, the gain of each method over zero-shot per dataset (runs read and grouped by
:func:`scaleprompt.report.load.load_runs` / :func:`~scaleprompt.report.aggregate.aggregate`): few-shot runs: test
top-1; base-to-novel runs: the HM of base and novel top-1 (per seed, as the tables compute it). Zero-shot: the
``zsclip`` runs of the dataset (mean over their runs) when given, else each run's own recorded baseline
(``eval.zero_shot_baseline=true``: ``zero_shot`` in results.json). A gain is per seed (the run's accuracy minus
zero-shot), then mean ± sample std over seeds. A line is fitted per method and statistic through the per-dataset
mean gains (least squares), and per seed through that seed's gains where every dataset has the seed.

Outputs (``--out``): ``variance.csv``, and with ``--results`` ``variance_gains.csv``, ``variance_fits.csv`` and
``variance_gain.png``. Column names are a contract (the findings bench reads them).
"""

from __future__ import annotations

import argparse
import csv
import logging
import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from scaleprompt.analysis.features import BARE_TEMPLATE, AnalysisError

if TYPE_CHECKING:
    import numpy as np

    from scaleprompt.backbone import Backbone

logger = logging.getLogger(__name__)

DEFAULT_MODEL, DEFAULT_PRETRAINED = "sp-micro-clip", "microworld"  # the embedded default backbone
STATISTICS = ("intra_visual_variance", "inter_text_variance")
STAT_LABELS = {
    "intra_visual_variance": "intra-class visual variance: "
    r"$\mathrm{mean}_c\ \mathrm{mean}_{i \in c}\ \|x_i - \mu_c\|^2$"
    "\n(x: unit frozen image features, "
    r"$\mu_c$: class mean)",
    "inter_text_variance": "inter-class text variance: "
    r"$\mathrm{mean}_c\ \|w_c - \bar{w}\|^2$"
    "\n(w: unit class-name text embeddings with the dataset's template)",
}
STATISTICS_COLUMNS = ("dataset", "split", "n_images", "n_classes", "model", "pretrained", "intra_visual_variance",
                      "inter_text_variance", "inter_text_variance_bare", "template", "cache_key")  # fmt: skip
GAINS_COLUMNS = ("dataset", "method", "setting", "shots", "metric", "n_seeds", "accuracy_mean", "accuracy_std",
                 "zero_shot", "zero_shot_source", "gain_mean", "gain_std", "per_seed_gains",
                 "intra_visual_variance", "inter_text_variance")  # fmt: skip
FITS_COLUMNS = ("method", "statistic", "slope", "intercept", "pearson_r", "n_datasets", "per_seed_slopes")
ZSCLIP = "zsclip"
METRIC_OF_SETTING = {"fewshot": "test top-1", "base2new": "HM of base / novel top-1"}


# ----------------------------------------------------------------------------------------------- statistics


def _array(values: Any, name: str) -> np.ndarray:
    import numpy as np

    if hasattr(values, "detach"):
        values = values.detach().cpu().double().numpy()
    return np.asarray(values, dtype=np.float64)


def intra_class_variance(features: Any, labels: Any) -> float:
    """Mean over the classes present in ``labels`` of the mean squared distance of the class's features to their
    class mean, ``mean_c (1/n_c) sum_i ||x_i - mu_c||^2`` (population convention: 1/n_c, so a class of one image
    contributes 0). ``features`` ``[N, D]`` are assumed unit rows (then each class term is ``1 - ||mu_c||^2``);
    they are not renormalised here. Tensors or arrays."""
    import numpy as np

    x = _array(features, "features")
    y = np.asarray(labels.detach().cpu().numpy() if hasattr(labels, "detach") else labels)
    if x.ndim != 2 or y.shape != (x.shape[0],) or x.shape[0] == 0:
        raise AnalysisError(
            f"intra_class_variance needs features [N, D] and labels [N], got {x.shape} and {y.shape}"
        )
    per_class = []
    for c in np.unique(y):
        xc = x[y == c]
        per_class.append(float(((xc - xc.mean(axis=0)) ** 2).sum(axis=1).mean()))
    return float(np.mean(per_class))


def inter_class_variance(embeddings: Any) -> float:
    """Mean over classes of the squared distance of each class embedding to their mean,
    ``(1/C) sum_c ||w_c - w_bar||^2`` (population convention; ``1 - ||w_bar||^2`` for unit rows)."""
    w = _array(embeddings, "embeddings")
    if w.ndim != 2 or w.shape[0] == 0:
        raise AnalysisError(f"inter_class_variance needs embeddings [C, D], got {w.shape}")
    return float(((w - w.mean(axis=0)) ** 2).sum(axis=1).mean())


def fit_line(x: Sequence[float], y: Sequence[float]) -> tuple[float, float, float]:
    """Least-squares line ``y = slope * x + intercept`` and Pearson's r (nan when ``y`` is constant). Needs at
    least 2 points and ``x`` not constant."""
    import math

    if len(x) != len(y):
        raise AnalysisError(f"fit_line: {len(x)} x values for {len(y)} y values")
    if len(x) < 2:
        raise AnalysisError(f"fit_line needs at least 2 points, got {len(x)}")
    mx, my = statistics.fmean(x), statistics.fmean(y)
    sxx = sum((a - mx) ** 2 for a in x)
    syy = sum((b - my) ** 2 for b in y)
    sxy = sum((a - mx) * (b - my) for a, b in zip(x, y, strict=True))
    if sxx == 0:
        raise AnalysisError(f"fit_line: every x is {x[0]}: no slope can be fitted")
    slope = sxy / sxx
    r = sxy / math.sqrt(sxx * syy) if syy > 0 else math.nan
    return slope, my - slope * mx, r


@dataclass(frozen=True)
class DatasetStatistics:
    """UPT's two statistics (and the bare-name text statistic) of one dataset split under one backbone."""

    dataset: str
    split: str
    n_images: int
    n_classes: int
    model: str
    pretrained: str | None
    intra_visual_variance: float
    inter_text_variance: float
    inter_text_variance_bare: float
    template: str
    cache_key: str
    spec: str = field(default="", compare=False)

    def row(self) -> dict[str, Any]:
        out = asdict(self)
        out.pop("spec")
        out["pretrained"] = self.pretrained or ""
        for k in ("intra_visual_variance", "inter_text_variance", "inter_text_variance_bare"):
            out[k] = f"{out[k]:.8g}"
        return out


def dataset_statistics(
    dataset: str,
    backbone: Backbone,
    *,
    split: str = "test",
    root: str | Path | None = None,
    cache_dir: str | Path = "runs/shards",
    template_set: str = "coop",
    batch_size: int = 64,
    num_workers: int = 0,
    device: str | None = None,
) -> DatasetStatistics:
    """Both statistics of ``dataset`` (a registry name with ``root``, ``folder:<path>``, a split file) on every
    image of ``split`` under ``backbone``; the text statistic with the dataset's hand-crafted template of
    ``template_set`` (the engine's zero-shot classifier) and with bare class names."""
    from scaleprompt.analysis.features import class_text_embeddings, frozen_image_features
    from scaleprompt.data.datasets import dataset_display_name
    from scaleprompt.data.templates import dataset_template

    feats = frozen_image_features(dataset, backbone, split=split, root=root, cache_dir=cache_dir,
                                  batch_size=batch_size, num_workers=num_workers, device=device)  # fmt: skip
    template = dataset_template(dataset_display_name(dataset), template_set)  # type: ignore[arg-type]
    text = class_text_embeddings(backbone, feats.classnames, [template])
    bare = class_text_embeddings(backbone, feats.classnames, [BARE_TEMPLATE])
    return DatasetStatistics(
        dataset=feats.dataset, split=split, n_images=feats.n_images, n_classes=feats.n_classes, model=feats.model,
        pretrained=feats.pretrained, intra_visual_variance=intra_class_variance(feats.features, feats.labels),
        inter_text_variance=inter_class_variance(text), inter_text_variance_bare=inter_class_variance(bare),
        template=template, cache_key=feats.cache_key, spec=dataset,
    )  # fmt: skip


# ----------------------------------------------------------------------------------------------- gains


@dataclass(frozen=True)
class Gain:
    """One method on one dataset: accuracy over seeds and its gain over zero-shot (percentage points)."""

    dataset: str
    method: str
    setting: str
    shots: int
    seeds: tuple[int, ...]
    accuracy_mean: float
    accuracy_std: float
    zero_shot: float
    zero_shot_source: str
    per_seed_gains: dict[int, float]

    @property
    def gain_mean(self) -> float:
        return statistics.fmean(self.per_seed_gains.values())

    @property
    def gain_std(self) -> float:
        values = list(self.per_seed_gains.values())
        return statistics.stdev(values) if len(values) > 1 else 0.0


@dataclass(frozen=True)
class Fit:
    """A line through one method's per-dataset mean gains against one statistic, and its slope per seed."""

    method: str
    statistic: str
    slope: float
    intercept: float
    pearson_r: float
    n_datasets: int
    per_seed_slopes: dict[int, float]


def _run_value(result: Mapping[str, Any], setting: str) -> float:
    """The accuracy a gain is measured in: few-shot test top-1; base-to-novel HM of base / novel top-1."""
    from scaleprompt.data.protocols import harmonic_mean

    if setting == "base2new":
        return harmonic_mean(result["base"]["top1"], result["novel"]["top1"])
    return float(result["test"]["top1"])


def _recorded_zero_shot(run: Mapping[str, Any]) -> dict[str, Any] | None:
    zero_shot = run.get("zero_shot")
    return zero_shot if isinstance(zero_shot, Mapping) else None  # type: ignore[return-value]


def method_gains(
    runs: Sequence[Mapping[str, Any]],
    datasets: Sequence[str],
    methods: Sequence[str] | None = None,
    selection: str = "last",
) -> tuple[str, list[Gain]]:
    """The setting of ``runs`` and the gain of every trained method on every dataset it has runs of (see the
    module docstring). ``datasets``: the display names analysed (runs of others are refused); ``methods``: None =
    every method of the runs but zero-shot. One configuration per method and dataset (one row of
    :func:`~scaleprompt.report.aggregate.aggregate`), else an error."""
    from scaleprompt.report.aggregate import METHOD_ORDER, aggregate

    rows = aggregate(runs, selection, "top1")
    if not rows:
        raise AnalysisError(f"no run has {selection!r} results")
    settings = sorted({r.setting for r in rows})
    if len(settings) > 1 or settings[0] not in METRIC_OF_SETTING:
        raise AnalysisError(
            f"the runs are of the settings {', '.join(settings)}: pass the runs of one setting, fewshot (gain in "
            "test top-1) or base2new (gain in HM)"
        )
    setting = settings[0]
    outside = sorted({r.dataset for r in rows} - set(datasets))
    if outside:
        example = next(r.paths[0] for r in rows if r.dataset == outside[0])
        raise AnalysisError(
            f"runs of {', '.join(outside)} (e.g. {example}) but --datasets has {', '.join(datasets)}: add the "
            "dataset or leave its runs out"
        )
    by_path = {str(run.get("_path", f"<run {i}>")): run for i, run in enumerate(runs)}  # (aggregate's names)
    present = [m for m in METHOD_ORDER if any(r.method == m for r in rows)]
    present += sorted({r.method for r in rows} - set(present))
    wanted = [m for m in present if m != ZSCLIP] if methods is None else list(methods)
    if not wanted:
        raise AnalysisError(
            "the runs hold no trained method (only zero-shot CLIP): nothing to measure a gain of"
        )
    gains = []
    for method in wanted:
        mine = [r for r in rows if r.method == method]
        if not mine:
            raise AnalysisError(
                f"--methods {method}: no run of {method} (the runs hold {', '.join(present)})"
            )
        for dataset in datasets:
            cell = [r for r in mine if r.dataset == dataset]
            if not cell:
                continue
            if len(cell) > 1:
                configs = "; ".join(
                    f"{r.shots} shots{' ' + r.variant if r.variant else ''} ({r.paths[0]})" for r in cell
                )
                raise AnalysisError(
                    f"{method} on {dataset}: runs of {len(cell)} configurations ({configs}): pass one configuration "
                    "per method and dataset"
                )
            row = cell[0]
            values = {seed: _run_value(by_path[p]["results"][selection], setting)
                      for seed, p in zip(row.seeds, row.paths, strict=True)}  # fmt: skip
            zs_rows = [r for r in rows if r.method == ZSCLIP and r.dataset == dataset]
            if zs_rows:
                zs_values = [
                    _run_value(by_path[p]["results"][selection], setting) for r in zs_rows for p in r.paths
                ]
                zero = statistics.fmean(zs_values)
                source = f"zsclip runs ({len(zs_values)})"
                per_seed = {s: v - zero for s, v in values.items()}
            else:
                recorded = {
                    s: _recorded_zero_shot(by_path[p]) for s, p in zip(row.seeds, row.paths, strict=True)
                }
                missing = [p for (s, z), p in zip(recorded.items(), row.paths, strict=True) if z is None]
                if missing:
                    raise AnalysisError(
                        f"no zero-shot accuracy for {method} on {dataset}: no zsclip run of {dataset}, and "
                        f"{missing[0]} records no zero-shot baseline; add zsclip runs or train with "
                        "eval.zero_shot_baseline=true"
                    )
                zs = {s: _run_value(z, setting) for s, z in recorded.items() if z is not None}
                zero = statistics.fmean(zs.values())
                source = "recorded baseline (eval.zero_shot_baseline)"
                per_seed = {s: v - zs[s] for s, v in values.items()}
            stat = row.values["hm" if setting == "base2new" else "test"]
            gains.append(Gain(dataset, method, setting, row.shots, row.seeds, stat.mean, stat.std, zero, source,
                              per_seed))  # fmt: skip
    return setting, gains


def check_fittable(gains: Sequence[Gain]) -> None:
    """Every method has gains on at least 2 datasets (a line needs 2 points), else an error naming it."""
    for method in dict.fromkeys(g.method for g in gains):
        mine = [g.dataset for g in gains if g.method == method]
        if len(mine) < 2:
            raise AnalysisError(
                f"{method} has runs on {len(mine)} dataset ({', '.join(mine)}): a line needs at least 2; add runs "
                "or leave it out with --methods"
            )


def fit_gains(gains: Sequence[Gain], stats: Mapping[str, DatasetStatistics]) -> list[Fit]:
    """Per method and statistic: the line through the per-dataset mean gains, and the slope per seed (the seeds
    every dataset of the method has). A method with gains on fewer than 2 datasets is an error."""
    check_fittable(gains)
    fits = []
    for method in dict.fromkeys(g.method for g in gains):
        mine = [g for g in gains if g.method == method]
        common = sorted(set.intersection(*(set(g.per_seed_gains) for g in mine)))
        for name in STATISTICS:
            x = [getattr(stats[g.dataset], name) for g in mine]
            if len(set(x)) < 2:  # (datasets with the same class names and template share the text statistic)
                logger.warning(
                    "%s: every dataset it has runs on has the same %s (%.6g): no line fitted (nan in the fits)",
                    method, name, x[0],
                )  # fmt: skip
                fits.append(Fit(method, name, math.nan, math.nan, math.nan, len(mine), {}))
                continue
            slope, intercept, r = fit_line(x, [g.gain_mean for g in mine])
            per_seed = {s: fit_line(x, [g.per_seed_gains[s] for g in mine])[0] for s in common}
            fits.append(Fit(method, name, slope, intercept, r, len(mine), per_seed))
    return fits


# ----------------------------------------------------------------------------------------------- outputs


def _seeded(values: Mapping[int, float], fmt: str = ".4f") -> str:
    return ";".join(f"{s}={v:{fmt}}" for s, v in sorted(values.items()))


def _write_csv(
    path: Path, columns: Sequence[str], rows: Sequence[Mapping[str, Any]], per_seed: str = ""
) -> Path:
    """``columns``, then (``per_seed``: a prefix) one column per seed of any row, ``<prefix><seed>``, in seed order
    (empty where a row has no such seed)."""
    seeded = sorted({int(k[len(per_seed) :]) for r in rows for k in r if per_seed and k.startswith(per_seed)})
    fields = [*columns, *(f"{per_seed}{s}" for s in seeded)]
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields, restval="")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: row[k] for k in fields if k in row})
    return path


def gain_rows(gains: Sequence[Gain], stats: Mapping[str, DatasetStatistics]) -> list[dict[str, Any]]:
    return [
        {"dataset": g.dataset, "method": g.method, "setting": g.setting, "shots": g.shots,
         "metric": METRIC_OF_SETTING[g.setting], "n_seeds": len(g.seeds), "accuracy_mean": f"{g.accuracy_mean:.4f}",
         "accuracy_std": f"{g.accuracy_std:.4f}", "zero_shot": f"{g.zero_shot:.4f}",
         "zero_shot_source": g.zero_shot_source, "gain_mean": f"{g.gain_mean:.4f}", "gain_std": f"{g.gain_std:.4f}",
         "per_seed_gains": _seeded(g.per_seed_gains),
         "intra_visual_variance": f"{stats[g.dataset].intra_visual_variance:.8g}",
         "inter_text_variance": f"{stats[g.dataset].inter_text_variance:.8g}",
         **{f"gain_seed{k}": f"{v:.4f}" for k, v in g.per_seed_gains.items()}}
        for g in gains
    ]  # fmt: skip


def fit_rows(fits: Sequence[Fit]) -> list[dict[str, Any]]:
    return [
        {"method": f.method, "statistic": f.statistic, "slope": f"{f.slope:.6g}", "intercept": f"{f.intercept:.6g}",
         "pearson_r": f"{f.pearson_r:.4f}", "n_datasets": f.n_datasets, "per_seed_slopes": _seeded(f.per_seed_slopes, ".6g"),
         **{f"slope_seed{k}": f"{v:.6g}" for k, v in f.per_seed_slopes.items()}}
        for f in fits
    ]  # fmt: skip


def plot_gains(gains: Sequence[Gain], fits: Sequence[Fit], stats: Mapping[str, DatasetStatistics], out: Path,
               title: str, ylabel: str) -> Path:  # fmt: skip
    """UPT's Fig. 1 d/e: two panels (gain against each statistic), a point per dataset and method (± the std over
    seeds, the dataset named on the point), a fitted line per method with its slope and r in the legend."""
    from scaleprompt.plots import _pyplot, _save

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
            ax.errorbar(xs, ys, yerr=[g.gain_std for g in mine], fmt=marker, color=colour, capsize=2, ms=6, alpha=0.9,
                        label=f"{method}: no line (one value of the statistic)" if flat else None)  # fmt: skip
            for g, x, y in zip(mine, xs, ys, strict=True):
                ax.annotate(
                    g.dataset, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7, color=colour
                )
            if flat:
                continue
            lo, hi = min(xs), max(xs)
            line_x = [lo - 0.05 * (hi - lo), hi + 0.05 * (hi - lo)]
            ax.plot(line_x, [fit.slope * v + fit.intercept for v in line_x], "-", color=colour, lw=1.3,
                    label=f"{method}: slope {fit.slope:+.4g}, r = {fit.pearson_r:+.2f} ({fit.n_datasets} datasets)")  # fmt: skip
        ax.axhline(0.0, color="0.5", ls=":", lw=0.8)
        ax.set_xlabel(STAT_LABELS[name], fontsize=8.5)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7.5, loc="best")
    axes[0].set_ylabel(ylabel)
    axes[0].set_title("gain vs intra-class visual variance", fontsize=10)
    axes[1].set_title("gain vs inter-class text variance", fontsize=10)
    fig.suptitle(title, fontsize=10.5)
    return _save(plt, fig, out)


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [[str(c) for c in header], *[[str(c) for c in r] for r in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------- the command


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "UPT's Fig. 1 statistics per dataset: the intra-class variance of the frozen (unit) image features and the "
        "inter-class variance of the frozen class-name text embeddings; with --results, the gain of each method "
        "over zero-shot against each statistic (variance_gains.csv, variance_fits.csv, variance_gain.png)."
    )
    parser.add_argument("--datasets", required=True,
                        help="comma-separated datasets: registry names (with --root), folder:<path>, split files")  # fmt: skip
    parser.add_argument("--model", default=None,
                        help=f"backbone (default: the runs' with --results, else {DEFAULT_MODEL})")  # fmt: skip
    parser.add_argument("--pretrained", default=None,
                        help="its weights: an open_clip tag, a registered tag, a file, or none (default: the runs' "
                        f"with --results; {DEFAULT_PRETRAINED} for {DEFAULT_MODEL}; none for another --model)")  # fmt: skip
    parser.add_argument("--root", default=None, help="folder holding the registered datasets (data.root)")
    parser.add_argument("--split", default="test", choices=("train", "val", "test"),
                        help="the images of the statistics (default test: the images the gains are measured on)")  # fmt: skip
    parser.add_argument("--template-set", default="coop", choices=("coop", "provp"),
                        help="the hand-crafted templates of the text statistic (data.template_set)")  # fmt: skip
    parser.add_argument("--cache-dir", default="runs/shards",
                        help="the shard cache (data.cache_dir); features are cached under <cache-dir>/features")  # fmt: skip
    parser.add_argument("--results", nargs="+", default=None, metavar="RUNS",
                        help="run folders / results.json files / glob patterns (as scaleprompt results takes them)")  # fmt: skip
    parser.add_argument("--methods", default=None,
                        help="comma-separated methods to fit (default: every method of the runs but zsclip)")  # fmt: skip
    parser.add_argument(
        "--selection", default="last", choices=("last", "best_val"), help="the runs' selection"
    )
    parser.add_argument("--out", default="runs/analysis", help="output folder (default runs/analysis)")
    parser.add_argument("--batch-size", type=int, default=64, help="images per encoder batch")
    parser.add_argument("--num-workers", type=int, default=0, help="data-loader workers")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda when available)")


def _split_list(text: str | None, option: str) -> list[str]:
    items = [t.strip() for t in (text or "").split(",") if t.strip()]
    if text is not None and not items:
        raise AnalysisError(f"{option}: empty list")
    return items


def _backbone_choice(
    args: argparse.Namespace, runs: Sequence[Mapping[str, Any]] | None
) -> tuple[str, str | None]:
    """(model, pretrained) the statistics are computed under; every run must have used it."""
    pretrained = None if args.pretrained in (None, "", "none") else args.pretrained
    if args.model is None and runs:
        used = sorted({(r["backbone"], r.get("pretrained") or None) for r in runs}, key=str)
        if len(used) > 1:
            shown = ", ".join(f"{m}/{p}" for m, p in used)
            raise AnalysisError(
                f"the runs used {len(used)} backbones ({shown}): pass the runs of one backbone"
            )
        model, pretrained = used[0][0], pretrained if args.pretrained is not None else used[0][1]
    elif args.model is None:
        model = DEFAULT_MODEL
        pretrained = pretrained if args.pretrained is not None else DEFAULT_PRETRAINED
    else:
        model = args.model
        if model == DEFAULT_MODEL and args.pretrained is None:
            pretrained = DEFAULT_PRETRAINED
    for run in runs or ():
        if (run["backbone"], run.get("pretrained") or None) != (model, pretrained):
            raise AnalysisError(
                f"{run.get('_path')} was trained on {run['backbone']}/{run.get('pretrained')}, the statistics are "
                f"asked for {model}/{pretrained}: they must come from the backbone the runs used (--model, "
                "--pretrained)"
            )
    return model, pretrained


def _load_runs(paths: Sequence[str]) -> list[dict[str, Any]]:
    from scaleprompt.report.load import load_runs

    try:
        return [{**run.result.to_dict(), "_path": run.source} for run in load_runs(paths)]
    except FileNotFoundError as exc:
        raise AnalysisError(f"--results: {exc}") from None


def run(args: argparse.Namespace) -> int:
    import torch

    from scaleprompt.backbone import load_clip
    from scaleprompt.data.datasets import dataset_display_name, load_dataset

    specs = _split_list(args.datasets, "--datasets")
    names = [dataset_display_name(s) for s in specs]  # (an unknown registry name: one line naming it)
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise AnalysisError(
            f"--datasets names {', '.join(twice)} twice (datasets are told apart by their names)"
        )
    methods = _split_list(args.methods, "--methods") if args.methods is not None else None
    runs = _load_runs(args.results) if args.results else None
    if methods is not None and runs is None:
        raise AnalysisError("--methods needs --results (the runs whose gains are fitted)")
    setting, gains = method_gains(runs, names, methods, args.selection) if runs else ("", [])
    check_fittable(gains)  # (before any image is encoded)
    model, pretrained = _backbone_choice(args, runs)
    for spec in specs:  # (a missing folder or root: one line now, not after the first datasets were encoded)
        load_dataset(spec, args.root)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    backbone = load_clip(model, pretrained)
    backbone.model.to(device)
    stats: dict[str, DatasetStatistics] = {}
    for spec, name in zip(specs, names, strict=True):
        stats[name] = dataset_statistics(spec, backbone, split=args.split, root=args.root, cache_dir=args.cache_dir,
                                         template_set=args.template_set, batch_size=args.batch_size,
                                         num_workers=args.num_workers, device=device)  # fmt: skip
    out = Path(args.out)
    path = _write_csv(out / "variance.csv", STATISTICS_COLUMNS, [s.row() for s in stats.values()])
    logger.info(
        "UPT's variance statistics (%s/%s, %s split, unit features, population convention):\n%s",
        model, pretrained or "random init", args.split,
        _table(("dataset", "images", "classes", "intra visual", "inter text", "inter text (bare)", "template"),
               [(s.dataset, s.n_images, s.n_classes, f"{s.intra_visual_variance:.4f}", f"{s.inter_text_variance:.4f}",
                 f"{s.inter_text_variance_bare:.4f}", s.template) for s in stats.values()]),
    )  # fmt: skip
    logger.info("wrote %s", path)
    if not gains:
        return 0
    fits = fit_gains(gains, stats)
    gains_path = _write_csv(out / "variance_gains.csv", GAINS_COLUMNS, gain_rows(gains, stats), "gain_seed")
    fits_path = _write_csv(out / "variance_fits.csv", FITS_COLUMNS, fit_rows(fits), "slope_seed")
    metric = METRIC_OF_SETTING[setting]
    logger.info(
        "gain over zero-shot (%s, points; %s runs, selection %s):\n%s\nfitted lines (gain = slope * statistic + "
        "intercept):\n%s",
        metric, setting, args.selection,
        _table(("dataset", "method", "seeds", "accuracy", "zero-shot", "source", "gain"),
               [(g.dataset, g.method, len(g.seeds), f"{g.accuracy_mean:.2f} ± {g.accuracy_std:.2f}",
                 f"{g.zero_shot:.2f}", g.zero_shot_source, f"{g.gain_mean:+.2f} ± {g.gain_std:.2f}") for g in gains]),
        _table(("method", "statistic", "slope", "r", "datasets", "slope per seed"),
               [(f.method, f.statistic, f"{f.slope:+.2f}", f"{f.pearson_r:+.3f}", f.n_datasets,
                 _seeded(f.per_seed_slopes) or "-") for f in fits]),
    )  # fmt: skip
    title = (f"Gain over zero-shot vs UPT's variance statistics — {model}/{pretrained or 'random init'}, "
             f"{args.split} split, {setting} runs\ndatasets: {', '.join(names)}")  # fmt: skip
    png = plot_gains(gains, fits, stats, out / "variance_gain.png", title,
                     f"gain over zero-shot ({metric}, points)")  # fmt: skip
    logger.info("wrote %s, %s and %s", gains_path, fits_path, png)
    return 0
