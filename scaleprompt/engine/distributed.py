"""Process-group set-up for deepspeed / torchrun / plain python launches, CPU (gloo) or GPU (nccl).

* Under ``deepspeed`` or ``torchrun``: RANK / WORLD_SIZE / LOCAL_RANK come from the launcher. The rendezvous is
  ``env://`` (MASTER_ADDR:MASTER_PORT) unless ``SCALEPROMPT_INIT_METHOD`` names another one, e.g. a shared
  ``file:///tmp/rdzv`` (local runs and tests: then only loopback sockets are opened).
* Plain ``python``: a one-process group over a fresh temporary ``file://`` rendezvous.

On CPU the backend is gloo and, when every rank is local (MASTER_ADDR on loopback or a file rendezvous),
``GLOO_SOCKET_IFNAME=lo`` keeps its connections on the loopback interface.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import hashlib
import logging
import os
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

import torch

from scaleprompt.config import ConfigError
from scaleprompt.data.layout import cache_root
from scaleprompt.errors import reported_elsewhere
from scaleprompt.logs import captured_prints

if not torch.cuda.is_available():  # before deepspeed is imported: no accelerator probing warnings on CPU
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    # deepspeed's op builders import torch's extension tools, which warn that no CUDA runtime exists: noise here
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)

logger = logging.getLogger(__name__)
# DeepSpeed's ops that a scaleprompt run never calls, never built: deepspeed_shm_comm is DeepSpeed's shared-memory
# all-reduce for its INFERENCE engine (``inference_all_reduce``, tensor-parallel layers); training reduces through
# torch.distributed whether it is built or not. DeepSpeed builds it (C++, ~30-160 s) when a CPU process group starts.
UNUSED_OPS = ("deepspeed_shm_comm",)
TIMEOUT_VARIABLE = "SCALEPROMPT_COLLECTIVE_TIMEOUT_MINUTES"
DEFAULT_TIMEOUT_MINUTES = 60


def collective_timeout() -> timedelta:
    """How long a rank waits in a collective before the run fails: ``$SCALEPROMPT_COLLECTIVE_TIMEOUT_MINUTES``,
    default 60 minutes. (DeepSpeed's default, 10 minutes, is shorter than rank 0 takes to write a large dataset's
    shards while the other ranks wait for them in a broadcast; a dead peer is reported at once anyway:
    :mod:`scaleprompt.engine.signals`.)"""
    text = os.environ.get(TIMEOUT_VARIABLE, str(DEFAULT_TIMEOUT_MINUTES))
    try:
        minutes = float(text)
    except ValueError:
        minutes = -1.0
    if not minutes > 0:
        raise ConfigError(f"{TIMEOUT_VARIABLE}={text!r}: a number of minutes > 0")
    return timedelta(minutes=minutes)


LOOPBACK = ("127.0.0.1", "localhost", "::1")
_rendezvous_file: str | None = None  # the file rendezvous of this process's group (removed by shutdown)
T = TypeVar("T")


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(local_rank_arg: int | None = None) -> DistInfo:
    """Create the process group (once) through DeepSpeed and return this process's place in it;
    ``local_rank_arg``: the launcher's ``--local_rank`` (used when the environment has no ``LOCAL_RANK``)."""
    import deepspeed  # (here: ~5 s of import that the commands without a process group never pay)

    rank = int(os.environ.get("RANK", 0))
    world_size = int(os.environ.get("WORLD_SIZE", 1))
    local_rank = int(os.environ.get("LOCAL_RANK", local_rank_arg if local_rank_arg is not None else 0))
    os.environ.setdefault("LOCAL_RANK", str(local_rank))  # DeepSpeed's engine insists on it
    cuda = torch.cuda.is_available()
    init_method = os.environ.get("SCALEPROMPT_INIT_METHOD") or None
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", os.environ.get("LOCAL_SIZE", world_size)))
    if init_method is None and local_world == world_size and os.environ.get("MASTER_ADDR") in LOOPBACK:
        # every rank is on this machine (deepspeed / torchrun on one node): a file rendezvous keyed by the
        # launcher's pid and port opens no TCP listener on any interface
        port = os.environ.get("MASTER_PORT", "0")
        init_method = f"file://{tempfile.gettempdir()}/scaleprompt-rdzv-{os.getppid()}-{port}"
    if init_method is None and "MASTER_ADDR" not in os.environ:
        if world_size > 1:
            raise RuntimeError(
                "WORLD_SIZE > 1 but no MASTER_ADDR or SCALEPROMPT_INIT_METHOD rendezvous is set"
            )
        fd, path = tempfile.mkstemp(prefix="scaleprompt-rdzv-")
        os.close(fd)
        os.unlink(path)
        init_method = f"file://{path}"
        # (one process: nobody else reads it; also after a failure)
        atexit.register(_remove, path, "the rendezvous file")
    local = local_world == world_size and (  # (a file rendezvous on a shared filesystem may span nodes)
        init_method is not None
        and init_method.startswith("file://")
        or os.environ.get("MASTER_ADDR") in LOOPBACK
    )
    if not cuda and local:
        os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    if not cuda and "OMP_NUM_THREADS" not in os.environ:  # ranks share the cores: no oversubscription
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // max(1, local_world)))
    if not torch.distributed.is_initialized():
        global _rendezvous_file
        _rendezvous_file = (
            init_method[len("file://") :] if init_method and init_method.startswith("file://") else None
        )
    # (also when torch.distributed was started by the caller: DeepSpeed would otherwise make its communication
    # backend inside deepspeed.initialize, building the op after all; with one, the call returns at once)
    announce_op_builds()
    with captured_prints("deepspeed"), _ops_switched_off(UNUSED_OPS):
        deepspeed.init_distributed(
            dist_backend="nccl" if cuda else "gloo",
            init_method=init_method,
            rank=rank,
            world_size=world_size,
            timeout=collective_timeout(),
            verbose=False,
            auto_mpi_discovery=False,
        )
    # a launcher shows each node's GPUs to all its ranks (index = local rank); Ray shows each worker only its own
    device = torch.device("cuda", local_rank % torch.cuda.device_count()) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    return DistInfo(torch.distributed.get_rank(), torch.distributed.get_world_size(), local_rank, device)


@contextlib.contextmanager
def _ops_switched_off(names: tuple[str, ...]) -> Iterator[None]:
    """DeepSpeed's ops ``names`` reported as not compatible while the block runs, so DeepSpeed neither builds nor
    loads them (its own switch for an op this machine cannot build; it then takes the torch.distributed path)."""
    import deepspeed.ops

    compatible = deepspeed.ops.__compatible_ops__
    before = {name: compatible[name] for name in names if name in compatible}
    compatible.update(dict.fromkeys(names, False))
    try:
        yield
    finally:
        for name in names:
            compatible.pop(name, None)
        compatible.update(before)


def extensions_dir() -> Path:
    """Where this environment's JIT-compiled DeepSpeed ops are cached: ``$TORCH_EXTENSIONS_DIR`` when set, else a
    folder of the scaleprompt cache keyed by the Python environment (two venvs sharing torch's one default folder
    rebuild each other's ops in turns: their DeepSpeed sources differ)."""
    if os.environ.get("TORCH_EXTENSIONS_DIR"):
        return Path(os.environ["TORCH_EXTENSIONS_DIR"])
    key = hashlib.sha256(os.path.realpath(sys.prefix).encode()).hexdigest()[:12]
    return cache_root() / "torch_extensions" / f"env-{key}"


_announcing = False


def announce_op_builds() -> None:
    """Point DeepSpeed's op builds at :func:`extensions_dir` and log one line before each op DeepSpeed compiles
    (once per environment, a minute or more on a few cores, silent otherwise). Idempotent."""
    global _announcing
    os.environ["TORCH_EXTENSIONS_DIR"] = str(extensions_dir())
    if _announcing:
        return
    from deepspeed.ops.op_builder.builder import OpBuilder

    jit_load = OpBuilder.jit_load

    @functools.wraps(jit_load)
    def announced(builder: Any, *args: Any, **kwargs: Any) -> Any:
        logger.info("%s", build_notice(builder.name, extensions_dir()))
        return jit_load(builder, *args, **kwargs)

    OpBuilder.jit_load = (
        announced  # (DeepSpeed has no hook before a build; jit_load is where every build starts)
    )
    _announcing = True


def build_notice(op: str, folder: Path) -> str:
    """The line logged before DeepSpeed JIT-compiles ``op``: a first build, or the load of a cached one."""
    if any(folder.glob(f"{op}/{op}*.so")):  # (torch's layout under TORCH_EXTENSIONS_DIR, which runs set)
        return f"DeepSpeed op {op}: loading its build cached in {folder} (rebuilt if its sources changed)"
    return (
        f"DeepSpeed op {op}: compiling it (C++, once per environment, about 30 s to a few minutes), "
        f"cached in {folder}"
    )


def shutdown(collective: bool = True) -> None:
    """The end of a run on this rank: a barrier (``collective``: every rank is here too), then the process group
    is destroyed, which removes a file rendezvous once its last rank has left."""
    if not torch.distributed.is_initialized():
        return
    if collective:
        try:
            torch.distributed.barrier()
        except RuntimeError as exc:  # (a peer already gone: nothing to wait for)
            logger.debug("final barrier: %s", exc)
    torch.distributed.destroy_process_group()
    if _rendezvous_file is not None:  # (each rank after its own destroy: the last one leaves nothing)
        _remove(_rendezvous_file, "the rendezvous file")


def forget_rendezvous() -> None:
    """Remove this group's file rendezvous without a collective (a failed or stopped run, every rank leaving). A
    one-process group stays usable instead (the process may run again: the Python API, ``scaleprompt.cli.main``
    called twice; a group whose file is gone hangs in its next ``new_group``): its file goes at exit."""
    if _rendezvous_file is None:
        return
    if torch.distributed.is_initialized() and torch.distributed.get_world_size() == 1:
        atexit.register(_remove, _rendezvous_file, "the rendezvous file")
        return
    _remove(_rendezvous_file, "the rendezvous file")


def _remove(path: str, what: str) -> None:
    """Unlink ``path`` if it is there (another rank may have been first); a failure is only logged."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        logger.debug("could not remove %s %s: %s", what, path, exc)


def barrier() -> None:
    if torch.distributed.is_initialized():
        torch.distributed.barrier()


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` summed over ranks (in place); a no-op without a process group."""
    if torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1:
        torch.distributed.all_reduce(tensor, op=torch.distributed.ReduceOp.SUM)
    return tensor


def all_reduce_max(tensor: torch.Tensor) -> torch.Tensor:
    """The element-wise maximum of ``tensor`` over ranks (in place); a no-op without a process group."""
    if torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1:
        torch.distributed.all_reduce(tensor, op=torch.distributed.ReduceOp.MAX)
    return tensor


def run_on_main(fn: Callable[[], T]) -> T:
    """``fn`` called on rank 0 only: its result, or the exception it raised, on every rank (so an error on rank 0,
    e.g. a locked output folder or a bad dataset, stops every rank with the same message instead of leaving the
    others waiting at the next barrier)."""
    outcome: tuple[str, Any] = ("ok", None)
    if not torch.distributed.is_initialized() or torch.distributed.get_rank() == 0:
        try:
            outcome = ("ok", fn())
        except Exception as exc:  # noqa: BLE001 - re-raised on every rank below
            outcome = ("error", exc)
    kind, value = broadcast_object(outcome)
    if kind == "error":
        if torch.distributed.get_rank() != 0:
            reported_elsewhere(value)
        raise value
    return value


def run_everywhere(fn: Callable[[], T]) -> T:
    """``fn`` called on every rank; if it raised on ANY rank, every rank raises (the first failing rank's error)."""
    try:
        outcome: tuple[str, Any] = ("ok", fn())
    except Exception as exc:  # noqa: BLE001 - re-raised on every rank below
        outcome = ("error", exc)
    if torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1:
        everyone: list[Any] = [None] * torch.distributed.get_world_size()
        torch.distributed.all_gather_object(everyone, outcome[0] == "error" and outcome[1] or None)
        failed = next((e for e in everyone if e is not None), None)
        if failed is not None and outcome[0] == "ok":
            raise reported_elsewhere(failed)
    if outcome[0] == "error":
        raise outcome[1]
    return outcome[1]


def broadcast_object(obj):
    """Rank 0's ``obj`` on every rank."""
    if not (torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1):
        return obj
    box = [obj]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]
