"""CoCoOp: CoOp context + a meta-net that shifts it per image (Zhou et al., CVPR 2022).

Released behaviour matched: 4 context tokens from "a photo of a"; meta-net
``Linear(E, E // 16) -> ReLU -> Linear(E // 16, Dt)`` on the L2-normalized image feature, its output added to
every context token; each image gets its own C text prompts (B x C text-encoder sequences). ``text_chunk``
bounds how many images' prompts go through the text encoder at once (memory), without changing the result.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from scaleprompt.backbone import Backbone
from scaleprompt.config import require
from scaleprompt.encoders import EncoderOptions, splice
from scaleprompt.losses import per_image_cosine_logits
from scaleprompt.methods.base import MethodConfig, PromptMethod
from scaleprompt.methods.coop import init_context
from scaleprompt.methods.prompts import ClassPromptTable


@dataclass
class CoCoOpConfig(MethodConfig):
    n_ctx: int = 4
    ctx_init: str = "a photo of a"
    init_std: float = 0.02
    meta_reduction: int = 16  # hidden width of the meta-net = E // meta_reduction
    text_chunk: int = 0  # images per text-encoder pass (0 = the whole batch)

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.n_ctx >= 1, "n_ctx", f"must be >= 1, got {self.n_ctx}")
        require(self.meta_reduction >= 1, "meta_reduction", f"must be >= 1, got {self.meta_reduction}")
        require(self.text_chunk >= 0, "text_chunk", f"must be >= 0, got {self.text_chunk}")


class CoCoOp(PromptMethod):
    """Not a :class:`FeatureMethod`: every image has its own class text features (:meth:`per_image_text_features`
    of its frozen CLIP image features), so the classifier does not split into one text side for all images."""

    name = "cocoop"
    config_class = CoCoOpConfig
    config: CoCoOpConfig

    def __init__(
        self,
        backbone: Backbone | nn.Module,
        classnames: Sequence[str],
        config: CoCoOpConfig,
        options: EncoderOptions | None = None,
    ) -> None:
        super().__init__(backbone, classnames, config, options)
        self.ctx, prefix, n = init_context(self, config.n_ctx, config.ctx_init, config.init_std)
        self.table = ClassPromptTable(self.text, self.classnames, prefix, n)
        embed_dim = self.clip.visual.output_dim
        hidden = max(1, embed_dim // config.meta_reduction)
        self.meta_net = nn.Sequential(
            nn.Linear(embed_dim, hidden), nn.ReLU(), nn.Linear(hidden, self.text.width)
        )

    def per_image_text_features(self, image_features: Tensor) -> Tensor:
        """``[B, C, E]``: the C class prompts of every image, with the image's meta-net shift."""
        shift = self.meta_net(F.normalize(image_features, dim=-1))  # [B, Dt]
        ctx = self.ctx.unsqueeze(0) + shift.unsqueeze(1)  # [B, n, Dt]
        n_cls = len(self.classnames)
        chunk = self.config.text_chunk or ctx.shape[0]
        out = []
        for part in ctx.split(chunk):
            b = part.shape[0]
            ctx_bc = (
                part.unsqueeze(1).expand(-1, n_cls, -1, -1).reshape(b * n_cls, *part.shape[1:])
            )  # [b*C, n, Dt]
            embeds = self.table.embeds.repeat(b, 1, 1)  # [b*C, T, Dt]
            ids = self.table.ids.repeat(b, 1)  # [b*C, T]
            feats = self.text(splice(embeds, ctx_bc, start=1), ids)  # [b*C, E]
            out.append(feats.view(b, n_cls, -1))  # [b, C, E]
        return torch.cat(out)  # [B, C, E]

    def logits(self, images: Tensor) -> Tensor:
        img = self.frozen_image_features(images)  # [B, E]
        return per_image_cosine_logits(img, self.per_image_text_features(img), self.ln_logit_scale())
