"""``scaleprompt datasets``: the registered datasets with their aliases."""

from __future__ import annotations

import argparse
import logging

from scaleprompt.commands.common import PROG

NAME = "datasets"
HELP = "list the registered datasets"
logger = logging.getLogger("scaleprompt")


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """The ``datasets`` parser in ``subparsers`` (no arguments)."""
    parser: argparse.ArgumentParser = subparsers.add_parser(NAME, help=HELP)
    parser.set_defaults(prog=PROG)
    return parser


def run(args: argparse.Namespace) -> int:
    """Log each registered dataset, its aliases and whether it is for evaluation only; ``args``: none are read."""
    from scaleprompt.data.datasets import DATASETS  # (import cost: the data package)

    for name, spec in DATASETS.items():
        logger.info(
            "%-20s aliases: %-40s%s", name, ", ".join(spec.aliases), " (evaluation only)" * spec.eval_only
        )
    return 0
