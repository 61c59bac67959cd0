"""Classify images with saved prompts: ``Predictor("prompts.safetensors").classify_files([...])``.

The prompt file records its backbone (model name and pretrained weights), method, config and classes, so the
file alone rebuilds the classifier; pass ``pretrained=`` when the weights live somewhere else on this machine.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import torch
from PIL import Image

from scaleprompt.backbone import load_clip
from scaleprompt.data.transforms import clip_transform
from scaleprompt.methods.io import PromptFileError, load_prompts, read_prompt_file


class Predictor:
    def __init__(self, prompts: str | Path, pretrained: str | None = None, device: str = "cpu",
                 classnames: Sequence[str] | None = None) -> None:  # fmt: skip
        meta, _ = read_prompt_file(prompts)
        backbone = json.loads(meta.get("backbone", "null"))
        if not backbone:
            raise PromptFileError(
                f"{prompts} does not record its backbone; build the method with load_prompts()"
            )
        self.backbone = load_clip(
            backbone["model_name"], pretrained or backbone["pretrained"], device=device,
            init_seed=backbone.get("init_seed") or 0,
        )  # fmt: skip
        self.method = load_prompts(prompts, self.backbone, classnames).to(device).eval()
        info = self.backbone.info
        self.transform = clip_transform(info.image_size, train=False, mean=info.mean, std=info.std)
        self.device = device

    @property
    def classnames(self) -> list[str]:
        return self.method.classnames

    @torch.no_grad()
    def probabilities(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """``[N, C]`` class probabilities."""
        batch = torch.stack([self.transform(img.convert("RGB")) for img in images]).to(self.device)
        return self.method.logits(batch).softmax(dim=-1).cpu()

    def classify_files(self, paths: Sequence[str | Path], top_k: int = 1) -> list[list[tuple[str, float]]]:
        """Top-k (class name, probability) per image file."""
        images = []
        for path in paths:
            with Image.open(path) as img:
                images.append(img.copy())
        probs = self.probabilities(images)
        top = probs.topk(min(top_k, probs.shape[1]), dim=-1)
        return [
            [(self.classnames[i], float(p)) for p, i in zip(ps.tolist(), idx.tolist(), strict=True)]
            for ps, idx in zip(top.values, top.indices, strict=True)
        ]
