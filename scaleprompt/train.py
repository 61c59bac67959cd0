"""Entry point: train prompts with the DeepSpeed engine (the command ``scaleprompt train``, as a file to launch).

    deepspeed --num_gpus 2 scaleprompt/train.py --ds ds_configs/zero2.json --config configs/provp_ref/base2new.yaml \\
        data.dataset=OxfordPets data.root=/data model.name=ViT-L-14
    torchrun --nproc_per_node 2 scaleprompt/train.py --config configs/demo.yaml
    python scaleprompt/train.py --config configs/demo.yaml            # one process
    python -m scaleprompt.train --config configs/demo.yaml

The launchers start a file, so this one stays; the command itself is :mod:`scaleprompt.commands.train`. Run as a
file, Python puts this folder (``scaleprompt/``) first on ``sys.path``; ``scaleprompt`` itself comes from the
installed package (``pip install -e .``), and no module here has the name of a top-level module that anything
imports (tests/test_startup.py checks both).

In Python this module is also the API's training call: ``scaleprompt.train("demo", optim={"epochs": 2})`` is
:func:`scaleprompt.api.train` (the module is callable; ``scaleprompt.train.main`` is the command line).
"""

from __future__ import annotations

import argparse
import sys
import types
from collections.abc import Sequence
from typing import Any

from scaleprompt.commands import train
from scaleprompt.commands.common import run_standalone, standalone_parser

PROG = "train.py"


def main(argv: Sequence[str] | None = None) -> int:
    """Train on ``argv`` (default: the process's arguments) as ``scaleprompt train`` does, under the name
    ``train.py``; the exit code."""
    return run_standalone(train, PROG, argv)


def parse_args(argv: Sequence[str] | None = None) -> tuple[argparse.Namespace, list[str]]:
    """``argv`` parsed as ``train.py`` parses it: the options, and the ``key=value`` overrides."""
    args = standalone_parser(train, PROG).parse_args(argv)
    return args, args.overrides


class _TrainModule(types.ModuleType):
    """This module, callable: ``scaleprompt.train(...)`` = :func:`scaleprompt.api.train` (the attribute
    ``scaleprompt.train`` is this module once anything imported it, so the function lives on the module)."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        from scaleprompt.api import train

        return train(*args, **kwargs)


if __name__ == "__main__":
    raise SystemExit(main())
sys.modules[__name__].__class__ = _TrainModule  # (imported: scaleprompt.train, the API)
