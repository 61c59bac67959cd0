"""IVLP: independent deep prompts on both towers (baseline of the MaPLe paper).

Text: the full template ``"a photo of a {classname}."``; the embeddings at positions 1..2 ("a photo") are learned,
initialised from those words; text blocks 1..text_depth-1 each replace tokens 1..2 with fresh learned vectors
N(0, 0.02). Visual: 2 learned tokens N(0, 0.02) appended after the patches before ``ln_pre``; vision blocks
1..vision_depth-1 replace them with fresh vectors. Depth 12 on both towers (None = every block).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from torch import Tensor, nn

from scaleprompt.backbone import Backbone
from scaleprompt.config import require
from scaleprompt.encoders import EncoderOptions, VisualPlan
from scaleprompt.methods.base import FeatureMethod, MethodConfig, PromptMethod, check_depth, normal_prompts
from scaleprompt.methods.prompts import ClassPromptTable

APPENDED = VisualPlan(position="append", stage="before_ln_pre", mix="replace")


@dataclass
class IVLPConfig(MethodConfig):
    text_n_ctx: int = 2
    vision_n_ctx: int = 2
    ctx_init: str = "a photo of a"  # the text template; its first text_n_ctx tokens are learned
    text_depth: int | None = None  # None = every text block (12 on ViT-B/16)
    vision_depth: int | None = None  # None = every vision block (12 on ViT-B/16)
    init_std: float = 0.02

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("text_n_ctx", "vision_n_ctx"):
            require(getattr(self, name) >= 1, name, f"must be >= 1, got {getattr(self, name)}")
        for name in ("text_depth", "vision_depth"):
            value = getattr(self, name)
            require(value is None or value >= 1, name, f"must be >= 1, got {value}")
        require(self.init_std > 0, "init_std", f"must be > 0, got {self.init_std}")


def template_context(
    method: PromptMethod, n_ctx: int, ctx_init: str, std: float
) -> tuple[nn.Parameter, ClassPromptTable]:
    """IVLP / MaPLe text input: ``"{ctx_init} {classname}."`` with its first ``n_ctx`` tokens learned
    (initialised from those words), or ``n_ctx`` placeholder words with N(0, std) context if no ``ctx_init``."""
    if ctx_init:
        words = ctx_init.replace("_", " ")
        ctx = nn.Parameter(method.phrase_embeddings(words, n_ctx))  # [n, Dt]
    else:
        words = " ".join(["X"] * n_ctx)
        ctx = normal_prompts(n_ctx, method.text.width, std=std)
    return ctx, ClassPromptTable(method.text, method.classnames, words, n_ctx)


class IVLP(FeatureMethod):
    name = "ivlp"
    config_class = IVLPConfig
    config: IVLPConfig

    def __init__(
        self,
        backbone: Backbone | nn.Module,
        classnames: Sequence[str],
        config: IVLPConfig,
        options: EncoderOptions | None = None,
    ) -> None:
        super().__init__(backbone, classnames, config, options)
        t_depth = check_depth(config.text_depth, self.text.num_blocks, "text_depth")
        v_depth = check_depth(config.vision_depth, self.vision.num_blocks, "vision_depth")
        self.ctx, self.table = template_context(self, config.text_n_ctx, config.ctx_init, config.init_std)
        self.deep_text = normal_prompts(t_depth - 1, config.text_n_ctx, self.text.width, std=config.init_std)
        self.visual_prompts = normal_prompts(
            v_depth, config.vision_n_ctx, self.vision.width, std=config.init_std
        )

    def image_features(self, images: Tensor) -> Tensor:
        return self.vision(images, self.visual_prompts, APPENDED)

    def compute_text_features(self) -> Tensor:
        return self.text(self.table.assemble(self.ctx), self.table.ids, deep=self.deep_text)  # [C, E]
