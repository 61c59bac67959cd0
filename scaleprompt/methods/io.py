"""Save and load trained prompts: the trained tensors as safetensors, the method config as JSON inside the
file's metadata. Writes are atomic; nothing is unpickled on load.

The metadata records the config as the method runs it (a fixed-text method's templates resolved), and
``templates_from: "dataset"`` when those templates are the dataset's own (the recipe left ``templates`` unset):
the loaded method then follows the template rule again, so on another dataset (a transfer target) it takes that
dataset's template, as during training.

Every file :func:`save_prompts` writes records ``tensors_sha256``, the checksum of its tensor data (defined in
:mod:`scaleprompt.promptfile`). Every reader (:func:`open_prompt_file`, :func:`read_prompt_file`,
:func:`load_prompts`, and so ``scaleprompt eval``, ``predict`` and ``inspect``) reads the file's bytes once,
verifies the checksum against them (a mismatch is a :class:`PromptFileError` naming the file; a file without one
loads with a warning, once per file) and parses header and tensors from the same bytes.
:func:`verify_prompt_tensors` does the same check for tensors read some other way. :func:`load_prompts` also refuses
prompts that are not finite (:func:`check_finite`: a run that diverged exports NaN prompts, with a valid checksum)."""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors
from safetensors.torch import save_file
from torch import nn

from scaleprompt.backbone import Backbone
from scaleprompt.config import to_dict
from scaleprompt.encoders import EncoderOptions
from scaleprompt.methods.base import FixedTextConfig, FixedTextMethod, PromptMethod
from scaleprompt.methods.registry import build, make_config
from scaleprompt.promptfile import (
    CHECKSUM_ENTRY,
    FORMAT,
    Checksum,
    PromptFileError,
    check_checksum,
    decode_metadata,
    read_prompt_bytes,
    safetensors_sha256,
)

__all__ = [
    "FORMAT",
    "PromptFile",
    "PromptFileError",
    "check_finite",
    "load_prompts",
    "open_prompt_file",
    "read_prompt_file",
    "save_prompts",
    "tensors_sha256",
    "verify_prompt_tensors",
]


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


def tensors_sha256(tensors: Mapping[str, torch.Tensor]) -> str:
    """The checksum (``tensors_sha256``, :mod:`scaleprompt.promptfile`) of ``tensors`` as a safetensors file holds
    them (computed on their safetensors serialization, so it is the checksum of the file's bytes by definition)."""
    return safetensors_sha256(
        save_safetensors({k: v.detach().to("cpu").contiguous() for k, v in tensors.items()})
    )


def verify_prompt_tensors(
    meta: Mapping[str, str], tensors: Mapping[str, torch.Tensor], path: str | Path
) -> Checksum:
    """Check ``tensors`` (read from ``path`` with metadata ``meta``) against the ``tensors_sha256`` that ``meta``
    records: ``"verified"``, ``"absent"`` (no checksum: a warning, once per file) or a :class:`PromptFileError`
    naming ``path``."""
    return check_checksum(dict(meta), tensors_sha256(tensors), path)


def check_finite(tensors: Mapping[str, torch.Tensor], path: str | Path) -> None:
    """A :class:`PromptFileError` naming ``path``, the first tensor with values that are not finite (NaN or inf)
    and how many (a run that diverged exports such prompts)."""
    for name in sorted(tensors):
        value = tensors[name]
        if value.is_floating_point() or value.is_complex():
            bad = int((~torch.isfinite(value)).sum())
            if bad:
                raise PromptFileError(
                    f"{path}: tensor {name} has {bad} of {value.numel()} values that are not finite (NaN or inf); "
                    "the training that wrote it diverged (lower optim.lr?)"
                )


def save_prompts(
    method: PromptMethod, path: str | Path, extra_metadata: dict[str, str] | None = None
) -> Path:
    """Write the method's trained tensors + config to ``path`` (a ``.safetensors`` file); ``extra_metadata``
    adds string entries (e.g. where converted prompts came from). The file records the checksum of its tensors
    (``tensors_sha256``)."""
    path = Path(path)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in method.prompt_state_dict().items()}
    metadata = {**prompt_metadata(method), **(extra_metadata or {}), CHECKSUM_ENTRY: tensors_sha256(tensors)}
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))
    return path


@dataclass(frozen=True)
class PromptFile:
    """A prompt file read once (:func:`open_prompt_file`): the metadata (``meta``: as stored, ``header``: decoded
    by :func:`~scaleprompt.promptfile.decode_metadata`), the tensors, the SHA-256 of the bytes they were parsed
    from and whether the tensor checksum was ``"verified"`` or is ``"absent"``."""

    path: Path
    meta: dict[str, str]
    header: dict[str, Any]
    tensors: dict[str, torch.Tensor]
    sha256: str
    checksum: Checksum


def open_prompt_file(path: str | Path, allow_non_finite: bool = False) -> PromptFile:
    """Read a prompt file's bytes once; verify its checksum, decode its metadata and parse its tensors from those
    bytes (a file replaced meanwhile changes nothing); unless ``allow_non_finite``, refuse tensors with values
    that are not finite (:func:`check_finite`). Bad files are a :class:`PromptFileError` naming them."""
    raw = read_prompt_bytes(path)
    header = decode_metadata(raw.meta, raw.path)
    try:
        tensors = load_safetensors(raw.data)
    except Exception as exc:  # noqa: BLE001 - any parse failure means a corrupt file
        raise PromptFileError(f"{raw.path} is not a readable safetensors file: {exc}") from exc
    if not allow_non_finite:
        check_finite(tensors, raw.path)
    return PromptFile(raw.path, raw.meta, header, tensors, raw.sha256, raw.checksum)


def read_prompt_file(
    path: str | Path, allow_non_finite: bool = False
) -> tuple[dict[str, str], dict[str, torch.Tensor]]:
    """The metadata and the tensors of a prompt file (:func:`open_prompt_file`)."""
    file = open_prompt_file(path, allow_non_finite)
    return file.meta, file.tensors


def load_prompts(
    path: str | Path | PromptFile,
    backbone: Backbone | nn.Module,
    classnames: Sequence[str] | None = None,
    *,
    options: EncoderOptions | None = None,
) -> PromptMethod:
    """Rebuild the method saved at ``path`` on ``backbone`` (``load_clip``'s, or a bare open_clip CLIP, which is not
    checked against the file's backbone) and load its trained tensors (strict: names and shapes). ``options``: how
    its encoders compute (:class:`~scaleprompt.encoders.EncoderOptions`, e.g. the evaluation's ``text_chunk``;
    None: the defaults).

    ``classnames`` defaults to the saved ones; pass others to evaluate the same prompts on new classes
    (methods whose prompts do not depend on the class count). The method classifies with the saved templates;
    :meth:`~scaleprompt.methods.base.PromptMethod.set_classnames` with another dataset's templates moves a
    fixed-text method whose templates came from its dataset (``templates_from``) to those.

    ``path`` may be a file already read (:func:`open_prompt_file`). A damaged file (checksum), bad metadata or
    prompts that are not finite are a :class:`PromptFileError` naming the file."""
    file = path if isinstance(path, PromptFile) else open_prompt_file(path)
    path, meta, header, tensors = file.path, file.meta, file.header, file.tensors
    check_finite(tensors, path)
    saved_backbone = header.get("backbone")
    backbone = Backbone.of(backbone)
    info = backbone.info
    if saved_backbone and info is not None:
        for key in ("vision_width", "vision_layers", "text_width", "text_layers", "embed_dim"):
            if saved_backbone.get(key) != getattr(info, key):
                raise PromptFileError(
                    f"{path} was trained on backbone {saved_backbone.get('model_name')} ({key}="
                    f"{saved_backbone.get(key)}), this backbone {info.model_name} has {key}={getattr(info, key)}"
                )
    config = make_config(meta["method"], header["config"])
    names = list(classnames) if classnames is not None else header["classnames"]
    saved_templates = None
    if meta.get("templates_from") == "dataset" and isinstance(config, FixedTextConfig):
        saved_templates = config.templates  # the dataset's template(s), under the template rule
        config = dataclasses.replace(config, templates=None)
    method = build(
        meta["method"], backbone, names, config=config, dataset_templates=saved_templates, options=options
    )
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
