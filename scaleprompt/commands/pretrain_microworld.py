"""``scaleprompt pretrain-microworld --out FILE``: pretrain the micro-world CLIP (``sp-micro-clip``) from scratch on
the CPU (:mod:`scaleprompt.pretrain`); rebuilds the shipped weights."""

from __future__ import annotations

import argparse
import logging
from dataclasses import asdict
from pathlib import Path

from scaleprompt.commands.common import CommandParser, command_parser

NAME = "pretrain-microworld"
HELP = "pretrain the micro-world CLIP (rebuilds the shipped weights)"
logger = logging.getLogger("scaleprompt.pretrain")


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """The ``pretrain-microworld`` parser in ``subparsers``: the output file, then one flag per field of
    :class:`~scaleprompt.pretrain.PretrainConfig` (added when the parser is used: the config's module
    imports torch)."""
    parser = command_parser(subparsers, NAME, help=HELP)
    parser.add_argument("--out", type=Path, required=True, help="safetensors file to write")
    parser.defer(_add_config_flags)
    parser.set_defaults(console="timestamped")
    return parser


def _add_config_flags(parser: CommandParser) -> None:
    """The module's summary as ``parser``'s description and a flag per :class:`PretrainConfig` field."""
    from scaleprompt import pretrain

    parser.description = (pretrain.__doc__ or "").split("\n\n")[0]
    for name, value in asdict(pretrain.PretrainConfig()).items():
        parser.add_argument(
            f"--{name.replace('_', '-')}",
            type=type(value),
            default=value,
            help=f"PretrainConfig.{name} (default: %(default)s)",
        )


def run(args: argparse.Namespace) -> int:
    """Pretrain with the config of ``args``, write the weights to ``args.out`` and log the zero-shot accuracy."""
    from scaleprompt.pretrain import PretrainConfig, pretrain  # (import cost: torch, open_clip)

    cfg = PretrainConfig(**{k: getattr(args, k) for k in asdict(PretrainConfig())})
    _, report = pretrain(cfg, args.out)
    logger.info(
        "zero-shot top-1 over the 64 classes: %.1f%% in %.1f min",
        100 * report["zero_shot_top1"],
        report["minutes"],
    )
    return 0
