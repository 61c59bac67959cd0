"""One side of ``bench/train_speed.py --against REV``: a long-lived process that imports ``scaleprompt`` from ONE
checkout (the driver sets ``PYTHONPATH`` to it) and times what the driver asks, one request at a time.

It uses only the API both sides of the comparison share (``load_clip``, ``build``, ``method.loss``,
``method.trainable_parameters``, ``method.template_features``), so an older checkout runs the same code.

Protocol: one JSON object per line on stdin, one JSON answer per line on the original stdout (anything a library
prints goes to stderr instead):

* ``{"op": "hello", "root": ..., "backbone": ..., "seed": ..., "threads": ...}`` -> where ``scaleprompt`` was
  imported from, and a checksum of the random backbone's weights (both sides must build the same weights);
* ``{"op": "time", "item": {...}}`` -> ``{"seconds": s, "value": v}``: one call of the item (a training step: its
  loss before the step; a zero-shot encoding: the sum of the class features). The item is built on its first
  request (prompts drawn from ``seed``) and kept until a request names another item;
* ``{"op": "quit"}``.

Not run by hand: ``bench/train_speed.py --against`` starts two of these and alternates between them.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch


def sgd_step(
    method: Any, images: torch.Tensor, labels: torch.Tensor, lr: float = 1e-3
) -> Callable[[], float]:
    """One timed training step of ``method`` (the bench's unit of work): ``train(); loss; backward; SGD (momentum
    0.9) step; zero_grad``; the call returns the loss before the step."""
    optimizer = torch.optim.SGD(method.trainable_parameters(), lr=lr, momentum=0.9)

    def step() -> float:
        method.train()
        out = method.loss(images, labels)
        out.loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        return float(out.loss.detach())

    return step


class Worker:
    def __init__(self, root: str, backbone: str, seed: int, threads: int) -> None:
        import scaleprompt
        from scaleprompt.backbone import load_clip

        where = Path(scaleprompt.__file__).resolve()
        if Path(root).resolve() not in where.parents:
            raise SystemExit(f"scaleprompt imported from {where}, not from the checkout {root}")
        torch.set_num_threads(threads)
        self.seed = seed
        self.loaded = load_clip(backbone, None)  # random init from load_clip's fixed init seed (old and new)
        self.clip = getattr(self.loaded, "model", self.loaded)  # newer load_clip returns a Backbone
        self.where = str(where.parent)
        self.key: str | None = None
        self.run: Any = None

    def checksum(self) -> float:
        with torch.no_grad():
            return float(sum(p.double().square().sum() for p in self.clip.state_dict().values()))

    def build(self, item: dict[str, Any]) -> Any:
        from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES, OPENAI_IMAGENET_TEMPLATES

        from scaleprompt.methods.registry import build

        self.run = None  # free the previous item first
        names = list(IMAGENET_CLASSNAMES[: item["classes"]])
        torch.manual_seed(self.seed)
        if item["kind"] == "zeroshot":
            templates = tuple(
                t("{}") for t in OPENAI_IMAGENET_TEMPLATES[: item["templates"]]
            )  # open_clip: callables
            method = build("zsclip", self.loaded, names, templates=templates)

            def encode() -> float:
                return float(method.template_features(templates).sum())

            return encode
        method = build(item["method"], self.loaded, names, **item["overrides"])
        size = self.clip.visual.image_size
        size = size[0] if isinstance(size, (tuple, list)) else size
        gen = torch.Generator().manual_seed(self.seed)
        images = torch.randn(item["batch"], 3, size, size, generator=gen)
        labels = torch.randint(0, item["classes"], (item["batch"],), generator=gen)
        return sgd_step(method, images, labels)

    def time(self, item: dict[str, Any]) -> dict[str, float]:
        key = json.dumps(item, sort_keys=True)
        if key != self.key:
            self.key, self.run = None, None
            self.run = self.build(item)
            self.key = key
        start = time.perf_counter()
        value = self.run()
        return {"seconds": time.perf_counter() - start, "value": value}


def main() -> None:
    proto = os.fdopen(os.dup(1), "w", buffering=1)  # answers go here; library prints go to stderr
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    worker: Worker | None = None
    for line in sys.stdin:
        request = json.loads(line)
        op = request["op"]
        if op == "quit":
            break
        try:
            if op == "hello":
                worker = Worker(request["root"], request["backbone"], request["seed"], request["threads"])
                answer: dict[str, Any] = {"where": worker.where, "checksum": worker.checksum()}
            elif op == "time" and worker is not None:
                answer = worker.time(request["item"])
            else:
                answer = {"error": f"unexpected request {op!r}"}
        except Exception as exc:  # noqa: BLE001 - reported to the driver, which stops the benchmark
            answer = {"error": f"{type(exc).__name__}: {exc}"}
        proto.write(json.dumps(answer) + "\n")


if __name__ == "__main__":
    main()
