"""``scaleprompt tune`` = ``python tune/ablation.py``: an ablation sweep from the command line.

    scaleprompt tune --space tune/spaces/provp_ref.yaml --config configs/microworld/provp_ref.yaml \\
        --num-samples 12 --max-concurrent 2 [--resume] [--dashboard] [key=value ...]

Writes ``<storage>/<name>/``: report.md, trials.csv, summary.json, best_recipe.yaml, plots/*.png, optuna.db and one
folder per trial (its ``run/``: results.json, prompts.safetensors, TensorBoard, checkpoints). The flags come from
:class:`~scaleprompt.search.driver.SearchOptions`; ``key=value`` arguments override the recipe for every trial.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import typing
from collections.abc import Sequence

from scaleprompt.errors import run_entry_point
from scaleprompt.search.options import SearchOptions


def build_parser(prog: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog, description="An ablation sweep: Ray Tune trials of the training engine, sampled by Optuna, stopped "
        "early by ASHA (scaleprompt tune and python tune/ablation.py are the same command).", epilog="key=value: any run-config field "
        "(scaleprompt/train.py --help lists them), applied to every trial, e.g. optim.epochs=3",
    )  # fmt: skip
    parser.add_argument(
        "--space",
        required=True,
        help="the search space: a file or a packaged name (provp_ref, upt_core, ...)",
    )
    parser.add_argument(
        "--config", help="the base recipe: a file or a packaged name; default: the run-config defaults"
    )
    parser.add_argument(
        "--ds", help="DeepSpeed JSON for each trial's engine: a file or a packaged name (zero2)"
    )
    hints = typing.get_type_hints(SearchOptions)
    for f in dataclasses.fields(SearchOptions):
        flag, help_text = f"--{f.name.replace('_', '-')}", f.metadata["help"]
        if hints[f.name] is bool:
            parser.add_argument(flag, action="store_true", help=help_text)
            continue
        kind = {int: int, float: float}.get(hints[f.name], str)
        parser.add_argument(flag, type=kind, default=f.default, help=f"{help_text} (default: %(default)s)")
    parser.add_argument("--debug", action="store_true", help="tracebacks of configuration / data errors")
    return parser


def main(argv: Sequence[str] | None = None, prog: str = "scaleprompt tune") -> int:
    """A bad space, range, recipe, flag or DS JSON is one line on stderr and exit code 2 before any trial; a sweep
    in which no trial finished also exits 2, summarising the distinct errors (``--debug``: tracebacks)."""
    return run_entry_point(lambda args: _main(args, prog), argv, prog=prog)


def _main(argv: list[str], prog: str) -> int:
    parser = build_parser(prog)
    args, overrides = parser.parse_known_args(argv)
    bad = [a for a in overrides if "=" not in a or a.startswith("-")]
    if bad:
        parser.error(f"unrecognized arguments: {' '.join(bad)}")
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("scaleprompt").setLevel(logging.WARNING if args.quiet else logging.INFO)
    names = {f.name for f in dataclasses.fields(SearchOptions)}
    options = SearchOptions(
        **{k: v for k, v in vars(args).items() if k in names}
    )  # (bad values: before any import)
    from scaleprompt.engine.config import load_ds_config
    from scaleprompt.search.driver import run_search

    ds_config = load_ds_config(args.ds) if args.ds else None
    run_search(args.space, args.config, overrides, options, ds_config)
    return 0
