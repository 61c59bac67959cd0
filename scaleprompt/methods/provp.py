"""ProVP and ProVP-Ref (Xu et al., IJCV 2024).

ProVP: one N-token prompt per vision block, ``[CLS, prompts, patches]`` after ``ln_pre``; block i >= 1 gets
``alpha * O_{i-1} + (1 - alpha) * P_i`` (the previous block's prompt OUTPUTS mixed in). Init Xavier-uniform with
bound ``sqrt(6 / (3 p^2 + Dv))``, p the real patch size (``init_patch_size=14`` reproduces the release, which
hard-codes 14). Fixed hand-crafted text features.

ProVP-Ref adds the contrastive feature re-formation loss: ``L = CE + lam * CE((f_p @ f_c^T) / tau, arange(B))``
with ``f_c`` the frozen CLIP features of the same augmented images (no grad). Release defaults tau = 1, lam = 1.

Deliberate difference: the release's quirk for N <= 4 (nothing inserted at block 0 while tokens 1..N, patch
tokens, are overwritten later) is not reproduced.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from scaleprompt.backbone import Backbone
from scaleprompt.config import require
from scaleprompt.encoders import EncoderOptions, VisualPlan
from scaleprompt.losses import reformation_loss
from scaleprompt.methods.base import FixedTextConfig, FixedTextMethod, LossOutput, check_depth


@dataclass
class ProVPConfig(FixedTextConfig):
    n_ctx: int = 50  # 50 few-shot; the base-to-novel recipes use 16
    depth: int | None = None  # None = every vision block (12 on ViT-B/16)
    alpha: float = 0.01
    init_patch_size: int | None = None  # None = the backbone's patch size; 14 = the release's constant

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.n_ctx >= 1, "n_ctx", f"must be >= 1, got {self.n_ctx}")
        require(self.depth is None or self.depth >= 1, "depth", f"must be >= 1, got {self.depth}")
        require(0.0 <= self.alpha <= 1.0, "alpha", f"must be in [0, 1], got {self.alpha}")
        require(self.init_patch_size is None or self.init_patch_size >= 1, "init_patch_size", "must be >= 1")


@dataclass
class ProVPRefConfig(ProVPConfig):
    lam: float = 1.0  # weight of the re-formation loss
    tau: float = 1.0  # temperature of the re-formation loss

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.lam >= 0.0, "lam", f"must be >= 0, got {self.lam}")
        require(self.tau > 0.0, "tau", f"must be > 0, got {self.tau}")


class ProVP(FixedTextMethod):
    name = "provp"
    config_class = ProVPConfig
    config: ProVPConfig

    def __init__(
        self,
        backbone: Backbone | nn.Module,
        classnames: Sequence[str],
        config: ProVPConfig,
        options: EncoderOptions | None = None,
    ) -> None:
        super().__init__(backbone, classnames, config, options)
        depth = check_depth(config.depth, self.vision.num_blocks, "depth")
        p = config.init_patch_size or self.vision.patch_size
        bound = math.sqrt(6.0 / (3 * p * p + self.vision.width))
        self.prompts = nn.Parameter(
            torch.empty(depth, config.n_ctx, self.vision.width).uniform_(-bound, bound)
        )
        self.plan = VisualPlan(
            position="after_cls", stage="after_ln_pre", mix="progressive", alpha=config.alpha
        )

    def image_features(self, images: Tensor) -> Tensor:
        return self.vision(images, self.prompts, self.plan)


class ProVPRef(ProVP):
    name = "provp_ref"
    config_class = ProVPRefConfig
    config: ProVPRefConfig

    def loss(self, images: Tensor, labels: Tensor) -> LossOutput:
        prompted = self.image_features(images)  # [B, E]
        frozen = self.frozen_image_features(images)  # [B, E], no grad
        logits = self.logits_from(prompted)
        ce = nn.functional.cross_entropy(logits, labels)
        ref = reformation_loss(prompted, frozen, self.config.tau)
        total = ce + self.config.lam * ref
        return LossOutput(loss=total, logits=logits, parts={"ce": ce.detach(), "ref": ref.detach()})
