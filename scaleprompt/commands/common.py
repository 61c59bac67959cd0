"""What the commands share: their parser class, how a parsed command runs, the argument groups of the launched
commands (``train``, ``eval``, ``tune``) and the one-line summary of a run's results.

A command is a module with ``NAME``, ``HELP``, ``add_parser(subparsers)`` and ``run(args)``
(:class:`Command`). :func:`register` adds one to a ``scaleprompt`` parser (or, through :func:`standalone_parser`,
makes it a parser of its own for a launchable file such as ``scaleprompt/train.py``); :func:`execute` parses
the arguments, sets up the console once and runs the command, showing the project's errors as one line.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, Literal, Protocol

from scaleprompt.errors import run_entry_point

PROG = "scaleprompt"
logger = logging.getLogger("scaleprompt")

Console = Literal["plain", "timestamped", "ranks"]
"""How a command's log reaches the console (:func:`setup_console`)."""


class Command(Protocol):
    """A subcommand: a module of :mod:`scaleprompt.commands` (listed in ``COMMANDS`` there)."""

    NAME: str  # the subcommand, e.g. "results"
    HELP: str  # its line in `scaleprompt --help`

    def add_parser(self, subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser: ...

    def run(self, args: argparse.Namespace) -> int: ...


class CommandParser(argparse.ArgumentParser):
    """The parser of one command. Unlike a plain :class:`argparse.ArgumentParser` it reports an unknown argument
    itself (its own usage, its own name), except ``key=value`` overrides where :func:`add_overrides` allows them;
    and it can be completed on first use (:meth:`defer`)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.takes_overrides = False
        self._pending: list[Callable[[CommandParser], None]] = []

    def defer(self, fill: Callable[[CommandParser], None]) -> None:
        """Complete the parser with ``fill`` (arguments, description, epilog) only when it parses or prints its
        help or usage: for what needs a module too slow to import for every ``scaleprompt --help``."""
        self._pending.append(fill)

    def complete(self) -> CommandParser:
        """The parser with every deferred part added (see :meth:`defer`)."""
        while self._pending:
            self._pending.pop(0)(self)
        return self

    def parse_known_args(
        self, args: Iterable[str] | None = None, namespace: Any = None
    ) -> tuple[Any, list[str]]:
        """The options of ``args`` into ``namespace`` (``args.overrides``: the ``key=value`` overrides, where taken);
        anything else unknown is a usage error."""
        self.complete()
        parsed, rest = super().parse_known_args(args, namespace)
        unknown = [a for a in rest if not self.takes_overrides or "=" not in a or a.startswith("-")]
        if unknown:
            hint = " (overrides are key=value)" if self.takes_overrides else ""
            self.error(f"unrecognized arguments: {' '.join(unknown)}{hint}")
        if self.takes_overrides:
            parsed.overrides = rest
        return parsed, []

    def format_usage(self) -> str:
        self.complete()
        return super().format_usage()

    def format_help(self) -> str:
        self.complete()
        return super().format_help()


def command_parser(subparsers: argparse._SubParsersAction, name: str, **kwargs: Any) -> CommandParser:
    """A new :class:`CommandParser` named ``name`` in ``subparsers`` (``kwargs``: those of
    :meth:`argparse._SubParsersAction.add_parser`: ``help``, ``description``, ...)."""
    parser = subparsers.add_parser(name, **kwargs)
    assert isinstance(parser, CommandParser), "commands are added to subparsers of parser_class=CommandParser"
    return parser


def plain_parser(subparsers: argparse._SubParsersAction, name: str, help: str) -> argparse.ArgumentParser:
    """The parser of a subcommand ``name`` without arguments (``help``: its line in ``scaleprompt --help``), whose
    errors are named ``scaleprompt``."""
    parser: argparse.ArgumentParser = subparsers.add_parser(name, help=help)
    parser.set_defaults(prog=PROG)
    return parser


def register(subparsers: argparse._SubParsersAction, command: Command) -> argparse.ArgumentParser:
    """Add ``command``'s parser to ``subparsers``; parsing it sets ``args.run`` (the command's ``run``),
    ``args.prog`` (the name its error lines start with: the parser's own name unless the command set another) and
    ``args.console`` (:func:`setup_console`; ``plain`` unless the command set another)."""
    parser = command.add_parser(subparsers)
    parser.set_defaults(run=command.run)
    for key, default in (("prog", parser.prog), ("console", "plain")):
        if parser.get_default(key) is None:
            parser.set_defaults(**{key: default})
    return parser


def standalone_parser(command: Command, prog: str) -> argparse.ArgumentParser:
    """``command``'s parser on its own, named ``prog`` in its usage and error lines: the parser of a launchable
    file (``prog``: ``train.py``, ``tune/ablation.py``)."""
    holder = argparse.ArgumentParser(prog=prog).add_subparsers(parser_class=CommandParser)
    parser = register(holder, command)
    parser.prog = prog
    parser.set_defaults(prog=prog)
    return parser


def execute(parser: argparse.ArgumentParser, argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` (default: the process's arguments) with ``parser``, set up the console once
    (:func:`setup_console`) and run the command. A bad input is one line on stderr, ``<prog>: error: ...``, and exit
    code 2; ``--debug`` anywhere (or ``SCALEPROMPT_DEBUG=1``) shows the traceback instead."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args([a for a in args_list if a != "--debug"])
    setup_console(args.console)
    return run_entry_point(lambda _: int(args.run(args)), args_list, prog=args.prog)


def run_standalone(command: Command, prog: str, argv: Sequence[str] | None = None) -> int:
    """Run ``command`` as the launchable file ``prog`` (its usage and error lines name ``prog``) on ``argv``
    (default: the process's arguments); see :func:`execute`."""
    return execute(standalone_parser(command, prog), argv)


def setup_console(console: Console) -> None:
    """Send the log to stderr, one message per line, as ``console`` says: ``plain``: scaleprompt's INFO and
    everyone's warnings; ``timestamped``: the same, each line with the time; ``ranks``: for a launched run (every
    rank its own process, ``RANK`` in the environment), INFO on rank 0 and warnings elsewhere, each line with the
    time and rank (:func:`scaleprompt.logs.setup_rank_logging`). Called once per process, before the command runs;
    a console already set up is kept (a test's, the caller's)."""
    if console == "ranks":
        from scaleprompt.logs import setup_rank_logging

        setup_rank_logging(launch_rank())
        return
    if console == "timestamped":
        logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    else:
        logging.basicConfig(level=logging.WARNING, format="%(message)s")
    logger.setLevel(logging.INFO)


def launch_rank() -> int:
    """This process's rank in a launched run (the launcher's ``RANK``; 0 without a launcher)."""
    return int(os.environ.get("RANK", 0))


# --- the argument groups of the launched commands --------------------------------------------------------------
def add_recipe_arguments(parser: argparse.ArgumentParser, *, config_help: str, ds_help: str) -> None:
    """``--config`` (a recipe) and ``--ds`` (a DeepSpeed JSON), each a file or a packaged name, with the help
    texts ``config_help`` and ``ds_help`` (what the command does without them)."""
    parser.add_argument("--config", help=config_help)
    parser.add_argument("--ds", help=ds_help)


def add_launcher_arguments(parser: argparse.ArgumentParser) -> None:
    """``--debug`` (tracebacks instead of one-line errors) and the ``--local_rank`` the deepspeed launcher passes
    (accepted, not shown)."""
    add_debug_argument(parser)
    parser.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)


def add_debug_argument(parser: argparse.ArgumentParser) -> None:
    """``--debug``, listed in ``parser``'s help (:func:`execute` takes it from anywhere in the arguments)."""
    parser.add_argument("--debug", action="store_true", help="show tracebacks of configuration / data errors")


def add_overrides(parser: CommandParser) -> None:
    """Let ``parser`` take ``key=value`` config overrides among its arguments, in order, as ``args.overrides``
    (any other unknown argument is a usage error)."""
    parser.takes_overrides = True
    parser.set_defaults(overrides=[])


# --- what a run reports ---------------------------------------------------------------------------------------
def summarize(results: dict[str, Any]) -> None:
    """Log one line per result of a run's ``results`` (the ``results.json`` schema): zero-shot, last epoch and best
    validation epoch, each with its val / test / base / novel accuracy, HM and transfer targets; for an evaluated
    prompt file (``results["evaluated"]``), the file's selection and epoch."""
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
        logger.info("%s [%s]: %s", method, label, " | ".join(parts))
