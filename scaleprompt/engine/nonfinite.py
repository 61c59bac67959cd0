"""Non-finite losses and gradients: seen on every rank, agreed on by all ranks, never trained through.

A diverged run (``optim.lr=1e30``, an fp16/bf16 overflow, a broken input) must not finish with exit 0 and report
the argmax of NaN logits as an accuracy. :class:`NonFiniteGuard` watches a run's optimizer steps:

* each micro-step, :meth:`~NonFiniteGuard.watch_loss` marks, on the device and without a host sync, whether the
  total loss and each named part of it (``ce``, ProVP-Ref's ``ref``, ...) are finite;
* a gradient hook on every trainable parameter marks a non-finite LOCAL gradient (before DeepSpeed reduces it
  across ranks, so at every ZeRO stage alike). Under fp16 the gradients are not watched: they carry DeepSpeed's
  loss scale, whose overflows DeepSpeed itself skips (counted as ``skipped_steps``), as mixed precision expects;
* at each optimizer-step boundary, BEFORE the optimizer step, :meth:`~NonFiniteGuard.verdict` sums the marks over
  ranks (one all-reduce of a few numbers per optimizer step) and says what was not finite, on which ranks' terms.

``train.nonfinite=stop`` (the default): :class:`NonFiniteError`, one line naming the step, the loss part or the
gradient, and the lr; the step is not taken, so the prompts stay as the last finite step left them and no
checkpoint holds a non-finite value. ``train.nonfinite=skip``: the step is skipped exactly (:func:`skipped_step`:
prompts, fp32 master copies and optimizer states are restored after DeepSpeed's step, which advances its step
counters only), recorded, and at most ``train.max_nonfinite_skips`` times per run; the next one stops the run.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor

from scaleprompt.engine.distributed import all_reduce_sum
from scaleprompt.errors import ScalepromptError

GRADIENT = "gradient"


class NonFiniteError(ScalepromptError):
    """Training met a non-finite loss or gradient (the message names the step, what, and the lr)."""


class NonFiniteGuard:
    """Marks of non-finite values for one run, kept on ``device``; ``params``: the trainable parameters (hooked
    unless ``watch_gradients`` is False)."""

    def __init__(self, params: list[torch.nn.Parameter], device: Any, watch_gradients: bool = True) -> None:
        self.device = device
        self.names: list[str] = ["loss"]  # loss parts, in the order of the method's LossOutput.parts
        self._loss_marks: Tensor | None = None
        self._grad_mark = torch.zeros((), device=device)
        self._handles = []
        self.watch_gradients = watch_gradients
        if watch_gradients:
            self._handles = [p.register_hook(self._on_grad) for p in params]

    def _on_grad(self, grad: Tensor) -> None:
        self._grad_mark += (~torch.isfinite(grad)).any()

    def watch_loss(self, loss: Tensor, parts: dict[str, Tensor]) -> None:
        """Mark the micro-step's total ``loss`` and each named loss part of ``parts`` that is not finite (device
        only)."""
        if self._loss_marks is None:
            self.names = ["loss", *parts]
            self._loss_marks = torch.zeros(len(self.names), device=self.device)
        values = torch.stack(
            [loss.detach().float().reshape(()), *(v.detach().float().reshape(()) for v in parts.values())]
        )
        self._loss_marks += ~torch.isfinite(values)

    def verdict(self) -> list[str]:
        """What was not finite since the last verdict, on any rank (collective: every rank calls it at the same
        optimizer-step boundary): e.g. ``["loss", "ref", "gradient"]``; [] when everything was finite. Resets."""
        losses = self._loss_marks if self._loss_marks is not None else torch.zeros(1, device=self.device)
        marks = all_reduce_sum(torch.cat([losses, self._grad_mark.reshape(1)]).float()).cpu()
        names = self.names if self._loss_marks is not None else ["loss"]
        bad = [name for name, mark in zip([*names, GRADIENT], marks.tolist(), strict=True) if mark > 0]
        if self._loss_marks is not None:
            self._loss_marks.zero_()
        self._grad_mark.zero_()
        return bad

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []


def describe(bad: list[str], step: int, lr: float) -> str:
    """One line: what was not finite (``bad``, a verdict) at optimizer step ``step``, with ``lr``."""
    parts = [b for b in bad if b not in ("loss", GRADIENT)]
    if parts:
        what = f"loss part{'s' if len(parts) > 1 else ''} {', '.join(parts)}"
    elif "loss" in bad:
        what = "loss"
    else:
        what = "gradient (the loss was finite)"
    if GRADIENT in bad and parts:
        what += " and the gradient"
    return f"non-finite {what} at optimizer step {step} (lr {lr:.4g})"


def _base_optimizer(optimizer: Any) -> torch.optim.Optimizer:
    """The torch optimizer under DeepSpeed's wrappers (ZeRO-1/2/3, bf16): its params are the fp32 master copies
    (or, without a wrapper, the prompts themselves)."""
    inner = getattr(optimizer, "optimizer", None)
    return inner if isinstance(inner, torch.optim.Optimizer) else optimizer


# where DeepSpeed's optimizers keep this rank's fp32 master copies (ZeRO-3 hands them to the torch optimizer only
# inside its step): ZeRO-1/2, ZeRO-3, the bf16 optimizer of stage 0
_MASTER_ATTRS = (
    "single_partition_of_fp32_groups",
    "fp32_partitioned_groups_flat",
    "fp32_groups_flat_partition",
)


def _masters(optimizer: Any, base: torch.optim.Optimizer) -> list[Tensor]:
    """Every fp32 master tensor of this rank (the torch optimizer's own params, and DeepSpeed's flat copies)."""
    found: dict[int, Tensor] = {}
    for p in [p for group in base.param_groups for p in group["params"]]:
        found.setdefault(id(p), p)
    for attr in _MASTER_ATTRS:
        for p in getattr(optimizer, attr, None) or []:
            if isinstance(p, Tensor):
                found.setdefault(id(p), p)
    return list(found.values())


def _local_data(p: torch.nn.Parameter) -> Tensor:
    """What this rank holds of ``p``: its ZeRO-3 partition, or the tensor itself."""
    return p.ds_tensor.data if hasattr(p, "ds_tensor") else p.data


@contextlib.contextmanager
def skipped_step(optimizer: Any, params: list[torch.nn.Parameter]) -> Iterator[None]:
    """Everything an optimizer step may change, put back after it: the trainable values this rank holds, the
    torch optimizer's parameters (DeepSpeed's fp32 master copies) and its states (momentum, Adam moments and
    step) of ``optimizer`` (DeepSpeed's) and the trainable ``params``. Run DeepSpeed's ``ds_engine.step()`` inside: its counters and gradient buffers advance as for any step,
    the prompts and the optimizer do not."""
    base = _base_optimizer(optimizer)
    masters = _masters(optimizer, base)
    saved_masters = [p.data.clone() for p in masters]
    saved_params = [_local_data(p).clone() for p in params]
    saved_state = {
        p: {k: v.clone() if isinstance(v, Tensor) else v for k, v in s.items()} for p, s in base.state.items()
    }
    yield
    with torch.no_grad():
        for p, value in zip(masters, saved_masters, strict=True):
            p.data.copy_(value)
        for p, value in zip(params, saved_params, strict=True):
            _local_data(p).copy_(value)
    base.state.clear()
    for p, s in saved_state.items():
        base.state[p] = s
