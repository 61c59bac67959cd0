"""Console script ``scaleprompt``.

Each subcommand is a module of :mod:`scaleprompt.commands` (listed in its ``COMMANDS``):

* ``scaleprompt methods``: the registered methods and their config fields with defaults.
* ``scaleprompt check [--model sp-tiny-vit-12]``: builds every method on a (tiny, offline) backbone, runs one
  SGD step on random images, saves and reloads the prompts, and prints a table.
* ``scaleprompt inspect FILE``: the method, config, classes and backbone stored in a prompt file, and whether its
  tensor checksum is verified.
* ``scaleprompt predict PROMPTS INPUT... [--output FILE]``: classify images (files, folders, globs) with trained
  prompts, one JSON line / CSV row per image.
* ``scaleprompt convert --method NAME --official FILE --classnames a,b,c --out prompts.safetensors [key=value ...]``:
  an official release's checkpoint as a prompt file (docs/porting.md).
* ``scaleprompt results RUNS... [--selection best_val] [--published]``: paper-style tables (markdown + CSV) from
  runs; ``--published`` lays the papers' published averages beside them.
* ``scaleprompt plot RUNS... SWEEPS... [--out-dir DIR] [--format pdf,png]``: figures for a paper: base / novel /
  HM bars over seeds, per-epoch curves with the seeds as a band, sweep views with report.md's trial ids.
* ``scaleprompt analyze variance|deviation|attention ...``: the papers' analyses (UPT's variance statistics and
  figure, ProVP's feature deviation and t-SNE, prompt-token attention maps); see docs/findings.md.
* ``scaleprompt train --config RECIPE [key=value ...]``: training in this process (= ``scaleprompt/train.py``).
* ``scaleprompt eval PROMPTS [--dataset D --setting S --targets T...] [key=value ...]``: a prompt file tested as
  training tests its prompts, results in the ``results.json`` schema (= ``scaleprompt/evaluate.py``).
* ``scaleprompt tune --space FILE --config RECIPE ... [key=value ...]``: an ablation sweep (= ``tune/ablation.py``).
* ``scaleprompt shards --dataset NAME --root DIR --out DIR [--shots K --seed S --subset base]``: write a dataset
  (after a protocol) as WebDataset shards + manifest; ``scaleprompt datasets`` lists the registered datasets.
* ``scaleprompt recipes [--kind config|ds|space]``: the packaged recipes, DeepSpeed configs and search spaces, each
  usable by name from any folder (``--config provp_ref/base2new``, ``--ds zero2``, ``--space provp_ref``).
* ``scaleprompt plan --model ViT-H-14 --method provp_ref --batch 32 --gpus 8 --zero 3 --precision bf16``: per-GPU
  memory of a training run (weights, prompts, activations counted on the real model), and the largest micro-batch
  that fits (``scaleprompt/plan.py``).
* ``scaleprompt pretrain-microworld --out FILE``: pretrain the micro-world CLIP (rebuilds the shipped weights).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

import scaleprompt
from scaleprompt.commands import COMMANDS
from scaleprompt.commands.common import PROG, CommandParser, execute, register


def build_parser() -> argparse.ArgumentParser:
    """The ``scaleprompt`` parser: ``--debug`` and a sub-parser per command of
    :data:`scaleprompt.commands.COMMANDS`."""
    parser = argparse.ArgumentParser(prog=PROG, description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--debug", action="store_true", help="show tracebacks of input errors")
    parser.add_argument("--version", action="version", version=f"%(prog)s {scaleprompt.__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True, parser_class=CommandParser)
    for command in COMMANDS:
        register(subparsers, command)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the subcommand of ``argv`` (default: the process's arguments): parse, set up the console once, run.
    A bad input is one line on stderr and exit code 2 (``--debug``: the traceback)."""
    return execute(build_parser(), argv)


if __name__ == "__main__":
    raise SystemExit(main())
