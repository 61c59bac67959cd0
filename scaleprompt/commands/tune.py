"""``scaleprompt tune --space FILE --config RECIPE ... [key=value ...]`` (= ``tune/ablation.py``): an ablation
sweep from the command line.

    scaleprompt tune --space tune/spaces/provp_ref.yaml --config configs/microworld/provp_ref.yaml \\
        --num-samples 12 --max-concurrent 2 [--resume] [--dashboard] [key=value ...]

Writes ``<storage>/<name>/``: report.md, trials.csv, summary.json, best_recipe.yaml, plots/*.png, optuna.db and one
folder per trial (its ``run/``: results.json, prompts.safetensors, TensorBoard, checkpoints). The flags come from
:class:`~scaleprompt.search.options.SearchOptions`; ``key=value`` arguments override the recipe for every trial.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import typing

from scaleprompt.commands.common import (
    CommandParser,
    add_debug_argument,
    add_overrides,
    add_recipe_arguments,
    command_parser,
)

NAME = "tune"
HELP = "an ablation sweep (Ray Tune + Optuna); = tune/ablation.py"
DESCRIPTION = (
    "An ablation sweep: Ray Tune trials of the training engine, sampled by Optuna, stopped early by ASHA "
    "(scaleprompt tune and python tune/ablation.py are the same command)."
)
EPILOG = (
    "key=value: any run-config field (scaleprompt/train.py --help lists them), applied to every trial, e.g. "
    "optim.epochs=3"
)


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """The ``tune`` parser in ``subparsers``: the space, the recipe and DeepSpeed config, one flag per field of
    :class:`~scaleprompt.search.options.SearchOptions` and the ``key=value`` overrides (added when the parser is
    used: the options' module imports the config stack)."""
    parser = command_parser(subparsers, NAME, help=HELP, description=DESCRIPTION, epilog=EPILOG)
    parser.defer(_add_arguments)
    add_overrides(parser)
    parser.set_defaults(console="timestamped")
    return parser


def _add_arguments(parser: CommandParser) -> None:
    """``--space``, ``--config``, ``--ds``, a flag per search option and ``--debug``, in this order."""
    from scaleprompt.search.options import SearchOptions

    parser.add_argument(
        "--space",
        required=True,
        help="the search space: a file or a packaged name (provp_ref, upt_core, ...)",
    )
    add_recipe_arguments(
        parser,
        config_help="the base recipe: a file or a packaged name; default: the run-config defaults",
        ds_help="DeepSpeed JSON for each trial's engine: a file or a packaged name (zero2)",
    )
    hints = typing.get_type_hints(SearchOptions)
    for f in dataclasses.fields(SearchOptions):
        flag, help_text = f"--{f.name.replace('_', '-')}", f.metadata["help"]
        if hints[f.name] is bool:
            parser.add_argument(flag, action="store_true", help=help_text)
            continue
        kind = {int: int, float: float}.get(hints[f.name], str)
        parser.add_argument(flag, type=kind, default=f.default, help=f"{help_text} (default: %(default)s)")
    add_debug_argument(parser)


def run(args: argparse.Namespace) -> int:
    """Run the sweep ``args`` describe. A bad space, range, recipe, flag or DS JSON is an error (one line, exit 2)
    before any trial; so is a sweep in which no trial finished, summarising the distinct errors."""
    from scaleprompt.search.options import SearchOptions

    if args.quiet:
        logging.getLogger("scaleprompt").setLevel(logging.WARNING)
    names = {f.name for f in dataclasses.fields(SearchOptions)}
    options = SearchOptions(
        **{k: v for k, v in vars(args).items() if k in names}
    )  # (bad values: before any import)
    from scaleprompt.engine.config import load_ds_config  # (import cost: ray, torch)
    from scaleprompt.search.driver import run_search

    ds_config = load_ds_config(args.ds) if args.ds else None
    run_search(args.space, args.config, args.overrides, options, ds_config)
    return 0
