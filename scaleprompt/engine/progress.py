"""What a run accumulates besides DeepSpeed's tensors, saved in every checkpoint (``run_state.json``).

Everything ``results.json`` needs lives here (history, best epoch and its validation numbers, the zero-shot
numbers, the running train loss of the current epoch, images seen, time trained), so a run resumed from any
checkpoint writes the same ``results.json`` as an uninterrupted one, timing aside. The best prompts themselves
are tensors: they go to ``best_prompts.safetensors`` beside the state.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import torch

# fields of RunProgress written to run_state.json (best_prompts is saved as safetensors)
_SAVED = (
    "config",
    "history",
    "best_epoch",
    "best_val",
    "epoch_loss",
    "images_seen",
    "train_seconds",
    "global_step",
    "epoch",
    "data",
    "save_index",
    "zero_shot",
    "sessions",
    "nonfinite_skipped",
)


@dataclass
class RunProgress:
    config: dict[str, Any]  # the run config the run started with
    history: list[dict[str, Any]] = field(default_factory=list)  # one entry per validated epoch
    best_epoch: int | None = None
    best_val: dict[str, float] | None = None
    best_prompts: dict[str, torch.Tensor] | None = None
    epoch_loss: list[float] = field(default_factory=lambda: [0.0, 0])  # (sum, batches) of the current epoch
    images_seen: int = 0
    train_seconds: float = 0.0  # summed over sessions
    global_step: int = 0
    epoch: int = 0  # completed epochs
    data: dict[str, int] = field(default_factory=dict)  # the loader's position
    save_index: int = 0  # saves so far (orders checkpoints)
    zero_shot: dict[str, Any] | None = None
    sessions: list[dict[str, Any]] = field(default_factory=list)  # one per start / resume
    nonfinite_skipped: list[dict[str, Any]] = field(
        default_factory=list
    )  # train.nonfinite=skip: steps skipped
    last_tag: str | None = None  # the newest checkpoint of this run
    config_changes_at_start: list[dict[str, Any]] = field(default_factory=list)
    session_images: int = 0  # images seen in this session (for images/s)
    session_start: float = field(default_factory=time.time)

    @classmethod
    def fresh(cls, config: dict[str, Any]) -> RunProgress:
        """The progress of a run that starts now with the run config ``config``."""
        return cls(config=config)

    @classmethod
    def restore(cls, state: dict[str, Any]) -> RunProgress:
        """The progress saved in a checkpoint's run ``state`` (its ``run_state.json``)."""
        run = cls(**{k: state[k] for k in _SAVED if k in state})
        run.last_tag = state.get("tag")
        run.config_changes_at_start = list(state.get("config_changes", []))
        return run

    def start_session(self, checkpoint: str | None) -> None:
        """Record the start of a session (a fresh start or a resume from ``checkpoint``)."""
        self.session_start, self.session_images = time.time(), 0
        self.sessions.append(
            {
                "from_checkpoint": checkpoint,
                "step": self.global_step,
                "epoch": self.epoch,
                "started": time.time(),
            }
        )

    def end_session(self) -> None:
        self.train_seconds += time.time() - self.session_start
        self.session_start = time.time()

    def to_state(self, config_changes: list[dict[str, Any]]) -> dict[str, Any]:
        """What a checkpoint saves (``run_state.json``), with the run's ``config_changes`` so far."""
        state = {k: getattr(self, k) for k in _SAVED}
        state["train_seconds"] = self.train_seconds + time.time() - self.session_start
        return {**state, "config_changes": config_changes}
