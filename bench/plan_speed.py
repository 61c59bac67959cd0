"""How long ``scaleprompt plan`` takes to count the activations: real CPU steps (the planner's former way,
``scaleprompt.plan.measure(..., fake=False)``) against fake-tensor steps (its way now), per model, in one process.

Per model: the count of one mode both ways from cold caches (the 1-2 block model built, its five training steps
and the fits: :func:`scaleprompt.plan.measure`), their ratio, and whether the two counted the same bytes (the fits
are compared: they must be equal); then the whole :func:`scaleprompt.plan.plan` on fake tensors from cold caches
(imports warm: the command adds the import of torch and open_clip, about 4 s). The CPU (the ``model name`` of
/proc/cpuinfo), its cores, torch's threads and the load average are printed with the table: a timing names its
machine.

    .venv/bin/python bench/plan_speed.py          # ViT-B-16, ViT-L-14, ViT-H-14; ProVP-Ref, ZeRO-3, bf16
    .venv/bin/python bench/plan_speed.py --models ViT-bigG-14 --grad-checkpointing --memory-efficient-linear
    .venv/bin/python bench/plan_speed.py --models ViT-H-14 --method coop --zero 2

Not a test: it prints numbers and asserts nothing (it says when the two counts differ).
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path
from typing import Any

import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from scaleprompt import plan as planner


def cpu_name() -> str:
    """The ``model name`` of /proc/cpuinfo (``unknown`` where there is none)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def cold() -> None:
    """Forget the reduced models, counts and architectures built so far (the tokenizers stay)."""
    planner._REDUCED.clear()
    planner._MEASURED.clear()
    planner._ARCHITECTURES.clear()


def counted(model: str, args: argparse.Namespace, fake: bool) -> tuple[float, planner.Measured]:
    """Seconds to count one mode of ``args.method`` on ``model`` (reduced model built anew), and what it counted."""
    cold()
    knobs = planner._zero3_knobs(args.ds)
    zero3 = (knobs["stage3_param_persistence_threshold"], bool(knobs["memory_efficient_linear"]))
    mode = (args.precision, zero3 if args.zero == 3 else None, args.grad_checkpointing, False, 8)
    start = time.perf_counter()
    measured = planner.measure(model, args.method, {}, *mode, fake=fake)
    return time.perf_counter() - start, measured


def planned(model: str, args: argparse.Namespace) -> float:
    """Seconds of the whole plan (architecture, counting, fits, the largest micro-batch) from cold caches."""
    cold()
    start = time.perf_counter()
    planner.plan(
        model,
        args.method,
        batch=32,
        zero=args.zero,
        precision=args.precision,
        grad_checkpointing=args.grad_checkpointing,
        ds_config=args.ds,
    )
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--models", default="ViT-B-16,ViT-L-14,ViT-H-14", help="comma-separated open_clip models"
    )
    parser.add_argument("--method", default="provp_ref")
    parser.add_argument("--precision", default="bf16")
    parser.add_argument("--zero", type=int, default=3)
    parser.add_argument("--grad-checkpointing", action="store_true")
    parser.add_argument(
        "--memory-efficient-linear",
        action="store_true",
        help="ZeRO-3 with DeepSpeed's default linear, which saves every linear's input (zero3.json turns it off)",
    )
    args = parser.parse_args()
    ds: dict[str, Any] | None = None
    if args.memory_efficient_linear:
        ds = {"zero_optimization": {"memory_efficient_linear": True}}
    args.ds = ds
    FakeTensorMode()  # (its first construction imports torch._dynamo: not counted below)
    for fake in (True, False):  # warm-up: open_clip, the methods, oneDNN's check
        counted("sp-tiny-vit-12", args, fake)
    load = os.getloadavg()
    print(
        f"CPU: {cpu_name()}; {os.cpu_count()} cores visible, torch threads {torch.get_num_threads()}; "
        f"load average at start {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}"
    )
    print(
        f"{args.method}, ZeRO-{args.zero}{' (memory_efficient_linear)' * args.memory_efficient_linear}, "
        f"{args.precision}{', checkpointing' * args.grad_checkpointing}: one mode counted (the 1-2 block model "
        "built, 5 steps, fits) on real CPU steps (before) and on fake ones (now); plan s: the whole plan, fake"
    )
    head = f"{'model':<14} {'real s':>8} {'fake s':>7} {'speed-up':>9} {'same bytes':>10} {'plan s':>7}"
    print(head)
    print("-" * len(head))
    for model in [m for m in args.models.split(",") if m]:
        planner._tokenizer(model)  # (loaded once, for both ways alike)
        fake_s, fake_counted = counted(model, args, True)
        real_s, real_counted = counted(model, args, False)
        plan_s = planned(model, args)
        same = "yes" if fake_counted == real_counted else "NO"
        line = f"{model:<14} {real_s:8.1f} {fake_s:7.2f} {real_s / fake_s:8.0f}x {same:>10} {plan_s:7.2f}"
        print(line, flush=True)
    load = os.getloadavg()
    print(f"load average at end {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")


if __name__ == "__main__":
    main()
