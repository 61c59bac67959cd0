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

from scaleprompt.analysis import attention, deviation, variance
from scaleprompt.commands.common import command_parser

NAME = "analyze"
HELP = "the papers' analyses: variance statistics, feature deviation, attention maps"
DESCRIPTION = "``scaleprompt analyze variance|deviation|attention``: the papers' analyses on any dataset the engine loads."
ANALYSES: dict[str, tuple[ModuleType, str]] = {
    "variance": (variance, "UPT's intra-class visual / inter-class text variance per dataset"),
    "deviation": (deviation, "how far a prompt file's image features drift from frozen CLIP"),
    "attention": (attention, "attention of prompt tokens (and the class token) to patches"),
}  # the analysis -> its module and its help line


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """The ``analyze`` parser in ``subparsers``, with one sub-parser per analysis (its arguments from its module's
    ``add_arguments``)."""
    parser = command_parser(subparsers, NAME, help=HELP, description=DESCRIPTION)
    analyses = parser.add_subparsers(dest="analysis", required=True)
    for name, (module, help_text) in ANALYSES.items():
        sub = analyses.add_parser(name, help=help_text, description=help_text)
        module.add_arguments(sub)
    return parser


def run(args: argparse.Namespace) -> int:
    """Run the analysis ``args.analysis`` on ``args``; its exit code."""
    analysis: Callable[[argparse.Namespace], int] = ANALYSES[args.analysis][0].run
    return int(analysis(args))
