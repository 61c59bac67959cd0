"""Entry point: evaluate a prompt file on a dataset's setting (no training), as training tests its prompts.

    scaleprompt eval runs/pets/prompts.safetensors                     # the run's own config: its test numbers
    scaleprompt eval prompts.safetensors --dataset OxfordPets --root /data --setting base2new
    scaleprompt eval prompts.safetensors --setting transfer --targets ImageNetV2 ImageNetSketch --root /data
    deepspeed --num_gpus 8 scaleprompt/evaluate.py prompts.safetensors --ds ds_configs/zero3.json --dataset ImageNet

The base config is ``--config`` (a recipe), else the ``config.json`` of the training run the file sits in, else the
defaults; the file decides the method and the backbone; ``key=value`` overrides come last (the same keys as
training; ``--dataset``/``--root``/``--setting``/``--targets``/``--shots``/``--seed`` are short for
``data.dataset``/``data.root``/``eval.setting``/``eval.targets``/``data.shots``/``train.seed``). Shards come from
the same cache as training. The results (``results.json`` schema) go to ``--output``, by default
``<file stem>.eval-<dataset>-<setting>.json`` next to the file. A bad input is one line, exit code 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from functools import partial
from pathlib import Path

if __package__ in (None, ""):  # run as a script (deepspeed / torchrun launch a file path)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SHORTHANDS = {"dataset": "data.dataset", "root": "data.root", "setting": "eval.setting", "shots": "data.shots",
              "seed": "train.seed"}  # fmt: skip


def build_parser(prog: str = "evaluate.py") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog, description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    parser.add_argument(
        "prompts", help="a prompt file (prompts.safetensors, prompts_best_val.safetensors, ...)"
    )
    parser.add_argument(
        "--config", help="recipe YAML or packaged name (default: the config.json of the file's training run)"
    )
    parser.add_argument(
        "--ds", help="DeepSpeed JSON or packaged name (zero3: partitions a big backbone over the ranks)"
    )
    parser.add_argument("--dataset", help="= data.dataset: registered name, folder:<path> or a split file")
    parser.add_argument("--root", help="= data.root: the folder holding the datasets")
    parser.add_argument("--setting", choices=["fewshot", "base2new", "transfer"], help="= eval.setting")
    parser.add_argument("--targets", nargs="+", metavar="DATASET", help="= eval.targets (transfer)")
    parser.add_argument("--shots", type=int, help="= data.shots (names the cached shard folder to reuse)")
    parser.add_argument("--seed", type=int, help="= train.seed (the protocol's sampling seed)")
    parser.add_argument("--output", "-o", help="results JSON (default: next to the prompt file)")
    parser.add_argument(
        "--zero-shot",
        action="store_true",
        help="also test zero-shot CLIP on the same sets (results' zero_shot)",
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks of configuration / data errors")
    parser.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)
    return parser


def overrides_of(args: argparse.Namespace, rest: Sequence[str]) -> list[str]:
    """The shorthand flags as ``key=value`` overrides, before the explicit ones (which win)."""
    out = [
        f"{key}={getattr(args, flag)}" for flag, key in SHORTHANDS.items() if getattr(args, flag) is not None
    ]
    if args.targets:
        out.append(f"eval.targets={json.dumps(args.targets)}")
    return [*out, *rest]


def main(argv: Sequence[str] | None = None, prog: str = "evaluate.py") -> int:
    """``prog``: the command's name in usage and error lines (``scaleprompt eval`` runs this too)."""
    from scaleprompt.errors import run_entry_point

    return run_entry_point(partial(_main, prog=prog), argv, prog=prog)


def _main(argv: Sequence[str], prog: str = "evaluate.py") -> int:
    from scaleprompt.logs import setup_rank_logging
    from scaleprompt.train import parse_with_overrides

    args, rest = parse_with_overrides(build_parser(prog), argv)
    rank = int(os.environ.get("RANK", 0))
    setup_rank_logging(rank)
    from scaleprompt.engine.config import load_ds_config
    from scaleprompt.engine.eval_only import PromptEvaluation, default_output, evaluation_config
    from scaleprompt.errors import ScalepromptError, reported_elsewhere
    from scaleprompt.methods.io import open_prompt_file

    try:
        prompts = open_prompt_file(args.prompts)  # (read once: config, prompts and hash come from it)
        cfg = evaluation_config(prompts, args.config, overrides_of(args, rest))
        ds_config = load_ds_config(args.ds) if args.ds else None
    except ScalepromptError as exc:  # every rank parses the same arguments: rank 0 reports it
        raise (reported_elsewhere(exc) if rank else exc) from None
    evaluation = PromptEvaluation(
        prompts, cfg, ds_config, local_rank=args.local_rank, zero_shot=args.zero_shot
    )
    results = evaluation.run(args.output or default_output(args.prompts, cfg))
    if rank == 0:
        from scaleprompt.train import summarize

        summarize(results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
