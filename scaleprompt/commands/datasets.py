"""``scaleprompt datasets``: the registered datasets with their aliases."""

from __future__ import annotations

import argparse
import logging

from scaleprompt.commands.common import plain_parser

NAME = "datasets"
HELP = "list the registered datasets"
logger = logging.getLogger("scaleprompt")


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """The ``datasets`` parser in ``subparsers`` (no arguments)."""
    return plain_parser(subparsers, NAME, HELP)


def run(args: argparse.Namespace) -> int:
    """Log each registered dataset, its aliases and whether it is for evaluation only; ``args``: none are read."""
    from scaleprompt.data.datasets import get_dataset, list_datasets  # (import cost: the data package)

    for name in list_datasets():  # (the installed plug-ins' too)
        spec = get_dataset(name)
        logger.info(
            "%-20s aliases: %-40s%s", name, ", ".join(spec.aliases), " (evaluation only)" * spec.eval_only
        )
    return 0
