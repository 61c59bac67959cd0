"""``scaleprompt shards --dataset NAME --root DIR --out DIR [--shots K --seed S --subset base]``: write a dataset
(after a protocol) as WebDataset shards + manifest."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from scaleprompt.commands.common import PROG

NAME = "shards"
HELP = "write a dataset as WebDataset shards + manifest"
logger = logging.getLogger("scaleprompt")


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """The ``shards`` parser in ``subparsers``: the dataset, the protocol, the splits and the shard layout."""
    parser: argparse.ArgumentParser = subparsers.add_parser(NAME, help=HELP)
    parser.add_argument(
        "--dataset", required=True, help="registered name, folder:<path>, or a .json/.csv split"
    )
    parser.add_argument("--root", help="folder holding the datasets (CoOp layout)")
    parser.add_argument("--out", required=True, help="output folder for the shards and manifest.json")
    parser.add_argument(
        "--shots", type=int, default=None, help="few-shot K (omit: no protocol; 0: all images)"
    )
    parser.add_argument(
        "--allow-fewer-shots",
        action="store_true",
        help="classes with fewer training images than --shots keep what they have (default: refused, naming them)",
    )
    parser.add_argument("--seed", type=int, default=1, help="few-shot sampling seed (default: 1)")
    parser.add_argument(
        "--subset", choices=["all", "base", "new"], default="all", help="classes: all, base half or new half"
    )
    parser.add_argument(
        "--splits",
        nargs="+",
        default=["train", "val", "test"],
        choices=["train", "val", "test"],
        help="splits to write (default: all three)",
    )
    parser.add_argument("--shard-size", type=int, default=1000, help="max samples per shard")
    parser.add_argument(
        "--min-shards", type=int, default=8, help="at least this many shards per split (>= ranks x workers)"
    )
    parser.add_argument("--processes", type=int, default=1, help="writer processes")
    parser.add_argument(
        "--max-image-size", type=int, default=None, help="re-encode images whose short side is larger"
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="replace shards of a different plan in --out"
    )
    parser.set_defaults(prog=PROG)
    return parser


def run(args: argparse.Namespace) -> int:
    """Write ``args.dataset`` as shards in ``args.out`` (after the protocol of ``args.shots``, ``args.seed`` and
    ``args.subset``; none without ``--shots``) and log what each split holds."""
    from scaleprompt.data import Protocol, load_dataset, write_shards  # (import cost: the data stack)

    dataset = load_dataset(args.dataset, args.root)
    protocol = None if args.shots is None else Protocol(shots=args.shots, seed=args.seed, subset=args.subset)
    manifest = write_shards(
        dataset,
        args.out,
        protocol,
        splits=tuple(args.splits),
        shard_size=args.shard_size,
        min_shards=args.min_shards,
        processes=args.processes,
        max_image_size=args.max_image_size,
        overwrite=args.overwrite,
        allow_fewer_shots=args.allow_fewer_shots,
    )
    for split, info in manifest["splits"].items():
        logger.info("%-5s %7d images in %4d shards", split, info["count"], len(info["shards"]))
    logger.info("%d classes; manifest: %s", len(manifest["classnames"]), Path(args.out) / "manifest.json")
    return 0
