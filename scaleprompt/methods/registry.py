"""The one place where methods are registered: name -> (config dataclass, method class). The built-in ones below;
an extension's :func:`register_method`; installed plug-ins' entry points (:mod:`scaleprompt.plugins`), loaded at
the first lookup."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from torch import nn

from scaleprompt import plugins
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
_plugins: list[plugins.Plugin] | None = None  # the scaleprompt.methods entry points, once loaded


def register_method(cls: type[PromptMethod]) -> type[PromptMethod]:
    """Register the method class ``cls`` under its ``name``: how an extension adds a method in its own process
    (an installed package's entry point ``scaleprompt.methods`` reaches every process: :mod:`scaleprompt.plugins`).
    ``cls`` derives from :class:`PromptMethod` with a ``name`` and a ``config_class`` (a :class:`MethodConfig`
    dataclass); a name already taken by another class is an error. Returns ``cls``."""
    if not (isinstance(cls, type) and issubclass(cls, PromptMethod)):
        raise TypeError(f"register_method: {cls!r} is not a PromptMethod subclass")
    name = getattr(cls, "name", None)
    if not isinstance(name, str) or not name.isidentifier():
        raise TypeError(f"register_method: {cls.__name__}.name must be an identifier, got {name!r}")
    config = getattr(cls, "config_class", None)
    if not (isinstance(config, type) and issubclass(config, MethodConfig)):
        raise TypeError(f"register_method: {cls.__name__}.config_class must be a MethodConfig dataclass")
    taken = METHODS.get(name)
    if taken is not None and taken is not cls:
        raise ValueError(f"method {name!r} is already registered ({taken.__module__}.{taken.__qualname__})")
    METHODS[name] = cls
    return cls


def _load_plugins() -> list[plugins.Plugin]:
    """The installed ``scaleprompt.methods`` entry points, registered at the first call (once per process)."""
    global _plugins
    if _plugins is None:
        _plugins = []
        for plugin in plugins.load_group(plugins.METHODS_GROUP):
            if plugin.error is None:
                try:
                    register_method(plugin.obj)
                except (TypeError, ValueError) as exc:
                    plugin = plugins.failed(plugin, str(exc))
            _plugins.append(plugin)
    return _plugins


def list_methods() -> list[str]:
    """Names of the registered methods (the plug-ins' included)."""
    _load_plugins()
    return list(METHODS)


def method_class(name: str) -> type[PromptMethod]:
    """The class of the method registered as ``name`` (a :class:`ConfigError` naming the registered ones)."""
    broken = [p.where() for p in _load_plugins() if p.error is not None]
    try:
        return METHODS[name]
    except KeyError:
        hint = f"; plug-ins that failed to load: {'; '.join(broken)}" if broken else ""
        raise ConfigError(f"unknown method {name!r}; registered: {', '.join(METHODS)}{hint}") from None


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
