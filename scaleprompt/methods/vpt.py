"""VPT-deep over CLIP's image tower with a fixed text classifier (Jia et al., ECCV 2022).

Per-block prompts N(0, 0.02); block 0 inserts them, later blocks REPLACE the previous prompt outputs with fresh
parameters. Two released layouts (``layout``):

* ``"upt"`` (UPT release): N = 4 tokens after the class token, inserted after ``ln_pre``, dataset template.
* ``"maple"`` (MaPLe release): N = 8 tokens appended after the patches, inserted before ``ln_pre``,
  always "a photo of a {}.".

``depth`` = number of blocks that receive prompts (None = every block); blocks past it carry the outputs on.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from torch import Tensor, nn

from scaleprompt.backbone import Backbone
from scaleprompt.config import require
from scaleprompt.encoders import EncoderOptions, VisualPlan
from scaleprompt.methods.base import (
    DEFAULT_TEMPLATE,
    FixedTextConfig,
    FixedTextMethod,
    check_depth,
    normal_prompts,
)

LAYOUTS = {
    "upt": VisualPlan(position="after_cls", stage="after_ln_pre"),
    "maple": VisualPlan(position="append", stage="before_ln_pre"),
}
DEFAULT_N = {"upt": 4, "maple": 8}


@dataclass
class VPTDeepConfig(FixedTextConfig):
    layout: Literal["upt", "maple"] = "upt"
    n_ctx: int | None = None  # None = the layout's released length (4 for "upt", 8 for "maple")
    depth: int | None = None  # None = every vision block (12 on ViT-B/16)
    init_std: float = 0.02

    def __post_init__(self) -> None:
        if self.layout == "maple" and self.templates is None:
            self.templates = (DEFAULT_TEMPLATE,)  # the MaPLe release's VPT always uses "a photo of a {}."
        super().__post_init__()
        if self.n_ctx is None:
            self.n_ctx = DEFAULT_N[self.layout]
        require(self.n_ctx >= 1, "n_ctx", f"must be >= 1, got {self.n_ctx}")
        require(self.depth is None or self.depth >= 1, "depth", f"must be >= 1, got {self.depth}")
        require(self.init_std > 0, "init_std", f"must be > 0, got {self.init_std}")


class VPTDeep(FixedTextMethod):
    name = "vpt_deep"
    config_class = VPTDeepConfig
    config: VPTDeepConfig

    def __init__(
        self,
        backbone: Backbone | nn.Module,
        classnames: Sequence[str],
        config: VPTDeepConfig,
        options: EncoderOptions | None = None,
    ) -> None:
        super().__init__(backbone, classnames, config, options)
        depth = check_depth(config.depth, self.vision.num_blocks, "depth")
        assert config.n_ctx is not None  # (the config's __post_init__ resolves None to the layout's length)
        self.prompts = normal_prompts(depth, config.n_ctx, self.vision.width, std=config.init_std)  # L, N, Dv
        self.plan = LAYOUTS[config.layout]

    def image_features(self, images: Tensor) -> Tensor:
        return self.vision(images, self.prompts, self.plan)
