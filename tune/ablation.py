"""Ablation search with Ray Tune + Optuna over the training engine.

    python tune/ablation.py --space tune/spaces/provp_ref.yaml --config configs/provp_ref/base2new.yaml \\
        --num-samples 32 --max-concurrent 8 --gpus-per-trial 1 [--resume] [--dashboard] [key=value ...]

Writes <storage>/<name>/trials.csv, best_recipe.yaml (run it with scaleprompt/train.py --config), summary.json
(best parameters, Optuna importances) and plots/{metric_vs_params,parallel_coordinates}.png.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from scaleprompt.errors import run_entry_point  # noqa: E402
from scaleprompt.search import SearchOptions, run_search  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    """A bad space, recipe, flag or DS JSON is one line on stderr and exit code 2 (``--debug``: traceback)."""
    return run_entry_point(_main, argv, prog="ablation.py")


def _main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--space", required=True, help="tune/spaces/<name>.yaml")
    parser.add_argument("--config", help="base recipe (configs/...)")
    parser.add_argument("--ds", help="DeepSpeed JSON for each trial's engine")
    parser.add_argument("--num-samples", type=int, default=8)
    parser.add_argument("--max-concurrent", type=int, default=2)
    parser.add_argument("--cpus-per-trial", type=float, default=1.0)
    parser.add_argument("--gpus-per-trial", type=float, default=0.0, help="whole or fractional GPUs")
    parser.add_argument("--storage", default="runs/search")
    parser.add_argument("--name", default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-failures", type=int, default=2, help="retries of a failing trial")
    parser.add_argument(
        "--resume", action="store_true", help="continue a killed search (keeps the search state)"
    )
    parser.add_argument("--address", default=None, help="join an existing Ray cluster")
    parser.add_argument("--dashboard", action="store_true", help="start the Ray dashboard on 127.0.0.1")
    parser.add_argument("--dashboard-port", type=int, default=8265)
    parser.add_argument("--debug", action="store_true", help="show tracebacks of configuration / data errors")
    parser.add_argument(
        "--workers-per-trial",
        type=int,
        default=0,
        help="> 1: each trial is a Ray Train run of this many DeepSpeed workers "
        "(default: one per GPU when --gpus-per-trial > 1)",
    )
    parser.add_argument(
        "--optuna-storage",
        default=None,
        help="sqlite file for the Optuna study (view it with optuna-dashboard sqlite:///FILE)",
    )
    args, overrides = parser.parse_known_args(argv)
    bad = [a for a in overrides if "=" not in a or a.startswith("-")]
    if bad:
        parser.error(f"unrecognized arguments: {' '.join(bad)}")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    from scaleprompt.engine.config import load_ds_config

    options = SearchOptions(
        num_samples=args.num_samples, max_concurrent=args.max_concurrent, cpus_per_trial=args.cpus_per_trial,
        gpus_per_trial=args.gpus_per_trial, storage=args.storage, name=args.name, resume=args.resume,
        address=args.address, dashboard=args.dashboard, seed=args.seed, max_failures=args.max_failures,
        workers_per_trial=args.workers_per_trial, dashboard_port=args.dashboard_port,
        optuna_storage=args.optuna_storage,
    )  # fmt: skip
    ds_config = load_ds_config(args.ds) if args.ds else None
    summary = run_search(args.space, args.config, overrides, options, ds_config)
    logging.getLogger("scaleprompt").info("%s", json.dumps(summary, indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
