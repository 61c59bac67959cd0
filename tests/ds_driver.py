"""Launched by the deepspeed launcher in tests: trains several methods under one or more DeepSpeed configs in one
process group with the engine (one launch instead of one per config), each into ``OUT/<config name>/<method>``;
with ``--overrides``: one run of those settings per config, into ``OUT/<config name>``.

deepspeed --num_gpus 2 tests/ds_driver.py --ds ds_configs/zero1.json ds_configs/zero2.json --out DIR --data DIR
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from engine_utils import base_overrides  # noqa: E402

from scaleprompt.engine.config import load_run_config  # noqa: E402
from scaleprompt.engine.trainer import Trainer  # noqa: E402
from scaleprompt.logs import setup_rank_logging  # noqa: E402

# Random-init tiny backbone: with clipping to norm 1 these learn the colours within a few epochs.
METHOD_ARGS = {
    "provp_ref": ["method.args.n_ctx=4", "optim.lr=0.2", "optim.grad_clip=1.0"],
    "upt": ["optim.lr=0.05", "optim.grad_clip=1.0"],
}

parser = argparse.ArgumentParser()
parser.add_argument("--ds", required=True, nargs="+")
parser.add_argument("--out", required=True)
parser.add_argument("--data", required=True)
parser.add_argument("--methods", nargs="+", default=["provp_ref", "upt"])
parser.add_argument("--epochs", type=int, default=6)
parser.add_argument("--overrides", nargs="+", help="instead of --methods and --epochs: one run of these")
parser.add_argument("--local_rank", type=int, default=None)
args = parser.parse_args()
setup_rank_logging(int(os.environ.get("RANK", "0")))  # (as train.py: the tests read rank 0's lines)
for ds in args.ds:
    if args.overrides:  # one run per config, into OUT/<config name>
        out = Path(args.out) / Path(ds).stem
        cfg = load_run_config(
            None, base_overrides(Path(args.data), Path(args.out) / "cache", out) + args.overrides
        )
        Trainer(cfg, json.loads(Path(ds).read_text()), local_rank=args.local_rank).fit()
        continue
    for method in args.methods:
        out = Path(args.out) / Path(ds).stem / method
        overrides = base_overrides(Path(args.data), Path(args.out) / "cache", out) + METHOD_ARGS[method]
        overrides += [
            f"method.name={method}",
            f"optim.epochs={args.epochs}",
            "train.checkpoint_every_epochs=0",
        ]
        cfg = load_run_config(None, overrides)
        Trainer(cfg, json.loads(Path(ds).read_text()), local_rank=args.local_rank).fit()
