"""The contract every prompt method implements (:class:`PromptMethod`: ``logits`` and ``loss``), the optional split
into image and text features (:class:`FeatureMethod`), fixed hand-crafted text (:class:`FixedTextMethod`), and
what the methods share."""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, NamedTuple, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from scaleprompt.backbone import Backbone, OpenClipModule
from scaleprompt.config import ConfigError, check_types, require
from scaleprompt.encoders import EncoderOptions, PromptedTextEncoder, PromptedVisionEncoder
from scaleprompt.losses import cosine_logits
from scaleprompt.methods.prompts import ClassPromptTable, class_prompt_problems, report_class_prompt_problems

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


def host_value(t: Tensor) -> float | None:
    """The value of the one-element tensor ``t`` as a Python float; None for a tensor without values (the meta
    device, a fake tensor)."""
    from torch._subclasses.fake_tensor import is_fake

    if t.device.type == "meta" or is_fake(t):
        return None
    return float(t.detach().float().reshape(-1)[0])


class PromptMethod(nn.Module, ABC):
    """A prompt method over a frozen open_clip CLIP: what the engine, the evaluation and the predictor use.

    The contract is :meth:`logits` (``[B, C]`` class logits of images) and :meth:`loss` (default: cross-entropy of
    the logits). Subclasses set ``name`` and ``config_class`` and create their prompt parameters in ``__init__``.
    Methods whose classifier splits into image features and one set of class text features derive from
    :class:`FeatureMethod`; those whose text side is hand-crafted templates from :class:`FixedTextMethod`.

    ``backbone``: a :class:`~scaleprompt.backbone.Backbone` (from ``load_clip``), or a bare open_clip CLIP (CLIP's BPE
    tokenizer, and prompt files record no backbone). ``self.clip`` is the frozen open_clip model. ``classnames``: the
    classes to tell apart; ``config``: the method's config (an instance of its ``config_class``); ``options``: how its
    encoders compute (:class:`~scaleprompt.encoders.EncoderOptions`: fast paths, text chunk; None: the defaults),
    fixed when the method is built.

    Whenever its class prompts are built (``registry.build``, :meth:`set_classnames`, new dataset templates) a
    method checks them (:meth:`check_classnames`): class names its backbone's tokenizer cannot spell, prompts cut by the
    context, classes with identical prompts are logged as warnings.
    """

    name: ClassVar[str]
    config_class: ClassVar[type[MethodConfig]]
    trains: ClassVar[bool] = True  # False: nothing to train (zero-shot CLIP)

    def __init__(
        self,
        backbone: Backbone | nn.Module,
        classnames: Sequence[str],
        config: MethodConfig,
        options: EncoderOptions | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(config, self.config_class):
            raise TypeError(f"{self.name} needs a {self.config_class.__name__}, got {type(config).__name__}")
        backbone = Backbone.of(backbone)
        self.config = config
        self.classnames = clean_classnames(classnames)
        self.templates: tuple[str, ...] | None = None  # the hand-crafted templates in use (FixedTextMethod)
        self.backbone_info = backbone.info
        self.clip: OpenClipModule = backbone.model  # (open_clip's CLIP: untyped)
        self.clip.requires_grad_(False)
        # CLIP's log inverse temperature as the backbone holds it (fp32), read once: a bf16 / fp16 engine casts
        # the parameter (ln 100 -> 4.594 in bf16: a scale of 98.9); None: a meta / fake build (the planner's)
        self._ln_scale = host_value(cast(Tensor, self.clip.logit_scale))
        self.vision = PromptedVisionEncoder(self.clip, options)
        self.text = PromptedTextEncoder(self.clip, backbone.tokenizer, options)
        self._checked_prompts: tuple[tuple[str, ...], ...] | None = None  # the class prompts last checked

    # --- the contract --------------------------------------------------------------------------------------
    @abstractmethod
    def logits(self, images: Tensor) -> Tensor:
        """``[B, C]`` class logits."""

    def loss(self, images: Tensor, labels: Tensor) -> LossOutput:
        logits = self.logits(images)
        ce = F.cross_entropy(logits, labels)
        return LossOutput(loss=ce, logits=logits, parts={"ce": ce.detach()})

    def forward(self, images: Tensor, labels: Tensor | None = None) -> Tensor | LossOutput:
        """``logits`` without labels, the :class:`LossOutput` with them (the engine calls this)."""
        return self.logits(images) if labels is None else self.loss(images, labels)

    @property
    def options(self) -> EncoderOptions:
        """How the method's encoders compute (given when it was built)."""
        return self.vision.options

    @property
    def backbone(self) -> Backbone:
        """The frozen backbone the method runs on (its model, tokenizer and info)."""
        return Backbone(self.clip, self.text.tokenizer, self.backbone_info)

    def effective_config(self) -> MethodConfig:
        """The config as a prompt file records it (:class:`FixedTextMethod`: with the templates in use)."""
        return self.config

    def use_dataset_templates(self, dataset_templates: Sequence[str] | None) -> None:
        """The hand-crafted template(s) of the dataset being classified. Only a :class:`FixedTextMethod` uses
        them; methods with learned text have none."""

    def set_classnames(
        self, classnames: Sequence[str], dataset_templates: Sequence[str] | None = None
    ) -> None:
        """Move the trained prompts to another class set (novel classes, transfer datasets), with that dataset's
        template(s) for the methods that take them."""
        self.classnames = clean_classnames(classnames)
        if dataset_templates is not None:
            self.use_dataset_templates(dataset_templates)
        for module in self.modules():
            if isinstance(module, ClassPromptTable):
                module.rebuild(self.text, self.classnames)
        self.check_classnames()

    # --- the class-prompt check ----------------------------------------------------------------------------
    def class_prompts(
        self, classnames: Sequence[str] | None = None, dataset_templates: Sequence[str] | None = None
    ) -> list[list[str]]:
        """The class prompt strings, one list of C per prompt table (``"{prefix} {classname}."``; a
        :class:`FixedTextMethod`: per template). Default: the current classes (and templates)."""
        names = self.classnames if classnames is None else clean_classnames(classnames)
        prompts: list[list[str]] = []
        for module in self.modules():
            if isinstance(module, ClassPromptTable) and module.texts(names) not in prompts:
                prompts.append(module.texts(names))
        return prompts

    def classname_problems(
        self, classnames: Sequence[str] | None = None, dataset_templates: Sequence[str] | None = None
    ) -> list[str]:
        """What keeps the backbone from telling these classes apart (:func:`~scaleprompt.methods.prompts.
        class_prompt_problems`: unknown words, cut prompts, identical prompts), one line per kind of problem.
        Default: the current classes (and templates). Tokenization only.

        Other classes whose learned-context prompts do not fit in the context raise the :class:`ConfigError` that
        :meth:`set_classnames` would raise for them."""
        names = self.classnames if classnames is None else clean_classnames(classnames)
        if classnames is not None:
            for module in self.modules():
                if isinstance(module, ClassPromptTable):
                    module.tokenize(self.text, names)
        backbone = self.backbone_info.model_name if self.backbone_info is not None else None
        prompts = self.class_prompts(names, dataset_templates)
        return class_prompt_problems(self.text.tokenizer, self.text.context_length, names, prompts, backbone)

    def check_classnames(
        self,
        classnames: Sequence[str] | None = None,
        dataset_templates: Sequence[str] | None = None,
        *,
        strict: bool = False,
    ) -> list[str]:
        """:meth:`classname_problems`, logged as warnings (each once per process), or with ``strict`` a
        :class:`ConfigError` naming the classes. Returns the problems found. Called without arguments whenever the
        method's class prompts are built: the prompts checked last are not checked again (returns [])."""
        if classnames is None and dataset_templates is None and not strict:
            prompts = tuple(tuple(p) for p in self.class_prompts())
            if prompts == self._checked_prompts:
                return []
            self._checked_prompts = prompts
        problems = self.classname_problems(classnames, dataset_templates)
        if strict and problems:
            raise ConfigError("; ".join(problems))
        report_class_prompt_problems(problems)
        return problems

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

    def ln_logit_scale(self) -> Tensor:
        """CLIP's log inverse temperature (the logits' scale is its exp), an fp32 scalar on the parameter's device:
        the fp32 value read at build, whatever the precision the engine cast the model to."""
        p = cast(Tensor, self.clip.logit_scale)  # (nn.Module's attribute typing says Tensor | Module)
        if self._ln_scale is None:
            return p.float()
        return torch.full((), self._ln_scale, dtype=torch.float32, device=p.device)  # (p may be partitioned)

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


class FeatureMethod(PromptMethod):
    """A method whose classifier compares image features ``[B, E]`` with ONE set of class text features ``[C, E]``
    shared by every image: ``logits = logit_scale.exp() * normalize(image) @ normalize(text).T``.

    Subclasses implement :meth:`image_features` and :meth:`compute_text_features`. With ``frozen_text = True`` the
    class text features are computed once and cached in a non-persistent buffer (until the classes change).
    """

    frozen_text: ClassVar[bool] = False
    _text_cache: Tensor | None  # (a buffer, registered in __init__)

    def __init__(
        self,
        backbone: Backbone | nn.Module,
        classnames: Sequence[str],
        config: MethodConfig,
        options: EncoderOptions | None = None,
    ) -> None:
        super().__init__(backbone, classnames, config, options)
        self.register_buffer("_text_cache", None, persistent=False)

    @abstractmethod
    def image_features(self, images: Tensor) -> Tensor:
        """Prompted image features ``[B, E]``."""

    @abstractmethod
    def compute_text_features(self) -> Tensor:
        """Class text features ``[C, E]``."""

    def text_features(self) -> Tensor:
        """Class text features ``[C, E]`` (cached when the text side is frozen)."""
        if not self.frozen_text:
            return self.compute_text_features()
        if self._text_cache is None:
            with torch.no_grad():
                self._text_cache = self.compute_text_features().detach()
        return self._text_cache

    def logits_from(self, image_features: Tensor) -> Tensor:
        """``[B, C]`` logits of already computed image features against the class text features."""
        return cosine_logits(image_features, self.text_features(), self.ln_logit_scale())

    def logits(self, images: Tensor) -> Tensor:
        return self.logits_from(self.image_features(images))

    def set_classnames(
        self, classnames: Sequence[str], dataset_templates: Sequence[str] | None = None
    ) -> None:
        super().set_classnames(classnames, dataset_templates)
        self._text_cache = None


class FixedTextMethod(FeatureMethod):
    """A :class:`FeatureMethod` whose class text features are the frozen text encoder over hand-crafted templates
    (the template rule of :class:`FixedTextConfig`); its config class derives from :class:`FixedTextConfig`."""

    frozen_text = True
    config: FixedTextConfig

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        config_class = cls.__dict__.get("config_class")
        if config_class is not None and not issubclass(config_class, FixedTextConfig):
            raise TypeError(f"{cls.__name__}.config_class must derive from FixedTextConfig")

    def __init__(
        self,
        backbone: Backbone | nn.Module,
        classnames: Sequence[str],
        config: MethodConfig,
        options: EncoderOptions | None = None,
    ) -> None:
        super().__init__(backbone, classnames, config, options)
        self.templates = self._templates_for(None)

    def compute_text_features(self) -> Tensor:
        assert self.templates is not None  # (set in __init__)
        return self.template_features(self.templates)

    def class_prompts(
        self, classnames: Sequence[str] | None = None, dataset_templates: Sequence[str] | None = None
    ) -> list[list[str]]:
        names = self.classnames if classnames is None else clean_classnames(classnames)
        templates = self.templates if dataset_templates is None else self._templates_for(dataset_templates)
        return [[template.format(c) for c in names] for template in templates or ()]

    def template_features(self, templates: Sequence[str]) -> Tensor:
        """Frozen class features ``[C, E]`` from hand-crafted templates (mean of normalized if several)."""
        feats = []
        for template in templates:
            f = self.text.encode_texts([template.format(c) for c in self.classnames])  # [C, E]
            feats.append(F.normalize(f, dim=-1) if len(templates) > 1 else f)
        return torch.stack(feats).mean(0)  # [C, E]

    def _templates_for(self, dataset_templates: Sequence[str] | None) -> tuple[str, ...]:
        return tuple(self.config.templates or dataset_templates or (DEFAULT_TEMPLATE,))

    def effective_config(self) -> FixedTextConfig:
        return dataclasses.replace(self.config, templates=self.templates)

    def use_dataset_templates(self, dataset_templates: Sequence[str] | None) -> None:
        """A config that leaves ``templates`` unset takes the dataset's template(s) (the template rule)."""
        self.templates = self._templates_for(dataset_templates)
        self._text_cache = None
        self.check_classnames()


def normal_prompts(*shape: int, std: float = 0.02) -> nn.Parameter:
    """A prompt parameter initialised N(0, std^2) (CoOp / VPT / UPT / MaPLe convention)."""
    return nn.Parameter(nn.init.normal_(torch.empty(*shape), std=std))
