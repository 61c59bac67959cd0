"""Exclusive directory locks: one writer per run folder or shard folder.

:class:`DirLock` holds an ``flock`` on a lock file for as long as the process keeps it (the kernel drops it when
the process dies, even by SIGKILL, so a crashed run never leaves a stale lock). Forked children (DataLoader
workers) drop their inherited copy of the descriptor at once, so a worker that outlives a killed run does not keep
its lock. The holder writes its pid, host and start time into the file, so a second process that finds the lock
taken can name who holds it. ``flock`` is
reliable on local file systems; on network file systems it depends on the server (NFSv4 and Lustre support it).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import socket
import sys
import time
from pathlib import Path
from types import TracebackType

from scaleprompt.errors import ScalepromptError

logger = logging.getLogger(__name__)


_HELD: set[int] = set()  # descriptors of the locks this process holds


def _drop_inherited_locks() -> None:
    """In a forked child: close the inherited lock descriptors WITHOUT unlocking (the locks are the parent's)."""
    for fd in list(_HELD):
        with contextlib.suppress(OSError):
            os.close(fd)
    _HELD.clear()


os.register_at_fork(after_in_child=_drop_inherited_locks)


class LockError(ScalepromptError):
    """Another process holds the lock (the message names its pid and host)."""


def _holder(path: Path) -> str:
    try:
        info = json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        info = {}
    if not info:
        return "another process"
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(info.get("since", 0)))
    return f"pid {info.get('pid')} on host {info.get('host')} (since {since}: {info.get('command', '?')})"


class DirLock:
    """``DirLock(path, what).acquire(wait=False)`` -> raises :class:`LockError` naming the holder if taken;
    ``wait=True`` blocks until the holder is done (logging who it waits for)."""

    def __init__(self, path: str | Path, what: str) -> None:
        self.path, self.what = Path(path), what
        self._fd: int | None = None

    def acquire(self, wait: bool = False) -> DirLock:
        """Take the lock (the holder recorded in the lock file); held elsewhere: a :class:`LockError` naming the
        holder, or with ``wait`` block until it is free. Returns the lock."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if not wait:
                    raise LockError(
                        f"{self.what} is in use by {_holder(self.path)}; lock file {self.path}"
                    ) from None
                logger.info("waiting for %s, held by %s", self.what, _holder(self.path))
                fcntl.flock(fd, fcntl.LOCK_EX)
        except BaseException:
            os.close(fd)
            raise
        info = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "since": time.time(),
            "command": " ".join(sys.argv)[:300],
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode(), 0)
        self._fd = fd
        _HELD.add(fd)
        return self

    def release(self) -> None:
        """Give the lock back (nothing when it is not held)."""
        if self._fd is not None:
            _HELD.discard(self._fd)
            os.ftruncate(self._fd, 0)
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    @property
    def held(self) -> bool:
        """Whether this object holds the lock."""
        return self._fd is not None

    def __enter__(self) -> DirLock:
        return self if self.held else self.acquire(wait=True)

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()
