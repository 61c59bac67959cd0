"""The one place where methods are registered: name -> (config dataclass, method class)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from torch import nn

from scaleprompt.backbone import Backbone
from scaleprompt.config import ConfigError, from_dict
from scaleprompt.encoders import EncoderOptions
from scaleprompt.methods.base import MethodConfig, PromptMethod
from scaleprompt.methods.cocoop import CoCoOp
from scaleprompt.methods.coop import CoOp
from scaleprompt.methods.ivlp import IVLP
from scaleprompt.methods.maple import MaPLe
from scaleprompt.methods.provp import ProVP, ProVPRef
from scaleprompt.methods.upt import UPT
from scaleprompt.methods.vpt import VPTDeep
from scaleprompt.methods.zsclip import ZSCLIP

METHODS: dict[str, type[PromptMethod]] = {
    cls.name: cls for cls in (ZSCLIP, CoOp, CoCoOp, VPTDeep, IVLP, MaPLe, ProVP, ProVPRef, UPT)
}


def list_methods() -> list[str]:
    """Names of the registered methods."""
    return list(METHODS)


def method_class(name: str) -> type[PromptMethod]:
    """The class of the method registered as ``name`` (a :class:`ConfigError` naming the registered ones)."""
    try:
        return METHODS[name]
    except KeyError:
        raise ConfigError(f"unknown method {name!r}; registered: {', '.join(METHODS)}") from None


def make_config(name: str, values: Mapping[str, Any] | None = None, **overrides: Any) -> MethodConfig:
    """The typed config of method ``name`` from the mapping ``values`` plus ``overrides`` (unknown keys raise,
    naming the key)."""
    return from_dict(method_class(name).config_class, {**dict(values or {}), **overrides}, where=name)


def build(
    name: str,
    backbone: Backbone | nn.Module,
    classnames: Sequence[str],
    *,
    dataset_templates: Sequence[str] | None = None,
    options: EncoderOptions | None = None,
    **overrides: Any,
) -> PromptMethod:
    """Build method ``name`` over a frozen ``backbone`` (``load_clip``'s :class:`~scaleprompt.backbone.Backbone`,
    or a bare open_clip CLIP) for ``classnames``; ``overrides`` set config fields.

    A ``config=`` keyword may pass a ready config instead. ``dataset_templates``: the dataset's hand-crafted
    template(s), used by fixed-text methods whose config leaves ``templates`` unset (the template rule of
    :class:`~scaleprompt.methods.base.FixedTextMethod`; other methods ignore them). ``options``: how the method's
    encoders compute (:class:`~scaleprompt.encoders.EncoderOptions`, e.g. ``text_chunk``; None: the defaults). The
    built method's class prompts are checked (:meth:`~scaleprompt.methods.base.PromptMethod.check_classnames`).
    """
    config = overrides.pop("config", None)
    if config is None:
        config = make_config(name, **overrides)
    elif overrides:
        raise ConfigError("pass either config= or field overrides, not both")
    method = method_class(name)(backbone, classnames, config, options)
    if dataset_templates is not None:
        method.use_dataset_templates(dataset_templates)  # (checks the class prompts with these templates)
    method.check_classnames()  # unknown words, cut or identical class prompts: warned (each once)
    return method
