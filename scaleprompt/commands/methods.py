"""``scaleprompt methods``: the registered methods and their config fields with defaults."""

from __future__ import annotations

import argparse
import logging
import sys

from scaleprompt.commands.common import plain_parser

NAME = "methods"
HELP = "list methods and their config defaults"
logger = logging.getLogger("scaleprompt")


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """The ``methods`` parser in ``subparsers`` (no arguments)."""
    return plain_parser(subparsers, NAME, HELP)


def run(args: argparse.Namespace) -> int:
    """Log each method (its name and the first line of its module's docstring), then its config fields with their
    defaults; ``args``: none are read."""
    from scaleprompt.methods import list_methods, method_class  # (import cost: the method classes)

    for name in list_methods():  # (the installed plug-ins' too)
        cls = method_class(name)
        doc = (
            sys.modules[cls.__module__].__doc__ or cls.__dict__.get("__doc__") or ""
        )  # one module per method
        logger.info("%-10s %s", name, next(iter(doc.strip().splitlines()), ""))
        for field, default in cls.describe_config().items():
            logger.info("    %-16s = %r", field, default)
    return 0
