"""``scaleprompt train --config RECIPE [key=value ...]`` (= ``scaleprompt/train.py``, the file the deepspeed
launcher and torchrun start): training in this process.

``--local_rank`` (passed by the deepspeed launcher) is accepted; ``--resume`` continues from the newest complete
checkpoint in ``train.output_dir``. Every other argument is a ``key=value`` override of the recipe. A bad
config, dataset or checkpoint is reported in one line with exit code 2 (``--debug`` shows the traceback).
SIGTERM / SIGINT / SIGHUP on any rank stop every rank at the same step with a checkpoint, one line, exit code
128 + signal; a peer rank's death is one line, exit code 75 (:mod:`scaleprompt.engine.signals`).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from scaleprompt.commands.common import (
    CommandParser,
    add_launcher_arguments,
    add_overrides,
    add_recipe_arguments,
    command_parser,
    launch_rank,
    summarize,
)

NAME = "train"
HELP = (
    "train prompts in this process (= scaleprompt/train.py; the deepspeed launcher and torchrun take the script "
    "path)"
)
DESCRIPTION = "Entry point: train prompts with the DeepSpeed engine."
STOPPING = """stopping: SIGTERM, SIGINT (Ctrl-C) or SIGHUP on any rank stops every rank at the next optimizer step,
saves it (train.checkpoint_on_signal) and exits with 128 + the signal (SIGTERM 143, SIGINT 130); the same
signal again 2 s later abandons at once (the newest complete checkpoint stays). A rank whose launcher
vanished stops as on SIGTERM; a rank whose peer died exits with 75. Continue with --resume."""


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """The ``train`` parser in ``subparsers``: the recipe, the DeepSpeed config, ``--resume``, the launcher's
    arguments and the ``key=value`` overrides (listed with their defaults in the help's epilog)."""
    parser = command_parser(
        subparsers,
        NAME,
        help=HELP,
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_recipe_arguments(
        parser,
        config_help="recipe YAML: a file, or a packaged name (provp_ref/base2new; scaleprompt recipes)",
        ds_help="DeepSpeed JSON: a file or a packaged name (zero1, zero2, zero3, zero3_offload); default: plain "
        "data parallel",
    )
    parser.add_argument("--resume", action="store_true", help="continue from the newest complete checkpoint")
    add_launcher_arguments(parser)
    add_overrides(parser)
    parser.defer(
        _add_epilog
    )  # (the keys come from the run config: an import `scaleprompt --help` does not need)
    parser.set_defaults(console="ranks")
    return parser


def _add_epilog(parser: CommandParser) -> None:
    """The overrides' keys with their defaults, then how a run stops, as ``parser``'s epilog."""
    from scaleprompt.engine.config import run_config_keys

    keys = "\n".join(f"  {line}" for line in run_config_keys())
    parser.epilog = (
        "overrides: key=value, after the recipe (e.g. optim.epochs=5 data.dataset=OxfordPets); the keys and their "
        f"defaults:\n{keys}\nmethod.args.<field>=...: the method's own fields (scaleprompt methods lists them)"
        f"\n\n{STOPPING}"
    )


def run(args: argparse.Namespace) -> int:
    """Train with the recipe ``args.config`` and ``args.overrides`` on the DeepSpeed config ``args.ds``; rank 0
    logs the results. The exit code: 0; 128 + the signal when a signal stopped the run; 75 when a peer rank died.
    The signal handlers installed for the run are removed again before it returns (the caller's own again, e.g. a
    test process's)."""
    from scaleprompt.engine import signals  # (import cost: torch)

    try:
        return _train(args)
    finally:
        signals.uninstall()


def _train(args: argparse.Namespace) -> int:
    from scaleprompt.engine import signals
    from scaleprompt.engine.config import load_ds_config, load_run_config, require_a_recipe
    from scaleprompt.engine.distributed import forget_rendezvous, shutdown
    from scaleprompt.errors import ScalepromptError, debug_requested, reported_elsewhere

    prog, rank = args.prog, launch_rank()
    signals.install(prog, rank)
    cfg = None
    try:
        try:
            cfg = load_run_config(args.config, args.overrides)
            require_a_recipe(args.config, cfg, args.overrides)
            ds_config = load_ds_config(args.ds) if args.ds else None
        except ScalepromptError as exc:  # every rank parses the same arguments: rank 0 reports it
            raise (reported_elsewhere(exc) if rank else exc) from None
        from scaleprompt.engine.trainer import Trainer

        trainer = Trainer(cfg, ds_config, local_rank=args.local_rank, resume=args.resume)
        results = trainer.fit()
        signals.begin_exit()
        shutdown()
    except signals.Stopped as stop:
        signals.begin_exit()
        if stop.step is None and cfg is not None:
            stop.latest = newest_checkpoint(Path(cfg.train.output_dir))
        if rank == 0:  # (one line: every rank stops; another rank's signal is named in it)
            signals.exit_line(prog, signals.stop_line(stop))
        if stop.step is not None:  # (agreed: every rank is here)
            shutdown()
        else:
            forget_rendezvous()
        return stop.exit_code
    except Exception as exc:
        signals.begin_exit()
        forget_rendezvous()  # (every rank leaves: the run is over)
        if not signals.peer_lost(exc) or debug_requested(sys.argv):
            raise
        signals.exit_line(prog, signals.peer_lost_line(rank, exc))
        return signals.EXIT_PEER_LOST
    if rank == 0:
        summarize(results)
    return 0


def newest_checkpoint(out: Path) -> str | None:
    """The newest complete checkpoint's folder under the run folder ``out`` (None: none yet), for the stop line."""
    from scaleprompt.engine.checkpoint import CheckpointManager

    try:
        tag = CheckpointManager(out / "checkpoints", 1, 0).latest()
    except Exception:  # noqa: BLE001 - only a hint in the stop line
        return None
    return str(out / "checkpoints" / tag) if tag else None
