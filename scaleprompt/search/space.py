"""Search spaces: what a sweep samples, checked against the recipe AND the real backbone before Ray starts.

A space file (``tune/spaces/*.yaml``)::

    metric: val_top1          # reported by the engine after each validated epoch
    mode: max
    params:
      method.args.depth: {type: int, low: 1, high: vision_blocks}   # bounded by the backbone
      method.args.n_ctx: {type: categorical, values: [4, 8, 16]}
      optim.lr:          {type: loguniform, low: 0.001, high: 0.5}

Keys are run-config paths (``section.key``). Types: ``float`` (uniform), ``loguniform``, ``int`` (uniform over
``low..high``, both included), ``categorical``. ``low`` / ``high`` of an int or float parameter may name a size
of the recipe's backbone instead of a number (:data:`BOUNDS`): ``vision_blocks``, ``text_blocks``, or
``blocks`` (the smaller of the two, for parameters that index both towers). In a space where ``method.name`` is a
parameter, ``method.args.X`` applies to the sampled methods that have a field X (the recipe's method args are
dropped for the others, which run with their defaults plus the sampled values).

:func:`check_space` is the pre-flight: every value of a categorical and both ends of a range go through the
run-config validation, and every method parameter is BUILT at those values on the recipe's backbone (its
structure only: no weights are loaded), so an impossible range is a :class:`SpaceError` naming the parameter,
its range and the method's limit, before a single trial runs.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

from scaleprompt.backbone import Backbone, BackboneInfo, load_clip
from scaleprompt.config import ConfigError, check_types, read_yaml_mapping, require
from scaleprompt.engine.config import RunConfig, derive_run_config
from scaleprompt.errors import ScalepromptError
from scaleprompt.methods import build, method_class
from scaleprompt.recipes import resolve_recipe

logger = logging.getLogger(__name__)

ParamType = Literal["float", "loguniform", "int", "categorical"]
# the backbone sizes a range may be bounded by
BOUNDS = {
    "vision_blocks": "blocks of the vision tower",
    "text_blocks": "blocks of the text tower",
    "blocks": "blocks both towers have (the smaller tower)",
}


class SpaceError(ConfigError):
    """A space file or one of its parameter ranges cannot run on the recipe (the message names the parameter)."""


@dataclass
class ParamSpec:
    """One searched parameter. ``low`` / ``high`` are numbers or a :data:`BOUNDS` name until :meth:`resolved`."""

    type: ParamType
    low: float | str | None = None
    high: float | str | None = None
    values: list[Any] | None = None

    def __post_init__(self) -> None:
        check_types(self)
        if self.type == "categorical":
            require(bool(self.values), "values", "a categorical parameter needs a non-empty list of values")
            return
        require(
            self.low is not None and self.high is not None, "low", f"a {self.type} parameter needs low/high"
        )
        for end in ("low", "high"):
            value = getattr(self, end)
            if isinstance(value, str):
                require(value in BOUNDS, end, f"a number or one of {', '.join(BOUNDS)}, got {value!r}")
                require(self.type == "int", end, f"a backbone bound ({value}) needs type int")
        low, high = self.low, self.high
        if isinstance(low, int | float) and isinstance(high, int | float):  # (concrete: no backbone bound)
            require(low < high, "high", f"must be > low ({low}), got {high}")
            require(self.type != "loguniform" or low > 0, "low", "loguniform needs low > 0")
            if self.type == "int":
                whole = low == int(low) and high == int(high)
                require(whole, "low", f"an int parameter needs whole bounds, got {low}..{high}")
                self.low, self.high = int(low), int(high)

    @property
    def concrete(self) -> bool:
        return not isinstance(self.low, str) and not isinstance(self.high, str)

    def resolved(self, bounds: dict[str, int]) -> ParamSpec:
        """This parameter with its backbone bounds replaced by their values in ``bounds``
        (:func:`backbone_bounds`)."""
        if self.concrete:
            return self
        low, high = (bounds[v] if isinstance(v, str) else v for v in (self.low, self.high))
        return ParamSpec(self.type, low, high, self.values)

    @property
    def range(self) -> tuple[float, float]:
        """(low, high) of a resolved int / float parameter."""
        if not isinstance(self.low, int | float) or not isinstance(self.high, int | float):
            raise SpaceError(f"{self.describe()} is not resolved to numbers")
        return float(self.low), float(self.high)

    def describe(self) -> str:
        if self.type == "categorical":
            return f"values {self.values}"
        return f"range [{self.low}, {self.high}] ({self.type})"

    def extremes(self) -> list[Any]:
        """The values the pre-flight builds: every categorical value, both ends of a range."""
        if self.type == "categorical":
            return list(self.values or [])
        return [self.low, self.high]


@dataclass
class SearchSpace:
    params: dict[str, ParamSpec]
    metric: str = "val_top1"
    mode: Literal["max", "min"] = "max"
    name: str = "space"

    def __post_init__(self) -> None:
        check_types(self)

    def methods(self, base: RunConfig) -> list[str]:
        """The methods the trials run: the sampled ``method.name`` values, else the ``base`` config's method."""
        spec = self.params.get("method.name")
        return list(spec.values or []) if spec else [base.method.name]

    def resolved(self, bounds: dict[str, int]) -> SearchSpace:
        """This space with every parameter's backbone bounds replaced by their values in ``bounds``."""
        return replace(self, params={k: spec.resolved(bounds) for k, spec in self.params.items()})


def load_space(path: str | Path) -> SearchSpace:
    """Read the space file ``path`` (its shape and types; :func:`check_space` checks it against a recipe): a file,
    or a packaged name such as ``provp_ref`` (:func:`scaleprompt.recipes.resolve_recipe`)."""
    path = resolve_recipe(path, "space")
    raw = read_yaml_mapping(path, "search space", "metric / mode / params")
    unknown = sorted(set(raw) - {"metric", "mode", "params"})
    if unknown:
        raise SpaceError(f"{path}: unknown key(s) {unknown}; valid: metric, mode, params")
    params = {}
    for key, spec in (raw.get("params") or {}).items():
        try:
            params[key] = ParamSpec(**spec)
        except (TypeError, ConfigError) as exc:
            raise SpaceError(f"{path}: parameter {key!r}: {exc}") from None
    if not params:
        raise SpaceError(f"{path}: no params to search")
    try:
        return SearchSpace(params, raw.get("metric", "val_top1"), raw.get("mode", "max"), path.stem)
    except ConfigError as exc:
        raise SpaceError(f"{path}: {exc}") from None


def trial_values(base: RunConfig, sample: Mapping[str, Any]) -> dict[str, Any]:
    """The values one sampled configuration ``sample`` (``{run-config key: value}``) sets on the sweep's ``base``
    (:func:`~scaleprompt.engine.config.derive_run_config` merges them): every sampled value but the
    ``method.args`` that the trial's method (the sampled ``method.name``, else the base's) does not have."""
    method = sample.get("method.name", base.method.name)
    fields = method_class(method).config_class.__dataclass_fields__
    prefix = "method.args."
    return {k: v for k, v in sample.items() if not k.startswith(prefix) or k[len(prefix) :] in fields}


def backbone_bounds(info: BackboneInfo) -> dict[str, int]:
    """The sizes a range may be bounded by (:data:`BOUNDS`) on the backbone described by ``info``."""
    return {
        "vision_blocks": info.vision_layers,
        "text_blocks": info.text_layers,
        "blocks": min(info.vision_layers, info.text_layers),
    }


class _Structure:
    """The recipe's backbone for building methods cheaply: open_clip's modules on the meta device (no memory, no
    weights), or, for a method whose construction reads tensor values (a context initialised from word
    embeddings), one random-initialised copy on the CPU."""

    def __init__(self, cfg: RunConfig) -> None:
        self.name = cfg.model.name
        self.meta = load_clip(self.name, None, device="meta", cache_dir=cfg.model.cache_dir)
        self._cpu: Backbone | None = None
        self.cache_dir = cfg.model.cache_dir

    def build(self, cfg: RunConfig, classnames: Sequence[str], templates: Sequence[str]) -> None:
        """Build the method of ``cfg`` for ``classnames`` with the dataset's ``templates`` (its errors raise)."""
        args = dict(cfg.method.args)
        try:
            build(cfg.method.name, self.meta, classnames, dataset_templates=templates, **args)
            return
        except ScalepromptError:
            raise
        except (RuntimeError, NotImplementedError):  # a value read from a meta tensor
            pass
        if self._cpu is None:
            self._cpu = load_clip(self.name, None, cache_dir=self.cache_dir)
        build(cfg.method.name, self._cpu, classnames, dataset_templates=templates, **args)


def check_space(
    space: SearchSpace,
    base: RunConfig,
    classnames: Sequence[str],
    templates: Sequence[str],
    structures: dict[str, Any] | None = None,
) -> SearchSpace:
    """The pre-flight of ``space`` on the sweep's ``base`` config (the recipe and the sweep's overrides, loaded
    once). Returns the space with its backbone bounds resolved; raises :class:`SpaceError` naming the first
    parameter whose values do not validate (checked first, without a backbone) or whose range does not fit the
    method on the backbone. ``classnames`` / ``templates``: what the methods are built for (a placeholder class
    before the data is read, then the real ones); ``structures``: backbone structures by model name, reused
    across calls."""
    if space.metric not in ("val_top1", "val_mean_per_class", "train_loss"):
        raise SpaceError(
            f"metric {space.metric!r}: the engine reports val_top1, val_mean_per_class, train_loss"
        )
    if "method.name" in space.params:  # (an unknown method: before anything is built)
        for value in space.params["method.name"].values or []:
            derive_run_config(base, {"method.name": value})
    structures = {} if structures is None else structures
    structure = structures.get(base.model.name) or structures.setdefault(base.model.name, _Structure(base))
    bounds = backbone_bounds(structure.meta.info)
    for key, spec in space.params.items():
        try:
            spec.resolved(bounds)
        except ConfigError as exc:
            raise SpaceError(
                f"search parameter {key!r}: {spec.describe()} is empty on {base.model.name} "
                f"({', '.join(f'{k}={v}' for k, v in bounds.items())}): {exc}"
            ) from None
    resolved = space.resolved(bounds)
    checks = [
        (key, sample, _config(resolved, key, sample, base))
        for key in resolved.params
        for sample in _samples(resolved, key, base)
    ]
    for key, sample, cfg in checks:
        if key.startswith("method."):
            try:
                structure.build(cfg, classnames, templates)
            except ScalepromptError as exc:
                spec = resolved.params[key]
                bounded = "blocks" in str(exc) and spec.type == "int"
                hint = " (bound the range by the backbone: high: vision_blocks / text_blocks / blocks)"
                raise SpaceError(
                    f"search parameter {key!r} ({spec.describe()}) does not fit {cfg.method.name} on "
                    f"{base.model.name}: {key}={sample[key]!r}: {exc}{hint if bounded else ''}"
                ) from None
    return resolved


def _samples(space: SearchSpace, key: str, base: RunConfig) -> list[dict[str, Any]]:
    """The complete samples the pre-flight tries for ``key`` (a trial always samples every parameter): each extreme
    of ``key`` with each method of the space that has it, the other parameters at their first value / low end."""
    spec = space.params[key]
    rest = {k: s.extremes()[0] for k, s in space.params.items() if k != key}
    if key == "method.name":
        return [{**rest, key: value} for value in spec.extremes()]
    methods = space.methods(base)
    name = key[len("method.args.") :] if key.startswith("method.args.") else None
    owners = [m for m in methods if name is None or name in method_class(m).config_class.__dataclass_fields__]
    if not owners:
        raise SpaceError(
            f"search parameter {key!r}: no method of the space ({', '.join(methods)}) has {name!r}"
        )
    if "method.name" not in space.params:
        return [{**rest, key: value} for value in spec.extremes()]
    return [{**rest, key: value, "method.name": m} for m in owners for value in spec.extremes()]


def _config(space: SearchSpace, key: str, sample: dict[str, Any], base: RunConfig) -> RunConfig:
    try:
        return derive_run_config(base, trial_values(base, sample))
    except ConfigError as exc:
        raise SpaceError(
            f"search parameter {key!r} ({space.params[key].describe()}): {key}={sample[key]!r} is not a valid "
            f"setting: {exc}"
        ) from None
