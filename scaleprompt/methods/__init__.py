"""Prompt methods: ``list_methods()``, ``build(name, backbone, classnames, **overrides)``, save / load."""

from scaleprompt.methods.base import FeatureMethod, FixedTextMethod, LossOutput, MethodConfig, PromptMethod
from scaleprompt.methods.io import PromptFileError, load_prompts, save_prompts
from scaleprompt.methods.registry import (
    METHODS,
    build,
    list_methods,
    make_config,
    method_class,
    register_method,
)

__all__ = [
    "METHODS",
    "FeatureMethod",
    "FixedTextMethod",
    "LossOutput",
    "MethodConfig",
    "PromptFileError",
    "PromptMethod",
    "build",
    "list_methods",
    "load_prompts",
    "make_config",
    "method_class",
    "register_method",
    "save_prompts",
]
