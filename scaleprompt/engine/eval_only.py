"""Evaluation only: a prompt file tested on a dataset's setting, as training tests its prompts.

``evaluation_config(prompts, recipe, overrides)`` assembles the :class:`RunConfig` of the evaluation and
:class:`PromptEvaluation` runs it (every rank; under the deepspeed launcher the test sets are split over the
ranks and the counts summed). Nothing is new here: the run is put together by THE run assembly of training
(:func:`~scaleprompt.engine.assembly.assemble`: the setting's shards from THE shard cache, the same folders as the
training run when the data, shots and seed are the same; the method inside the same
:class:`~scaleprompt.engine.model.PromptedModel`, precision and ZeRO stage of ``--ds``; the same
:class:`~scaleprompt.engine.evaluate.Evaluator`), only its method comes from the file; and its result is built by
the same :func:`~scaleprompt.engine.assembly.run_result`. So the evaluation of a training run's
``prompts.safetensors`` with that run's config and world size gives its test numbers exactly.

The configuration, in order:

* the base: ``recipe`` when given, else the ``config.json`` of the training run the file sits in (the folder
  ``train.py`` exported it to), else the defaults;
* the prompt file decides the method (``method.name``/``method.args`` are the file's) and the backbone
  (``model.name`` and, unless an override sets it, ``model.pretrained``: the weights the prompts were trained on);
* then the ``key=value`` overrides (``data.dataset``, ``eval.setting``, ``eval.targets``, ...).

The result is a :class:`~scaleprompt.report.schema.RunResult` whose only selection is the file's (``last`` or
``best_val`` for a training run's exports, ``last`` for other files) and whose ``evaluated`` names the file (path,
sha256, selection, epoch, run).

The file is read ONCE (:func:`~scaleprompt.methods.io.open_prompt_file`): its checksum is verified, and the
config, the prompts that are evaluated and ``evaluated``'s sha256, selection and epoch all come from those same
bytes, also when the file is replaced during the evaluation (training's final export replaces its files).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from scaleprompt.backbone import Backbone
from scaleprompt.config import ConfigError
from scaleprompt.data.datasets import dataset_display_name
from scaleprompt.encoders import EncoderOptions
from scaleprompt.engine.assembly import assemble, run_result, write_result
from scaleprompt.engine.config import (
    REMOVED_KEYS,
    MethodSection,
    RunConfig,
    check_run_config,
    load_run_config,
)
from scaleprompt.engine.distributed import DistInfo, init_distributed
from scaleprompt.engine.run import EvalSetting
from scaleprompt.methods.base import PromptMethod
from scaleprompt.methods.io import PromptFile, load_prompts, open_prompt_file
from scaleprompt.promptfile import PromptFileError

logger = logging.getLogger(__name__)

RUN_CONFIG = "config.json"  # what train.py writes next to the prompt files


def prompt_file_header(file: PromptFile) -> dict[str, Any]:
    """The decoded metadata of the prompt ``file``: method, config, classnames, backbone, and where it came from."""
    if not file.header.get("backbone"):
        raise PromptFileError(f"{file.path} does not record its backbone; it cannot be evaluated on its own")
    return file.header


def run_config_of(path: Path) -> dict[str, Any]:
    """A training run's ``config.json`` (``path``) as a recipe: keys later versions removed (:data:`REMOVED_KEYS`; none of
    them changes the math) are dropped, so older runs stay evaluable."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path}: not a readable run config ({exc})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: not a run config (expected a JSON object)")
    for key in REMOVED_KEYS:
        section, name = key.split(".", 1)
        if isinstance(data.get(section), dict) and data[section].pop(name, None) is not None:
            logger.info("evaluation: %s of %s is no longer a key, ignored", key, path)
    return data


def evaluation_config(
    prompts: str | Path | PromptFile, recipe: str | Path | dict[str, Any] | None, overrides: Sequence[str]
) -> RunConfig:
    """The run config of an evaluation of ``prompts`` (a path, or the file already read) under the base ``recipe``
    (None: the training run's config beside the file, else the defaults) and the ``key=value`` ``overrides`` (see
    the module docstring for the order); ``recipe`` may be a mapping of sections already read."""
    file = prompts if isinstance(prompts, PromptFile) else open_prompt_file(prompts)
    path = file.path
    header = prompt_file_header(file)
    base: str | Path | dict[str, Any] | None = recipe
    if base is None and (path.parent / RUN_CONFIG).is_file():
        logger.info("evaluation: the training run's config %s", path.parent / RUN_CONFIG)
        base = run_config_of(path.parent / RUN_CONFIG)
    backbone = header["backbone"]
    keys = {item.split("=", 1)[0] for item in overrides}
    method_keys = sorted(k for k in keys if k.split(".")[0] == "method")
    if method_keys:  # (they would be replaced by the file's without a word)
        raise ConfigError(
            f"{', '.join(method_keys)}: the prompt file {path} decides the method and its config"
        )
    if "model.name" in keys:
        wanted = next(i.split("=", 1)[1] for i in overrides if i.startswith("model.name="))
        if wanted != backbone["model_name"]:
            raise ConfigError(
                f"model.name={wanted}: the prompts of {path} were trained on {backbone['model_name']}"
            )
    forced = [f"model.name={backbone['model_name']}", f"method.name={header['method']}"]
    if "model.pretrained" not in keys:  # (an override may point at a local copy of the same weights)
        forced.append(f"model.pretrained={backbone['pretrained'] if backbone['pretrained'] else 'null'}")
    cfg = load_run_config(base, [*forced, *overrides])
    args = dict(header["config"])
    if header.get("templates_from") == "dataset":
        args["templates"] = None  # the template rule: each dataset's own template (as in training)
    return check_run_config(replace(cfg, method=MethodSection(header["method"], args)))


class PromptEvaluation:
    """One evaluation of the prompt file ``prompts`` (a path, or the file already read: the one ``cfg`` was made
    from, the same bytes) under ``cfg`` (from :func:`evaluation_config`); ``ds_config``: the DeepSpeed JSON (ZeRO-3
    partitions a big frozen backbone over the ranks), default: the same plain DeepSpeed engine training uses;
    ``local_rank``: the launcher's ``--local_rank``; ``zero_shot``: zero-shot CLIP's numbers on the same sets too."""

    def __init__(
        self,
        prompts: str | Path | PromptFile,
        cfg: RunConfig,
        ds_config: dict[str, Any] | None = None,
        local_rank: int | None = None,
        zero_shot: bool = False,
    ) -> None:
        self.file = prompts if isinstance(prompts, PromptFile) else open_prompt_file(prompts)
        self.path, self.cfg, self.ds_config, self.zero_shot = self.file.path, cfg, ds_config, zero_shot
        self.header = prompt_file_header(self.file)
        self.dist: DistInfo = init_distributed(local_rank)

    def run(self, output: str | Path) -> dict[str, Any]:
        """Evaluate; rank 0 writes the results to ``output`` (atomically). Returns the results on every rank."""
        cfg, start = self.cfg, time.time()
        parts = assemble(
            cfg,
            self.dist,
            self.ds_config,
            training=False,
            method=self._method,
            zero_shot=self.zero_shot,
            init_seed=self.header["backbone"].get("init_seed") or 0,
        )
        model, evaluator = parts.model, parts.evaluator
        selection = self.header.get("selection") or "last"
        metrics = {"val": evaluator.split(model, parts.setting.train, "val"), **evaluator.test_all(model)}
        result = run_result(
            cfg,
            parts,
            {selection: metrics},
            f"the evaluation of {self.path}",
            timing={"eval_seconds": time.time() - start},
            evaluated=self._evaluated(selection),
        )
        write_result(Path(output), result, self.dist)
        return result

    def _method(self, backbone: Backbone, setting: EvalSetting, options: EncoderOptions) -> PromptMethod:
        """The file's method (the bytes read; its backbone's shapes checked) on ``backbone``, its encoders run with
        ``options``, classifying the classes of ``setting`` (refused for class-specific prompts) with the
        dataset's template when it was trained with its dataset's."""
        method = load_prompts(self.file, backbone, options=options)
        if method.classnames != list(setting.classnames) or self.header.get("templates_from") == "dataset":
            method.set_classnames(setting.classnames, setting.templates)
        return method

    def _evaluated(self, selection: str) -> dict[str, Any]:
        header = self.header
        epoch = header.get("epoch")
        return {
            "path": str(self.path.resolve()),
            "sha256": self.file.sha256,
            "selection": selection,
            "epoch": int(epoch) if epoch is not None and epoch.isdigit() else None,
            "run": header.get("run"),
        }


def default_output(prompts: str | Path, cfg: RunConfig) -> Path:
    """Where the evaluation of the file ``prompts`` under ``cfg`` goes:
    ``<folder of the file>/<file stem>.eval-<dataset>-<setting>.json`` (never a run's own results.json)."""
    path = Path(prompts)
    name = dataset_display_name(cfg.data.dataset)
    return path.with_name(f"{path.stem}.eval-{name}-{cfg.eval.setting}.json")
