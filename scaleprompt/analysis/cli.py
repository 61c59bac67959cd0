"""``scaleprompt analyze variance|deviation|attention``: the papers' analyses on any dataset the engine loads.

Each subcommand is a module of this package exposing ``add_arguments(parser)`` and ``run(args) -> int``; heavy
imports (torch, open_clip, matplotlib) stay inside ``run`` so that ``scaleprompt --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import logging
from collections.abc import Sequence

SUBCOMMANDS = {  # name -> (module, help)
    "variance": (
        "scaleprompt.analysis.variance",
        "UPT's intra-class visual / inter-class text variance per dataset",
    ),
    "deviation": (
        "scaleprompt.analysis.deviation",
        "how far a prompt file's image features drift from frozen CLIP",
    ),
    "attention": (
        "scaleprompt.analysis.attention",
        "attention of prompt tokens (and the class token) to patches",
    ),
}


def build_parser(prog: str = "scaleprompt analyze") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="analysis", required=True)
    for name, (module, help_text) in SUBCOMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        mod = importlib.import_module(module)
        mod.add_arguments(p)
        p.set_defaults(func=mod.run)
    return parser


def main(argv: Sequence[str] | None = None, prog: str = "scaleprompt analyze") -> int:
    from scaleprompt.errors import run_entry_point

    def _main(args_list: Sequence[str]) -> int:
        args = build_parser(prog).parse_args(list(args_list))
        logging.basicConfig(level=logging.WARNING, format="%(message)s")
        logging.getLogger("scaleprompt").setLevel(logging.INFO)
        return int(args.func(args))

    return run_entry_point(_main, argv, prog=prog)
