"""``scaleprompt results RUNS... [--selection best_val] [--published]``: paper-style tables (markdown + CSV) from
runs. TRANSITIONAL: its arguments go unparsed to :func:`scaleprompt.report.tables.main`, which has its own parser,
until ``scaleprompt/commands/results.py`` takes over."""

from __future__ import annotations

import argparse

from scaleprompt.commands.common import command_parser

NAME = "results"
HELP = "paper-style tables from many runs' results.json"


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """The ``results`` parser in ``subparsers``: every argument, options included, kept for the report's own
    parser (no prefix character that an argument has: nothing is an option here)."""
    parser = command_parser(subparsers, NAME, help=HELP, add_help=False, prefix_chars="\0")
    parser.add_argument("argv", nargs=argparse.REMAINDER, help="the arguments of scaleprompt results")
    return parser


def run(args: argparse.Namespace) -> int:
    """The report's ``main`` on ``args.argv`` (it reports its own errors, ``scaleprompt results: error: ...``)."""
    from scaleprompt.report.tables import main  # (import cost: numpy)

    return main(args.argv)
