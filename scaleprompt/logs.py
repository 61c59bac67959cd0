"""Console output of runs: known third-party noise filtered, so a run's log is the run.

:func:`quiet_third_party` drops messages that say nothing about the run, each matched exactly:

* torch's ``No CUDA runtime is found, using CUDA_HOME=...`` (a CPU machine imports DeepSpeed's op builders);
* DeepSpeed's ``You are using ZeRO with an untested optimizer`` (scaleprompt passes torch's SGD / AdamW over the
  prompts on purpose: ``zero_allow_untested_optimizer``);
* torch.distributed's FutureWarning that ``all_gather_into_tensor`` is deprecated (called inside DeepSpeed).

:func:`captured_prints` takes what a library *prints* (DeepSpeed prints ``... built successfully`` for each op it
builds) off stdout and logs it at DEBUG instead.
"""

from __future__ import annotations

import contextlib
import io
import logging
import re
import warnings
from collections.abc import Iterator

logger = logging.getLogger(__name__)

NOISE = {  # logger name -> messages (regular expressions, matched at the start) that are dropped
    "torch.utils.cpp_extension": (r"No CUDA runtime is found",),
    "DeepSpeed": (r"\**\s*You are using ZeRO with an untested optimizer",),
}


class _DropMatching(logging.Filter):
    def __init__(self, patterns: tuple[str, ...]) -> None:
        super().__init__()
        self.patterns = [re.compile(p) for p in patterns]

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(p.match(message) for p in self.patterns)


def quiet_third_party() -> None:
    """Install the filters of :data:`NOISE` and the warning filter (idempotent)."""
    for name, patterns in NOISE.items():
        target = logging.getLogger(name)
        if not any(isinstance(f, _DropMatching) for f in target.filters):
            target.addFilter(_DropMatching(patterns))
    warnings.filterwarnings(
        "ignore",
        message=r"`torch\.distributed\.all_gather_into_tensor` is deprecated",
        category=FutureWarning,
    )


def setup_rank_logging(rank: int) -> None:
    """The console of a launched entry point (train.py, evaluate.py) on the rank ``rank``: INFO on rank 0, warnings
    elsewhere, each line stamped with its rank; DeepSpeed's and torch.distributed's INFO chatter off; :func:`quiet_third_party`."""
    logging.basicConfig(
        level=logging.INFO if rank == 0 else logging.WARNING, format=f"%(asctime)s [rank {rank}] %(message)s"
    )
    for noisy in ("DeepSpeed", "deepspeed", "torch.distributed"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    quiet_third_party()


@contextlib.contextmanager
def silenced(*names: str) -> Iterator[None]:
    """Only errors from the loggers ``names`` (``""``: the root logger) inside the block; their levels after it as
    they were."""
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


@contextlib.contextmanager
def captured_prints(source: str) -> Iterator[None]:
    """What is printed to stdout inside the block goes to the DEBUG log (``source``: who printed it)."""
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        yield
    for line in buffer.getvalue().splitlines():
        if line.strip():
            logger.debug("%s: %s", source, line)
