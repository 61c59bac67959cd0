"""``scaleprompt convert --method NAME --official FILE --classnames a,b,c --out prompts.safetensors [key=value ...]``:
an official release's checkpoint as a prompt file (docs/porting.md)."""

from __future__ import annotations

import argparse
import logging

from scaleprompt.commands.common import PROG

NAME = "convert"
HELP = "turn an official release's checkpoint into a prompt file"
logger = logging.getLogger("scaleprompt")


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """The ``convert`` parser in ``subparsers``: the method, the release's file, the classes, the backbone, the
    output and the method's config fields."""
    parser: argparse.ArgumentParser = subparsers.add_parser(NAME, help=HELP)
    parser.add_argument(
        "--method", required=True, help="coop, cocoop, ivlp, maple, vpt_deep, upt, provp, provp_ref"
    )
    parser.add_argument(
        "--official", required=True, help="the release's model.pth.tar-<epoch> / model-best.pth.tar"
    )
    names = parser.add_mutually_exclusive_group(required=True)
    names.add_argument("--classnames", help="comma-separated class names, in the training label order")
    names.add_argument("--classnames-file", help="a file with one class name per line")
    parser.add_argument("--model", default="ViT-B-16", help="open_clip model name (default: ViT-B-16)")
    parser.add_argument(
        "--pretrained", default="openai", help="weights recorded in the file (default: openai)"
    )
    parser.add_argument(
        "--dataset",
        help="the run's dataset: vpt_deep (UPT layout) and provp(_ref) get the release's template for it",
    )
    parser.add_argument("--out", required=True, help="the prompt file to write (.safetensors)")
    parser.add_argument(
        "args", nargs="*", metavar="key=value", help="method config fields, e.g. templates=[...]"
    )
    parser.set_defaults(prog=PROG)
    return parser


def run(args: argparse.Namespace) -> int:
    """Convert ``args.official`` into the prompt file ``args.out`` and log which official tensor each of ours
    comes from."""
    from scaleprompt.backbone import load_clip  # (import cost: torch, open_clip)
    from scaleprompt.methods.convert import convert_official_file, parse_method_args, read_classnames

    classnames = read_classnames(args.classnames, args.classnames_file)
    method_args = parse_method_args(args.args)
    backbone = load_clip(args.model, args.pretrained)
    done = convert_official_file(
        args.official, args.out, args.method, backbone, classnames, dataset=args.dataset, **method_args
    )
    for ours, official in done.mapping.items():
        logger.info("%-32s <- %s", ours, official)
    logger.info(
        "%s (epoch %s) -> %s: %s over %s, %d classes; %d frozen official tensors ignored",
        args.official,
        done.checkpoint.epoch,
        args.out,
        args.method,
        args.model,
        len(classnames),
        len(done.ignored),
    )
    return 0
