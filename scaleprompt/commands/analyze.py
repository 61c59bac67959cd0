"""``scaleprompt analyze variance|deviation|attention ...``: the papers' analyses (UPT's variance statistics and
figure, ProVP's feature deviation and t-SNE, prompt-token attention maps) on any dataset the engine loads; see
docs/findings.md.

Each analysis is a module of :mod:`scaleprompt.analysis` with ``add_arguments(parser)`` and ``run(args) -> int``;
their heavy imports (torch, open_clip, matplotlib) stay inside ``run`` so that ``scaleprompt --help`` stays fast.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from types import ModuleType

from scaleprompt.commands.common import CommandParser, command_parser

NAME = "analyze"
HELP = "the papers' analyses: variance statistics, feature deviation, attention maps"
DESCRIPTION = "``scaleprompt analyze variance|deviation|attention``: the papers' analyses on any dataset the engine loads."
ANALYSES = {
    "variance": "UPT's intra-class visual / inter-class text variance per dataset",
    "deviation": "how far a prompt file's image features drift from frozen CLIP",
    "attention": "attention of prompt tokens (and the class token) to patches",
}  # the analysis (the module scaleprompt.analysis.<name>) -> its help line


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """The ``analyze`` parser in ``subparsers``, with one sub-parser per analysis (its arguments from its module's
    ``add_arguments``; added when the parser is used)."""
    parser = command_parser(subparsers, NAME, help=HELP, description=DESCRIPTION)
    parser.defer(_add_analyses)
    return parser


def _add_analyses(parser: CommandParser) -> None:
    """A sub-parser of ``parser`` per analysis."""
    analyses = parser.add_subparsers(dest="analysis", required=True)
    for name, help_text in ANALYSES.items():
        sub = analyses.add_parser(name, help=help_text, description=help_text)
        _module(name).add_arguments(sub)


def _module(analysis: str) -> ModuleType:
    """The module of ``analysis`` (``add_arguments(parser)``, ``run(args) -> int``)."""
    # (imported when used: `scaleprompt --help` needs none of them)
    from scaleprompt.analysis import attention, deviation, variance

    return {"variance": variance, "deviation": deviation, "attention": attention}[analysis]


def run(args: argparse.Namespace) -> int:
    """Run the analysis ``args.analysis`` on ``args``; its exit code."""
    analysis: Callable[[argparse.Namespace], int] = _module(args.analysis).run
    return int(analysis(args))
