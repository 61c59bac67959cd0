"""The typed run configuration: a recipe YAML merged with ``key=value`` overrides.

``load_run_config("configs/provp_ref/base2new.yaml", ["optim.lr=0.05", "model.name=ViT-L-14"])`` merges with
OmegaConf's structured configs (an unknown key is an error naming it) and returns :class:`RunConfig`.
``derive_run_config(cfg, {"optim.lr": 0.05})`` merges typed values into a config already loaded the same way
(a sweep derives each trial's config from its base so, without strings).

Validation has two steps. Each section's ``__post_init__`` checks its own fields (types, ranges; errors name the
field) and nothing else. :func:`check_run_config` then makes, in one place, the checks that need another layer's
knowledge: the method name and its ``method.args`` (the method registry), the trackers of ``train.report_to``
(:mod:`scaleprompt.engine.trackers`) and what the method asks of the other sections. :func:`load_run_config` and
:func:`derive_run_config` end with it; a :class:`RunConfig` built by hand is checked by calling it.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, cast

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from scaleprompt.config import (
    ConfigError,
    check_json_keys,
    check_types,
    from_dict,
    read_yaml_mapping,
    require,
    to_dict,
)
from scaleprompt.engine.trackers import report_targets
from scaleprompt.recipes import resolve_recipe
from scaleprompt.report.schema import Setting  # (one definition: the results schema)

if TYPE_CHECKING:
    from scaleprompt.methods.base import PromptMethod

logger = logging.getLogger(__name__)

Precision = Literal["fp32", "bf16", "fp16"]


@dataclass
class ModelConfig:
    name: str = "sp-tiny-vit"  # open_clip model name (ViT-B-16, ViT-L-14, hf-hub:org/repo, ...)
    pretrained: str | None = None  # open_clip tag, local file, or None (random init)
    cache_dir: str | None = None
    grad_checkpointing: bool = False  # recompute the frozen blocks in backward (activation checkpointing)
    # > 0: class prompts go through the text tower this many at a time, each chunk recomputed in backward, so the
    # text side's memory is bounded by the chunk, not the class count (1000 ImageNet classes); the same math
    text_chunk: int = 0

    def __post_init__(self) -> None:
        check_types(self, "model.")
        require(
            self.text_chunk >= 0,
            "model.text_chunk",
            f"must be >= 0 (0: all classes at once), got {self.text_chunk}",
        )


@dataclass
class MethodSection:
    name: str = "provp_ref"
    args: dict[str, Any] = field(default_factory=dict)  # fields of the method's config dataclass

    def __post_init__(self) -> None:
        check_types(self, "method.")  # (the name and the args against the method: check_run_config)


@dataclass
class DataConfig:
    dataset: str = "FashionMNIST"  # registry name, folder:<path>, or a .json/.csv split file
    root: str | None = None  # folder holding the datasets (CoOp layout)
    # a ready shard folder to train on (None = write them under cache_dir): a local folder, or a remote one read
    # through a pipe: command with {} where the file name goes (pipe:aws s3 cp s3://bucket/pets-shards/{} -)
    shards: str | None = None
    cache_dir: str = "runs/shards"
    shots: int = 16  # few-shot K (<= 0: all training images)
    # a class with fewer than `shots` training images is an error naming it; true: train on the images there are
    # (results.json's data.train_shots_per_class records the real min / max)
    allow_fewer_shots: bool = False
    template_set: Literal["coop", "provp"] = "coop"  # hand-crafted templates of fixed-text methods
    image_size: int | None = None  # None = the backbone's
    train_augment: bool = True  # False: train on the test transform (deterministic inputs)
    train_crop_min_scale: float = 0.08  # RandomResizedCrop's smallest area fraction (0.08: the papers')
    # true: class names the backbone cannot tell apart (words its tokenizer does not know, prompts cut by the
    # context, identical prompts) are an error before training instead of a warning
    strict_classnames: bool = False
    num_workers: int = 2
    shuffle_buffer: int = 1000
    resampled: bool = False
    max_bad_samples: int = 10
    min_shards: int = 8
    shard_size: int = 1000

    def __post_init__(self) -> None:
        check_types(self, "data.")
        require(self.num_workers >= 0, "data.num_workers", "must be >= 0")
        require(
            0 < self.train_crop_min_scale <= 1,
            "data.train_crop_min_scale",
            f"must be in (0, 1], got {self.train_crop_min_scale}",
        )
        require(
            self.min_shards >= 1 and self.shard_size >= 1, "data.min_shards", "min_shards, shard_size >= 1"
        )
        require(
            self.shards is None or not self.shards.startswith("pipe:") or "{}" in self.shards,
            "data.shards",
            f"a pipe: shard folder is a command with {{}} where the file name goes (e.g. pipe:aws s3 cp "
            f"s3://bucket/folder/{{}} -), got {self.shards!r}",
        )


@dataclass
class OptimConfig:
    name: Literal["sgd", "adamw"] = "sgd"
    lr: float = 0.002
    momentum: float = 0.9
    weight_decay: float = 5e-4
    betas: tuple[float, float] = (0.9, 0.999)
    epochs: int = 10
    warmup_epochs: int = 1  # constant-lr warm-up epochs (the releases: 1 epoch at 1e-5)
    warmup_lr: float = 1e-5
    min_lr: float = 0.0
    grad_clip: float = 0.0  # max global gradient norm; 0 = no clipping (the releases do not clip)
    batch_size: int = 32  # GLOBAL batch = micro_batch_size x gradient accumulation x world size
    micro_batch_size: int | None = None  # per rank and step; None = batch_size / world size

    def __post_init__(self) -> None:
        check_types(self, "optim.")
        require(self.lr > 0, "optim.lr", f"must be > 0, got {self.lr}")
        require(self.epochs >= 0, "optim.epochs", f"must be >= 0, got {self.epochs}")
        require(self.warmup_epochs >= 0, "optim.warmup_epochs", "must be >= 0")
        require(self.batch_size >= 1, "optim.batch_size", f"must be >= 1, got {self.batch_size}")
        require(
            self.micro_batch_size is None or self.micro_batch_size >= 1,
            "optim.micro_batch_size",
            "must be >= 1",
        )


@dataclass
class EvalConfig:
    setting: Setting = "fewshot"  # base2new: train on base, test base + novel; transfer: test on targets
    targets: list[str] = field(default_factory=list)  # transfer: datasets evaluated with the trained prompts
    targets_root: str | None = None  # their root folder (default: data.root)
    batch_size: int = 64
    every_epochs: int = 1  # validation every N epochs (model selection on val only)
    zero_shot_baseline: bool = (
        False  # also test zero-shot CLIP (the dataset's template) on the same test sets
    )

    def __post_init__(self) -> None:
        check_types(self, "eval.")
        require(self.batch_size >= 1, "eval.batch_size", f"must be >= 1, got {self.batch_size}")
        require(
            self.every_epochs >= 0,
            "eval.every_epochs",
            f"must be >= 0 (0: last epoch only), got {self.every_epochs}",
        )
        require(
            self.setting != "transfer" or bool(self.targets), "eval.targets", "transfer needs target datasets"
        )


@dataclass
class TrainConfig:
    seed: int = 1
    precision: Precision = "fp32"
    output_dir: str = "runs/run"
    checkpoint_every_epochs: int = 1
    checkpoint_every_steps: int = 0  # 0 = only at epoch ends
    keep_checkpoints: int = 2
    # SIGTERM / SIGINT / SIGHUP mid-training: every rank stops at the same step and saves it (exit 128 + signal)
    checkpoint_on_signal: bool = True
    log_every_steps: int = 10  # a train-loss line (and tracker scalars) every N optimizer steps; 0: none
    # experiment trackers (scaleprompt/engine/trackers.py): tensorboard, wandb (pip install wandb), several as
    # [tensorboard,wandb], or none; held as a list of names ([] = none)
    report_to: str | list[str] = "tensorboard"
    max_steps: int = 0  # > 0: stop after this many optimizer steps (smoke tests)
    # a non-finite loss or gradient on any rank: stop (exit 2, one line naming the step, the loss part and the lr;
    # the prompts are left as the last finite step made them), or skip that optimizer step exactly (prompts and
    # optimizer state as before it; counted in results.json) at most max_nonfinite_skips times, then stop
    nonfinite: Literal["stop", "skip"] = "stop"
    max_nonfinite_skips: int = 10

    def __post_init__(self) -> None:
        check_types(self, "train.")
        require(self.keep_checkpoints >= 1, "train.keep_checkpoints", "must be >= 1")
        counts = ("checkpoint_every_epochs", "checkpoint_every_steps", "log_every_steps", "max_steps")
        for name in (*counts, "max_nonfinite_skips"):
            value = getattr(self, name)
            require(value >= 0, f"train.{name}", f"must be >= 0 (0: never / no limit), got {value}")
        # (report_to becomes the list of tracker names in check_run_config: the trackers know their names)


# removed keys and what replaced them (appended to the unknown-key error of an older recipe or override)
REMOVED_KEYS = {
    "train.tensorboard": "; it was replaced by train.report_to: tensorboard (the default), wandb, "
    "[tensorboard,wandb] or none (train.tensorboard=false is train.report_to=none)",
}


@dataclass
class RunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    method: MethodSection = field(default_factory=MethodSection)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, Any]:
        return {k: to_dict(getattr(self, k)) for k in ("model", "method", "data", "optim", "eval", "train")}


def run_config_keys() -> list[str]:
    """Every ``section.key`` of the run config with its default (what ``train.py --help`` lists): the keys a recipe
    YAML and a ``key=value`` override may set. ``method.args`` holds the method's own fields (``scaleprompt
    methods``)."""
    defaults = RunConfig()
    lines = []
    for section in dataclasses.fields(defaults):
        part = getattr(defaults, section.name)
        lines += [f"{section.name}.{f.name} = {getattr(part, f.name)!r}" for f in dataclasses.fields(part)]
    return lines


def load_run_config(
    recipe: str | Path | Mapping[str, Any] | None = None, overrides: Sequence[str] = ()
) -> RunConfig:
    """The command line's config: ``recipe`` (a YAML file, a packaged name such as ``provp_ref/base2new``:
    :func:`scaleprompt.recipes.resolve_recipe`; a mapping already read, e.g. a run's ``config.json``; or None for
    the defaults) with the ``key=value`` strings of ``overrides`` merged in, validated (:func:`check_run_config`).
    An ``overrides`` item that sets another ``method.name`` than the recipe's keeps only the recipe's method args
    that the new method has."""
    layers = [OmegaConf.structured(RunConfig)]
    if isinstance(recipe, Mapping):
        layers.append(OmegaConf.create(dict(recipe)))
    elif recipe is not None:
        path = resolve_recipe(recipe, "config")
        layers.append(
            OmegaConf.create(read_yaml_mapping(path, "recipe", "sections (model, method, data, ...)"))
        )
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not key=value")
    return _merged(layers, OmegaConf.from_dotlist(list(overrides)))


def require_a_recipe(recipe: object, cfg: RunConfig, overrides: Sequence[str] = ()) -> None:
    """Refuse a training run with no recipe on the built-in defaults' random backbone: ``model.pretrained`` is
    None unless set, and prompts learned over a randomly initialised CLIP classify at chance, silently. Raised
    only when ``recipe`` is None, the weights are None and no override named ``model.pretrained`` (set it to
    ``null`` to train on a random backbone on purpose, as tests do)."""
    keys = {item.split("=", 1)[0] for item in overrides}
    if recipe is None and cfg.model.pretrained is None and "model.pretrained" not in keys:
        raise ConfigError(
            f"no recipe (--config): the defaults' {cfg.model.name} has no pretrained weights (model.pretrained="
            "null), and prompts over a random backbone classify at chance. Pass a recipe (--config demo: the "
            "shipped micro-world CLIP; `scaleprompt recipes` lists them) or the weights (model.pretrained=...); "
            "model.pretrained=null trains on a random backbone on purpose"
        )


def derive_run_config(base: RunConfig, values: Mapping[str, Any]) -> RunConfig:
    """``base`` with ``values`` merged in, validated (:func:`check_run_config`): ``values`` maps run-config keys
    to typed values (``{"optim.lr": 0.05, "method.args.n_ctx": 4}``), merged as :func:`load_run_config` merges
    its overrides (another ``method.name`` keeps only the base's method args that the new method has), with no
    string in between. ``base`` itself is left as it is."""
    changes: dict[str, Any] = {}
    for key, value in values.items():
        *parents, leaf = key.split(".")
        node = changes
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return _merged([OmegaConf.structured(base)], OmegaConf.create(changes))


def _merged(layers: list[DictConfig], changes: DictConfig) -> RunConfig:
    """``changes`` merged over the merged ``layers``; OmegaConf's errors become one-line ConfigErrors naming the
    key (with what replaced a removed key)."""
    try:
        merged = cast(DictConfig, OmegaConf.merge(*layers))
        new_method = OmegaConf.select(changes, "method.name")
        if new_method and new_method != merged.method.name:
            # another method: keep only the method args that the new method has
            fields = _method_class(new_method).config_class.__dataclass_fields__
            kept = {k: v for k, v in merged.method.args.items() if k in fields}
            dropped = sorted(set(merged.method.args) - set(kept))
            if dropped:
                logger.info(
                    "method.name=%s: recipe args %s belong to %s, dropped",
                    new_method,
                    dropped,
                    merged.method.name,
                )
            merged.method.args = kept
        cfg = OmegaConf.to_object(OmegaConf.merge(merged, changes))
    except OmegaConfBaseException as exc:
        key = getattr(exc, "full_key", None)
        message = str(exc).splitlines()[0] + REMOVED_KEYS.get(key or "", "")
        raise ConfigError(message if not key or message.startswith(key) else f"{key}: {message}") from None
    assert isinstance(cfg, RunConfig)  # (the first layer is a structured RunConfig)
    return check_run_config(cfg)


def _method_class(name: str) -> type[PromptMethod]:
    """The registered method ``name``; an unknown name is a ConfigError listing the registered ones."""
    # imported here: the registry imports torch and every method (seconds), and `scaleprompt train --help` /
    # `train.py --help` list this module's keys (run_config_keys) without them
    from scaleprompt.methods import method_class

    return method_class(name)


def check_run_config(cfg: RunConfig) -> RunConfig:
    """The checks of ``cfg`` (a :class:`RunConfig` whose sections checked their own fields) that need another
    layer's knowledge, in one place; returns ``cfg`` with ``train.report_to`` as the list of tracker names.
    In order: ``method.name`` is registered and ``method.args`` are valid fields of its config (the method
    registry); ``train.report_to`` names known, installed trackers (:func:`scaleprompt.engine.trackers.
    report_targets`); a class-specific context is tested in the fewshot setting only; a method that trains has
    ``optim.epochs`` >= 1. Each failure is a :class:`ConfigError` naming the key."""
    method = _method_class(cfg.method.name)
    from_dict(
        method.config_class, cfg.method.args, where=cfg.method.name
    )  # (an unknown key / bad value: named)
    cfg.train.report_to = report_targets(cfg.train.report_to)
    if cfg.method.args.get("class_specific") and cfg.eval.setting != "fewshot":
        raise ConfigError(
            f"method.args.class_specific: a class-specific context cannot move to other classes, so it cannot "
            f"be tested in eval.setting={cfg.eval.setting} (use the fewshot setting)"
        )
    if cfg.optim.epochs == 0 and method.trains:
        raise ConfigError(
            f"optim.epochs: 0 trains nothing; {cfg.method.name} needs >= 1 epoch "
            "(for zero-shot CLIP use method.name=zsclip or eval.zero_shot_baseline=true)"
        )
    return cfg


def describe_validation_error(exc: Any, prefix: str = "") -> str:
    """The pydantic ValidationError ``exc`` (DeepSpeed's config models) as one line: ``field.path: problem (got X)``,
    each field path after ``prefix`` (``"zero_optimization."``)."""
    parts = []
    for err in exc.errors():
        where = ".".join(str(x) for x in err.get("loc", ()))
        got = f" (got {err['input']!r})" if "input" in err and not isinstance(err["input"], dict) else ""
        parts.append(f"{prefix}{where}: {err.get('msg', 'invalid')}{got}")
    return "; ".join(parts) or str(exc)


def check_ds_config(data: Any, source: str) -> dict[str, Any]:
    """Validate the parts of a DeepSpeed JSON that DeepSpeed would only reject deep inside ``initialize`` with a
    pydantic traceback (the ZeRO section) in ``data``, the JSON read from ``source`` (a file name, for the errors);
    returns ``data``. Errors name the file and the field."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: a DeepSpeed config is a JSON object, got {type(data).__name__}")
    zero = data.get("zero_optimization", {})
    if not isinstance(zero, dict):
        raise ConfigError(f"{source}: zero_optimization must be an object, got {zero!r}")
    # imported here: deepspeed takes seconds to import (and torch with it), and only a --ds JSON needs it
    from deepspeed.runtime.zero.config import DeepSpeedZeroConfig
    from pydantic import ValidationError

    try:
        DeepSpeedZeroConfig(**zero)
    except ValidationError as exc:
        raise ConfigError(f"{source}: {describe_validation_error(exc, 'zero_optimization.')}") from None
    return data


def load_ds_config(path: str | Path) -> dict[str, Any]:
    """Read and check the DeepSpeed JSON ``path`` (``--ds``: a file, or a packaged name such as ``zero2``); errors
    name the file, line or field."""
    try:
        path = resolve_recipe(path, "ds")
    except ConfigError as exc:
        raise ConfigError(f"--ds: {exc}") from None
    try:
        text = path.read_text()
        data = json.loads(text)
        check_json_keys(text, path, "DeepSpeed config")
    except json.JSONDecodeError as exc:
        raise ConfigError(
            f"{path}: invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"--ds: cannot read {path}: {exc}") from None
    return check_ds_config(data, str(path))
