"""VPT-shallow (Jia et al., ECCV 2022): learned tokens inserted once, at the first vision block, and carried
through the others; a fixed text classifier (each dataset's hand-crafted template).

A plug-in method is a :class:`~scaleprompt.methods.PromptMethod` subclass with a ``name`` and a typed config
dataclass (validated in ``__post_init__``); it says WHERE and WHAT to insert and leaves the encoders to scaleprompt
(``self.vision(images, prompts, plan)``). Equal to ``vpt_deep`` with ``depth=1`` (the test checks the logits).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from torch import Tensor, nn

from scaleprompt.backbone import Backbone
from scaleprompt.config import require
from scaleprompt.encoders import EncoderOptions, VisualPlan
from scaleprompt.methods import FixedTextMethod
from scaleprompt.methods.base import FixedTextConfig, normal_prompts


@dataclass
class VPTShallowConfig(FixedTextConfig):
    n_ctx: int = 8  # learned tokens after the class token
    init_std: float = 0.02  # their N(0, std) initialisation

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.n_ctx >= 1, "n_ctx", f"must be >= 1, got {self.n_ctx}")
        require(self.init_std > 0, "init_std", f"must be > 0, got {self.init_std}")


class VPTShallow(FixedTextMethod):
    name = "vpt_shallow"
    config_class = VPTShallowConfig
    config: VPTShallowConfig

    def __init__(
        self,
        backbone: Backbone | nn.Module,
        classnames: Sequence[str],
        config: VPTShallowConfig,
        options: EncoderOptions | None = None,
    ) -> None:
        super().__init__(backbone, classnames, config, options)
        # [1, N, Dv]: prompts for block 0 only; the later blocks carry their outputs on
        self.prompts = normal_prompts(1, config.n_ctx, self.vision.width, std=config.init_std)
        self.plan = VisualPlan(position="after_cls", stage="after_ln_pre")

    def image_features(self, images: Tensor) -> Tensor:
        return self.vision(images, self.prompts, self.plan)
