"""Named crash points for the reliability tests: ``SCALEPROMPT_FAILPOINT=<name>[@<n>]`` makes the process
SIGKILL itself the ``n``-th time (default: first) it passes ``failpoint(<name>)``; ``@<n>+``: every time from the
``n``-th on; ``:<SIGNAL>`` (e.g. ``:SIGTERM``) sends that signal instead of SIGKILL.

This is how the tests kill a run at an exact point of a checkpoint save (between writing the files and marking them
complete, between the rename and the ``latest.json`` update, ...) instead of racing a timer. Unset (always, outside
tests) it costs one dictionary lookup.
"""

from __future__ import annotations

import os
import signal

ENV = "SCALEPROMPT_FAILPOINT"
_hits: dict[str, int] = {}


def failpoint(name: str) -> None:
    wanted = os.environ.get(ENV)
    if not wanted:
        return
    wanted, _, action = wanted.partition(":")
    target, _, count = wanted.partition("@")
    if target != name:
        return
    _hits[name] = _hits.get(name, 0) + 1
    first = int(count.rstrip("+") or 1)
    if _hits[name] == first or count.endswith("+") and _hits[name] > first:
        os.kill(os.getpid(), getattr(signal, action) if action else signal.SIGKILL)
