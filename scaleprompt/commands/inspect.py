"""``scaleprompt inspect FILE``: the method, config, classes and backbone stored in a prompt file, and whether its
tensor checksum is verified."""

from __future__ import annotations

import argparse
import json
import logging

from scaleprompt.commands.common import PROG

NAME = "inspect"
HELP = "print what a prompt file holds"
logger = logging.getLogger("scaleprompt")


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """The ``inspect`` parser in ``subparsers``: one prompt file."""
    parser: argparse.ArgumentParser = subparsers.add_parser(NAME, help=HELP)
    parser.add_argument("file", help="a prompt file (prompts.safetensors)")
    parser.set_defaults(prog=PROG)
    return parser


def run(args: argparse.Namespace) -> int:
    """Log what ``args.file`` holds: the metadata (JSON entries decoded, the others as strings), whether the tensor
    checksum is verified, the tensors' shapes and their counts of values that are not finite. A damaged file or bad
    metadata is an error (one line, exit 2). No torch: it answers at once."""
    from scaleprompt.promptfile import CHECKSUM_ENTRY, decode_metadata, read_prompt_bytes

    raw = read_prompt_bytes(args.file)  # (verifies the checksum: a mismatch is an error naming the file)
    report = decode_metadata(raw.meta, raw.path)
    report["checksum"] = (
        f"verified ({CHECKSUM_ENTRY})"
        if raw.checksum == "verified"
        else f"absent (the file records no {CHECKSUM_ENTRY}: its tensors cannot be verified)"
    )
    report["tensors"] = {k: v["shape"] for k, v in raw.table().items()}
    report["non_finite_values"] = raw.non_finite()  # (eval, predict and load_prompts refuse such a file)
    logger.info("%s", json.dumps(report, indent=2))
    if report["non_finite_values"]:
        logger.warning("%s holds values that are not finite: eval and predict refuse it", args.file)
    return 0
