"""MaPLe: multi-modal prompt learning with text-to-vision coupling (Khattak et al., CVPR 2023).

Text as IVLP: positions 1..2 of ``"a photo of a {classname}."`` learned (from "a photo"); blocks 1..J-1 replace
tokens 1..2 with learned vectors N(0, 0.02). The visual prompt of block l is ``Linear_l(Dt -> Dv)`` of the text
prompt of block l (no vision-only prompt parameters), appended after the patches before ``ln_pre`` and replacing
the last 2 tokens in blocks 1..J-1; blocks J.. carry the prompt outputs on.

Released behaviour matched: the J-1 deep coupling layers are deep copies of ONE initialised Linear (the release's
``_get_clones``), so they start identical; the input-layer coupling ``proj`` is initialised separately.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass

from torch import Tensor, nn

from scaleprompt.backbone import Backbone
from scaleprompt.config import ConfigError, require
from scaleprompt.encoders import EncoderOptions, VisualPlan
from scaleprompt.methods.base import FeatureMethod, MethodConfig, normal_prompts
from scaleprompt.methods.ivlp import template_context

APPENDED = VisualPlan(position="append", stage="before_ln_pre", mix="replace")


@dataclass
class MaPLeConfig(MethodConfig):
    n_ctx: int = 2
    ctx_init: str = "a photo of a"
    prompt_depth: int = 9  # J: blocks 0..J-1 of both towers get prompts (cross-dataset recipe: 3)
    init_std: float = 0.02

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.n_ctx >= 1, "n_ctx", f"must be >= 1, got {self.n_ctx}")
        require(self.prompt_depth >= 1, "prompt_depth", f"must be >= 1, got {self.prompt_depth}")
        require(self.init_std > 0, "init_std", f"must be > 0, got {self.init_std}")


class MaPLe(FeatureMethod):
    name = "maple"
    config_class = MaPLeConfig
    config: MaPLeConfig

    def __init__(
        self,
        backbone: Backbone | nn.Module,
        classnames: Sequence[str],
        config: MaPLeConfig,
        options: EncoderOptions | None = None,
    ) -> None:
        super().__init__(backbone, classnames, config, options)
        blocks = min(self.text.num_blocks, self.vision.num_blocks)
        if config.prompt_depth > blocks:
            raise ConfigError(
                f"prompt_depth={config.prompt_depth} is larger than the {blocks} blocks of the towers"
            )
        dt, dv = self.text.width, self.vision.width
        self.ctx, self.table = template_context(self, config.n_ctx, config.ctx_init, config.init_std)
        self.deep_text = normal_prompts(config.prompt_depth - 1, config.n_ctx, dt, std=config.init_std)
        self.proj = nn.Linear(dt, dv)
        layer = nn.Linear(dt, dv)
        self.deep_proj = nn.ModuleList(copy.deepcopy(layer) for _ in range(config.prompt_depth - 1))

    def visual_prompts(self) -> list[Tensor]:
        """``[N, Dv]`` per block 0..J-1: the projection of that block's text prompt."""
        return [self.proj(self.ctx)] + [f(p) for f, p in zip(self.deep_proj, self.deep_text, strict=True)]

    def image_features(self, images: Tensor) -> Tensor:
        return self.vision(images, self.visual_prompts(), APPENDED)

    def compute_text_features(self) -> Tensor:
        return self.text(self.table.assemble(self.ctx), self.table.ids, deep=self.deep_text)  # [C, E]
