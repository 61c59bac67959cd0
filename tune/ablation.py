"""Ablation search with Ray Tune + Optuna over the training engine: the same command as ``scaleprompt tune``.

    python tune/ablation.py --space tune/spaces/provp_ref.yaml --config configs/provp_ref/base2new.yaml \\
        --num-samples 32 --max-concurrent 8 --gpus-per-trial 1 [--resume] [--dashboard] [key=value ...]

See ``--help`` and scaleprompt/search/cli.py.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from scaleprompt.search.cli import main  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(main(prog="tune/ablation.py"))
