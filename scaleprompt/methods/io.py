"""Save and load trained prompts: the trained tensors as safetensors, the method config as JSON inside the
file's metadata. Writes are atomic; nothing is unpickled on load.

The metadata records the config as the method runs it (a fixed-text method's templates resolved), and
``templates_from: "dataset"`` when those templates are the dataset's own (the recipe left ``templates`` unset):
the loaded method then follows the template rule again, so on another dataset (a transfer target) it takes that
dataset's template, as during training."""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from scaleprompt.backbone import Backbone
from scaleprompt.config import to_dict
from scaleprompt.methods.base import FixedTextConfig, FixedTextMethod, PromptMethod
from scaleprompt.methods.registry import build, make_config
from scaleprompt.promptfile import FORMAT, PromptFileError

__all__ = ["FORMAT", "PromptFileError", "load_prompts", "read_prompt_file", "save_prompts"]


def atomic_write(path: Path, write: Any) -> None:
    """Call ``write(tmp_path)`` then atomically rename onto ``path`` (a crash never leaves a half file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def prompt_metadata(method: PromptMethod) -> dict[str, str]:
    info = method.backbone_info
    meta = {
        "format": FORMAT,
        "method": method.name,
        "config": json.dumps(to_dict(method.effective_config())),  # (the templates in use, resolved)
        "classnames": json.dumps(method.classnames),
        "backbone": json.dumps(asdict(info) if info is not None else None),
    }
    if isinstance(method, FixedTextMethod) and method.config.templates is None:
        meta["templates_from"] = "dataset"  # (the template rule: another dataset brings its own template)
    return meta


def save_prompts(
    method: PromptMethod, path: str | Path, extra_metadata: dict[str, str] | None = None
) -> Path:
    """Write the method's trained tensors + config to ``path`` (a ``.safetensors`` file); ``extra_metadata``
    adds string entries (e.g. where converted prompts came from)."""
    path = Path(path)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in method.prompt_state_dict().items()}
    metadata = {**prompt_metadata(method), **(extra_metadata or {})}
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))
    return path


def read_prompt_file(path: str | Path) -> tuple[dict[str, str], dict[str, torch.Tensor]]:
    path = Path(path)
    if not path.is_file():
        raise PromptFileError(f"prompt file not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata() or {}
            tensors = {k: fh.get_tensor(k) for k in fh.keys()}  # noqa: SIM118 - safe_open has no __iter__
    except Exception as exc:  # noqa: BLE001 - any parse failure means a corrupt file
        raise PromptFileError(f"{path} is not a readable safetensors file: {exc}") from exc
    if meta.get("format") != FORMAT:
        raise PromptFileError(f"{path} is not a scaleprompt prompt file (format={meta.get('format')!r})")
    return meta, tensors


def load_prompts(
    path: str | Path, backbone: Backbone | nn.Module, classnames: Sequence[str] | None = None
) -> PromptMethod:
    """Rebuild the saved method on ``backbone`` (``load_clip``'s, or a bare open_clip CLIP, which is not checked
    against the file's backbone) and load its trained tensors (strict: names and shapes).

    ``classnames`` defaults to the saved ones; pass others to evaluate the same prompts on new classes
    (methods whose prompts do not depend on the class count). The method classifies with the saved templates;
    :meth:`~scaleprompt.methods.base.PromptMethod.set_classnames` with another dataset's templates moves a
    fixed-text method whose templates came from its dataset (``templates_from``) to those."""
    meta, tensors = read_prompt_file(path)
    saved_backbone = json.loads(meta.get("backbone", "null"))
    backbone = Backbone.of(backbone)
    info = backbone.info
    if saved_backbone and info is not None:
        for key in ("vision_width", "vision_layers", "text_width", "text_layers", "embed_dim"):
            if saved_backbone.get(key) != getattr(info, key):
                raise PromptFileError(
                    f"{path} was trained on backbone {saved_backbone.get('model_name')} ({key}="
                    f"{saved_backbone.get(key)}), this backbone {info.model_name} has {key}={getattr(info, key)}"
                )
    config = make_config(meta["method"], json.loads(meta["config"]))
    names = list(classnames) if classnames is not None else json.loads(meta["classnames"])
    saved_templates = None
    if meta.get("templates_from") == "dataset" and isinstance(config, FixedTextConfig):
        saved_templates = config.templates  # the dataset's template(s), under the template rule
        config = dataclasses.replace(config, templates=None)
    method = build(meta["method"], backbone, names, config=config, dataset_templates=saved_templates)
    own = dict(method.named_parameters())
    expected = set(method.prompt_state_dict())
    missing, unexpected = sorted(expected - set(tensors)), sorted(set(tensors) - expected)
    if missing or unexpected:
        raise PromptFileError(f"{path}: missing tensors {missing}, unexpected tensors {unexpected}")
    with torch.no_grad():
        for name, value in tensors.items():
            if own[name].shape != value.shape:
                raise PromptFileError(
                    f"{path}: tensor {name} has shape {tuple(value.shape)}, the method needs {tuple(own[name].shape)}"
                )
            own[name].copy_(value)
    return method
