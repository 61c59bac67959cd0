"""The results schema: one typed, versioned definition of a run's ``results.json``.

The engine writes a :class:`RunResult` (``RunResult.to_dict()``); the tables read files back with
:meth:`RunResult.from_dict`, which validates every field and raises :class:`ResultsError` naming the file and the
field. Versions: ``scaleprompt.run/3`` is written (it adds ``evaluated``: a ``scaleprompt eval`` of a prompt file,
whose only selection is the file's, e.g. ``best_val``); ``scaleprompt.run/2`` (``steps``, ``checkpoint``, ``data``,
``config_changes``) and ``scaleprompt.run/1`` files still load (missing fields are then empty).

Per setting, a selection (``last`` = last epoch, ``best_val`` = epoch chosen on the validation split) holds:
``fewshot`` -> ``test``; ``base2new`` -> ``base``, ``novel`` and ``hm`` (a number); ``transfer`` -> ``test`` (the
source dataset) and ``targets: {name: accuracy}``; every setting may have ``val`` (the selection split).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeGuard, get_args

from scaleprompt.errors import ScalepromptError

Setting = Literal["fewshot", "base2new", "transfer"]
SETTINGS: tuple[str, ...] = get_args(Setting)
RUN_FORMAT = "scaleprompt.run/3"
READABLE_FORMATS = ("scaleprompt.run/1", "scaleprompt.run/2", RUN_FORMAT)
SELECTIONS: tuple[str, ...] = ("last", "best_val")
METRICS: tuple[str, ...] = ("top1", "mean_per_class")
# what every selection of a setting must hold (besides the optional "val")
REQUIRED_SPLITS = {"fewshot": ("test",), "base2new": ("base", "novel"), "transfer": ("test",)}


class ResultsError(ScalepromptError, ValueError):
    """A results file is not valid JSON or not a scaleprompt run. The message names the file and the field."""


def _is_number(x: Any) -> TypeGuard[float]:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)


@dataclass(frozen=True)
class Accuracy:
    """Top-1 and mean per-class accuracy (%) over ``images`` test images."""

    top1: float
    mean_per_class: float
    images: int | None = None

    @classmethod
    def parse(cls, value: Any, where: str, source: str) -> Accuracy:
        if not isinstance(value, Mapping):
            raise ResultsError(
                f"{source}: {where} must be an object with 'top1' and 'mean_per_class', got {value!r}"
            )
        for metric in METRICS:
            x = value.get(metric)
            if not _is_number(x) or not 0 <= x <= 100:
                raise ResultsError(f"{source}: {where}.{metric} must be a percentage in [0, 100], got {x!r}")
        images = value.get("images")
        if images is not None and (not isinstance(images, int) or isinstance(images, bool) or images < 0):
            raise ResultsError(f"{source}: {where}.images must be a count, got {images!r}")
        return cls(float(value["top1"]), float(value["mean_per_class"]), images)

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}


@dataclass(frozen=True)
class SelectionResult:
    """The metrics of one selection (or of the zero-shot baseline) in a setting."""

    val: Accuracy | None = None
    test: Accuracy | None = None
    base: Accuracy | None = None
    novel: Accuracy | None = None
    hm: float | None = None
    targets: dict[str, Accuracy] = field(default_factory=dict)

    @classmethod
    def parse(cls, value: Any, setting: str, where: str, source: str) -> SelectionResult:
        if not isinstance(value, Mapping):
            raise ResultsError(f"{source}: {where} must be an object, got {value!r}")
        splits: dict[str, Accuracy | None] = {}
        if value.get("val"):
            splits["val"] = Accuracy.parse(value["val"], f"{where}.val", source)
        for split in REQUIRED_SPLITS[setting]:
            if split not in value:
                raise ResultsError(f"{source}: {where} has no {split!r} (a {setting} run reports {split})")
            splits[split] = Accuracy.parse(value[split], f"{where}.{split}", source)
        hm: float | None = None
        if setting == "base2new":
            stored = value.get("hm")
            if not _is_number(stored) or not 0 <= stored <= 100:
                raise ResultsError(f"{source}: {where}.hm must be a percentage in [0, 100], got {stored!r}")
            hm = float(stored)
        targets: dict[str, Accuracy] = {}
        if setting == "transfer":
            raw = value.get("targets")
            if not isinstance(raw, Mapping) or not raw:
                raise ResultsError(f"{source}: {where}.targets must be a non-empty object {{dataset: split}}")
            targets = {name: Accuracy.parse(s, f"{where}.targets.{name}", source) for name, s in raw.items()}
        return cls(**splits, hm=hm, targets=targets)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name in ("val", "test", "base", "novel"):
            acc = getattr(self, name)
            if acc is not None:
                out[name] = acc.to_dict()
        if self.hm is not None:
            out["hm"] = self.hm
        if self.targets:
            out["targets"] = {k: v.to_dict() for k, v in self.targets.items()}
        return out


@dataclass(frozen=True)
class RunResult:
    """One run's ``results.json``."""

    method: str
    dataset: str
    setting: Setting
    shots: int
    seed: int
    backbone: str
    pretrained: str | None
    results: dict[str, SelectionResult]  # "last" and, when the run validated, "best_val"
    world_size: int = 1
    epochs: int = 0
    steps: int = 0
    checkpoint: str | None = None  # the checkpoint the numbers were computed from
    data: dict[str, Any] = field(default_factory=dict)  # shard folders + fingerprint
    best_val_epoch: int | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    zero_shot: SelectionResult | None = None
    config: dict[str, Any] = field(default_factory=dict)
    config_changes: list[dict[str, Any]] = field(default_factory=list)
    # a search trial stopped by its scheduler: {"epoch": k, "of": planned epochs, "reason": ...}; None = finished
    stopped_early: dict[str, Any] | None = None
    timing: dict[str, Any] = field(default_factory=dict)
    # train.nonfinite=skip: the optimizer steps skipped for a non-finite loss or gradient ({"step", "what"})
    nonfinite_skipped: list[dict[str, Any]] = field(default_factory=list)
    # ``scaleprompt eval``: the prompt file evaluated (path, sha256, selection, epoch, the run that trained it);
    # None = the numbers come from the training run itself
    evaluated: dict[str, Any] | None = None
    format: str = RUN_FORMAT

    def to_dict(self) -> dict[str, Any]:
        out = {k: getattr(self, k) for k in self.__dataclass_fields__}
        out["results"] = {k: v.to_dict() for k, v in self.results.items()}
        out["zero_shot"] = self.zero_shot.to_dict() if self.zero_shot is not None else None
        return out

    @classmethod
    def from_dict(cls, data: Any, source: str | Path) -> RunResult:
        """Validate and type a parsed ``results.json``; errors start with ``source`` and name the field."""
        src = str(source)
        if not isinstance(data, dict):
            raise ResultsError(
                f"{src}: not a scaleprompt run file (expected a JSON object, got {type(data).__name__})"
            )
        fmt = data.get("format")
        if fmt not in READABLE_FORMATS:
            raise ResultsError(
                f"{src}: not a scaleprompt run file: format is {fmt!r}, expected one of {READABLE_FORMATS}"
            )
        for key in ("method", "dataset", "backbone"):
            if not isinstance(data.get(key), str) or not data[key]:
                raise ResultsError(f"{src}: {key!r} must be a non-empty string, got {data.get(key)!r}")
        setting = data.get("setting")
        if setting not in SETTINGS:
            raise ResultsError(f"{src}: 'setting' must be one of {list(SETTINGS)}, got {setting!r}")
        for key in ("shots", "seed"):
            if not isinstance(data.get(key), int) or isinstance(data[key], bool):
                raise ResultsError(f"{src}: {key!r} must be an integer, got {data.get(key)!r}")
        if data.get("pretrained") is not None and not isinstance(data["pretrained"], str):
            raise ResultsError(f"{src}: 'pretrained' must be a string or null, got {data['pretrained']!r}")
        raw = data.get("results")
        if not isinstance(raw, Mapping):
            raise ResultsError(f"{src}: 'results' must be an object with 'last' (and optionally 'best_val')")
        evaluated = data.get("evaluated")
        if evaluated is not None and not isinstance(evaluated, Mapping):
            raise ResultsError(f"{src}: 'evaluated' must be null or an object, got {evaluated!r}")
        if evaluated is None and raw.get("last") is None:
            raise ResultsError(f"{src}: results has no 'last' (last-epoch) results")
        if not any(raw.get(s) is not None for s in SELECTIONS):
            raise ResultsError(f"{src}: results has none of the selections {list(SELECTIONS)}")
        results = {
            s: SelectionResult.parse(raw[s], setting, f"results.{s}", src)
            for s in SELECTIONS
            if raw.get(s) is not None
        }
        stopped = data.get("stopped_early")
        if stopped is not None and not (
            isinstance(stopped, Mapping) and isinstance(stopped.get("epoch"), int)
        ):
            raise ResultsError(
                f"{src}: 'stopped_early' must be null or an object with an integer 'epoch', got {stopped!r}"
            )
        zero_shot = data.get("zero_shot")
        known = {
            k: data[k] for k in cls.__dataclass_fields__ if k in data and k not in ("results", "zero_shot")
        }
        return cls(
            **known,
            results=results,
            zero_shot=SelectionResult.parse(zero_shot, setting, "zero_shot", src) if zero_shot else None,
        )
