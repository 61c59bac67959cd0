"""Entry point: train prompts with the DeepSpeed engine.

    deepspeed --num_gpus 2 scaleprompt/train.py --ds ds_configs/zero2.json --config configs/provp_ref/base2new.yaml \\
        data.dataset=OxfordPets data.root=/data model.name=ViT-L-14
    torchrun --nproc_per_node 2 scaleprompt/train.py --config configs/demo.yaml
    python scaleprompt/train.py --config configs/demo.yaml            # one process

``--local_rank`` (passed by the deepspeed launcher) is accepted; ``--resume`` continues from the newest complete
checkpoint in ``train.output_dir``. Every other argument is a ``key=value`` override of the recipe. A bad
config, dataset or checkpoint is reported in one line with exit code 2 (``--debug`` shows the traceback).
SIGTERM / SIGINT / SIGHUP on any rank stop every rank at the same step with a checkpoint, one line, exit code
128 + signal; a peer rank's death is one line, exit code 75 (:mod:`scaleprompt.engine.signals`).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

if __package__ in (None, ""):  # run as a script (deepspeed / torchrun launch a file path)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def build_parser(prog: str = "train.py") -> argparse.ArgumentParser:
    from scaleprompt.engine.config import run_config_keys

    keys = "\n".join(f"  {line}" for line in run_config_keys())
    epilog = (
        "overrides: key=value, after the recipe (e.g. optim.epochs=5 data.dataset=OxfordPets); the keys and their "
        f"defaults:\n{keys}\nmethod.args.<field>=...: the method's own fields (scaleprompt methods lists them)"
        "\n\nstopping: SIGTERM, SIGINT (Ctrl-C) or SIGHUP on any rank stops every rank at the next optimizer step,"
        "\nsaves it (train.checkpoint_on_signal) and exits with 128 + the signal (SIGTERM 143, SIGINT 130); the same"
        "\nsignal again 2 s later abandons at once (the newest complete checkpoint stays). A rank whose launcher"
        "\nvanished stops as on SIGTERM; a rank whose peer died exits with 75. Continue with --resume."
    )
    parser = argparse.ArgumentParser(
        prog=prog, description=__doc__.split("\n\n")[0], epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    parser.add_argument(
        "--config", help="recipe YAML: a file, or a packaged name (provp_ref/base2new; scaleprompt recipes)"
    )
    parser.add_argument(
        "--ds",
        help="DeepSpeed JSON: a file or a packaged name (zero1, zero2, zero3, zero3_offload); default: plain data parallel",
    )
    parser.add_argument("--resume", action="store_true", help="continue from the newest complete checkpoint")
    parser.add_argument("--debug", action="store_true", help="show tracebacks of configuration / data errors")
    parser.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)
    return parser


def parse_args(
    argv: Sequence[str] | None = None, prog: str = "train.py"
) -> tuple[argparse.Namespace, list[str]]:
    return parse_with_overrides(build_parser(prog), argv)


def parse_with_overrides(
    parser: argparse.ArgumentParser, argv: Sequence[str] | None
) -> tuple[argparse.Namespace, list[str]]:
    """The options, and the ``key=value`` overrides after them (anything else is a usage error)."""
    args, rest = parser.parse_known_args(argv)
    unknown = [a for a in rest if "=" not in a or a.startswith("-")]
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)} (overrides are key=value)")
    return args, rest


def main(argv: Sequence[str] | None = None, prog: str = "train.py") -> int:
    """``prog``: the command's name in usage and error lines (``scaleprompt train`` runs this too)."""
    from functools import partial

    from scaleprompt.engine import signals
    from scaleprompt.errors import run_entry_point

    try:
        return run_entry_point(partial(_main, prog=prog), argv, prog=prog)
    finally:
        signals.uninstall()  # (the caller's own handlers again, e.g. a test process's)


def _main(argv: Sequence[str], prog: str = "train.py") -> int:
    args, overrides = parse_args(argv, prog)
    from scaleprompt.engine import signals
    from scaleprompt.engine.config import load_ds_config, load_run_config
    from scaleprompt.engine.distributed import forget_rendezvous, shutdown
    from scaleprompt.errors import ScalepromptError, debug_requested, reported_elsewhere

    rank = int(os.environ.get("RANK", 0))
    signals.install(prog, rank)
    cfg = None
    try:
        try:
            cfg = load_run_config(args.config, overrides)
            ds_config = load_ds_config(args.ds) if args.ds else None
        except ScalepromptError as exc:  # every rank parses the same arguments: rank 0 reports it
            raise (reported_elsewhere(exc) if rank else exc) from None
        from scaleprompt.logs import setup_rank_logging

        setup_rank_logging(rank)
        from scaleprompt.engine.trainer import Trainer

        trainer = Trainer(cfg, ds_config, local_rank=args.local_rank, resume=args.resume)
        results = trainer.fit()
        signals.begin_exit()
        shutdown()
    except signals.Stopped as stop:
        signals.begin_exit()
        if stop.step is None and cfg is not None:
            stop.latest = _newest_checkpoint(Path(cfg.train.output_dir))
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


def _newest_checkpoint(out: Path) -> str | None:
    """The newest complete checkpoint's folder in ``out`` (None: none yet), for the stop line."""
    from scaleprompt.engine.checkpoint import CheckpointManager

    try:
        tag = CheckpointManager(out / "checkpoints", 1, 0).latest()
    except Exception:  # noqa: BLE001 - only a hint in the stop line
        return None
    return str(out / "checkpoints" / tag) if tag else None


def summarize(results: dict) -> None:
    log = logging.getLogger("scaleprompt")
    rows = [(k, results["results"][k]) for k in ("last", "best_val") if k in results["results"]]
    if results.get("zero_shot"):
        rows.insert(0, ("zero_shot", results["zero_shot"]))
    evaluated = results.get("evaluated")
    for selection, res in rows:
        label = {
            "last": "last epoch" if results["epochs"] else "no training",
            "zero_shot": "before training",
        }.get(selection, f"best validation epoch ({results['best_val_epoch']})")
        if evaluated and selection != "zero_shot":  # scaleprompt eval: the file's selection, as evaluated now
            epoch = f", epoch {evaluated['epoch']}" if evaluated.get("epoch") is not None else ""
            label = f"{Path(evaluated['path']).name}: {selection}{epoch}"
        elif evaluated:
            label = "zero-shot"
        method = "zero-shot CLIP" if selection == "zero_shot" else results["method"]
        parts = []
        for key in ("val", "test", "base", "novel"):
            if res.get(key):
                parts.append(f"{key} {res[key]['top1']:.2f}")
        if "hm" in res:
            parts.append(f"HM {res['hm']:.2f}")
        for name, acc in res.get("targets", {}).items():
            parts.append(f"{name} {acc['top1']:.2f}")
        log.info("%s [%s]: %s", method, label, " | ".join(parts))


if __name__ == "__main__":
    raise SystemExit(main())
