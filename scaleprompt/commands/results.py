"""``scaleprompt results RUNS... [--selection last|best_val] [--metric top1|mean_per_class] [--out-dir DIR]
[--published]``: runs' ``results.json`` -> paper-style tables (mean ± std over seeds), as markdown and CSV.

The stages are those of :mod:`scaleprompt.report`: :func:`~scaleprompt.report.load.load_runs` reads and validates
the runs, :func:`~scaleprompt.report.aggregate.aggregate` averages each configuration over its seeds,
:mod:`~scaleprompt.report.tables` lays the rows out as the papers' tables and :mod:`~scaleprompt.report.render`
writes ``results_<setting>.md`` and ``.csv`` per setting present (with ``--out-dir``) and logs the markdown.
``--published`` adds, separately, each measured average beside the papers' published numbers
(:mod:`scaleprompt.report.compare`); without RUNS it prints the published table itself. Duplicate runs (one
configuration and seed twice: a copied folder, a rerun) are named in one warning line per set and counted once,
the run whose path sorts first kept (``--duplicates error``: an error instead). Errors (an unreadable results.json,
no rows, an unwritable folder) are one line, exit code 2.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from scaleprompt.commands.common import command_parser, run_standalone
from scaleprompt.report.schema import METRICS, SELECTIONS, ResultsError

DUPLICATES = ("skip", "error")  # = scaleprompt.report.aggregate.DUPLICATES (not imported: --help stays fast)

NAME = "results"
HELP = "aggregate runs' results.json over seeds into paper-style tables"
DESCRIPTION = "Aggregate run results (results.json) over seeds into paper-style markdown / CSV tables."

logger = logging.getLogger(__name__)


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """The ``results`` parser in ``subparsers``: the runs, the selection and metric, the output folder and the
    published numbers."""
    parser = command_parser(subparsers, NAME, help=HELP, description=DESCRIPTION)
    parser.add_argument(
        "runs",
        nargs="*",
        metavar="RUNS",
        help="results.json files, directories (searched recursively) or globs (none: with --published, the "
        "published table alone)",
    )
    parser.add_argument(
        "--selection",
        choices=SELECTIONS,
        default="last",
        help="last = last epoch; best_val = epoch chosen on the validation split (default: last)",
    )
    parser.add_argument(
        "--metric", choices=METRICS, default="top1", help="accuracy to tabulate (default: top1)"
    )
    parser.add_argument(
        "--out-dir",
        type=Path,
        default=None,
        help="write results_<setting>.md / .csv here (default: only log the tables)",
    )
    add_duplicates_argument(parser)
    parser.add_argument(
        "--published",
        action="store_true",
        help="after the tables, each measured average beside the papers' published numbers (with their "
        "sources; published_vs_measured_<setting>.md / .csv); without RUNS, the published table itself",
    )
    parser.add_argument(
        "--published-file",
        type=Path,
        default=None,
        metavar="FILE",
        help="the published table to use (implies --published; default: the packaged "
        "scaleprompt/report/published.json)",
    )
    return parser


def add_duplicates_argument(parser: argparse.ArgumentParser) -> None:
    """``--duplicates skip|error``: what two runs of one configuration and seed do (shared with ``plot``)."""
    parser.add_argument(
        "--duplicates",
        choices=DUPLICATES,
        default="skip",
        help="two runs of one configuration with the same seed: skip = keep the one whose path sorts first and "
        "name the others in a warning (default); error = stop",
    )


def run(args: argparse.Namespace) -> int:
    """Tabulate the runs ``args`` name (see the module docstring); 0 on success. A bad results file or published
    table, no rows, or an unwritable folder raises :class:`~scaleprompt.report.schema.ResultsError`."""
    # (import cost: the report's stages import the data package and numpy, which `scaleprompt --help` does not need)
    from scaleprompt.report import published as pub
    from scaleprompt.report.aggregate import SETTINGS, aggregate
    from scaleprompt.report.load import load_runs
    from scaleprompt.report.render import render, write_tables
    from scaleprompt.report.render_published import report_comparisons, report_published
    from scaleprompt.report.tables import SELECTION_LABELS

    published = None
    if args.published or args.published_file is not None:  # validated first: a bad table costs nothing
        published = pub.load_published(args.published_file)
        if not args.runs:
            report_published(published, args.out_dir)
            return 0
    if not args.runs:
        raise ResultsError("no RUNS given: pass results.json files, folders or globs (or --published alone)")
    try:
        runs = load_runs(args.runs)
        rows = aggregate(runs, args.selection, args.metric, args.duplicates)
    except (ValueError, OSError) as exc:
        raise exc if isinstance(exc, ResultsError) else ResultsError(str(exc)) from None
    if not rows:
        raise ResultsError(f"none of the {len(runs)} runs has {args.selection!r} results")
    logger.info("%d runs -> %d rows (selection: %s)", len(runs), len(rows), SELECTION_LABELS[args.selection])
    for setting in SETTINGS:
        if any(r.setting == setting for r in rows):
            logger.info("%s", render(rows, setting)[0])
    if args.out_dir is not None:
        try:
            written = write_tables(rows, args.out_dir)
        except OSError as exc:
            raise ResultsError(f"cannot write the tables to {args.out_dir}: {exc}") from None
        for md_path, csv_path in written.values():
            logger.info("wrote %s and %s", md_path, csv_path)
    if published is not None:  # its own section and files: never part of the measured tables or their CSV
        report_comparisons(rows, published, args.out_dir)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``scaleprompt results`` on ``argv`` (default: the process's arguments) from Python, without the rest of the
    command line: errors are one line, exit code 2."""
    return run_standalone(sys.modules[__name__], "scaleprompt results", argv)
