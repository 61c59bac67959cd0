"""THE run assembly, shared by training (:class:`~scaleprompt.engine.trainer.Trainer`, also a search trial's) and
evaluation-only (:class:`~scaleprompt.engine.eval_only.PromptEvaluation`).

* :func:`assemble` turns a :class:`RunConfig` into the parts of a run (:class:`RunParts`): the evaluation setting
  (its shards found or written by rank 0, the val / test shards checked), the frozen backbone, the method, the
  :class:`~scaleprompt.engine.evaluate.Evaluator`, zero-shot CLIP's numbers and the
  :class:`~scaleprompt.engine.model.PromptedModel` that runs the method. What differs between training and
  evaluation is a parameter: where the method comes from (built from the recipe, or read from a prompt file),
  the zero-shot baseline (computed, reused from a checkpoint, or none), the batch geometry and the backbone's
  ``init_seed`` (a randomly initialised backbone is the one the prompts were trained on).
* :func:`run_result` is THE :class:`~scaleprompt.report.schema.RunResult` builder (``results.json`` of a run, the
  JSON of an evaluation): the fields every result has come from the config and the parts; the rest is passed.
* :func:`write_result` writes one (rank 0, atomically).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, cast

from scaleprompt.backbone import Backbone, BackboneInfo, load_clip
from scaleprompt.data.datasets import dataset_display_name
from scaleprompt.encoders import EncoderOptions
from scaleprompt.engine.checkpoint import atomic_json
from scaleprompt.engine.config import RunConfig
from scaleprompt.engine.distributed import DistInfo, barrier, run_on_main
from scaleprompt.engine.evaluate import Evaluator
from scaleprompt.engine.model import PromptedModel, writing
from scaleprompt.engine.run import (
    EvalSetting,
    build_setting,
    check_class_sets,
    check_eval_shards,
    describe_data,
    encoder_options,
    eval_loader,
    new_method,
    protocol_lines,
)
from scaleprompt.methods import build
from scaleprompt.methods.base import PromptMethod
from scaleprompt.report.schema import RunResult, SelectionResult

logger = logging.getLogger(__name__)

MethodSource = Callable[[Backbone, EvalSetting, EncoderOptions], PromptMethod]
"""Where a run's method comes from: ``(backbone, setting, encoder options) -> method`` (default: built from the
recipe, :func:`~scaleprompt.engine.run.new_method`)."""


@dataclass(frozen=True)
class RunParts:
    """What a run is made of (see :func:`assemble`)."""

    setting: EvalSetting
    backbone: Backbone
    method: PromptMethod
    evaluator: Evaluator
    zero_shot: dict[str, Any] | None  # zero-shot CLIP's test metrics of the setting (None: not asked for)
    model: PromptedModel  # the method in its DeepSpeed engine

    @property
    def info(self) -> BackboneInfo:
        """The backbone's description (image size, normalisation)."""
        assert self.backbone.info is not None  # (load_clip's backbones always have it)
        return self.backbone.info


def assemble(
    cfg: RunConfig,
    dist: DistInfo,
    ds_config: dict[str, Any] | None = None,
    *,
    micro: int = 1,
    accumulation: int = 1,
    training: bool = True,
    method: MethodSource | None = None,
    zero_shot: bool | dict[str, Any] = False,
    init_seed: int = 0,
) -> RunParts:
    """The parts of the run ``cfg`` on this rank (``dist``), in this order: the setting (rank 0 finds or writes
    every shard folder; the val / test shards are checked), the backbone (``init_seed``: the seed of a random
    initialisation, see :func:`~scaleprompt.backbone.load_clip`), the evaluator, the zero-shot baseline, the
    method, and the method in a DeepSpeed engine made from ``ds_config`` (None: ZeRO stage 0) with ``micro`` x
    ``accumulation`` x world size = the global batch (``training``: False for an evaluation, the geometry unused).

    ``method``: where the method comes from (default: :func:`~scaleprompt.engine.run.new_method`, the recipe's),
    given the run's :func:`~scaleprompt.engine.run.encoder_options`; its class prompts of every class set of the setting are then checked. ``zero_shot``: True computes zero-shot
    CLIP's test metrics of the setting (before the backbone goes into a DeepSpeed engine: ZeRO-3 partitions it),
    a dict reuses numbers computed before (a resumed run's), False leaves them out."""
    setting = build_setting(cfg)
    run_on_main(lambda: check_eval_shards(setting))
    if dist.is_main:  # what the run trains and tests on, as the manifests count it (also in results.json)
        for line in protocol_lines(cfg, describe_data(setting)):
            logger.info("%s", line)
    backbone = load_clip(
        cfg.model.name, cfg.model.pretrained, cache_dir=cfg.model.cache_dir, init_seed=init_seed
    )
    # (open_clip's CLIP method; nn.Module's attribute typing says Tensor | Module)
    set_grad_checkpointing = cast(Callable[[bool], None], backbone.model.set_grad_checkpointing)
    set_grad_checkpointing(cfg.model.grad_checkpointing)  # (used only where gradients are enabled: training)
    info = backbone.info
    assert info is not None  # (load_clip's backbones always have it)
    evaluator = Evaluator(
        setting, lambda shards, split: eval_loader(cfg, info, dist, shards, split), dist.device
    )
    if isinstance(zero_shot, dict):
        baseline: dict[str, Any] | None = zero_shot
    elif zero_shot:
        baseline = zero_shot_baseline(cfg, dist, backbone, setting, evaluator)
    else:
        baseline = None
    options = encoder_options(cfg)
    made = (method or partial(new_method, cfg))(backbone, setting, options)
    check_class_sets(cfg, made, setting)
    model = PromptedModel(made, cfg, ds_config, dist, micro, accumulation, training=training)
    return RunParts(setting, backbone, made, evaluator, baseline, model)


def zero_shot_baseline(
    cfg: RunConfig, dist: DistInfo, backbone: Backbone, setting: EvalSetting, evaluator: Evaluator
) -> dict[str, Any]:
    """Zero-shot CLIP's test metrics on ``setting``'s sets (``backbone``, tested by ``evaluator``), on this rank
    (``dist``) of the run ``cfg``."""
    zsclip = build("zsclip", backbone, list(setting.classnames), dataset_templates=setting.templates)
    return evaluator.test_all(PromptedModel(zsclip, cfg, None, dist, training=False))  # (no DeepSpeed engine)


def run_result(
    cfg: RunConfig,
    parts: RunParts,
    selections: Mapping[str, Mapping[str, Any]],
    where: str,
    timing: dict[str, Any],
    **fields: Any,
) -> dict[str, Any]:
    """The :class:`~scaleprompt.report.schema.RunResult` (as its JSON dict) of the run ``cfg`` made of ``parts``:
    ``selections`` are the metrics of each selection of prompts (``last``, ``best_val``; validated against the
    setting, errors naming ``where``), ``timing`` how long it took; ``fields``: the other fields of the schema
    (training's epochs, steps, history, ...; evaluation's ``evaluated``). Method, dataset, setting, shots, seed,
    backbone, world size, data description, config and zero-shot numbers come from ``cfg`` and ``parts``."""
    setting = cfg.eval.setting
    zero_shot = parts.zero_shot
    return RunResult(
        method=cfg.method.name,
        dataset=dataset_display_name(cfg.data.dataset),
        setting=setting,
        shots=cfg.data.shots,
        seed=cfg.train.seed,
        backbone=cfg.model.name,
        pretrained=cfg.model.pretrained,
        results={k: SelectionResult.parse(v, setting, f"results.{k}", where) for k, v in selections.items()},
        world_size=parts.model.dist.world_size,
        data=describe_data(parts.setting),
        config=cfg.to_dict(),
        zero_shot=SelectionResult.parse(zero_shot, setting, "zero_shot", where) if zero_shot else None,
        timing=timing,
        **fields,
    ).to_dict()


def write_result(path: Path, result: dict[str, Any], dist: DistInfo) -> None:
    """Rank 0 of ``dist`` writes ``result`` to ``path`` (atomically; its folder made if needed); every rank waits."""
    if dist.is_main:
        with writing(path):
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_json(path, result)
        logger.info("results: %s", path)
    barrier()
