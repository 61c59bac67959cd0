"""``scaleprompt plan --model ViT-H-14 --method provp_ref --batch 32 --gpus 8 --zero 3 --precision bf16``: per-GPU
memory of a training run (weights, prompts, activations counted on the real model), and the largest micro-batch
that fits (:mod:`scaleprompt.plan`)."""

from __future__ import annotations

import argparse
import sys

from scaleprompt.commands.common import PROG

NAME = "plan"
HELP = "per-GPU memory of a training run and the largest micro-batch that fits"
DESCRIPTION = """Per-GPU memory of a training run: frozen weights (ZeRO-3: partitioned, plus the gathered working set),
buffers, prompts with their gradients, fp32 master and optimizer states, the activations kept for backward and the
largest recomputation (counted on the real method's training steps at 1-2 blocks per tower, run on fake CPU
tensors: shapes without values, so nothing is computed and it takes seconds; then scaled exactly to the full
depth), the input batch and an allowance for the CUDA context; and the largest micro-batch per GPU that fits
--gpu-memory. Nothing is downloaded; the pretrained weights do not matter.

  scaleprompt plan --model ViT-H-14 --method provp_ref --batch 32 --gpus 8 --zero 3 --precision bf16
  scaleprompt plan --model ViT-L-14 --method coop --batch 32 --classes 1000 --text-chunk 100 --grad-checkpointing"""


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """The ``plan`` parser in ``subparsers``: the model, the method, the batch, the parallelism and precision, the
    memory per GPU."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        NAME, help=HELP, description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--model", required=True, help="open_clip model name (ViT-B-16, ViT-H-14, sp-tiny-vit, ...)"
    )
    parser.add_argument("--method", required=True, help="method name (scaleprompt methods)")
    parser.add_argument(
        "--batch", type=int, required=True, help="micro-batch PER GPU (images per forward pass)"
    )
    parser.add_argument(
        "--gpus", type=int, default=8, help="data-parallel GPUs (ZeRO's partition count; default 8)"
    )
    parser.add_argument("--zero", type=int, help="ZeRO stage 0-3 (default: the --ds file's stage, else 2)")
    parser.add_argument("--precision", default="bf16", help="fp32, bf16 or fp16 (default bf16)")
    parser.add_argument("--grad-checkpointing", action="store_true", help="model.grad_checkpointing=true")
    parser.add_argument("--classes", type=int, default=1000, help="classes per step (default 1000)")
    parser.add_argument("--text-chunk", type=int, default=0, help="model.text_chunk (default 0: all at once)")
    parser.add_argument(
        "--gpu-memory", default="80GB", help="memory per GPU: 80GB (10^9 bytes), 40GiB (2^30), ..."
    )
    parser.add_argument(
        "--method-arg",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a method config field (repeatable), e.g. n_ctx=16",
    )
    parser.add_argument("--optimizer", default="sgd", help="sgd (momentum: 1 state) or adamw (2 states)")
    parser.add_argument(
        "--name-tokens", type=int, default=8, help="tokens of the longest class name (default 8)"
    )
    parser.add_argument(
        "--ds",
        help="DeepSpeed JSON (file or packaged name) whose ZeRO settings apply "
        "(default: the packaged zero3 for ZeRO-3)",
    )
    parser.add_argument("--json", action="store_true", help="print the plan as JSON")
    parser.set_defaults(prog=PROG)
    return parser


def run(args: argparse.Namespace) -> int:
    """Plan the run ``args`` describe; the table (or, with ``args.json``, the JSON) on stdout."""
    from scaleprompt.methods.convert import parse_method_args  # (import cost: torch)
    from scaleprompt.plan import format_plan, parse_size, plan

    ds, zero = None, args.zero
    if args.ds is not None:
        from scaleprompt.engine.config import load_ds_config

        ds = load_ds_config(args.ds)
        zero = ds.get("zero_optimization", {}).get("stage", 0) if zero is None else zero
    result = plan(
        args.model,
        args.method,
        batch=args.batch,
        gpus=args.gpus,
        zero=2 if zero is None else zero,
        precision=args.precision,
        grad_checkpointing=args.grad_checkpointing,
        classes=args.classes,
        text_chunk=args.text_chunk,
        gpu_memory=parse_size(args.gpu_memory),
        method_args=parse_method_args(args.method_arg),
        optimizer=args.optimizer,
        name_tokens=args.name_tokens,
        ds_config=ds,
    )
    sys.stdout.write((result.to_json() if args.json else format_plan(result)) + "\n")
    return 0
