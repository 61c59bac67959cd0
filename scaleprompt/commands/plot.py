"""``scaleprompt plot PATHS... [--out-dir DIR] [--format pdf,png] [--selection last|best_val] [--metric top1|mean_per_class]
[--band minmax|std] [--duplicates skip|error]``: figures for a paper from runs and sweeps.

PATHS are run folders, results.json files, parent folders of runs (searched recursively), globs, and sweep folders
(``scaleprompt tune``'s ``<storage>/<name>``: trials.csv + summary.json / report.md). A folder searched for runs
that holds sweeps gives those sweeps, and their trials are not read as runs.

* Runs: the rows of ``scaleprompt results`` (:func:`~scaleprompt.report.load.load_runs`,
  :func:`~scaleprompt.report.aggregate.aggregate`: mean ± std over seeds, variants apart, duplicates named and
  skipped) as grouped bars (base-to-novel: Base / Novel / HM per method) and per-epoch curves with the seeds as a
  band (:mod:`scaleprompt.report.figures`).
* Sweeps: the metric per trial, by parameter, per epoch, and the importances, with the trial ids of report.md
  (:mod:`scaleprompt.search.figures`).

Every figure is written in each ``--format`` with a caption file ``<figure>.txt`` saying what it was computed on.
Errors (no runs or sweeps found, an unreadable results.json, an unwritable folder) are one line, exit code 2.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from scaleprompt.commands.common import command_parser, run_standalone
from scaleprompt.commands.results import add_duplicates_argument
from scaleprompt.report.schema import METRICS, SELECTIONS, ResultsError

NAME = "plot"
HELP = "figures for a paper: base/novel/HM bars, per-epoch curves over seeds, sweep views (PDF / PNG)"
DESCRIPTION = (
    "Figures of runs (grouped bars, per-epoch curves with seeds as a band) and sweeps (metric per trial, by "
    "parameter, per epoch; trial ids as in report.md), each with a caption file."
)
BANDS = ("minmax", "std")  # = scaleprompt.report.figures.BANDS (not imported: --help stays fast)

logger = logging.getLogger(__name__)


def _formats(text: str) -> tuple[str, ...]:
    from scaleprompt.plots import parse_formats

    try:
        return parse_formats(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """The ``plot`` parser in ``subparsers``."""
    parser = command_parser(subparsers, NAME, help=HELP, description=DESCRIPTION)
    parser.add_argument(
        "paths",
        nargs="+",
        metavar="PATHS",
        help="run folders, results.json files, parent folders of runs, globs, and sweep folders",
    )
    parser.add_argument(
        "--out-dir", type=Path, default=Path("figures"), help="where the figures go (default: ./figures)"
    )
    parser.add_argument(
        "--format",
        dest="formats",
        type=_formats,
        default=("pdf", "png"),
        metavar="FORMATS",
        help="comma-separated: pdf, png, svg (default: pdf,png)",
    )
    parser.add_argument(
        "--selection",
        choices=SELECTIONS,
        default="last",
        help="last = last epoch; best_val = epoch chosen on the validation split (default: last)",
    )
    parser.add_argument("--metric", choices=METRICS, default="top1", help="accuracy to plot (default: top1)")
    parser.add_argument(
        "--band",
        choices=BANDS,
        default="minmax",
        help="the seeds' band around a per-epoch curve: minmax = min to max, std = mean ± 1 sample std "
        "(default: minmax)",
    )
    parser.add_argument(
        "--font-size", type=float, default=9.0, help="every text of the figures, in points (default: 9)"
    )
    add_duplicates_argument(parser)
    return parser


def find_inputs(paths: Sequence[str | Path]) -> tuple[list[Path], list[Path]]:
    """(results.json files, sweep folders) of ``paths``: files, folders (searched recursively; a sweep folder is a
    sweep, and the runs inside a sweep are its trials, not runs) and glob patterns. A path or pattern that yields
    nothing raises ``FileNotFoundError``."""
    import glob

    from scaleprompt.report.load import RESULTS_FILE
    from scaleprompt.search.figures import TRIALS_FILE, is_sweep

    files: list[Path] = []
    sweeps: list[Path] = []

    def add(path: Path) -> bool:
        if path.is_file():
            files.append(path)
            return True
        if not path.is_dir():
            return False
        if is_sweep(path):
            sweeps.append(path)
            return True
        found = sorted(p.parent for p in path.rglob(TRIALS_FILE) if is_sweep(p.parent))
        inner = [s for s in found if not any(o != s and o in s.parents for o in found)]
        sweeps.extend(inner)
        runs = [p for p in sorted(path.rglob(RESULTS_FILE)) if not any(s in p.parents for s in inner)]
        files.extend(runs)
        return bool(inner or runs)

    for item in paths:
        text = str(item)
        if Path(text).exists():
            if not add(Path(text)):
                raise FileNotFoundError(f"no {RESULTS_FILE} or sweep under {text}")
        elif any(c in text for c in "*?["):
            matches = sorted(glob.glob(text, recursive=True))
            if not [m for m in matches if add(Path(m))]:
                raise FileNotFoundError(f"no runs or sweeps match {text}")
        else:
            raise FileNotFoundError(f"no such file or directory: {text}")
    return _unique(files), _unique(sweeps)


def _unique(paths: Sequence[Path]) -> list[Path]:
    """``paths`` resolved, each once, in order."""
    return list(dict.fromkeys(p.resolve() for p in paths))


def run(args: argparse.Namespace) -> int:
    """Draw the figures of the runs and sweeps ``args.paths`` names into ``args.out_dir``; 0 on success."""
    # (import cost: matplotlib, numpy and the report's stages, which `scaleprompt --help` does not need)
    from scaleprompt.report.aggregate import aggregate
    from scaleprompt.report.figures import run_figures
    from scaleprompt.report.load import load_runs
    from scaleprompt.search.figures import load_sweep, sweep_figures

    try:
        files, sweeps = find_inputs(args.paths)
        runs = load_runs(files) if files else []
        rows = aggregate(runs, args.selection, args.metric, args.duplicates) if runs else []
    except (ValueError, OSError) as exc:
        raise exc if isinstance(exc, ResultsError) else ResultsError(str(exc)) from None
    if runs and not rows:
        raise ResultsError(f"none of the {len(runs)} runs has {args.selection!r} results")
    written: list[Path] = []
    try:
        if rows:
            logger.info("%d runs -> %d rows (selection: %s)", len(runs), len(rows), args.selection)
            written += run_figures(runs, rows, args.out_dir, args.formats, args.band, args.font_size)
        for folder in sweeps:
            sweep = load_sweep(folder)
            logger.info("sweep %s: %d trials (%s)", sweep.name, len(sweep.trials), sweep.metric)
            written += sweep_figures(sweep, args.out_dir, args.formats, args.font_size)
    except OSError as exc:
        raise ResultsError(f"cannot write the figures to {args.out_dir}: {exc}") from None
    figures = [p for p in written if p.suffix != ".txt"]
    logger.info(
        "wrote %d figure files and %d captions to %s", len(figures), len(written) - len(figures), args.out_dir
    )
    for path in written:
        logger.info("  %s", path)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``scaleprompt plot`` on ``argv`` (default: the process's arguments) from Python: errors are one line, exit
    code 2."""
    return run_standalone(sys.modules[__name__], "scaleprompt plot", argv)
