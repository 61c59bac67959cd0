"""Stopping a run on a signal, on a vanished launcher, or when a peer rank dies.

``train.py`` calls :func:`install` once. Then SIGTERM (what Slurm and other schedulers send), SIGINT (Ctrl-C) and
SIGHUP (a closed terminal) stop the run cleanly on any rank:

* inside the training loop (:func:`deferred`) the signal only marks a stop request; at the next optimizer-step
  boundary every rank learns of every rank's request through one small all-reduce (:func:`agree`), so all ranks
  stop at the same step, write one complete checkpoint together (``train.checkpoint_on_signal``) and raise
  :class:`Stopped`;
* elsewhere (setting up, the final evaluation) :class:`Stopped` is raised at once: nothing half-done is kept
  (checkpoints and results are written atomically), ``--resume`` continues from the newest complete checkpoint;
* the same signal arriving again within :data:`REPEAT_GRACE_S` is the same request (a signal to the process group
  reaches each rank twice: directly and forwarded by DeepSpeed's ``launch.py``; ``SCALEPROMPT_SIGNAL_REPEAT_S``
  changes the 2 s); a later one abandons the run at once (its children killed, exit code 128 + signal), even in
  the middle of a save: the previous complete checkpoint stays the newest.

Exit codes: 128 + the signal's number (SIGINT 130, SIGTERM 143, SIGHUP 129), also when the launcher vanished
(counted as SIGTERM); :data:`EXIT_PEER_LOST` (75, EX_TEMPFAIL) when a collective failed because a peer rank died.

A launched rank (``LOCAL_RANK`` set) also watches its launcher: when its parent process exits, or, under
DeepSpeed's ``launch.py``, the ``deepspeed`` runner above it, the rank stops as on SIGTERM within about a second.
DataLoader workers (forked after :func:`install`) block these signals (their process stops them) and, on Linux,
die with their process.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import re
import signal
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psutil  # (a DeepSpeed dependency)
import torch

from scaleprompt.engine.distributed import all_reduce_max
from scaleprompt.errors import one_line

logger = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
# a repeat within this many seconds is the same stop request (a signal to the process group reaches a rank directly
# and again through launch.py, which forwards it)
REPEAT_GRACE_S = float(os.environ.get("SCALEPROMPT_SIGNAL_REPEAT_S", "2"))
WATCH_INTERVAL_S = 0.5  # how often a launched rank checks that its launcher is still there
PR_SET_PDEATHSIG = 1  # (linux/prctl.h)
EXIT_PEER_LOST = 75  # sysexits' EX_TEMPFAIL: a peer rank died, the run can be resumed


class Stopped(BaseException):  # noqa: N818 - a stop, not an error; BaseException: no `except Exception` eats it
    """The run stops on a signal (``signum``; ``reason``: why, "" for a plain signal; ``rank``: the lowest rank that
    received it). ``step`` and ``checkpoint`` are set when the ranks agreed on the step and saved (``checkpoint``
    None: not saved); ``latest``: the newest complete checkpoint otherwise."""

    def __init__(
        self,
        signum: int,
        reason: str = "",
        rank: int | None = None,
        step: int | None = None,
        checkpoint: Path | None = None,
        latest: str | None = None,
    ) -> None:
        super().__init__(signum)
        self.signum, self.reason, self.rank = signum, reason, rank
        self.step, self.checkpoint, self.latest = step, checkpoint, latest

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


@dataclass
class _State:
    pid: int | None = None  # the process that installed the handlers (a forked worker differs)
    prog: str = "train.py"
    rank: int = 0
    signum: int = 0  # the first stop request's signal (0: none)
    reason: str = ""
    first_at: float = 0.0
    deferring: int = 0
    exiting: bool = False
    previous: dict[int, object] = field(default_factory=dict)
    fork_hook: bool = False
    fork_in_main: bool = False  # (set before each fork: whether the main thread forks)


_state = _State()


def signal_name(signum: int) -> str:
    """``signum``'s name (``SIGTERM``), or ``signal <n>``."""
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def installed() -> bool:
    """True in the process that called :func:`install` (every rank of a ``train.py`` launch; not a Ray trial)."""
    return _state.pid == os.getpid()


def install(prog: str = "train.py", rank: int = 0) -> None:
    """Handle :data:`STOP_SIGNALS` in this process (main thread only; a signal whose disposition is not the default,
    e.g. SIGHUP ignored under ``nohup``, is left alone) and, in a launched rank, watch the launcher. ``prog``: the
    entry point the stop lines name; ``rank``: this process's rank."""
    if threading.current_thread() is not threading.main_thread():
        return
    _state.pid, _state.prog, _state.rank = os.getpid(), prog, rank
    for signum in STOP_SIGNALS:
        current = signal.getsignal(signum)
        if current in (signal.SIG_DFL, signal.default_int_handler):
            _state.previous[signum] = current
            signal.signal(signum, _handle)
    if not _state.fork_hook:
        os.register_at_fork(before=_before_fork, after_in_child=_after_fork_in_child)
        _state.fork_hook = True
    if "LOCAL_RANK" in os.environ and os.getppid() != 1:
        threading.Thread(target=_watch_launcher, name="scaleprompt-launcher-watch", daemon=True).start()


def _before_fork() -> None:
    _state.fork_in_main = threading.current_thread() is threading.main_thread()


def _after_fork_in_child() -> None:
    """A DataLoader worker forked by the run blocks the stop signals: torch's worker handler would let a SIGTERM
    from anyone but its parent (``launch.py``, a signal to the process group) kill it mid-step, failing the step.
    The run stops its workers itself. On Linux a worker forked by the main thread also dies with its run (a
    SIGKILLed rank left its workers running for seconds, printing a traceback)."""
    parent = _state.pid
    if parent is None or os.getppid() != parent:
        return
    signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    if _state.fork_in_main and sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        except (OSError, AttributeError):
            return
        if os.getppid() != parent:  # (the run died before the prctl)
            os._exit(1)


def uninstall() -> None:
    """Restore the handlers :func:`install` replaced (tests; a process that goes on after a run)."""
    for signum, previous in _state.previous.items():
        signal.signal(signum, previous)  # type: ignore[arg-type]
    hook = _state.fork_hook
    _state.__init__()  # type: ignore[misc]
    _state.fork_hook = hook  # (a fork hook cannot be removed; it checks _state.pid)


def requested() -> int:
    """This process's stop request: its signal number, 0 if none."""
    return _state.signum if installed() else 0


def begin_exit() -> None:
    """The run is leaving (stopped, saved, failed): further signals change nothing."""
    _state.exiting = True


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """A signal inside the block only marks the request (the training loop checks :func:`agree` at each
    optimizer-step boundary); outside it raises :class:`Stopped` at once."""
    _state.deferring += 1
    try:
        yield
    finally:
        _state.deferring -= 1
    if _state.signum and not _state.deferring and not _state.exiting and installed():
        raise Stopped(_state.signum, _state.reason, _state.rank)  # (arrived after the loop's last check)


def agree(device: torch.device) -> tuple[int, int | None, str]:
    """(signal, lowest rank that received it, why: "" for a plain signal) of any rank's stop request, the same on
    every rank; (0, None, ""): none. One all-reduce (MAX) of three integers on ``device``; nothing at all where no rank installed
    the handlers."""
    if not installed():
        return 0, None, ""
    world = torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1
    rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
    signum = requested()
    if world == 1:
        return signum, (rank if signum else None), _state.reason
    launcher_gone = int(bool(_state.reason))
    flag = torch.tensor(
        [signum, -rank if signum else -world, launcher_gone], dtype=torch.int64, device=device
    )
    all_reduce_max(flag)
    signum, lowest, launcher_gone = int(flag[0].item()), -int(flag[1].item()), int(flag[2].item())
    if signum and not _state.signum:  # (another rank's request: this one is stopping too)
        _state.signum, _state.first_at = signum, time.monotonic()
    why = _state.reason or ("the launcher exited" if launcher_gone else "")
    return signum, (lowest if signum else None), why


def _handle(signum: int, frame: object) -> None:
    if os.getpid() != _state.pid or _state.exiting:  # a forked DataLoader worker, or already leaving
        return
    now = time.monotonic()
    if not _state.signum:
        _state.signum, _state.first_at = signum, now
        if not _state.deferring:
            raise Stopped(signum, _state.reason, _state.rank)
        return
    if now - _state.first_at < REPEAT_GRACE_S:  # the same request, delivered twice
        return
    abandon(signum)


def abandon(signum: int) -> None:
    """Leave now: one line (rank 0), this process's children killed, exit 128 + ``signum``. Whatever was being
    written is an incomplete ``.partial-*`` checkpoint, never the newest complete one."""
    _state.exiting = True
    try:
        # (torch's SIGCHLD handler would raise for each DataLoader worker killed below)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        if _state.rank == 0:
            os.write(
                2,
                (
                    f"{_state.prog}: {signal_name(signum)} again: abandoned at once, nothing more saved; "
                    "continue from the newest complete checkpoint with --resume\n"
                ).encode(),
            )
        kill_children()
    finally:
        os._exit(128 + signum)


def kill_children() -> None:
    """SIGKILL every descendant of this process (DataLoader workers, shard commands)."""
    try:
        children = psutil.Process().children(recursive=True)
    except psutil.Error:
        return
    for child in children:
        with contextlib.suppress(psutil.Error):
            child.kill()
    psutil.wait_procs(children, timeout=5)


def _launcher_pids() -> list[int]:
    """The processes whose exit stops this rank: the parent, and, under DeepSpeed's ``launch.py``, the
    ``deepspeed`` runner that started it (killing the runner alone leaves ``launch.py`` running)."""
    parent = os.getppid()
    pids = [parent]
    with contextlib.suppress(psutil.Error):
        proc = psutil.Process(parent)
        if "deepspeed.launcher.launch" in " ".join(proc.cmdline()) and proc.ppid() > 1:
            pids.append(proc.ppid())
    return pids


def _watch_launcher() -> None:
    try:
        watched = {pid: psutil.Process(pid).create_time() for pid in _launcher_pids()}
    except psutil.Error:
        return
    parent = os.getppid()
    while not _state.exiting and installed():
        time.sleep(WATCH_INTERVAL_S)
        gone = next((pid for pid, started in watched.items() if not _alive(pid, started)), None)
        if gone is None and os.getppid() == parent:
            continue
        if _state.signum or _state.exiting or not installed():
            return
        _state.reason = f"the launcher (pid {gone if gone is not None else parent}) exited"
        os.kill(os.getpid(), signal.SIGTERM)  # (the main thread's handler: the same path as a real SIGTERM)
        return


def _alive(pid: int, started: float) -> bool:
    try:
        proc = psutil.Process(pid)
        return proc.create_time() == started and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


# --- a peer rank died -------------------------------------------------------------------------------------------
PEER_LOST_MARKERS = (  # what gloo / NCCL say when the other end of a collective is gone
    "connection closed by peer",
    "connection reset by peer",
    "broken pipe",
    "socket closed",
    "connection refused",
    "timed out",
    "no route to host",
    "remote process exited",
    "ncclremoteerror",
    "communicator was aborted",
)


def peer_lost(exc: BaseException) -> bool:
    """``exc`` is a failed collective of a multi-rank run (a peer died or the network failed), not a bug."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return False
    if torch.distributed.get_world_size() < 2:
        return False
    dist_error = getattr(torch.distributed, "DistError", None)
    if dist_error is not None and isinstance(exc, dist_error):
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and any(marker in text for marker in PEER_LOST_MARKERS)


def stop_line(stop: Stopped) -> str:
    """What the user reads of the ``stop``: the signal (and who got it), the step, the checkpoint, how to continue."""
    by = f"by {signal_name(stop.signum)}" + (f" on rank {stop.rank}" if stop.rank else "")
    if stop.reason:
        by = f"because {stop.reason}" + (f" (seen by rank {stop.rank})" if stop.rank else "") + ","
    if stop.step is not None:
        saved = (
            f"checkpoint {stop.checkpoint}"
            if stop.checkpoint is not None
            else "no checkpoint saved (train.checkpoint_on_signal=false)"
        )
        where = f"at step {stop.step}; {saved}"
    elif stop.latest:
        where = f"outside a training step; newest complete checkpoint {stop.latest}"
    else:
        where = "outside a training step; no checkpoint yet (--resume starts fresh)"
    return f"stopped {by} {where}; continue with --resume (exit code {stop.exit_code})"


def peer_lost_line(rank: int, exc: BaseException) -> str:
    """A collective failed on ``rank`` (a peer died; ``exc``: the error): what happened, and that the run can be
    resumed."""
    detail = re.sub(r"\[[^\]]*\.(?:cc|cpp|h):\d+\]\s*", "", one_line(exc))  # (gloo's source locations)
    detail = detail.split(". This is typically")[0]
    detail = detail if len(detail) <= 160 else detail[:157] + "..."
    return (
        f"rank {rank}: a peer rank died or left (a collective failed: {detail}); nothing more saved; "
        f"continue from the newest complete checkpoint with --resume (exit code {EXIT_PEER_LOST})"
    )


def exit_line(prog: str, text: str) -> None:
    """``text`` as one line on stderr after ``prog``, written at once (no logging: the handlers may be
    mid-record)."""
    sys.stderr.write(f"{prog}: {text}\n")
    sys.stderr.flush()
