"""The Python API: train, evaluate and predict from a script or a notebook, as the command line does.

::

    import scaleprompt

    result = scaleprompt.train("demo", optim={"epochs": 2}, train={"output_dir": "runs/api"})
    print(result.results["last"].hm)                       # a typed RunResult (the run's results.json)
    again = scaleprompt.evaluate("runs/api/prompts.safetensors")
    predictor = scaleprompt.Predictor("runs/api/prompts.safetensors")

Each call does what its command does, in this process (one process, or one rank of a launch: under the deepspeed
launcher or torchrun every rank calls it with the same arguments): the same config (a recipe with its overrides,
checked the same way: an unknown key is an error naming it), the same engine, the same files in the run folder,
the same log lines. Logging is switched on as the command line switches it (scaleprompt's INFO lines on stderr;
on a launched run, rank 0's) unless the caller has already configured logging.

Overrides come as sections (``optim={"epochs": 2}``, ``method={"args": {"n_ctx": 4}}``), as a mapping of dotted
keys (``overrides={"optim.epochs": 2}``) or as the command line's ``key=value`` strings (``overrides=["optim.epochs=2"]``);
typed values go in as they are.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from scaleprompt.config import ConfigError

if TYPE_CHECKING:
    from scaleprompt.engine.config import RunConfig
    from scaleprompt.report.schema import RunResult

logger = logging.getLogger(__name__)

SECTIONS = ("model", "method", "data", "optim", "eval", "train")
Overrides = Mapping[str, Any] | Sequence[str] | None


def train(
    config: str | Path | Mapping[str, Any] | RunConfig | None,
    overrides: Overrides = None,
    *,
    ds: str | Path | Mapping[str, Any] | None = None,
    resume: bool = False,
    **sections: Mapping[str, Any],
) -> RunResult:
    """Train prompts as ``scaleprompt train`` does and return the run's results (what ``results.json`` holds).

    ``config``: a recipe (a YAML file, a packaged name such as ``"demo"`` or ``"provp_ref/base2new"``), a mapping
    of sections, or a :class:`~scaleprompt.engine.config.RunConfig`; None only with the weights named (see
    :func:`~scaleprompt.engine.config.require_a_recipe`). ``overrides`` and ``sections``: see the module doc.
    ``ds``: a DeepSpeed JSON (a file, a packaged name such as ``"zero2"``, or a mapping); None: plain data
    parallel. ``resume``: continue the newest complete checkpoint of ``train.output_dir``."""
    from scaleprompt.engine.config import check_ds_config, load_ds_config
    from scaleprompt.engine.trainer import Trainer
    from scaleprompt.report.schema import RunResult

    _console()
    cfg = run_config(config, overrides, sections, training=True)
    ds_config = None
    if isinstance(ds, Mapping):
        ds_config = check_ds_config(dict(ds), "ds")
    elif ds is not None:
        ds_config = load_ds_config(ds)
    results = Trainer(cfg, ds_config, resume=resume).fit()
    _summarize(results)
    return RunResult.from_dict(results, Path(cfg.train.output_dir) / "results.json")


def evaluate(
    prompts: str | Path,
    config: str | Path | Mapping[str, Any] | None = None,
    overrides: Overrides = None,
    *,
    ds: str | Path | None = None,
    output: str | Path | None = None,
    zero_shot: bool = False,
    **sections: Mapping[str, Any],
) -> RunResult:
    """Test the prompt file ``prompts`` as ``scaleprompt eval`` does and return the results (also written to
    ``output``, by default ``<file stem>.eval-<dataset>-<setting>.json`` beside the file). ``config``: the base
    recipe (None: the training run's config beside the file, else the defaults); the prompt file decides the method
    and the backbone; ``overrides`` / ``sections`` set the rest (``data={"dataset": ...}``, ``eval={"setting":
    ...}``). ``zero_shot``: zero-shot CLIP's numbers on the same sets too."""
    from scaleprompt.engine.config import load_ds_config
    from scaleprompt.engine.eval_only import PromptEvaluation, default_output, evaluation_config
    from scaleprompt.methods.io import open_prompt_file
    from scaleprompt.report.schema import RunResult

    _console()
    file = open_prompt_file(prompts)  # (read once: config, prompts and hash come from the same bytes)
    base = dict(config) if isinstance(config, Mapping) else config
    cfg = evaluation_config(file, base, _dotlist(overrides, sections))
    evaluation = PromptEvaluation(
        file, cfg, load_ds_config(ds) if ds is not None else None, zero_shot=zero_shot
    )
    target = Path(output) if output is not None else default_output(prompts, cfg)
    results = evaluation.run(target)
    _summarize(results)
    return RunResult.from_dict(results, target)


def run_config(
    config: str | Path | Mapping[str, Any] | RunConfig | None,
    overrides: Overrides = None,
    sections: Mapping[str, Mapping[str, Any]] | None = None,
    training: bool = False,
) -> RunConfig:
    """The :class:`~scaleprompt.engine.config.RunConfig` of ``config`` with ``overrides`` and ``sections`` merged
    in (the module doc), checked as the command line checks it; ``training``: refuse a run with neither a recipe
    nor weights, as ``scaleprompt train`` does."""
    from scaleprompt.engine.config import RunConfig, derive_run_config, load_run_config, require_a_recipe

    sections = dict(sections or {})
    if isinstance(config, RunConfig):
        values = _values(overrides, sections)
        cfg = derive_run_config(config, values) if values else config
        return cfg
    dotlist = _dotlist(overrides, sections)
    cfg = load_run_config(dict(config) if isinstance(config, Mapping) else config, dotlist)
    if training:
        require_a_recipe(config, cfg, dotlist)
    return cfg


def _values(overrides: Overrides, sections: Mapping[str, Any]) -> dict[str, Any]:
    """Dotted key -> typed value, from ``overrides`` and the section keyword arguments ``sections``."""
    unknown = sorted(set(sections) - set(SECTIONS))
    if unknown:
        raise ConfigError(
            f"unknown config section(s) {', '.join(unknown)} (the sections: {', '.join(SECTIONS)})"
        )
    values: dict[str, Any] = {}
    for name, section in sections.items():
        if not isinstance(section, Mapping):
            raise ConfigError(f"{name}=...: a section is a mapping of its keys, got {section!r}")
        values.update(_flatten(section, name))
    if overrides is None:
        return values
    if isinstance(overrides, Mapping):
        values.update({str(k): v for k, v in overrides.items()})
        return values
    if isinstance(overrides, str):
        raise ConfigError(f"overrides={overrides!r}: a list of key=value strings, or a mapping")
    strings = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not key=value")
        key, value = item.split("=", 1)
        strings[key] = _StringValue(value)
    values.update(strings)
    return values


class _StringValue(str):
    """A ``key=value`` string's value: parsed as the command line parses it (OmegaConf's dotlist)."""


def _dotlist(overrides: Overrides, sections: Mapping[str, Any]) -> list[str]:
    """The values as the command line's ``key=value`` strings: strings given as such pass through; a typed value
    is written so that OmegaConf reads it back as the same value (``None`` as ``null``, a list or a mapping as
    its JSON, which is YAML)."""
    import json

    out = []
    for key, value in _values(overrides, sections).items():
        if isinstance(value, _StringValue):
            text = str(value)
        else:  # (JSON: None -> null; a str quoted, so "null", "1e-3" or "true" stay strings)
            text = json.dumps(str(value) if isinstance(value, Path) else value)
        out.append(f"{key}={text}")
    return out


def _flatten(section: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    """``{"args": {"n_ctx": 4}}`` under ``method`` -> ``{"method.args.n_ctx": 4}`` (a mapping at a leaf that
    is not a section's key, e.g. ``method.args``, is merged key by key)."""
    out: dict[str, Any] = {}
    for key, value in section.items():
        name = f"{prefix}.{key}"
        if isinstance(value, Mapping) and value:
            out.update(_flatten(value, name))
        else:
            out[name] = value
    return out


def _console() -> None:
    """scaleprompt's INFO lines on stderr as the command line shows them, unless logging is configured already
    (a handler on the root logger or on ``scaleprompt``: the caller's choice is kept)."""
    if logging.getLogger().handlers or logging.getLogger("scaleprompt").handlers:
        return
    from scaleprompt.commands.common import setup_console

    setup_console("ranks" if "RANK" in os.environ else "plain")


def _summarize(results: dict[str, Any]) -> None:
    """The command line's result lines (rank 0 of a launched run)."""
    from scaleprompt.commands.common import summarize

    if int(os.environ.get("RANK", 0)) == 0:
        summarize(results)
