"""The interface every prompt method implements, and what the methods share."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from scaleprompt.config import ConfigError, check_types, require
from scaleprompt.encoders import PromptedTextEncoder, PromptedVisionEncoder
from scaleprompt.losses import cosine_logits
from scaleprompt.methods.prompts import ClassPromptTable

DEFAULT_TEMPLATE = "a photo of a {}."


@dataclass
class MethodConfig:
    """Base of every method config. Subclasses add fields and extend ``__post_init__``."""

    def __post_init__(self) -> None:
        check_types(self)


@dataclass
class FixedTextConfig(MethodConfig):
    """Methods whose classifier is the frozen text encoder over hand-crafted templates."""

    # The template rule: None = the dataset's hand-crafted template (the engine passes it per dataset, also to
    # transfer targets; without a dataset "a photo of a {}."); set = these templates on every dataset (a recipe
    # override, or a method that fixes its template). One template = the papers' setting; several = a prompt
    # ensemble (mean of normalized text features).
    templates: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.templates is None:
            return
        require(len(self.templates) > 0, "templates", "needs at least one template")
        for t in self.templates:
            require(
                t.count("{}") == 1, "templates", f"{t!r} must contain exactly one '{{}}' for the class name"
            )


class LossOutput(NamedTuple):
    """A training loss, the logits, and the loss's named parts (for logging). A NamedTuple, so that ZeRO-3's
    hooks see the tensors inside the engine's output (they re-gather the prompts for backward)."""

    loss: Tensor
    logits: Tensor
    parts: dict[str, Tensor]


def check_depth(value: int | None, blocks: int, name: str) -> int:
    """Resolve a depth field (None = every block) against a tower, with an error naming the field."""
    if value is None:
        return blocks
    if value > blocks:
        raise ConfigError(f"{name}={value} is larger than the {blocks} blocks of the tower")
    return value


def clean_classnames(classnames: Sequence[str]) -> list[str]:
    names = [str(c).replace("_", " ").strip() for c in classnames]
    if not names:
        raise ValueError("classnames is empty")
    return names


class PromptMethod(nn.Module):
    """A prompt method over a frozen open_clip CLIP.

    Subclasses set ``name`` and ``config_class``, create their prompt parameters in ``__init__`` and implement
    ``image_features`` and ``compute_text_features``. Methods whose text side is frozen set
    ``frozen_text = True``: their class text features are computed once and cached in a non-persistent buffer.
    """

    name: ClassVar[str]
    config_class: ClassVar[type[MethodConfig]]
    frozen_text: ClassVar[bool] = False
    trains: ClassVar[bool] = True  # False: nothing to train (zero-shot CLIP)

    def __init__(self, clip: nn.Module, classnames: Sequence[str], config: MethodConfig) -> None:
        super().__init__()
        if not isinstance(config, self.config_class):
            raise TypeError(f"{self.name} needs a {self.config_class.__name__}, got {type(config).__name__}")
        self.config = config
        self.classnames = clean_classnames(classnames)
        self.templates = self._templates_for(None)
        self.clip = clip
        clip.requires_grad_(False)
        self.vision = PromptedVisionEncoder(clip)
        self.text = PromptedTextEncoder(clip)
        self.register_buffer("_text_cache", None, persistent=False)

    # --- the interface -------------------------------------------------------------------------------------
    def image_features(self, images: Tensor) -> Tensor:
        """Prompted image features ``[B, E]``."""
        raise NotImplementedError

    def compute_text_features(self) -> Tensor:
        """Class text features ``[C, E]``."""
        raise NotImplementedError

    def text_features(self) -> Tensor:
        if not self.frozen_text:
            return self.compute_text_features()
        if self._text_cache is None:
            with torch.no_grad():
                self._text_cache = self.compute_text_features().detach()
        return self._text_cache

    def logits(self, images: Tensor) -> Tensor:
        """``[B, C]`` class logits."""
        return self.logits_from(self.image_features(images))

    def logits_from(self, image_features: Tensor) -> Tensor:
        """``[B, C]`` logits of already computed image features against the class text features."""
        return cosine_logits(image_features, self.text_features(), self.clip.logit_scale)

    def loss(self, images: Tensor, labels: Tensor) -> LossOutput:
        logits = self.logits(images)
        ce = F.cross_entropy(logits, labels)
        return LossOutput(loss=ce, logits=logits, parts={"ce": ce.detach()})

    def forward(self, images: Tensor, labels: Tensor | None = None) -> Tensor | LossOutput:
        """``logits`` without labels, the :class:`LossOutput` with them (the engine calls this)."""
        return self.logits(images) if labels is None else self.loss(images, labels)

    def _templates_for(self, dataset_templates: Sequence[str] | None) -> tuple[str, ...] | None:
        """The hand-crafted templates this method uses on a dataset (None for methods with learned text)."""
        if not isinstance(self.config, FixedTextConfig):
            return None
        return tuple(self.config.templates or dataset_templates or (DEFAULT_TEMPLATE,))

    def effective_config(self) -> MethodConfig:
        """The config with the templates actually in use (what a prompt file records)."""
        if isinstance(self.config, FixedTextConfig):
            return dataclasses.replace(self.config, templates=self.templates)
        return self.config

    def use_dataset_templates(self, dataset_templates: Sequence[str] | None) -> None:
        """The hand-crafted template(s) of the dataset being classified; only a fixed-text method whose config
        leaves ``templates`` unset uses them (the template rule of :class:`FixedTextConfig`)."""
        self.templates = self._templates_for(dataset_templates)
        self._text_cache = None

    def set_classnames(
        self, classnames: Sequence[str], dataset_templates: Sequence[str] | None = None
    ) -> None:
        """Move the trained prompts to another class set (novel classes, transfer datasets), with that dataset's
        template(s) for the methods that take them."""
        self.classnames = clean_classnames(classnames)
        if dataset_templates is not None:
            self.templates = self._templates_for(dataset_templates)
        self._text_cache = None
        for module in self.modules():
            if isinstance(module, ClassPromptTable):
                module.rebuild(self.text, self.classnames)

    # --- shared helpers ------------------------------------------------------------------------------------
    def train(self, mode: bool = True) -> PromptMethod:
        super().train(mode)
        self.clip.eval()  # the backbone stays in eval mode whatever the method does
        return self

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def prompt_state_dict(self) -> dict[str, Tensor]:
        """The trained tensors only, by name (never a backbone weight)."""
        return {n: p.detach() for n, p in self.named_parameters() if p.requires_grad}

    def template_features(self, templates: Sequence[str]) -> Tensor:
        """Frozen class features ``[C, E]`` from hand-crafted templates (mean of normalized if several)."""
        feats = []
        for template in templates:
            f = self.text.encode_texts([template.format(c) for c in self.classnames])  # [C, E]
            feats.append(F.normalize(f, dim=-1) if len(templates) > 1 else f)
        return torch.stack(feats).mean(0)  # [C, E]

    def frozen_image_features(self, images: Tensor) -> Tensor:
        """Un-prompted CLIP image features ``[B, E]`` under no_grad."""
        with torch.no_grad():
            return self.vision(images)

    def phrase_embeddings(self, phrase: str, n: int) -> Tensor:
        """Embeddings ``[n, Dt]`` of the first ``n`` tokens of ``phrase`` (after start-of-text)."""
        ids = self.text.tokenize([phrase])
        n_words = int(ids.argmax(-1)) - 1
        if n > n_words:
            raise ConfigError(f"ctx_init: {phrase!r} has {n_words} tokens, fewer than the {n} asked for")
        return self.text.embed(ids)[0, 1 : 1 + n].clone().float()

    def extra_repr(self) -> str:
        n = sum(p.numel() for p in self.trainable_parameters())
        return f"{self.name}: {len(self.classnames)} classes, {n} trainable values"

    @classmethod
    def describe_config(cls) -> dict[str, Any]:
        return {f.name: f.default for f in dataclasses.fields(cls.config_class)}


def normal_prompts(*shape: int, std: float = 0.02) -> nn.Parameter:
    """A prompt parameter initialised N(0, std^2) (CoOp / VPT / UPT / MaPLe convention)."""
    return nn.Parameter(nn.init.normal_(torch.empty(*shape), std=std))
