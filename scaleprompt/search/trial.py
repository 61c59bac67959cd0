"""One trial of a sweep: the SAME engine as ``train.py`` (:class:`~scaleprompt.engine.trainer.Trainer`), in its
own run folder ``<trial>/run/`` (results.json, prompts.safetensors, checkpoints, TensorBoard or the trackers of
``train.report_to``).

* The trainer reports after each validated epoch (the searcher and the scheduler see ``epoch`` / ``val_*``); its
  last report, marked ``final``, comes after results.json and the prompt files are written.
* A configuration or data error (the project's own :class:`~scaleprompt.errors.ScalepromptError`) is the same on
  every attempt: the trial ends with one result marked ``failed`` (its message) and is NOT retried. Anything
  else (a killed worker, a lost node, out of memory) raises, and Tune retries the trial from its last
  checkpoint (``--max-failures``).
* A trial the scheduler stops early is killed by Tune right after its report; :func:`finish_trial` (run by the
  driver after the sweep) writes its results from its newest checkpoint, labelled ``stopped_early``.
* ``workers > 1``: a Ray Train run of that many DeepSpeed workers (one process group, gloo on CPUs / nccl on GPUs),
  rank 0's reports reach Tune.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import tempfile
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray
from ray import train, tune
from ray.train.collective import broadcast_from_rank_zero
from ray.train.v2.api.data_parallel_trainer import DataParallelTrainer
from ray.tune.integration.ray_train import TuneReportCallback

from scaleprompt.engine.checkpoint import atomic_json
from scaleprompt.engine.config import RunConfig, derive_run_config, load_run_config
from scaleprompt.engine.distributed import barrier
from scaleprompt.engine.trainer import Trainer
from scaleprompt.errors import ScalepromptError, one_line
from scaleprompt.identity import flatten
from scaleprompt.search.space import SearchSpace, trial_values

logger = logging.getLogger(__name__)

Report = Callable[[dict[str, Any], Path | None], None]


def nest(sample: dict[str, Any]) -> dict[str, Any]:
    """The flat ``sample`` nested by key, ``{"method.args.n_ctx": 4}`` -> ``{"method": {"args": {"n_ctx": 4}}}``: a
    trial's Tune config (Optuna names its parameters ``method/args/n_ctx``)."""
    out: dict[str, Any] = {}
    for key, value in sample.items():
        *parents, leaf = key.split(".")
        node = out
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return out


def sample_of(config: dict[str, Any] | None) -> dict[str, Any]:
    """A trial's Tune ``config`` (nested) as ``{run-config key: value}``."""
    return flatten(config or {})


def trial_dirname(trial: Any) -> str:
    """The folder name of the Tune ``trial``: ``<sweep>/trial_<id>`` (Tune's default name repeats every parameter
    and gets cut)."""
    return f"trial_{trial.trial_id}"


def sweep_config(recipe: str | Path | None, overrides: Sequence[str]) -> RunConfig:
    """The config every trial of a sweep starts from, loaded once by the driver: ``recipe`` (None: the defaults)
    with the sweep's ``key=value`` ``overrides``. Trackers (``train.report_to``): the sweep's overrides decide;
    without one, the recipe's, and TensorBoard when the recipe tracks nothing (the micro-world recipes)."""
    base = load_run_config(recipe, overrides)
    chosen = any(o.split("=", 1)[0].strip() == "train.report_to" for o in overrides)
    if chosen or base.train.report_to:
        return base
    return derive_run_config(base, {"train.report_to": ["tensorboard"]})


@dataclass(frozen=True)
class TrialJob:
    """What every trial of a sweep shares (shipped to the trials once by ``tune.with_parameters``): ``base``, the
    sweep's config (:func:`sweep_config`), the ``space`` with its bounds resolved, the DeepSpeed config and the
    resources of a trial's workers."""

    base: RunConfig
    space: SearchSpace
    ds_config: dict[str, Any] | None = None
    workers: int = 1
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 0.0

    def trial_config(self, config: dict[str, Any], out: Path) -> RunConfig:
        """The run config of one trial: ``base`` with the sampled values of ``config`` (the trial's Tune config)
        and the trial's run folder ``out``."""
        values = trial_values(self.base, sample_of(config))
        return derive_run_config(self.base, {**values, "train.output_dir": str(out)})


def deterministic_error(exc: BaseException) -> ScalepromptError | None:
    """The project's own error behind ``exc`` (through causes, Ray's wrappers and Ray Train's per-worker
    failures), or None for an infrastructure fault."""
    stack, seen = [exc], set()
    while stack:
        err = stack.pop()
        if id(err) in seen:
            continue
        seen.add(id(err))
        if isinstance(err, ScalepromptError):
            return err
        linked = [err.__cause__, err.__context__, getattr(err, "cause", None)]
        failures = getattr(err, "worker_failures", None)  # Ray Train's WorkerGroupError
        if isinstance(failures, dict):
            linked += list(failures.values())
        stack += [e for e in linked if isinstance(e, BaseException)]
    return None


def run_trial(config: dict[str, Any], job: TrialJob) -> None:
    """The Tune trainable: one engine run in ``<trial>/run`` of the sweep's ``job`` with the trial's sampled
    values (``config``, its Tune config)."""
    # straight into the trial's folder on the sweep's storage: Tune's trial folder (get_trial_dir) is a staging
    # folder on the node the trial runs on, and only the driver node's staging folders are copied to the storage
    out = Path(tune.get_context().get_storage().trial_fs_path) / "run"
    checkpoint = tune.get_checkpoint()
    if checkpoint is None:
        set_aside_earlier_attempt(out)
    try:
        _run(job, config, out, checkpoint, finish=None, report=_tune_report)
    except Exception as exc:
        error = deterministic_error(exc)
        if error is None:
            raise  # an infrastructure fault: Tune retries the trial from its last checkpoint
        message = f"{type(error).__name__}: {one_line(error)}"
        atomic_json(out / "failed.json", {"error": message})
        tune.report({job.space.metric: float("nan"), "epoch": 0, "failed": message})


def set_aside_earlier_attempt(out: Path) -> Path | None:
    """Tune starts this trial from scratch (no checkpoint of it): a run folder already at ``out`` is an earlier
    attempt that left Tune no checkpoint (its driver was killed before the trial's first report). It is kept, renamed
    ``run.attempt-N`` beside ``out``, and the trial starts in an empty folder; returns the new name."""
    if not out.is_dir() or not any(out.iterdir()):
        return None
    n = 1
    while (out.parent / f"run.attempt-{n}").exists():
        n += 1
    kept = out.parent / f"run.attempt-{n}"
    out.rename(kept)
    logger.warning(
        "%s held an earlier attempt of this trial that Tune restarts from scratch: kept as %s", out, kept.name
    )
    return kept


def finish_trial(config: dict[str, Any], job: TrialJob, trial_dir: str, checkpoint: Any, reason: str) -> None:
    """Write the results of a trial of ``job`` the scheduler stopped (its Tune ``config``, its folder
    ``trial_dir``, its newest Ray ``checkpoint``): that checkpoint's prompts, tested, labelled ``stopped_early``
    with ``reason`` (run by the driver as a Ray task with the trial's resources)."""
    _run(job, config, Path(trial_dir) / "run", checkpoint, finish=reason, report=None)


def _tune_report(metrics: dict[str, Any], saved: Path | None) -> None:
    tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(str(saved)) if saved else None)


def _run(
    job: TrialJob,
    config: dict[str, Any],
    out: Path,
    checkpoint: Any,
    finish: str | None,
    report: Report | None,
) -> None:
    cfg = job.trial_config(config, out)
    if job.workers <= 1:
        resume = restore_checkpoint(checkpoint, out) or finish is not None
        Trainer(cfg, job.ds_config, report=report, resume=resume, finish=finish).fit()
        return
    use_gpu = job.gpus_per_worker > 0
    resources = {"CPU": job.cpus_per_worker, **({"GPU": job.gpus_per_worker} if use_gpu else {})}
    # Not TorchTrainer: its env:// rendezvous is a TCPStore listening on every interface. The workers build
    # their process group themselves (DeepSpeed, as under the deepspeed launcher): see _join_process_group.
    # The trial's config travels as a plain dict (cfg.to_dict()); each worker rebuilds it in one call.
    loop_config = {"config": cfg.to_dict(), "ds_config": job.ds_config, "out": str(out), "finish": finish}
    scaling = train.ScalingConfig(num_workers=job.workers, use_gpu=use_gpu, resources_per_worker=resources)
    trainer = DataParallelTrainer(
        _train_worker,
        train_loop_config=loop_config,
        scaling_config=scaling,
        run_config=_train_run_config(out, finish is None),
        resume_from_checkpoint=checkpoint if finish is not None else None,
    )
    trainer.fit()


def _train_run_config(out: Path, in_tune: bool) -> train.RunConfig:
    """Where a multi-worker trial's Ray Train run keeps its checkpoints (every rank's ZeRO shards): the trial's
    folder on the sweep's storage (so a retried or resumed trial continues from it); a finishing run, outside
    Tune, next to the run folder."""
    if not in_tune:
        return train.RunConfig(name="finish", storage_path=str(out.parent))
    storage = tune.get_context().get_storage()
    return train.RunConfig(
        name="train",
        storage_path=storage.trial_fs_path,
        storage_filesystem=storage.storage_filesystem,
        callbacks=[TuneReportCallback()],  # type: ignore[list-item]  # (Ray's own typing)
    )


def restore_checkpoint(checkpoint: Any, out: Path) -> bool:
    """Put a trial's Ray ``checkpoint`` (None: none) where the engine resumes from in the run folder ``out`` (a
    complete checkpoint of that tag already there is kept as it is). True if there was one."""
    if checkpoint is None:
        return False
    with checkpoint.as_directory() as folder:
        tag = json.loads((Path(folder) / "COMPLETE.json").read_text())["tag"]
        root = out / "checkpoints"
        target = root / tag
        if not (target / "COMPLETE.json").is_file():
            partial = root / f".partial-restore-{tag}-{uuid.uuid4().hex[:8]}"
            shutil.copytree(folder, partial)
            if target.exists():
                shutil.rmtree(target)
            partial.rename(target)
        atomic_json(root / "latest.json", {"tag": tag})
    return True


def visible_gpus() -> int:
    """The CUDA devices this process sees (0 without CUDA)."""
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def device_local_rank(local_rank: int, visible: int) -> int:
    """The ``LOCAL_RANK`` of a Ray Train worker with local rank ``local_rank`` that sees ``visible`` GPUs. DeepSpeed
    takes ``LOCAL_RANK`` as its CUDA device index; Ray shows each GPU worker only its own GPU(s)
    (``CUDA_VISIBLE_DEVICES``), so local rank k >= 1 would name a device the worker does not have ("invalid device
    ordinal"): the index is the local rank among the visible devices (0 with one GPU each). CPU workers
    (``visible`` 0) keep their local rank."""
    return local_rank % visible if visible > 0 else local_rank


def _join_process_group() -> None:
    """Give this Ray Train worker the launcher environment the engine expects (RANK, WORLD_SIZE, LOCAL_RANK and a
    rendezvous): a fresh file rendezvous when every worker is on this node (no TCP listener at all), else
    rank 0's node address and a free port."""
    context = train.get_context()
    single_node = context.get_local_world_size() == context.get_world_size()
    rendezvous = None
    if context.get_world_rank() == 0:
        if single_node:
            path = f"{tempfile.gettempdir()}/scaleprompt-rdzv-{uuid.uuid4().hex}"
            rendezvous = {"SCALEPROMPT_INIT_METHOD": f"file://{path}"}
        else:
            with socket.socket() as probe:
                probe.bind(("", 0))
                port = probe.getsockname()[1]
            rendezvous = {"MASTER_ADDR": ray.util.get_node_ip_address(), "MASTER_PORT": str(port)}
    rendezvous = broadcast_from_rank_zero(rendezvous)
    os.environ.update(
        RANK=str(context.get_world_rank()),
        WORLD_SIZE=str(context.get_world_size()),
        LOCAL_RANK=str(device_local_rank(context.get_local_rank(), visible_gpus())),
        LOCAL_WORLD_SIZE=str(context.get_local_world_size()),
        **rendezvous,
    )
    # (in the worker's log on its own node: which node each rank ran on)
    logger.info(
        "rank %d of %d on node %s (local rank %d)",
        context.get_world_rank(),
        context.get_world_size(),
        ray.util.get_node_ip_address(),
        context.get_local_rank(),
    )


def _train_worker(config: dict[str, Any]) -> None:
    """One Ray Train worker of a multi-worker trial: the engine (DeepSpeed) in a process group of the workers."""
    _join_process_group()
    context = train.get_context()
    out = Path(config["out"])
    checkpoint = train.get_checkpoint()
    if context.get_local_rank() == 0:  # one copy per node (the ranks of a node share the folder)
        restore_checkpoint(checkpoint, out)
    main = context.get_world_rank() == 0

    def report(metrics: dict[str, Any], saved: Path | None) -> None:
        # every worker reports (Ray Train's report is collective); rank 0 hands over the checkpoint folder,
        # which holds every rank's ZeRO shards (the ranks of a node write into one folder)
        upload = train.Checkpoint.from_directory(str(saved)) if saved and main else None
        train.report(metrics, checkpoint=upload)

    finish = config.get("finish")
    cfg = load_run_config(config["config"])  # (the trial's config, as _run sent it)
    resume = checkpoint is not None or finish is not None
    trainer = Trainer(
        cfg, config["ds_config"], report=report if finish is None else None, resume=resume, finish=finish
    )
    barrier()
    trainer.fit()
