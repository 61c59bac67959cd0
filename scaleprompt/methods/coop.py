"""CoOp: learned text context, frozen image encoder (Zhou et al., IJCV 2022).

Released behaviour matched: N = 16 context vectors N(0, 0.02) shared by all classes (``class_specific`` gives
one context per class), or initialised from the embeddings of ``ctx_init`` (N = its token count);
class token at the end, middle or front of the context, as CoOp's ``CLASS_TOKEN_POSITION``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from torch import Tensor, nn

from scaleprompt.backbone import Backbone
from scaleprompt.config import ConfigError, require
from scaleprompt.encoders import EncoderOptions
from scaleprompt.methods.base import FeatureMethod, MethodConfig, PromptMethod, normal_prompts
from scaleprompt.methods.prompts import ClassPosition, ClassPromptTable


@dataclass
class CoOpConfig(MethodConfig):
    n_ctx: int = 16
    ctx_init: str = ""  # e.g. "a photo of a": initialise from these words and use their count as n_ctx
    class_specific: bool = False
    class_position: ClassPosition = "end"
    init_std: float = 0.02

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.n_ctx >= 1, "n_ctx", f"must be >= 1, got {self.n_ctx}")
        require(self.init_std > 0, "init_std", f"must be > 0, got {self.init_std}")


def init_context(
    method: PromptMethod, n_ctx: int, ctx_init: str, std: float, copies: int = 0
) -> tuple[nn.Parameter, str, int]:
    """CoOp-style context: from ``ctx_init`` words (their count wins) or N(0, std). Returns (ctx, prefix, n)."""
    if ctx_init:
        words = ctx_init.replace("_", " ")
        n = int(method.text.tokenize([words]).argmax(-1)) - 1
        vec = method.phrase_embeddings(words, n)  # [n, Dt]
        if copies:
            vec = vec.unsqueeze(0).repeat(copies, 1, 1)  # [C, n, Dt]
        return nn.Parameter(vec), words, n
    shape = (copies, n_ctx, method.text.width) if copies else (n_ctx, method.text.width)
    return normal_prompts(*shape, std=std), " ".join(["X"] * n_ctx), n_ctx


class CoOp(FeatureMethod):
    name = "coop"
    config_class = CoOpConfig
    config: CoOpConfig

    def __init__(
        self,
        backbone: Backbone | nn.Module,
        classnames: Sequence[str],
        config: CoOpConfig,
        options: EncoderOptions | None = None,
    ) -> None:
        super().__init__(backbone, classnames, config, options)
        copies = len(self.classnames) if config.class_specific else 0
        self.ctx, prefix, n = init_context(self, config.n_ctx, config.ctx_init, config.init_std, copies)
        self.table = ClassPromptTable(self.text, self.classnames, prefix, n, config.class_position)

    def set_classnames(
        self, classnames: Sequence[str], dataset_templates: Sequence[str] | None = None
    ) -> None:
        if self.config.class_specific:
            raise ConfigError(
                "method.args.class_specific: class-specific CoOp context belongs to its training classes: it "
                "cannot move to other classes (base-to-novel, transfer)"
            )
        super().set_classnames(classnames, dataset_templates)

    def image_features(self, images: Tensor) -> Tensor:
        return self.frozen_image_features(images)

    def compute_text_features(self) -> Tensor:
        return self.text(self.table.assemble(self.ctx), self.table.ids)  # [C, E]
