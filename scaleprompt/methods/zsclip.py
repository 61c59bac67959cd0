"""Zero-shot CLIP: hand-crafted template(s), no trainable parameters."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from scaleprompt.methods.base import FixedTextConfig, PromptMethod


@dataclass
class ZSCLIPConfig(FixedTextConfig):
    """Zero-shot CLIP. ``templates``: one (the papers) or several (ensemble of normalized features)."""


class ZSCLIP(PromptMethod):
    name = "zsclip"
    config_class = ZSCLIPConfig
    frozen_text = True
    trains = False

    def image_features(self, images: Tensor) -> Tensor:
        return self.frozen_image_features(images)

    def compute_text_features(self) -> Tensor:
        return self.template_features(self.templates)
