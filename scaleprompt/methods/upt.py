"""UPT: one shared prompt, transformed, split into text and visual prompts (Zang et al., 2022).

``U in R^{2n x Dt}`` ~ N(0, 0.02). A small transformer layer (width Dt, ``heads``, feed-forward ``ff_dim``
(default Dt), ReLU, dropout 0.1; residual attention with post-norm, then a pre-norm feed-forward residual)
transforms it; the first n outputs replace the placeholder words of ``"X ... X {classname}."`` (input layer), the
last n go through ``Linear(Dt, Dv)`` and are inserted after the class token, before ``ln_pre``.

Variants (``variant``):

* ``"attention"`` (default, the PAPER): self-attention ACROSS the 2n tokens, so text and visual halves mix.
* ``"per_token"`` (the RELEASE): the release feeds ``[1, 2n, D]`` to a sequence-first attention, so every token
  attends only to itself; reproduced here with a diagonal attention mask.
* ``"mlp"``: a token-wise MLP in place of the attention sub-layer (ablation).

``layerwise=True`` gives each of the first ``depth`` blocks its own ``U^i`` (deep insertion on both towers,
replacing the previous prompt outputs); the transform and the visual projection are shared across blocks.
Deliberate difference: the release runs the transform twice per step (text and visual halves, so two dropout
masks); here it runs once and both halves come from the same output, as in the paper.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from scaleprompt.backbone import Backbone
from scaleprompt.config import ConfigError, require
from scaleprompt.encoders import EncoderOptions, VisualPlan
from scaleprompt.losses import cosine_logits
from scaleprompt.methods.base import FeatureMethod, MethodConfig, normal_prompts
from scaleprompt.methods.prompts import ClassPromptTable

Variant = Literal["attention", "per_token", "mlp"]
AFTER_CLS = VisualPlan(position="after_cls", stage="before_ln_pre", mix="replace")


@dataclass
class UPTConfig(MethodConfig):
    n_ctx: int = 4  # n: text and visual prompts each get n tokens; U has 2n
    variant: Variant = "attention"
    num_layers: int = 1
    num_heads: int = 1
    ff_dim: int | None = None  # None = Dt (the release; not 4 * Dt)
    dropout: float = 0.1
    layerwise: bool = False  # a U^i per block (deep), instead of one U at the input ("shallow")
    depth: int | None = None  # blocks with unified prompts when layerwise (None = every block)
    init_std: float = 0.02

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.n_ctx >= 1, "n_ctx", f"must be >= 1, got {self.n_ctx}")
        require(self.num_layers >= 1, "num_layers", f"must be >= 1, got {self.num_layers}")
        require(self.num_heads >= 1, "num_heads", f"must be >= 1, got {self.num_heads}")
        require(self.ff_dim is None or self.ff_dim >= 1, "ff_dim", f"must be >= 1, got {self.ff_dim}")
        require(0.0 <= self.dropout < 1.0, "dropout", f"must be in [0, 1), got {self.dropout}")
        require(self.depth is None or self.depth >= 1, "depth", f"must be >= 1, got {self.depth}")
        require(
            self.layerwise or self.depth in (None, 1),
            "depth",
            "needs layerwise=true (shallow UPT has depth 1)",
        )
        require(self.init_std > 0, "init_std", f"must be > 0, got {self.init_std}")


class UnifiedLayer(nn.Module):
    """Post-norm residual mixing sub-layer, then a pre-norm feed-forward residual. ``[G, 2n, D] -> [G, 2n, D]``."""

    def __init__(self, width: int, variant: Variant, heads: int, ff_dim: int, dropout: float) -> None:
        super().__init__()
        self.variant = variant
        if variant == "mlp":
            self.mix: nn.Module = nn.Sequential(nn.Linear(width, ff_dim), nn.ReLU(), nn.Linear(ff_dim, width))
        else:
            self.mix = nn.MultiheadAttention(width, heads, dropout=dropout, batch_first=True)
        self.norm1, self.norm2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.linear1, self.linear2 = nn.Linear(width, ff_dim), nn.Linear(ff_dim, width)
        self.drop, self.drop1, self.drop2 = nn.Dropout(dropout), nn.Dropout(dropout), nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        if self.variant == "mlp":
            mixed = self.mix(x)
        else:
            mask = None
            if self.variant == "per_token":  # every token attends only to itself
                eye = torch.eye(x.shape[1], dtype=torch.bool, device=x.device)
                mask = ~eye  # True = not allowed
            mixed = self.mix(x, x, x, attn_mask=mask, need_weights=False)[0]
        x = self.norm1(x + self.drop1(mixed))
        return x + self.drop2(self.linear2(self.drop(F.relu(self.linear1(self.norm2(x))))))


class UPT(FeatureMethod):
    name = "upt"
    config_class = UPTConfig
    config: UPTConfig

    def __init__(
        self,
        backbone: Backbone | nn.Module,
        classnames: Sequence[str],
        config: UPTConfig,
        options: EncoderOptions | None = None,
    ) -> None:
        super().__init__(backbone, classnames, config, options)
        dt, dv, n = self.text.width, self.vision.width, config.n_ctx
        if dt % config.num_heads:
            raise ConfigError(f"num_heads={config.num_heads} does not divide the text width {dt}")
        depth = 1
        if config.layerwise:
            blocks = min(self.text.num_blocks, self.vision.num_blocks)
            depth = config.depth or blocks
            if depth > blocks:
                raise ConfigError(f"depth={depth} is larger than the {blocks} blocks of the towers")
        self.unified = normal_prompts(depth, 2 * n, dt, std=config.init_std)  # [G, 2n, Dt]
        ff = config.ff_dim or dt
        self.transform = nn.Sequential(
            *(
                UnifiedLayer(dt, config.variant, config.num_heads, ff, config.dropout)
                for _ in range(config.num_layers)
            )
        )
        self.visual_proj = nn.Linear(dt, dv)
        self.table = ClassPromptTable(self.text, self.classnames, " ".join(["X"] * n), n)

    def split_prompts(self) -> tuple[Tensor, Tensor]:
        """(text context ``[G, n, Dt]``, visual prompts ``[G, n, Dv]``) from one pass of the transform."""
        out = self.transform(self.unified)  # [G, 2n, Dt]
        n = self.config.n_ctx
        return out[:, :n], self.visual_proj(out[:, n:])

    def encode_image(self, images: Tensor, visual: Tensor) -> Tensor:
        """Image features ``[B, E]`` with the visual prompts ``[G, n, Dv]`` of :meth:`split_prompts`."""
        return self.vision(images, list(visual), AFTER_CLS)

    def encode_text(self, text_ctx: Tensor) -> Tensor:
        """Class text features ``[C, E]`` with the text context ``[G, n, Dt]`` of :meth:`split_prompts`."""
        return self.text(self.table.assemble(text_ctx[0]), self.table.ids, deep=list(text_ctx[1:]))  # [C, E]

    def image_features(self, images: Tensor) -> Tensor:
        return self.encode_image(images, self.split_prompts()[1])

    def compute_text_features(self) -> Tensor:
        return self.encode_text(self.split_prompts()[0])

    def logits(self, images: Tensor) -> Tensor:
        """Both towers from ONE pass of the transform (one dropout mask in training, as in the paper);
        :meth:`image_features` and :meth:`text_features` each run their own pass."""
        text_ctx, visual = self.split_prompts()
        return cosine_logits(
            self.encode_image(images, visual), self.encode_text(text_ctx), self.ln_logit_scale()
        )
