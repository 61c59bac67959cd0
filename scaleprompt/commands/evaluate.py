"""``scaleprompt eval PROMPTS [--dataset D --setting S --targets T...] [key=value ...]`` (=
``scaleprompt/evaluate.py``, the file the deepspeed launcher starts): a prompt file tested as training tests its
prompts, results in the ``results.json`` schema."""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence

from scaleprompt.commands.common import (
    add_launcher_arguments,
    add_overrides,
    add_recipe_arguments,
    command_parser,
    launch_rank,
    summarize,
)

NAME = "eval"
HELP = "test a prompt file on a dataset's setting, as training does (= scaleprompt/evaluate.py)"
DESCRIPTION = (
    "Entry point: evaluate a prompt file on a dataset's setting (no training), as training tests its prompts."
)
EPILOG = """    scaleprompt eval runs/pets/prompts.safetensors                     # the run's own config: its test numbers
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
SHORTHANDS = {
    "dataset": "data.dataset",
    "root": "data.root",
    "setting": "eval.setting",
    "shots": "data.shots",
    "seed": "train.seed",
}  # the flag -> the run-config key it is short for (--targets: eval.targets, a list)


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """The ``eval`` parser in ``subparsers``: the prompt file, the recipe and DeepSpeed config, the shorthands of
    the usual overrides, the output, ``--zero-shot``, the launcher's arguments and the ``key=value`` overrides."""
    parser = command_parser(
        subparsers,
        NAME,
        help=HELP,
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "prompts", help="a prompt file (prompts.safetensors, prompts_best_val.safetensors, ...)"
    )
    add_recipe_arguments(
        parser,
        config_help="recipe YAML or packaged name (default: the config.json of the file's training run)",
        ds_help="DeepSpeed JSON or packaged name (zero3: partitions a big backbone over the ranks)",
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
    add_launcher_arguments(parser)
    add_overrides(parser)
    parser.set_defaults(console="ranks")
    return parser


def overrides_of(args: argparse.Namespace, rest: Sequence[str]) -> list[str]:
    """The shorthand flags of ``args`` as ``key=value`` overrides, before the explicit ones ``rest`` (which win)."""
    out = [
        f"{key}={getattr(args, flag)}" for flag, key in SHORTHANDS.items() if getattr(args, flag) is not None
    ]
    if args.targets:
        out.append(f"eval.targets={json.dumps(args.targets)}")
    return [*out, *rest]


def run(args: argparse.Namespace) -> int:
    """Test the prompt file ``args.prompts`` on the setting ``args`` describe; the results go to ``args.output``
    (default: next to the file) and rank 0 logs them."""
    from scaleprompt.engine.config import load_ds_config  # (import cost: torch, deepspeed)
    from scaleprompt.engine.eval_only import PromptEvaluation, default_output, evaluation_config
    from scaleprompt.errors import ScalepromptError, reported_elsewhere
    from scaleprompt.methods.io import open_prompt_file

    rank = launch_rank()
    try:
        prompts = open_prompt_file(args.prompts)  # (read once: config, prompts and hash come from it)
        cfg = evaluation_config(prompts, args.config, overrides_of(args, args.overrides))
        ds_config = load_ds_config(args.ds) if args.ds else None
    except ScalepromptError as exc:  # every rank parses the same arguments: rank 0 reports it
        raise (reported_elsewhere(exc) if rank else exc) from None
    evaluation = PromptEvaluation(
        prompts, cfg, ds_config, local_rank=args.local_rank, zero_shot=args.zero_shot
    )
    results = evaluation.run(args.output or default_output(args.prompts, cfg))
    if rank == 0:
        summarize(results)
    return 0
