"""Zero-shot CLIP: hand-crafted template(s), no trainable parameters."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from scaleprompt.methods.base import FixedTextConfig, FixedTextMethod


@dataclass
class ZSCLIPConfig(FixedTextConfig):
    """Zero-shot CLIP. ``templates``: one (the papers) or several (ensemble of normalized features)."""


class ZSCLIP(FixedTextMethod):
    name = "zsclip"
    config_class = ZSCLIPConfig
    trains = False

    def image_features(self, images: Tensor) -> Tensor:
        return self.frozen_image_features(images)
