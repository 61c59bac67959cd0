"""``scaleprompt check``: builds every method on a (tiny, offline) backbone, runs one SGD step on random images,
saves and reloads the prompts, and logs a table."""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path

from scaleprompt.commands.common import PROG

NAME = "check"
HELP = "one training step + save/load round trip for every method"
CHECK_CLASSES = ["cat", "dog", "golden retriever", "airplane", "sea turtle"]
logger = logging.getLogger("scaleprompt")


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """The ``check`` parser in ``subparsers``: the backbone, the methods, the batch size and the seed."""
    parser: argparse.ArgumentParser = subparsers.add_parser(NAME, help=HELP)
    parser.add_argument(
        "--model", default="sp-tiny-vit-12", help="open_clip model name (default: tiny, offline)"
    )
    parser.add_argument("--pretrained", default=None, help="pretrained tag, local file or none")
    parser.add_argument("--methods", nargs="*", help="subset of methods (default: all)")
    parser.add_argument("--batch-size", type=int, default=8, help="random images per step (default: 8)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the images and prompts (default: 0)")
    parser.set_defaults(prog=PROG)
    return parser


def run(args: argparse.Namespace) -> int:
    """One step and a save / reload round trip of each method of ``args.methods`` (default: all) on
    ``args.model``: 0 when every reloaded method gives the same logits, else 1."""
    import torch  # (import cost: torch, open_clip)

    from scaleprompt.backbone import load_clip
    from scaleprompt.methods import build, list_methods, load_prompts, save_prompts

    torch.manual_seed(args.seed)
    backbone = load_clip(args.model, args.pretrained)
    assert backbone.info is not None, "load_clip describes the backbone it loads"
    size = backbone.info.image_size
    images = torch.randn(args.batch_size, 3, size, size)
    labels = torch.arange(args.batch_size) % len(CHECK_CLASSES)
    logger.info(
        "%-10s %10s %10s %10s %8s  %s", "method", "trainable", "loss", "step ms", "reload", "loss parts"
    )
    failures = 0
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.methods or list_methods():
            method = build(name, backbone, CHECK_CLASSES)
            params = method.trainable_parameters()
            opt = torch.optim.SGD(params, lr=1e-3) if params else None
            start = time.perf_counter()
            out = method.train().loss(images, labels)
            if opt is not None:
                out.loss.backward()
                opt.step()
            step_ms = 1000 * (time.perf_counter() - start)
            path = save_prompts(method.eval(), Path(tmp) / f"{name}.safetensors")
            with torch.no_grad():
                same = torch.equal(load_prompts(path, backbone).eval().logits(images), method.logits(images))
            failures += not same
            parts = " ".join(f"{k}={v.item():.4f}" for k, v in out.parts.items())
            n = sum(p.numel() for p in params)
            logger.info("%-10s %10d %10.4f %10.1f %8s  %s", name, n, out.loss.item(), step_ms, same, parts)
    return 1 if failures else 0
