"""Ablation search with Ray Tune + Optuna over the training engine: the same command as ``scaleprompt tune``
(:mod:`scaleprompt.commands.tune`), as a file.

    python tune/ablation.py --space tune/spaces/provp_ref.yaml --config configs/provp_ref/base2new.yaml \\
        --num-samples 32 --max-concurrent 8 --gpus-per-trial 1 [--resume] [--dashboard] [key=value ...]

See ``--help``. ``scaleprompt`` comes from the installed package (``pip install -e .``).
"""

from __future__ import annotations

from scaleprompt.commands import tune
from scaleprompt.commands.common import run_standalone

if __name__ == "__main__":
    raise SystemExit(run_standalone(tune, "tune/ablation.py"))
