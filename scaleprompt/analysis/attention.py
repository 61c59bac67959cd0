"""``scaleprompt analyze attention``: being built (issue 24)."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    pass


def run(args: argparse.Namespace) -> int:
    raise NotImplementedError("scaleprompt analyze attention is being built")
