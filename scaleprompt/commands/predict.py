"""``scaleprompt predict PROMPTS INPUT... [--output FILE]``: classify images (files, folders, globs) with trained
prompts, one JSON line / CSV row per image."""

from __future__ import annotations

import argparse

from scaleprompt.commands.common import PROG

NAME = "predict"
HELP = "classify images with saved prompts (JSON lines / CSV)"
DESCRIPTION = """Classify images with saved prompts: one record per image, its path and top-k classes with their
probabilities, as JSON lines ({"path": ..., "top": [{"class": ..., "prob": ...}, ...]}) or CSV rows
(path,class_1,prob_1,...,class_k,prob_k). The records go to --output or stdout, logs and the progress bar to
stderr. Inputs: image files, folders (searched recursively for .bmp .gif .jpeg .jpg .png .tif .tiff .webp, any
case; hidden files skipped) and glob patterns (quote them; ** spans folders), in the order given, each folder's
and pattern's images sorted, duplicates once. Images are read one batch at a time.

  scaleprompt predict prompts.safetensors photos/ 'more/**/*.jpg' cat.png > predictions.jsonl
  scaleprompt predict prompts.safetensors photos/ --output predictions.csv --top-k 5 --skip-bad"""


def positive_int(text: str) -> int:
    """``text`` as an integer of at least 1 (else a usage error naming the value)."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """The ``predict`` parser in ``subparsers``: the prompt file, the inputs and the records' form."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        NAME, help=HELP, description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("prompts", help="a prompt file written by training (prompts.safetensors)")
    parser.add_argument(
        "inputs", nargs="+", metavar="INPUT", help="image files, folders (recursive) and quoted glob patterns"
    )
    parser.add_argument("--output", "-o", help="write the records to this file (default: stdout)")
    parser.add_argument(
        "--format",
        choices=["jsonl", "csv"],
        help="record format (default: csv for a .csv --output, else jsonl)",
    )
    parser.add_argument(
        "--top-k", type=positive_int, default=3, help="classes per image (default 3; at most all classes)"
    )
    parser.add_argument("--batch-size", type=positive_int, default=32, help="images per forward pass")
    new_names = parser.add_mutually_exclusive_group()
    new_names.add_argument("--classnames", help="comma-separated class names to use (default: the file's)")
    new_names.add_argument("--classnames-file", help="one class name per line (blank lines ignored)")
    parser.add_argument(
        "--skip-bad", action="store_true", help="skip (and report) unreadable images instead of stopping"
    )
    parser.add_argument(
        "--pretrained", default="from-file", help="backbone weights (default: as recorded in the file)"
    )
    parser.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    parser.set_defaults(prog=PROG)
    return parser


def run(args: argparse.Namespace) -> int:
    """Classify ``args.inputs`` with ``args.prompts``: the records (JSON lines or CSV) to ``args.output`` or stdout;
    logs and the progress bar to stderr. The exit code of :func:`scaleprompt.predict.run_predict`."""
    from scaleprompt.methods.convert import read_classnames  # (import cost: torch, open_clip)
    from scaleprompt.predict import run_predict

    classnames = None
    if args.classnames is not None or args.classnames_file is not None:
        classnames = read_classnames(args.classnames, args.classnames_file)
    return run_predict(
        args.prompts,
        args.inputs,
        output=args.output,
        fmt=args.format,
        top_k=args.top_k,
        batch_size=args.batch_size,
        classnames=classnames,
        device=args.device,
        skip_bad=args.skip_bad,
        pretrained=None if args.pretrained == "from-file" else args.pretrained,
    )
