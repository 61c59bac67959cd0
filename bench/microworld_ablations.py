"""Two real ablation sweeps on the micro-world (Ray Tune + Optuna, CPU), their reports kept in the repository.

* ``provp_ref_core``: ProVP-Ref depth x prompt length x re-formation weight lambda (tune/spaces/provp_ref_core.yaml)
  on configs/microworld/provp_ref.yaml, 16 trials;
* ``upt_core``: UPT variant x layers x learning rate (tune/spaces/upt_core.yaml) on configs/microworld/upt.yaml
  with ``train.seed=2``, the seed whose HM fell to 48.6 at the release's lr (bench/README.md), 16 trials.

Every trial trains the recipe's full 10 epochs (``--full-schedule``: an ablation table over complete runs, no
early stopping), two at a time. The sweeps run under ``--storage`` (default runs/ablations); report.md,
trials.csv, summary.json, best_recipe.yaml and plots/ of each are copied to bench/results/ablations/<name>/.

    .venv/bin/python bench/microworld_ablations.py                 # both, about 30 minutes on 2 CPU cores
    .venv/bin/python bench/microworld_ablations.py --only upt_core --samples 8

Not a test: it asserts nothing.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SWEEPS = {
    "provp_ref_core": ("tune/spaces/provp_ref_core.yaml", "configs/microworld/provp_ref.yaml", []),
    "upt_core": ("tune/spaces/upt_core.yaml", "configs/microworld/upt.yaml", ["train.seed=2"]),
}
KEPT = ("report.md", "trials.csv", "summary.json", "best_recipe.yaml", "plots")
logger = logging.getLogger("bench.microworld_ablations")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", choices=sorted(SWEEPS), help="one of the sweeps")
    ap.add_argument("--samples", type=int, default=16)
    ap.add_argument("--storage", type=Path, default=ROOT / "runs" / "ablations")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "ablations")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    for name in [args.only] if args.only else list(SWEEPS):
        space, recipe, extra = SWEEPS[name]
        sweep = args.storage / name
        cmd = [sys.executable, "tune/ablation.py", "--space", space, "--config", recipe, "--num-samples",
               str(args.samples), "--max-concurrent", "2", "--full-schedule", "--storage", str(args.storage),
               "--name", name, *(["--resume"] if (sweep / "sweep.json").is_file() else []),
               f"data.cache_dir={args.storage / 'shards'}", *extra]  # fmt: skip
        logger.info("%s", " ".join(cmd))
        subprocess.run(cmd, cwd=ROOT, check=True)
        target = args.out / name
        if target.exists():
            shutil.rmtree(target)
        target.mkdir(parents=True)
        for item in KEPT:
            src = sweep / item
            if src.is_dir():
                shutil.copytree(src, target / item)
            elif src.is_file():
                shutil.copy2(src, target / item)
        logger.info("%s -> %s", sweep, target)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
