"""One run of ``bench/scale.py``: a few real training steps of one method over a random-init open_clip backbone,
inside the real :class:`~scaleprompt.engine.model.PromptedModel` (DeepSpeed ZeRO stage, precision and offload from
the ``--ds`` JSON), launched by the driver through the deepspeed launcher (or plain python for 1 process).

Every rank writes ``rank<R>.json`` into ``--out``:

* ``rss``: the process's peak resident set (``VmHWM``) over three phases, each measured from a reset of the peak
  (``/proc/self/clear_refs``): building the backbone and the method (``build``), wrapping it in the engine
  (``engine``: ZeRO-3 partitions the frozen backbone here) and the training steps (``steps``); plus the resident
  set after the engine was made (``after_engine``) and at the end (``end``);
* ``backbone_bytes``: bytes of the frozen backbone's parameters this rank holds between steps (under ZeRO-3 its
  partition ``ds_tensor`` plus whatever is materialised in ``.data``: the parameters kept whole below
  ``stage3_param_persistence_threshold``), against ``backbone_total_bytes`` for the whole backbone;
* ``step_seconds`` and ``losses`` per step (step 0 is the warm-up and is not in the driver's median).

Rank 0 also writes ``prompts.safetensors`` (the prompts after the last step, gathered) for the driver's
cross-stage comparison. The data is synthetic and a function of (``--seed``, step) only: step ``s`` draws ONE
global batch of ``micro x world`` images and labels, and rank ``r`` takes its slice, so every ZeRO stage and world
size sees the same global batch.
"""

from __future__ import annotations

import argparse
import json
import logging
import resource
import time
from pathlib import Path

import torch

from scaleprompt.backbone import load_clip
from scaleprompt.encoders import EncoderOptions
from scaleprompt.engine.config import load_ds_config, load_run_config
from scaleprompt.engine.distributed import barrier, init_distributed
from scaleprompt.engine.model import PromptedModel
from scaleprompt.methods.registry import build

logger = logging.getLogger("scale_worker")


def reset_peak_rss() -> bool:
    """Reset this process's peak RSS (Linux >= 4.0: ``5`` into clear_refs); False where that is not possible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def rss_field(name: str) -> int:
    """``VmHWM`` (peak) or ``VmRSS`` (now) of this process, bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(name + ":"):
            return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def held_bytes(params: list[torch.nn.Parameter]) -> int:
    """Bytes of ``params`` this rank holds now: the ZeRO-3 partition (``ds_tensor``) plus the materialised data."""
    total = 0
    for p in params:
        total += p.data.numel() * p.data.element_size()
        part = getattr(p, "ds_tensor", None)
        if part is not None:
            total += part.numel() * part.element_size()
    return total


def full_bytes(params: list[torch.nn.Parameter]) -> int:
    """Bytes of ``params`` whole (``ds_numel`` under ZeRO-3)."""
    return sum(getattr(p, "ds_numel", p.numel()) * p.element_size() for p in params)


def global_batch(
    seed: int, step: int, size: int, image_size: int, classes: int
) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed * 100_003 + step)
    images = torch.randn(size, 3, image_size, image_size, generator=g)
    labels = torch.randint(0, classes, (size,), generator=g)
    return images, labels


def class_names(count: int) -> list[str]:
    """``count`` distinct short class names (two word pieces each, like most dataset class names)."""
    words = ["red", "blue", "green", "small", "large", "old", "young", "wild", "striped", "spotted"]
    things = ["cat", "dog", "bird", "fish", "car", "boat", "tree", "flower", "house", "bridge"]
    return [f"{words[i % 10]} {things[i // 10 % 10]} {i // 100}" if count > 100 else f"{words[i % 10]} {things[i // 10]}"
            for i in range(count)]  # fmt: skip


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--local_rank", type=int, default=None)
    ap.add_argument("--model", required=True)
    ap.add_argument("--method", required=True)
    ap.add_argument("--ds", default=None, help="DeepSpeed JSON (none: stage 0)")
    ap.add_argument("--precision", default="fp32")
    ap.add_argument("--grad-checkpointing", action="store_true")
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--text-chunk", type=int, default=0)
    ap.add_argument("--micro", type=int, default=1, help="images per rank and step")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--method-arg", action="append", default=[], help="method.args.key=value")
    ap.add_argument("--out", required=True)
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    out = Path(args.out)
    dist = init_distributed(args.local_rank)
    torch.manual_seed(args.seed)
    resettable = reset_peak_rss()
    start = time.perf_counter()
    backbone = load_clip(args.model, None, init_seed=0)
    backbone.model.set_grad_checkpointing(args.grad_checkpointing)
    overrides = [f"method.name={args.method}", f"train.precision={args.precision}", "optim.lr=0.01",
                 f"model.text_chunk={args.text_chunk}",
                 f"optim.batch_size={args.micro * dist.world_size}", *(f"method.args.{kv}" for kv in args.method_arg)]  # fmt: skip
    cfg = load_run_config(None, overrides)
    options = EncoderOptions(text_chunk=args.text_chunk)
    method = build(args.method, backbone, class_names(args.classes), options=options, **cfg.method.args)
    frozen = [p for p in method.clip.parameters() if not p.requires_grad]
    build_seconds = time.perf_counter() - start
    rss_build = rss_field("VmHWM")
    reset_peak_rss()
    start = time.perf_counter()
    ds_base = load_ds_config(args.ds) if args.ds else None
    model = PromptedModel(method, cfg, ds_base, dist, micro=args.micro, accumulation=1)
    engine_seconds = time.perf_counter() - start
    rss_engine, rss_after_engine = rss_field("VmHWM"), rss_field("VmRSS")
    frozen_held, frozen_total = held_bytes(frozen), full_bytes(frozen)
    reset_peak_rss()
    image_size = backbone.info.image_size
    step_seconds, losses = [], []
    module = model.module
    for step in range(args.steps):
        images, labels = global_batch(args.seed, step, args.micro * dist.world_size, image_size, args.classes)
        mine = slice(dist.rank * args.micro, (dist.rank + 1) * args.micro)
        barrier()
        t0 = time.perf_counter()
        module.train()
        loss = module(images[mine], labels[mine]).loss
        module.backward(loss)
        module.step()
        step_seconds.append(time.perf_counter() - t0)
        losses.append(float(loss.detach().float()))
        logger.info("rank %d step %d: loss %.6f, %.2f s", dist.rank, step, losses[-1], step_seconds[-1])
    rss_steps = rss_field("VmHWM")
    frozen_held_after = held_bytes(frozen)
    prompts = model.snapshot()
    if dist.is_main:
        from safetensors.torch import save_file

        save_file({k: v.float().contiguous() for k, v in prompts.items()}, str(out / "prompts.safetensors"))
    record = {
        "rank": dist.rank, "world_size": dist.world_size, "zero_stage": model.zero_stage,
        "zero_optimization": (ds_base or {}).get("zero_optimization", {}), "threads": torch.get_num_threads(), "peak_resettable": resettable,
        "rss": {"build": rss_build, "engine": rss_engine, "steps": rss_steps, "after_engine": rss_after_engine,
                "end": rss_field("VmRSS")},
        "backbone_bytes": frozen_held, "backbone_bytes_after_steps": frozen_held_after,
        "backbone_total_bytes": frozen_total,
        "backbone_dtype": str(frozen[0].dtype).removeprefix("torch."),
        "prompt_values": sum(v.numel() for v in prompts.values()),
        "build_seconds": build_seconds, "engine_seconds": engine_seconds,
        "step_seconds": step_seconds, "losses": losses,
    }  # fmt: skip
    (out / f"rank{dist.rank}.json").write_text(json.dumps(record, indent=1))
    barrier()


if __name__ == "__main__":
    main()
