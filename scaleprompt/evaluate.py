"""Entry point: evaluate a prompt file on a dataset's setting (the command ``scaleprompt eval``, as a file to
launch).

    deepspeed --num_gpus 8 scaleprompt/evaluate.py prompts.safetensors --ds ds_configs/zero3.json --dataset ImageNet
    python -m scaleprompt.evaluate prompts.safetensors --dataset OxfordPets --root /data --setting base2new

The deepspeed launcher starts a file, so this one stays; the command itself is :mod:`scaleprompt.commands.evaluate`
(see ``scaleprompt/train.py`` on running it as a file).
"""

from __future__ import annotations

from collections.abc import Sequence

from scaleprompt.commands import evaluate
from scaleprompt.commands.common import run_standalone


def main(argv: Sequence[str] | None = None) -> int:
    """Evaluate on ``argv`` (default: the process's arguments) as ``scaleprompt eval`` does, under the name
    ``evaluate.py``; the exit code."""
    return run_standalone(evaluate, "evaluate.py", argv)


if __name__ == "__main__":
    raise SystemExit(main())
