"""The project's own errors and how entry points show them.

Every error scaleprompt raises on purpose derives from :class:`ScalepromptError` and carries a message a user can
act on: it names the file, config field, shard or class folder at fault. Entry points (``train.py``,
``tune/ablation.py``, every ``scaleprompt`` subcommand) run through :func:`run_entry_point`, which prints such an
error as ONE line and exits with code 2; ``--debug`` or ``SCALEPROMPT_DEBUG=1`` shows the traceback instead.
Anything else (a bug) keeps its traceback.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence

EXIT_USER_ERROR = 2
DEBUG_ENV = "SCALEPROMPT_DEBUG"


class ScalepromptError(Exception):
    """Base of the errors scaleprompt raises on purpose (bad config, data, checkpoint, ...)."""


class OutputError(ScalepromptError):
    """A result, prompt file or output folder cannot be written (the message names the path and the reason)."""


def one_line(exc: BaseException) -> str:
    """The message of ``exc`` on one line. An error re-raised from a DataLoader worker carries the worker's
    traceback in its message: only the original error's own message is kept."""
    text = str(exc)
    if "Original Traceback" in text:
        last = [line for line in text.splitlines() if line.strip()][-1]
        prefix = f"{type(exc).__name__}: "
        text = last.split(prefix, 1)[1] if prefix in last else last
    return " ".join(text.split()) or type(exc).__name__


def reported_elsewhere(exc: BaseException) -> BaseException:
    """Mark the error ``exc`` (returned) as one that another rank (rank 0) reports too: entry points of the other
    ranks stay silent."""
    exc.scaleprompt_reported_elsewhere = True  # type: ignore[attr-defined]
    return exc


def debug_requested(argv: Sequence[str] = ()) -> bool:
    """Whether tracebacks are asked for: ``--debug`` in ``argv``, or the environment variable :data:`DEBUG_ENV`."""
    return "--debug" in argv or os.environ.get(DEBUG_ENV, "") not in ("", "0")


def run_entry_point(main: Callable[[list[str]], int], argv: Sequence[str] | None, prog: str) -> int:
    """``main(argv)`` (``argv``: None = the command line) with the project's errors shown as one line after
    ``prog`` (exit code 2), tracebacks behind ``--debug``."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = debug_requested(args)
    args = [a for a in args if a != "--debug"]
    try:
        return main(args)
    except ScalepromptError as exc:
        if debug:
            raise
        if getattr(exc, "scaleprompt_reported_elsewhere", False):
            return EXIT_USER_ERROR
        sys.stderr.write(f"{prog}: error: {one_line(exc)}\n")
        sys.stderr.flush()
        return EXIT_USER_ERROR
