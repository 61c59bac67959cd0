"""``scaleprompt recipes [--kind config|ds|space]``: the packaged recipes, DeepSpeed configs and search spaces,
each usable by name from any folder (``--config provp_ref/base2new``, ``--ds zero2``, ``--space provp_ref``)."""

from __future__ import annotations

import argparse
import logging
from typing import get_args

from scaleprompt.commands.common import PROG

NAME = "recipes"
HELP = "list the packaged recipes, DeepSpeed configs and search spaces (usable by name anywhere)"
FLAGS = {"config": "--config", "ds": "--ds", "space": "--space"}  # the kind -> the flag that takes its names
logger = logging.getLogger("scaleprompt")


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """The ``recipes`` parser in ``subparsers``: optionally one kind."""
    parser: argparse.ArgumentParser = subparsers.add_parser(NAME, help=HELP)
    parser.add_argument("--kind", choices=list(FLAGS), help="only one kind (default: all three)")
    parser.set_defaults(prog=PROG)
    return parser


def run(args: argparse.Namespace) -> int:
    """Log the packaged names of ``args.kind`` (default: every kind), under a heading per kind."""
    from scaleprompt.recipes import KINDS, RecipeKind, list_recipes

    kinds: list[RecipeKind] = [args.kind] if args.kind else list(get_args(RecipeKind))
    for kind in kinds:
        names = list_recipes(kind)
        logger.info("%s (%s): %d", KINDS[kind].what, FLAGS[kind], len(names))
        for name in names:
            logger.info("    %s", name)
    return 0
