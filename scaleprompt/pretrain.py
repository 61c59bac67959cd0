"""Pretrain the micro-world CLIP (``sp-micro-clip``) from scratch on the CPU; rebuilds the shipped weights.

    scaleprompt pretrain-microworld --out scaleprompt/model_weights/sp-micro-clip-microworld.safetensors

Data are generated on the fly (a producer thread renders the next batches while the model trains). A batch is
made of groups of 8 scenes: a colour group holds one colour in all 8 shapes (hard negatives that teach shape, the
slow attribute), a shape group one shape in all 8 colours. Captions come from several templates and are often
true of several images of the batch, so the loss is CLIP's symmetric contrastive loss with every true pair as a
positive (:func:`scaleprompt.losses.multi_positive_clip_loss`): no false negatives. AdamW, linear warm-up then
cosine, seeded: the same seed, steps and torch build give the same weights.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import cast

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn

from scaleprompt.backbone import import_open_clip, model_spec
from scaleprompt.config import check_types, require
from scaleprompt.losses import multi_positive_clip_loss
from scaleprompt.microworld import world
from scaleprompt.microworld.tokenizer import VOCAB, WordTokenizer

logger = logging.getLogger(__name__)

MODEL = "sp-micro-clip"
TEST_SEED = 20261122  # the fixed, seeded in-distribution zero-shot test set
ZERO_SHOT_TEMPLATE = "a photo of a {}."


@dataclass
class PretrainConfig:
    steps: int = 2400  # the shipped weights: 19 minutes on 2 idle cores
    groups: int = 16  # batch = groups x 8 scenes
    colour_group_fraction: float = 0.75
    lr: float = 1e-3
    warmup_steps: int = 300
    weight_decay: float = 0.1
    seed: int = 0
    eval_every: int = 200
    eval_per_class: int = 50
    threads: int = 0  # torch threads; 0 = leave torch's default

    def __post_init__(self) -> None:
        check_types(self)
        for name in ("steps", "groups", "eval_every", "eval_per_class"):
            require(getattr(self, name) >= 1, name, f"must be >= 1, got {getattr(self, name)}")
        require(0 <= self.colour_group_fraction <= 1, "colour_group_fraction", "must be in [0, 1]")
        require(self.lr > 0, "lr", f"must be > 0, got {self.lr}")


def vocab_hash() -> str:
    """The first 16 hex digits of the sha256 of the word vocabulary (recorded with the weights)."""
    return hashlib.sha256("\n".join(VOCAB).encode()).hexdigest()[:16]


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """``images`` uint8 ``[N, H, W, 3]`` -> normalized float ``[N, 3, H, W]`` (CLIP's mean / std, as the engine's transforms)."""
    # (import cost: open_clip, torchvision; `scaleprompt pretrain-microworld --help` imports this module)
    from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0
    mean = torch.tensor(OPENAI_DATASET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(OPENAI_DATASET_STD).view(1, 3, 1, 1)
    return (x - mean) / std


def make_batch(rng: np.random.Generator, cfg: PretrainConfig, size: int, tokenizer: WordTokenizer):
    """One training batch drawn with ``rng`` after ``cfg``: images ``[N, 3, size, size]``, caption ids ``[N, T]``
    (by ``tokenizer``) and the ``[N, N]`` caption-is-true-of-image matrix."""
    n_shapes, n_colours = len(world.SHAPES), len(world.COLOURS)
    shapes, colours = [], []
    for colour_group in rng.random(cfg.groups) < cfg.colour_group_fraction:
        if colour_group:
            shapes.append(np.arange(n_shapes))
            colours.append(np.full(n_shapes, rng.integers(n_colours)))
        else:
            colours.append(rng.permutation(n_colours)[:n_shapes])
            shapes.append(np.full(n_shapes, rng.integers(n_shapes)))
    scenes = world.sample_scenes(
        rng, cfg.groups * n_shapes, shape=np.concatenate(shapes), colour=np.concatenate(colours)
    )
    images = world.render(scenes, rng, size)
    texts, mentions = world.captions(scenes, rng)
    return to_tensor(images), tokenizer(texts), torch.from_numpy(world.caption_matches(scenes, mentions))


def fixed_test_set(
    per_class: int = 50, seed: int = TEST_SEED, style: world.WorldStyle | None = None, size: int = 64
) -> tuple[np.ndarray, np.ndarray]:
    """A fixed, class-balanced set drawn with ``seed`` in ``style`` (default: ``WorldStyle()``): uint8
    images ``[64 * per_class, size, size, 3]`` and their colour-shape labels."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(len(world.COLOURS) * len(world.SHAPES)), per_class)
    scenes = world.sample_scenes(
        rng, len(labels), style, shape=labels % len(world.SHAPES), colour=labels // len(world.SHAPES)
    )
    return world.render(scenes, rng, size, style), labels


@torch.no_grad()
def zero_shot_accuracy(
    model: nn.Module,
    tokenizer,
    images: np.ndarray,
    labels: np.ndarray,
    template: str = ZERO_SHOT_TEMPLATE,
    batch_size: int = 512,
) -> float:
    """Top-1 (in [0, 1]) of ``model`` (with its word ``tokenizer``) on ``images`` (uint8, labels ``labels``)
    against the 64 class prompts ``template.format('red circle')`` ..., ``batch_size`` images at a time."""
    was_training = model.training
    model.eval()
    encode_text = cast(Callable[[torch.Tensor], torch.Tensor], model.encode_text)  # (open_clip's CLIP)
    encode_image = cast(Callable[[torch.Tensor], torch.Tensor], model.encode_image)
    text = F.normalize(encode_text(tokenizer([template.format(c) for c in world.class_names()])), dim=-1)
    correct = 0
    for i in range(0, len(images), batch_size):
        feats = F.normalize(encode_image(to_tensor(images[i : i + batch_size])), dim=-1)
        correct += int(((feats @ text.t()).argmax(-1).numpy() == labels[i : i + batch_size]).sum())
    model.train(was_training)
    return correct / len(images)


def _producer(
    cfg: PretrainConfig, size: int, tokenizer: WordTokenizer, out: queue.Queue, stop: threading.Event
):
    rng = np.random.default_rng(cfg.seed)
    for _ in range(cfg.steps):
        batch = make_batch(rng, cfg, size, tokenizer)
        while not stop.is_set():
            try:
                out.put(batch, timeout=0.5)
                break
            except queue.Full:
                continue
        if stop.is_set():
            return


def _param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for name, p in model.named_parameters():
        (no_decay if p.ndim < 2 or "embedding" in name or "logit_scale" in name else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def pretrain(cfg: PretrainConfig, out: Path | None = None) -> tuple[nn.Module, dict]:
    """Train ``sp-micro-clip`` after ``cfg`` from a seeded random init; write safetensors to ``out`` (None: not
    written). Returns model, report."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    spec = model_spec(MODEL)  # registered by scaleprompt.backbone: open_clip knows its config
    torch.manual_seed(cfg.seed)
    model = import_open_clip().create_model(MODEL, pretrained=None)
    model.train()
    assert spec.tokenizer is not None, f"{MODEL} is registered with its word tokenizer"
    tokenizer = spec.tokenizer(context_length=model.context_length)
    size = model.visual.image_size
    size = size[0] if isinstance(size, tuple | list) else int(size)
    test_images, test_labels = fixed_test_set(cfg.eval_per_class, size=size)
    opt = torch.optim.AdamW(_param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=(0.9, 0.98), eps=1e-6)

    def lr_at(step: int) -> float:
        if step < cfg.warmup_steps:
            return cfg.lr * (step + 1) / cfg.warmup_steps
        t = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
        return cfg.lr * 0.5 * (1 + np.cos(np.pi * t))

    batches: queue.Queue = queue.Queue(maxsize=4)
    stop = threading.Event()
    producer = threading.Thread(target=_producer, args=(cfg, size, tokenizer, batches, stop), daemon=True)
    producer.start()
    history, start, loss_sum = [], time.time(), 0.0
    try:
        for step in range(cfg.steps):
            images, ids, matches = batches.get()
            for group in opt.param_groups:
                group["lr"] = lr_at(step)
            img, txt, scale = model(images, ids)
            loss = multi_positive_clip_loss(scale * img @ txt.t(), matches)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            with torch.no_grad():
                model.logit_scale.clamp_(0, np.log(100.0))
            loss_sum += loss.item()
            if (step + 1) % cfg.eval_every == 0 or step + 1 == cfg.steps:
                acc = zero_shot_accuracy(model, tokenizer, test_images, test_labels)
                row = {
                    "step": step + 1,
                    "loss": loss_sum / cfg.eval_every,
                    "zero_shot_top1": acc,
                    "minutes": (time.time() - start) / 60,
                }
                history.append(row)
                loss_sum = 0.0
                logger.info(
                    "step %d  loss %.3f  zero-shot top-1 %.1f%%  %.1f min",
                    row["step"],
                    row["loss"],
                    100 * acc,
                    row["minutes"],
                )
    finally:
        stop.set()
    model.eval()
    report = {
        "model": MODEL,
        "config": asdict(cfg),
        "vocab_sha256_16": vocab_hash(),
        "history": history,
        "zero_shot_top1": history[-1]["zero_shot_top1"],
        "torch": torch.__version__,
        "minutes": (time.time() - start) / 60,
    }
    if out is not None:
        save_weights(model, Path(out), report)
    return model, report


def save_weights(model: nn.Module, out: Path, report: dict) -> None:
    """Atomic safetensors write of ``model``'s weights to ``out``; the ``report`` goes into the file's metadata and
    next to it as JSON."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(
        state,
        str(tmp),
        metadata={"scaleprompt": json.dumps({k: report[k] for k in report if k != "history"})},
    )
    os.replace(tmp, out)
    out.with_suffix(".json").write_text(json.dumps(report, indent=1))
    logger.info("wrote %s (%.1f MB)", out, out.stat().st_size / 2**20)
