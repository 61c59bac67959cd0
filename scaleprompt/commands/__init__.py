"""The ``scaleprompt`` commands: one module per subcommand, each with

* ``NAME``: the subcommand (``"results"``);
* ``HELP``: its one line in ``scaleprompt --help``;
* ``add_parser(subparsers) -> ArgumentParser``: its parser, added to ``subparsers``;
* ``run(args) -> int``: the command on the parsed arguments, its exit code

(:class:`~scaleprompt.commands.common.Command`). :data:`COMMANDS` lists them, in the order of
``scaleprompt --help``; :mod:`scaleprompt.cli` builds the console script from it, and the launchable files
(``scaleprompt/train.py``, ``scaleprompt/evaluate.py``, ``tune/ablation.py``) run one command each
(:func:`~scaleprompt.commands.common.run_standalone`). A module imports at its top only what building its parser
needs; what running it needs (torch, DeepSpeed, Ray) is imported inside ``run``, so that ``scaleprompt --help``
stays fast.
"""

from __future__ import annotations

from scaleprompt.commands import (
    analyze,
    check,
    convert,
    datasets,
    evaluate,
    inspect,
    methods,
    plan,
    plot,
    predict,
    pretrain_microworld,
    recipes,
    results,
    shards,
    train,
    tune,
)
from scaleprompt.commands.common import Command

COMMANDS: tuple[Command, ...] = (
    methods,
    check,
    inspect,
    datasets,
    recipes,
    shards,
    results,
    plot,
    analyze,
    train,
    evaluate,
    tune,
    pretrain_microworld,
    predict,
    convert,
    plan,
)
"""Every subcommand of ``scaleprompt``, in the order of its help."""
