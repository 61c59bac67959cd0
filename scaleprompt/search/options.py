"""How a sweep runs: :class:`SearchOptions` (``tune/ablation.py`` / ``scaleprompt tune`` build their flags from its
fields, defaults and help) and :class:`SearchFailed`. Imports neither Ray nor torch: ``--help`` and a bad flag
answer at once."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from scaleprompt.config import ConfigError, check_types, require
from scaleprompt.errors import ScalepromptError


class SearchFailed(ScalepromptError):
    """No trial of the sweep finished (the message summarises the distinct errors)."""


def _opt(default: Any, help: str) -> Any:
    return field(default=default, metadata={"help": help})


@dataclass
class SearchOptions:
    """How a sweep runs (``tune/ablation.py`` / ``scaleprompt tune`` build their flags from these fields)."""

    num_samples: int = _opt(8, "trials to sample")
    max_concurrent: int = _opt(2, "trials running at once")
    cpus_per_trial: float = _opt(1.0, "CPUs of a trial (its torch threads)")
    gpus_per_trial: float = _opt(0.0, "GPUs of a trial: a fraction, or a whole number (> 1: one worker each)")
    workers_per_trial: int = _opt(
        0,
        "> 1: each trial is a Ray Train run of this many DeepSpeed workers "
        "(0: one per GPU when --gpus-per-trial > 1, else 1)",
    )
    storage: str = _opt("runs/search", "folder of the sweeps; a sweep is <storage>/<name>")
    name: str | None = _opt(None, "sweep name (default: <space>-<method>)")
    resume: bool = _opt(False, "continue a killed sweep (same space, recipe and overrides)")
    seed: int = _opt(0, "seed of Optuna's TPE sampler")
    max_failures: int = _opt(
        2,
        "retries of a trial after an infrastructure fault (a killed worker, a lost "
        "node, out of memory); configuration / data errors are never retried",
    )
    grace_epochs: int = _opt(
        0,
        "ASHA: epochs every trial trains before it can be stopped early (0: the recipe's "
        "warm-up epochs + 1, so no trial is judged on its warm-up)",
    )
    full_schedule: bool = _opt(
        False,
        "no early stopping: every trial trains its whole schedule (an ablation "
        "table over complete runs; ASHA otherwise)",
    )
    keep_sweep_schedule: bool = _opt(
        False,
        "best_recipe.yaml keeps the sweep's optim.epochs / train.max_steps "
        "overrides (default: the base recipe's schedule)",
    )
    address: str | None = _opt(None, "join an existing Ray cluster (ray start ...) instead of starting one")
    dashboard: bool = _opt(False, "start the Ray dashboard on 127.0.0.1")
    dashboard_port: int = _opt(8265, "port of the Ray dashboard")
    optuna_storage: str | None = _opt(
        None,
        "sqlite file of the Optuna study (default: <sweep>/optuna.db; "
        "view it with optuna-dashboard sqlite:///FILE)",
    )
    quiet: bool = _opt(False, "no per-trial progress lines")

    def __post_init__(self) -> None:
        check_types(self)
        require(self.grace_epochs >= 0, "grace_epochs", f"must be >= 0, got {self.grace_epochs}")
        for name in ("num_samples", "max_concurrent"):
            require(getattr(self, name) >= 1, name, f"must be >= 1, got {getattr(self, name)}")
        require(self.cpus_per_trial > 0, "cpus_per_trial", f"must be > 0, got {self.cpus_per_trial}")
        require(self.gpus_per_trial >= 0, "gpus_per_trial", f"must be >= 0, got {self.gpus_per_trial}")
        require(self.max_failures >= 0, "max_failures", f"must be >= 0, got {self.max_failures}")
        require(
            self.workers_per_trial >= 0, "workers_per_trial", f"must be >= 0, got {self.workers_per_trial}"
        )
        if self.gpus_per_trial > 1:
            require(
                self.gpus_per_trial == int(self.gpus_per_trial),
                "gpus_per_trial",
                f"more than one GPU per trial must be a whole number, got {self.gpus_per_trial}",
            )

        if self.gpus_per_trial > 0 and self.workers > 1:
            per_worker = self.gpus_per_trial / self.workers
            require(
                per_worker >= 1 and per_worker == int(per_worker),
                "gpus_per_trial",
                f"{self.gpus_per_trial:g} GPUs for {self.workers} workers: each worker of a multi-worker trial needs "
                "whole GPUs of its own (two ranks on one GPU: NCCL's 'Duplicate GPU detected')",
            )

    def check_gpus(self, visible: int) -> None:
        """Refuse GPU-less trials on a machine whose ``visible`` GPUs they would all use: Ray hides GPUs only from
        trials that ask for some, so with ``--gpus-per-trial 0`` every trial would run on cuda:0, unaccounted."""
        if self.gpus_per_trial == 0 and visible > 0:
            raise ConfigError(
                f"--gpus-per-trial 0 on a machine with {visible} GPU(s): Ray hides no GPU from a trial that asks "
                "for none, so every trial would run on cuda:0, unaccounted; ask for GPUs (--gpus-per-trial 1), "
                "or hide them (CUDA_VISIBLE_DEVICES=) for CPU trials"
            )

    @property
    def workers(self) -> int:
        if self.workers_per_trial:
            return self.workers_per_trial
        return int(self.gpus_per_trial) if self.gpus_per_trial > 1 else 1
