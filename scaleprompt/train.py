"""Entry point: train prompts with the DeepSpeed engine.

    deepspeed --num_gpus 2 scaleprompt/train.py --ds ds_configs/zero2.json --config configs/provp_ref/base2new.yaml \\
        data.dataset=OxfordPets data.root=/data model.name=ViT-L-14
    torchrun --nproc_per_node 2 scaleprompt/train.py --config configs/demo.yaml
    python scaleprompt/train.py --config configs/demo.yaml            # one process

``--local_rank`` (passed by the deepspeed launcher) is accepted; ``--resume`` continues from the newest complete
checkpoint in ``train.output_dir``. Every other argument is a ``key=value`` override of the recipe. A bad
config, dataset or checkpoint is reported in one line with exit code 2 (``--debug`` shows the traceback).
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

    from scaleprompt.errors import run_entry_point

    return run_entry_point(partial(_main, prog=prog), argv, prog=prog)


def _main(argv: Sequence[str], prog: str = "train.py") -> int:
    args, overrides = parse_args(argv, prog)
    from scaleprompt.engine.config import load_ds_config, load_run_config
    from scaleprompt.engine.trainer import Trainer
    from scaleprompt.errors import ScalepromptError, reported_elsewhere

    rank = int(os.environ.get("RANK", 0))
    try:
        cfg = load_run_config(args.config, overrides)
        ds_config = load_ds_config(args.ds) if args.ds else None
    except ScalepromptError as exc:  # every rank parses the same arguments: rank 0 reports it
        raise (reported_elsewhere(exc) if rank else exc) from None
    from scaleprompt.logs import setup_rank_logging

    setup_rank_logging(rank)
    trainer = Trainer(cfg, ds_config, local_rank=args.local_rank, resume=args.resume)
    results = trainer.fit()
    if rank == 0:
        summarize(results)
    return 0


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
