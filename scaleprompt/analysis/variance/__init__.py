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

This module is the command (``add_arguments``, ``run``); the work is in :mod:`~scaleprompt.analysis.variance.stats`
(the statistics), :mod:`~scaleprompt.analysis.variance.gains` (gains and fitted lines) and
:mod:`~scaleprompt.analysis.variance.outputs` (CSVs, figure, logged tables).
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from scaleprompt.analysis.features import AnalysisError
from scaleprompt.analysis.variance.gains import METRIC_OF_SETTING, check_fittable, fit_gains, method_gains
from scaleprompt.analysis.variance.outputs import (
    FITS_COLUMNS,
    GAINS_COLUMNS,
    STATISTICS_COLUMNS,
    fit_rows,
    fits_table,
    gain_rows,
    gains_table,
    plot_gains,
    statistics_table,
    write_csv,
)
from scaleprompt.analysis.variance.stats import (
    DatasetStatistics,
    dataset_statistics,
    fit_line,
    inter_class_variance,
    intra_class_variance,
)
from scaleprompt.data.datasets import dataset_display_name, load_dataset
from scaleprompt.report.load import load_runs

__all__ = [
    "FITS_COLUMNS",
    "GAINS_COLUMNS",
    "STATISTICS_COLUMNS",
    "add_arguments",
    "dataset_statistics",
    "fit_gains",
    "fit_line",
    "inter_class_variance",
    "intra_class_variance",
    "method_gains",
    "run",
]

logger = logging.getLogger(__name__)

DEFAULT_MODEL, DEFAULT_PRETRAINED = "sp-micro-clip", "microworld"  # the embedded default backbone


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``scaleprompt analyze variance``, added to ``parser``."""
    parser.description = (
        "UPT's Fig. 1 statistics per dataset: the intra-class variance of the frozen (unit) image features and the "
        "inter-class variance of the frozen class-name text embeddings; with --results, the gain of each method "
        "over zero-shot against each statistic (variance_gains.csv, variance_fits.csv, variance_gain.png)."
    )
    parser.add_argument(
        "--datasets",
        required=True,
        help="comma-separated datasets: registry names (with --root), folder:<path>, split files",
    )
    parser.add_argument(
        "--model", default=None, help=f"backbone (default: the runs' with --results, else {DEFAULT_MODEL})"
    )
    parser.add_argument(
        "--pretrained",
        default=None,
        help="its weights: an open_clip tag, a registered tag, a file, or none (default: the runs' "
        f"with --results; {DEFAULT_PRETRAINED} for {DEFAULT_MODEL}; none for another --model)",
    )
    parser.add_argument("--root", default=None, help="folder holding the registered datasets (data.root)")
    parser.add_argument(
        "--split",
        default="test",
        choices=("train", "val", "test"),
        help="the images of the statistics (default test: the images the gains are measured on)",
    )
    parser.add_argument(
        "--template-set",
        default="coop",
        choices=("coop", "provp"),
        help="the hand-crafted templates of the text statistic (data.template_set)",
    )
    parser.add_argument(
        "--cache-dir",
        default="runs/shards",
        help="the shard cache (data.cache_dir); features are cached under <cache-dir>/features",
    )
    parser.add_argument(
        "--results",
        nargs="+",
        default=None,
        metavar="RUNS",
        help="run folders / results.json files / glob patterns (as scaleprompt results takes them)",
    )
    parser.add_argument(
        "--methods",
        default=None,
        help="comma-separated methods to fit (default: every method of the runs but zsclip)",
    )
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
    """The runs of ``paths`` (``--results``) as results.json dicts, each with its ``_path``."""
    try:
        return [{**run.result.to_dict(), "_path": run.source} for run in load_runs(paths)]
    except FileNotFoundError as exc:
        raise AnalysisError(f"--results: {exc}") from None


def run(args: argparse.Namespace) -> int:
    """``scaleprompt analyze variance`` with the options ``args`` (see :func:`add_arguments`): the statistics of
    every dataset, and with ``--results`` the gains and fitted lines, written under ``--out``; the exit code (0)."""
    # (import cost: torch, open_clip; `scaleprompt analyze ... --help` imports this module)
    import torch

    from scaleprompt.backbone import load_clip

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
        stats[name] = dataset_statistics(
            spec,
            backbone,
            split=args.split,
            root=args.root,
            cache_dir=args.cache_dir,
            template_set=args.template_set,
            batch_size=args.batch_size,
            num_workers=args.num_workers,
            device=device,
        )
    out = Path(args.out)
    path = write_csv(out / "variance.csv", STATISTICS_COLUMNS, [s.row() for s in stats.values()])
    logger.info(
        "UPT's variance statistics (%s/%s, %s split, unit features, population convention):\n%s",
        model,
        pretrained or "random init",
        args.split,
        statistics_table(stats.values()),
    )
    logger.info("wrote %s", path)
    if not gains:
        return 0
    fits = fit_gains(gains, stats)
    gains_path = write_csv(out / "variance_gains.csv", GAINS_COLUMNS, gain_rows(gains, stats), "gain_seed")
    fits_path = write_csv(out / "variance_fits.csv", FITS_COLUMNS, fit_rows(fits), "slope_seed")
    metric = METRIC_OF_SETTING[setting]
    logger.info(
        "gain over zero-shot (%s, points; %s runs, selection %s):\n%s\nfitted lines (gain = slope * statistic + "
        "intercept):\n%s",
        metric,
        setting,
        args.selection,
        gains_table(gains),
        fits_table(fits),
    )
    title = (
        f"Gain over zero-shot vs UPT's variance statistics — {model}/{pretrained or 'random init'}, "
        f"{args.split} split, {setting} runs\ndatasets: {', '.join(names)}"
    )
    png = plot_gains(
        gains, fits, stats, out / "variance_gain.png", title, f"gain over zero-shot ({metric}, points)"
    )
    logger.info("wrote %s, %s and %s", gains_path, fits_path, png)
    return 0
