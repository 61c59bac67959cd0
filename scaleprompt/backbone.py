"""Load a frozen open_clip CLIP backbone; the models scaleprompt knows by name.

``load_clip(model_name, pretrained)`` returns a :class:`Backbone`: the open_clip CLIP (``.model``, both towers frozen
with ``requires_grad_(False)`` and in eval mode), its tokenizer (``.tokenizer``) and what it is (``.info``, a
:class:`BackboneInfo`, recorded in prompt files). ``pretrained`` accepts:

* ``None`` (or ``"none"``): random initialisation, fully offline;
* an open_clip pretrained tag (``"openai"``, ``"laion2b_s34b_b79k"``, ...): open_clip resolves and downloads it;
* a local checkpoint file (``.safetensors``, ``.pt``/``.pth``/``.bin`` state dicts read with
  ``torch.load(weights_only=True)``, or an OpenAI TorchScript archive); open_clip-format and OpenAI-format state
  dicts both load;
* a tag of weights registered with the model (:func:`register_model`): ``load_clip("sp-micro-clip", "microworld")``
  is the micro-world CLIP pretrained on the CPU (``scaleprompt.microworld``), offline;
* ``model_name="hf-hub:org/repo"``: open_clip loads config and weights from the hub (``pretrained`` is ignored).

:func:`register_model` adds a model by name: its open_clip config (registered with open_clip), weights files by
tag, and its tokenizer. scaleprompt's own models are registered at the end of this module through that same
function: the tiny ``sp-tiny-vit`` / ``sp-tiny-vit-12`` (a CPU builds them in seconds, no download) and the
micro-world CLIP ``sp-micro-clip`` with its shipped weights and word tokenizer.

open_clip is imported on first use, not with this module: importing it takes ~1.5 s (it imports torchvision), and
what only describes methods (``scaleprompt methods``, configs, ``import scaleprompt.methods``) never needs it.
:func:`import_open_clip` imports it and hands it the registered configs; code that builds scaleprompt's models
through open_clip itself (``open_clip.create_model("sp-tiny-vit")``) takes open_clip from there.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import sys
import threading
import warnings
import zipfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any
from urllib.parse import urlparse

import torch
from torch import nn

from scaleprompt.errors import ScalepromptError
from scaleprompt.microworld.tokenizer import WordTokenizer

logger = logging.getLogger(__name__)

MODEL_CONFIG_DIR = Path(__file__).parent / "model_configs"
MODEL_WEIGHTS_DIR = Path(__file__).parent / "model_weights"
# Keys that OpenAI's released state dicts carry besides the weights.
_OPENAI_EXTRA_KEYS = ("input_resolution", "context_length", "vocab_size")

# A tokenizer as open_clip's: ``tokenizer(texts, context_length=None)`` -> int64 ids ``[N, context_length]``.
Tokenizer = Callable[..., torch.Tensor]
# An open_clip model or one of its parts (towers, blocks). open_clip ships no type information (mypy reads its classes
# as Any); code that reads their attributes (``visual.conv1``, ``block.attn``) takes this type, not ``nn.Module``
# (whose attributes type as ``Tensor | Module``).
OpenClipModule = Any


class BackboneError(ScalepromptError, ValueError):
    """A backbone could not be loaded as asked."""


# --- open_clip, imported on first use --------------------------------------------------------------------------
_OPEN_CLIP_LOCK = threading.Lock()
_open_clip_module: ModuleType | None = None  # open_clip once imported (it knows every registered config then)
_pending_configs: list[Path] = []  # configs registered before open_clip was imported


def import_open_clip() -> ModuleType:
    """open_clip, imported on the first call, with every model registered here added to it. Code that builds
    scaleprompt's models through open_clip directly calls this instead of ``import open_clip``."""
    if _open_clip_module is None:
        import open_clip

        _hand_configs_to(open_clip)
    assert _open_clip_module is not None
    return _open_clip_module


def _hand_configs_to(module: ModuleType) -> None:
    """Add the configs registered so far to the imported open_clip ``module``; later ones go to it at once."""
    global _open_clip_module
    with _OPEN_CLIP_LOCK:
        if _open_clip_module is None:
            for path in _pending_configs:
                module.add_model_config(path)
            _pending_configs.clear()
            _open_clip_module = module


def _add_model_config(path: Path) -> None:
    """Register a model config with open_clip now if it is imported, else when it is."""
    with _OPEN_CLIP_LOCK:
        if _open_clip_module is None:
            _pending_configs.append(path)
            return
        _open_clip_module.add_model_config(path)


if "open_clip" in sys.modules:  # imported before this module: it gets the configs at once
    _hand_configs_to(sys.modules["open_clip"])


# --- the model registry ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ModelSpec:
    """A model registered with :func:`register_model`."""

    name: str
    config: Path | None = None  # the open_clip model-config JSON (None: a model open_clip knows already)
    weights: Mapping[str, Path] = field(default_factory=dict)  # pretrained tag -> local weights file
    tokenizer: Callable[..., Tokenizer] | None = None  # tokenizer(context_length=n); None: open_clip's


_MODELS: dict[str, ModelSpec] = {}


def register_model(
    name: str,
    config: str | Path | None = None,
    *,
    weights: Mapping[str, str | Path] | None = None,
    tokenizer: Callable[..., Tokenizer] | None = None,
) -> ModelSpec:
    """Make ``load_clip(name, ...)`` know a model (how an extension adds one; scaleprompt's own models use it too).

    ``config``: an open_clip model-config JSON file named ``<name>.json``, registered with open_clip (None: a model
    open_clip already knows, e.g. ``"ViT-B-16"``, to add weights or a tokenizer to it). ``weights``: pretrained tag
    -> local weights file, loaded offline by ``load_clip(name, tag)``. ``tokenizer``: called as
    ``tokenizer(context_length=n)`` with the text tower's context length, it returns the model's tokenizer (None:
    open_clip's tokenizer for the model). Registering a name twice with other settings is an error."""
    config_path = None if config is None else Path(config)
    if config_path is not None:
        if config_path.suffix != ".json" or not config_path.is_file():
            raise BackboneError(f"model {name!r}: config {config_path} is not a JSON file")
        if config_path.stem != name:
            raise BackboneError(
                f"model {name!r}: open_clip names a model after its config file, got {config_path.name}"
            )
        _check_model_config(name, config_path)  # (open_clip may read it later: its errors are found here)
    elif name not in import_open_clip().list_models():
        raise BackboneError(f"model {name!r} is unknown to open_clip: register it with its config file")
    spec = ModelSpec(name, config_path, {tag: Path(f) for tag, f in (weights or {}).items()}, tokenizer)
    if name in _MODELS:
        if _MODELS[name] != spec:
            raise BackboneError(f"model {name!r} is already registered with other settings: {_MODELS[name]}")
        return _MODELS[name]
    if config_path is not None:
        _add_model_config(config_path)
    _MODELS[name] = spec
    return spec


def _check_model_config(name: str, path: Path) -> None:
    """A JSON object with what open_clip needs of a model config (it skips a config without these keys)."""
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BackboneError(f"model {name!r}: cannot read config {path}: {exc}") from exc
    missing = [
        key for key in ("embed_dim", "vision_cfg", "text_cfg") if not isinstance(cfg, dict) or key not in cfg
    ]
    if missing:
        raise BackboneError(
            f"model {name!r}: config {path} lacks {', '.join(missing)} (open_clip would skip it)"
        )


def registered_models() -> list[str]:
    """Names of the models registered with :func:`register_model` (open_clip's own are not listed)."""
    return list(_MODELS)


def model_spec(name: str) -> ModelSpec:
    """What :func:`register_model` registered as ``name`` (a :class:`BackboneError` for an unregistered name)."""
    try:
        return _MODELS[name]
    except KeyError:
        raise BackboneError(f"model {name!r} is not registered; registered: {', '.join(_MODELS)}") from None


@dataclass(frozen=True)
class BackboneInfo:
    """What a backbone is, stored with saved prompts so a mismatch can be detected on load."""

    model_name: str
    pretrained: str | None
    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    vision_width: int
    vision_layers: int
    text_width: int
    text_layers: int
    embed_dim: int
    init_seed: int | None = None  # the seed of a random initialisation (pretrained=None)


@dataclass(frozen=True, eq=False)
class Backbone:
    """A frozen open_clip CLIP with its tokenizer and description: what :func:`load_clip` returns.

    ``info`` is None only for a bare model wrapped by :meth:`of` (prompt files then record no backbone)."""

    model: nn.Module  # the open_clip CLIP, frozen, eval mode
    tokenizer: Tokenizer
    info: BackboneInfo | None = None

    @classmethod
    def of(cls, clip: Backbone | nn.Module) -> Backbone:
        """``clip`` if it is a Backbone; a bare open_clip CLIP (not built by :func:`load_clip`) gets CLIP's BPE
        tokenizer and no info."""
        return clip if isinstance(clip, Backbone) else cls(clip, import_open_clip().SimpleTokenizer())


def _is_torchscript_archive(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as zf:
        return any(name.endswith("constants.pkl") or "/code/" in name for name in zf.namelist())


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The weights in the local file ``path`` (safetensors, a TorchScript archive or a weights-only torch file),
    read without unpickling arbitrary objects."""
    path = Path(path)
    if not path.is_file():
        raise BackboneError(f"checkpoint file not found: {path}")
    state: Any  # (what the file holds, checked below)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    elif _is_torchscript_archive(path):
        # OpenAI's released .pt files are TorchScript archives: load the graph's weights, not pickled Python.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated, OpenAI's files are not
            state = torch.jit.load(str(path), map_location="cpu").state_dict()
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - any failure here is a bad file
            raise BackboneError(f"cannot read checkpoint {path} as a weights-only state dict: {exc}") from exc
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise BackboneError(f"checkpoint {path} does not hold a flat state dict of tensors")
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module.") :]: v for k, v in state.items()}
    return dict(state)


def load_state_dict_into(model: OpenClipModule, state: dict[str, torch.Tensor], source: str) -> None:
    """Load the open_clip- or OpenAI-format ``state`` into the open_clip ``model`` strictly, with errors that name
    the offending keys and ``source`` (where the weights came from)."""
    state = {k: v for k, v in state.items() if k not in _OPENAI_EXTRA_KEYS}
    if "logit_scale" in state and state["logit_scale"].shape != model.logit_scale.shape:
        state["logit_scale"] = state["logit_scale"].reshape(model.logit_scale.shape)
    if getattr(model, "logit_bias", None) is not None and "logit_bias" not in state:
        state["logit_bias"] = torch.zeros_like(model.logit_bias)
    own = model.state_dict()
    # TorchScript archives also store buffers the model keeps non-persistent (e.g. the causal attn_mask)
    transient = {name for name, _ in model.named_buffers()} - set(own)
    state = {k: v for k, v in state.items() if k not in transient}
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        raise BackboneError(
            f"checkpoint {source} does not match the model: missing keys {missing[:8]}"
            f"{' ...' if len(missing) > 8 else ''}, unexpected keys {unexpected[:8]}"
            f"{' ...' if len(unexpected) > 8 else ''}"
        )
    bad = [(k, tuple(v.shape), tuple(own[k].shape)) for k, v in state.items() if v.shape != own[k].shape]
    if bad:
        raise BackboneError(f"checkpoint {source} has wrong shapes (key, file, model): {bad[:8]}")
    model.load_state_dict(state, strict=True)


def freeze(model: nn.Module) -> nn.Module:
    """``model`` with every parameter frozen, in eval mode."""
    model.requires_grad_(False)
    model.eval()
    return model


def load_clip(
    model_name: str,
    pretrained: str | None = None,
    *,
    device: str | torch.device = "cpu",
    precision: str = "fp32",
    cache_dir: str | None = None,
    init_seed: int = 0,
) -> Backbone:
    """Build the open_clip CLIP ``model_name``, load its weights ``pretrained`` (see the module docstring), freeze it;
    with its tokenizer and info. ``device`` and ``precision`` (``fp32``, ``bf16``, ``fp16``, open_clip's ``pure_*``)
    place it; ``cache_dir``: where downloaded weights are cached (None: open_clip's default).

    A random initialisation (``pretrained=None``) is drawn from ``init_seed`` without touching the global RNG,
    so the same random backbone can be rebuilt later (prompt files record the seed)."""
    open_clip = import_open_clip()
    pretrained = None if pretrained in (None, "", "none") else pretrained
    tag = pretrained
    registered = _MODELS.get(model_name)
    if pretrained is not None and registered is not None and pretrained in registered.weights:
        pretrained = str(registered.weights[pretrained])
        if not Path(pretrained).is_file():
            raise BackboneError(f"the weights {tag!r} registered for {model_name} are missing: {pretrained}")
    local_file = pretrained is not None and (
        Path(pretrained).exists() or "/" in pretrained or "\\" in pretrained
    )
    if model_name.startswith(("hf-hub:", "local-dir:")):
        model = open_clip.create_model(model_name, precision=precision, device=device, cache_dir=cache_dir)
    elif local_file:
        if model_name not in open_clip.list_models():
            raise BackboneError(f"unknown model name {model_name!r}; see open_clip.list_models()")
        with _quiet_open_clip():
            model = open_clip.create_model(model_name, pretrained=None, precision="fp32", device="cpu")
        assert pretrained is not None  # (local_file says so)
        load_state_dict_into(model, read_state_dict(pretrained), source=str(pretrained))
        model = _cast(model, precision).to(device)
    else:
        if model_name not in open_clip.list_models():
            raise BackboneError(f"unknown model name {model_name!r}; see open_clip.list_models()")
        hub = (
            contextlib.nullcontext() if pretrained is None else _hub_access(model_name, pretrained, cache_dir)
        )
        with _quiet_open_clip() if pretrained is None else hub, torch.random.fork_rng():
            torch.manual_seed(init_seed)
            model = open_clip.create_model(
                model_name, pretrained=pretrained, precision=precision, device=device, cache_dir=cache_dir
            )
    if not hasattr(model, "visual") or not hasattr(model.visual, "conv1"):
        raise BackboneError(f"{model_name}: scaleprompt needs a ViT image tower (conv1 + class token)")
    info = backbone_info(model, model_name, tag, init_seed if pretrained is None else None)
    logger.info("loaded backbone %s (pretrained=%s)", model_name, tag)
    return Backbone(freeze(model), tokenizer_for(model_name, cache_dir), info)


def tokenizer_for(model_name: str, cache_dir: str | None = None) -> Tokenizer:
    """The tokenizer of model ``model_name``: the one registered with it (:func:`register_model`), else open_clip's
    (``cache_dir``: where a hub tokenizer is cached)."""
    open_clip = import_open_clip()
    registered = _MODELS.get(model_name)
    if registered is not None and registered.tokenizer is not None:
        context_length = open_clip.get_model_config(model_name)["text_cfg"]["context_length"]
        return registered.tokenizer(context_length=context_length)
    with _quiet_open_clip():
        return open_clip.get_tokenizer(model_name, cache_dir=cache_dir)


def _reachable(host: str, port: int = 443, timeout: float = 3.0) -> bool:
    """A TCP connection to ``host`` opens within ``timeout`` seconds (behind an HTTPS proxy: assumed yes)."""
    if any(os.environ.get(k) for k in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError:
        return False
    return True


@contextlib.contextmanager
def _hub_access(model_name: str, tag: str, cache_dir: str | None) -> Iterator[None]:
    """Around open_clip's download of a pretrained tag. With the weights' host reachable: nothing. Without a
    network, instead of a minute of retries and chained tracebacks: the Hugging Face hub runs in offline mode (a
    cached copy loads at once), and weights in no cache are one :class:`BackboneError` saying which, where they
    would be cached, and how to pass a local file."""
    open_clip = import_open_clip()
    cfg = open_clip.get_pretrained_cfg(model_name, tag)
    if not cfg:
        known = ", ".join(open_clip.list_pretrained_tags_by_model(model_name)) or "none"
        raise BackboneError(f"unknown pretrained tag {tag!r} for {model_name} (open_clip knows: {known})")
    hf_repo = (cfg.get("hf_hub") or "").strip("/")
    if hf_repo:
        import huggingface_hub.constants as hf_constants

        endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
        host, where = urlparse(endpoint).hostname or "huggingface.co", cache_dir or hf_constants.HF_HUB_CACHE
    else:
        host, where = urlparse(cfg.get("url", "")).hostname or "?", cache_dir or "~/.cache/clip"
    if _reachable(host):
        yield
        return
    hint = (
        (
            " (these are OpenAI weights: with a local file use a -quickgelu model name, e.g. "
            f"model.name={model_name}-quickgelu)"
        )
        if cfg.get("quick_gelu")
        else ""
    )
    missing = BackboneError(
        f"the weights {model_name} / {tag!r} are not in the local cache ({where}) and {host} cannot be reached: "
        f"download them once on a machine with network (same cache), or pass a local file with "
        f"model.pretrained=/path/to/weights{hint}"
    )
    if not hf_repo:
        url_file = Path(where).expanduser() / Path(urlparse(cfg.get("url", "")).path).name
        if not url_file.is_file():
            raise missing
        yield
        return
    import huggingface_hub.constants as hf_constants

    # A process-wide switch, kept to this block and restored after it (listed in scaleprompt/__init__.py): open_clip's
    # download takes no offline argument, and the hub reads this constant at call time (is_offline_mode): the cache
    # only, no retries.
    offline = hf_constants.HF_HUB_OFFLINE
    hf_constants.HF_HUB_OFFLINE = True
    try:
        with quiet_open_clip(logging.CRITICAL):  # (it logs a failed download as an ERROR, then raises)
            yield
    except RuntimeError as exc:  # open_clip: "Pretrained weights (...) not found for model ..."
        raise missing from exc
    finally:
        hf_constants.HF_HUB_OFFLINE = offline


@contextlib.contextmanager
def quiet_open_clip(below: int = logging.ERROR) -> Iterator[None]:
    """Inside the block, open_clip's log records below level ``below`` are dropped. open_clip logs every creation
    step (and a warning for a deliberate random init) with ``logging.info`` / ``logging.warning``, i.e. on the root
    logger: a filter on it drops the records whose source is open_clip's package and keeps every other record (the
    root logger's level is left alone)."""
    package = import_open_clip().__file__
    assert package is not None  # (open_clip is imported from its files)
    folder = str(Path(package).parent)

    def keep(record: logging.LogRecord) -> bool:
        return record.levelno >= below or not record.pathname.startswith(folder)

    root = logging.getLogger()
    root.addFilter(keep)
    try:
        yield
    finally:
        root.removeFilter(keep)


def _quiet_open_clip() -> contextlib.AbstractContextManager[None]:
    """open_clip's creation steps unlogged (errors kept): :func:`quiet_open_clip`."""
    return quiet_open_clip()


def _cast(model: nn.Module, precision: str) -> nn.Module:
    if precision in ("bf16", "pure_bf16"):
        return model.to(torch.bfloat16)
    if precision in ("fp16", "pure_fp16"):
        return model.to(torch.float16)
    return model


def text_tower(model: nn.Module) -> OpenClipModule:
    """The module of the open_clip ``model`` that owns token_embedding / transformer / ln_final (the model itself,
    or ``model.text``)."""
    tower = model.text if hasattr(model, "text") else model
    if not hasattr(tower, "token_embedding"):
        raise BackboneError("scaleprompt needs an open_clip text transformer (token_embedding + transformer)")
    return tower


def backbone_info(
    model: OpenClipModule, model_name: str, pretrained: str | None, init_seed: int | None = None
) -> BackboneInfo:
    """The :class:`BackboneInfo` of the open_clip ``model`` built as ``model_name`` with weights ``pretrained`` (a
    tag or file; None: random, drawn from ``init_seed``)."""
    visual = model.visual
    text = text_tower(model)
    size = visual.image_size
    size = size[0] if isinstance(size, tuple | list) else int(size)
    cfg = getattr(visual, "preprocess_cfg", {}) or {}
    open_clip = import_open_clip()
    return BackboneInfo(
        model_name=model_name,
        pretrained=pretrained,
        image_size=int(size),
        mean=tuple(cfg.get("mean", open_clip.OPENAI_DATASET_MEAN)),
        std=tuple(cfg.get("std", open_clip.OPENAI_DATASET_STD)),
        vision_width=visual.class_embedding.shape[-1],
        vision_layers=len(visual.transformer.resblocks),
        text_width=text.token_embedding.weight.shape[-1],
        text_layers=len(text.transformer.resblocks),
        embed_dim=visual.output_dim,
        init_seed=init_seed,
    )


# --- scaleprompt's own models, registered like an extension's ----------------------------------------------------
register_model("sp-tiny-vit", MODEL_CONFIG_DIR / "sp-tiny-vit.json")
register_model("sp-tiny-vit-12", MODEL_CONFIG_DIR / "sp-tiny-vit-12.json")
register_model(  # the micro-world CLIP (scaleprompt.microworld): its shipped weights and word-level vocabulary
    "sp-micro-clip",
    MODEL_CONFIG_DIR / "sp-micro-clip.json",
    weights={"microworld": MODEL_WEIGHTS_DIR / "sp-micro-clip-microworld.safetensors"},
    tokenizer=WordTokenizer,
)
