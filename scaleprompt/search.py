"""Ablation search: Ray Tune trials of the SAME training engine, sampled by Optuna's TPE, stopped early by ASHA.

A space file (``tune/spaces/*.yaml``)::

    metric: val_top1          # reported by the engine after each validated epoch
    mode: max
    params:
      method.args.n_ctx: {type: categorical, values: [4, 8, 16]}
      method.args.lam:   {type: float, low: 0.0, high: 2.0}
      optim.lr:          {type: loguniform, low: 0.001, high: 0.5}

Keys are run-config paths (``section.key``); every key is validated against the run config and the method
configs before anything starts (an unknown parameter is an error naming it). In a space where ``method.name``
is a parameter, ``method.args.X`` applies to the sampled methods that have a field X.
"""

from __future__ import annotations

import csv
import json
import logging
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from scaleprompt.config import ConfigError, check_types, read_yaml_mapping, require
from scaleprompt.engine.config import RunConfig, load_run_config

logger = logging.getLogger(__name__)

ParamType = Literal["float", "loguniform", "int", "categorical"]


@dataclass
class ParamSpec:
    type: ParamType
    low: float | None = None
    high: float | None = None
    values: list[Any] | None = None

    def __post_init__(self) -> None:
        check_types(self)
        if self.type == "categorical":
            require(bool(self.values), "values", "a categorical parameter needs a non-empty list of values")
        else:
            require(
                self.low is not None and self.high is not None,
                "low",
                f"a {self.type} parameter needs low/high",
            )
            require(self.low < self.high, "high", f"must be > low ({self.low}), got {self.high}")
            require(self.type != "loguniform" or self.low > 0, "low", "loguniform needs low > 0")

    def examples(self) -> list[Any]:
        if self.type == "categorical":
            return list(self.values or [])
        if self.type == "int":
            return [int(self.low), int(self.high)]
        return [self.low, self.high]


@dataclass
class SearchSpace:
    params: dict[str, ParamSpec]
    metric: str = "val_top1"
    mode: Literal["max", "min"] = "max"
    name: str = "space"
    extra: dict[str, Any] = field(default_factory=dict)

    def methods(self, base: RunConfig) -> list[str]:
        spec = self.params.get("method.name")
        return list(spec.values) if spec else [base.method.name]


def load_space(path: str | Path, recipe: str | Path | None, overrides: Sequence[str] = ()) -> SearchSpace:
    """Read and validate a space file against the recipe (every parameter value is tried in a run config)."""
    path = Path(path)
    raw = read_yaml_mapping(path, "search space", "metric / mode / params")
    unknown = sorted(set(raw) - {"metric", "mode", "params"})
    if unknown:
        raise ConfigError(f"{path}: unknown key(s) {unknown}; valid: metric, mode, params")
    params = {}
    for key, spec in (raw.get("params") or {}).items():
        try:
            params[key] = ParamSpec(**spec)
        except (TypeError, ConfigError) as exc:
            raise ConfigError(f"{path}: parameter {key!r}: {exc}") from None
    if not params:
        raise ConfigError(f"{path}: no params to search")
    space = SearchSpace(params, raw.get("metric", "val_top1"), raw.get("mode", "max"), path.stem)
    require(space.mode in ("max", "min"), "mode", "max or min")
    base = load_run_config(recipe, overrides)
    validate_space(space, recipe, overrides, base)
    return space


def validate_space(space: SearchSpace, recipe, overrides: Sequence[str], base: RunConfig) -> None:
    from scaleprompt.methods import method_class

    methods = space.methods(base)
    for key, spec in space.params.items():
        if key.startswith("method.args."):
            name = key[len("method.args.") :]
            owners = [m for m in methods if name in method_class(m).config_class.__dataclass_fields__]
            if not owners:
                raise ConfigError(
                    f"search parameter {key!r}: no method of the space ({', '.join(methods)}) has {name!r}"
                )
            for method in owners:
                for value in spec.examples():
                    load_run_config(
                        recipe,
                        [*overrides, f"method.name={method}", f"{key}={value}"],
                    )
        elif key != "method.name":
            for value in spec.examples():
                load_run_config(recipe, [*overrides, f"{key}={value}"])
        else:
            for value in spec.examples():
                load_run_config(recipe, [*overrides, f"method.name={value}"])


def trial_overrides(space: SearchSpace, base: RunConfig, sample: dict[str, Any]) -> list[str]:
    """``key=value`` overrides of one sampled configuration (args the sampled method lacks are dropped)."""
    from scaleprompt.methods import method_class

    method = sample.get("method.name", base.method.name)
    fields = method_class(method).config_class.__dataclass_fields__
    out = (
        [f"method.name={method}"] if "method.name" in sample else []
    )  # (the recipe's other args are dropped)
    for key, value in sample.items():
        if (
            key == "method.name"
            or key.startswith("method.args.")
            and key[len("method.args.") :] not in fields
        ):
            continue
        out.append(f"{key}={json.dumps(value)}")
    return out


def write_best_recipe(recipe, overrides: Sequence[str], trial: Sequence[str], out: Path) -> Path:
    """A ready-to-run recipe: the base recipe with the best trial's values merged in."""
    cfg = load_run_config(recipe, [*overrides, *trial])
    data = cfg.to_dict()
    data["train"]["output_dir"] = str(Path(data["train"]["output_dir"]).with_name("best"))
    out.write_text("# Best configuration of the search (scaleprompt.search); run it with train.py --config\n"
                   + yaml.safe_dump(data, sort_keys=False))  # fmt: skip
    return out


def write_trials_csv(rows: list[dict[str, Any]], out: Path) -> Path:
    keys = sorted({k for r in rows for k in r})
    with out.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=keys)
        writer.writeheader()
        writer.writerows(rows)
    return out


def copy_tree(src: Path, dst: Path) -> None:
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(src, dst)


# --- Ray Tune ---------------------------------------------------------------------------------------------------
def _encode(key: str) -> str:
    return key.replace(".", "__")


def _decode(key: str) -> str:
    return key.replace("__", ".")


def tune_space(space: SearchSpace) -> dict[str, Any]:
    from ray import tune

    out = {}
    for key, spec in space.params.items():
        if spec.type == "categorical":
            out[_encode(key)] = tune.choice(list(spec.values or []))
        elif spec.type == "int":
            out[_encode(key)] = tune.randint(int(spec.low), int(spec.high) + 1)
        elif spec.type == "loguniform":
            out[_encode(key)] = tune.loguniform(spec.low, spec.high)
        else:
            out[_encode(key)] = tune.uniform(spec.low, spec.high)
    return out


def _restore_checkpoint(checkpoint, out: Path) -> bool:
    """Put a trial's last Ray checkpoint back where the engine resumes from. True if there was one."""
    if checkpoint is None:
        return False
    with checkpoint.as_directory() as folder:
        tag = json.loads((Path(folder) / "COMPLETE.json").read_text())["tag"]
        root = out / "checkpoints"
        root.mkdir(parents=True, exist_ok=True)
        copy_tree(Path(folder), root / tag)
        (root / "latest.json").write_text(json.dumps({"tag": tag}))
    return True


def _trial_config(config: dict[str, Any], recipe: str | None, overrides: list[str], space: SearchSpace,
                  out: Path) -> list[str]:  # fmt: skip
    """The full override list of one trial: the sweep's overrides, the sampled values, the trial's output dir."""
    sample = {_decode(k): v for k, v in config.items()}
    trial = trial_overrides(space, load_run_config(recipe, overrides), sample)
    return [*overrides, *trial, f"train.output_dir={out}", "train.tensorboard=false"]


def run_trial(config: dict[str, Any], recipe: str | None, overrides: list[str], space: SearchSpace,
              ds_config: dict | None, workers: int = 1, cpus_per_worker: float = 1.0,
              gpus_per_worker: float = 0.0) -> None:  # fmt: skip
    """One Ray Tune trial = one engine run (the same Trainer as train.py), reporting per validated epoch.

    With ``workers > 1`` the trial launches a Ray Train ``TorchTrainer`` whose workers form one DeepSpeed
    process group (nccl on GPUs, gloo on CPUs) and run the engine; rank 0's reports reach Tune.
    """
    from ray import tune

    out = Path(tune.get_context().get_trial_dir()) / "run"
    run_overrides = _trial_config(config, recipe, overrides, space, out)
    if workers <= 1:
        from scaleprompt.engine.trainer import Trainer

        resume = _restore_checkpoint(tune.get_checkpoint(), out)

        def report(metrics: dict[str, Any], checkpoint: Path | None) -> None:
            saved = tune.Checkpoint.from_directory(str(checkpoint)) if checkpoint else None
            tune.report(metrics, checkpoint=saved)

        Trainer(load_run_config(recipe, run_overrides), ds_config, report=report, resume=resume).fit()
        return
    from ray import train
    from ray.train.v2.api.data_parallel_trainer import DataParallelTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    use_gpu = gpus_per_worker > 0
    storage = tune.get_context().get_storage()
    resources = {"CPU": cpus_per_worker, **({"GPU": gpus_per_worker} if use_gpu else {})}
    # Not TorchTrainer: its env:// rendezvous is a TCPStore listening on every interface. The workers build
    # their process group themselves (DeepSpeed, as under the deepspeed launcher): see _join_process_group.
    trainer = DataParallelTrainer(
        _train_worker,
        train_loop_config={"recipe": recipe, "overrides": run_overrides, "ds_config": ds_config, "out": str(out)},
        scaling_config=train.ScalingConfig(num_workers=workers, use_gpu=use_gpu, resources_per_worker=resources),
        # the Train run (its checkpoints: every rank's ZeRO shards) lives in the trial's folder on the sweep's
        # storage, so a retried or resumed trial continues from it
        run_config=train.RunConfig(name="train", storage_path=storage.trial_fs_path,
                                   storage_filesystem=storage.storage_filesystem, callbacks=[TuneReportCallback()]),
    )  # fmt: skip
    trainer.fit()


def _join_process_group() -> None:
    """Give this Ray Train worker the launcher environment the engine expects (RANK, WORLD_SIZE, LOCAL_RANK and a
    rendezvous): a fresh file rendezvous when every worker is on this node (no TCP listener at all), else
    rank 0's node address and a free port."""
    import os
    import socket
    import tempfile
    import uuid

    import ray
    from ray import train
    from ray.train.collective import broadcast_from_rank_zero

    context = train.get_context()
    single_node = context.get_local_world_size() == context.get_world_size()
    rendezvous = None
    if context.get_world_rank() == 0:
        if single_node:
            rendezvous = {
                "SCALEPROMPT_INIT_METHOD": f"file://{tempfile.gettempdir()}/scaleprompt-rdzv-{uuid.uuid4().hex}"
            }
        else:
            with socket.socket() as probe:
                probe.bind(("", 0))
                port = probe.getsockname()[1]
            rendezvous = {"MASTER_ADDR": ray.util.get_node_ip_address(), "MASTER_PORT": str(port)}
    rendezvous = broadcast_from_rank_zero(rendezvous)
    os.environ.update(
        RANK=str(context.get_world_rank()), WORLD_SIZE=str(context.get_world_size()),
        LOCAL_RANK=str(context.get_local_rank()), LOCAL_WORLD_SIZE=str(context.get_local_world_size()),
        **rendezvous,
    )  # fmt: skip


def _train_worker(config: dict[str, Any]) -> None:
    """One Ray Train worker of a multi-worker trial: the engine (DeepSpeed) in a process group of the workers."""
    from ray import train

    from scaleprompt.engine.distributed import barrier
    from scaleprompt.engine.trainer import Trainer

    _join_process_group()
    context = train.get_context()
    out = Path(config["out"])
    checkpoint = train.get_checkpoint()
    if context.get_local_rank() == 0:  # one copy per node (the ranks of a node share the folder)
        _restore_checkpoint(checkpoint, out)
    main = context.get_world_rank() == 0

    def report(metrics: dict[str, Any], saved: Path | None) -> None:
        # every worker reports (Ray Train's report is collective); rank 0 hands over the checkpoint folder,
        # which holds every rank's ZeRO shards (the ranks of a node write into one folder)
        upload = train.Checkpoint.from_directory(str(saved)) if saved and main else None
        train.report(metrics, checkpoint=upload)

    cfg = load_run_config(config["recipe"], config["overrides"])
    trainer = Trainer(
        cfg, config["ds_config"], report=report, resume=checkpoint is not None
    )  # (process group)
    barrier()
    trainer.fit()


def init_ray(
    address: str | None, dashboard: bool, num_cpus: int | None = None, port: int = 8265
) -> str | None:
    """Start (or join) Ray. A local start binds every listener, the dashboard included, to 127.0.0.1."""
    import os

    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # loopback-only listeners
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    import ray

    if ray.is_initialized():
        return None
    if address:
        ray.init(address=address, log_to_driver=False)
        return None
    info = ray.init(num_cpus=num_cpus, include_dashboard=dashboard, dashboard_host="127.0.0.1",
                    dashboard_port=port, log_to_driver=False)  # fmt: skip
    url = getattr(info, "dashboard_url", None) if dashboard else None
    if url:
        url = url if url.startswith("http") else f"http://{url}"
        logger.info("Ray dashboard: %s", url)
    return url


def optuna_storage(path: str | None):
    """An Optuna RDB storage on a sqlite file (``optuna-dashboard sqlite:///<path>`` shows the study live)."""
    if not path:
        return None
    from optuna.storages import RDBStorage

    file = Path(path).resolve()
    file.parent.mkdir(parents=True, exist_ok=True)
    return RDBStorage(f"sqlite:///{file}")  # (OptunaSearch wants a storage object, not a URL)


@dataclass
class SearchOptions:
    num_samples: int = 8
    max_concurrent: int = 2
    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0
    storage: str = "runs/search"
    name: str | None = None
    resume: bool = False
    address: str | None = None
    dashboard: bool = False
    seed: int = 0
    max_failures: int = 2
    grace_epochs: int = 1
    workers_per_trial: int = 0  # 0: one per GPU when gpus_per_trial > 1, else 1 (> 1: Ray Train + DeepSpeed)
    dashboard_port: int = 8265
    optuna_storage: str | None = None  # sqlite file for optuna-dashboard

    def __post_init__(self) -> None:
        check_types(self)
        for name in ("num_samples", "max_concurrent"):
            require(getattr(self, name) >= 1, name, f"must be >= 1, got {getattr(self, name)}")
        require(self.cpus_per_trial > 0, "cpus_per_trial", f"must be > 0, got {self.cpus_per_trial}")
        require(self.gpus_per_trial >= 0, "gpus_per_trial", f"must be >= 0, got {self.gpus_per_trial}")
        require(
            self.workers_per_trial >= 0, "workers_per_trial", f"must be >= 0, got {self.workers_per_trial}"
        )
        if self.gpus_per_trial > 1:
            require(self.gpus_per_trial == int(self.gpus_per_trial), "gpus_per_trial",
                    f"more than one GPU per trial must be a whole number, got {self.gpus_per_trial}")  # fmt: skip

    @property
    def workers(self) -> int:
        if self.workers_per_trial:
            return self.workers_per_trial
        return int(self.gpus_per_trial) if self.gpus_per_trial > 1 else 1


def run_search(space_path: str | Path, recipe: str | Path | None, overrides: Sequence[str] = (),
               options: SearchOptions | None = None, ds_config: dict | None = None) -> dict[str, Any]:  # fmt: skip
    """Run (or resume) a search; write the best recipe, the trials CSV and Optuna's importances. Returns a summary."""
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search import ConcurrencyLimiter
    from ray.tune.search.optuna import OptunaSearch

    from scaleprompt.engine.run import build_setting

    opts = options or SearchOptions()
    recipe = str(Path(recipe).resolve()) if recipe else None
    space = load_space(space_path, recipe, overrides)
    base = load_run_config(recipe, overrides)
    build_setting(base)  # every shard folder once, before the trials share the cache
    init_ray(opts.address, opts.dashboard, port=opts.dashboard_port)
    name = opts.name or f"{space.name}-{base.method.name}"
    storage = Path(opts.storage).resolve()
    workers = opts.workers
    trial_fn = tune.with_parameters(
        run_trial, recipe=recipe, overrides=list(overrides), space=space, ds_config=ds_config, workers=workers,
        cpus_per_worker=opts.cpus_per_trial / workers, gpus_per_worker=opts.gpus_per_trial / workers,
    )  # fmt: skip
    # a multi-worker trial's own process only drives Ray Train: its workers hold the trial's CPUs/GPUs
    # (Ray wants a non-empty bundle: the driver reserves memory only)
    driver = (
        {"cpu": opts.cpus_per_trial, "gpu": opts.gpus_per_trial}
        if workers == 1
        else {"cpu": 0, "memory": 256 * 2**20}
    )
    trainable = tune.with_resources(trial_fn, driver)
    if opts.resume and tune.Tuner.can_restore(str(storage / name)):
        tuner = tune.Tuner.restore(
            str(storage / name), trainable, resume_errored=True, resume_unfinished=True
        )
    else:
        searcher = ConcurrencyLimiter(
            OptunaSearch(metric=space.metric, mode=space.mode, seed=opts.seed, study_name=name,
                         storage=optuna_storage(opts.optuna_storage)),
            max_concurrent=opts.max_concurrent,
        )  # fmt: skip
        scheduler = ASHAScheduler(
            time_attr="epoch", max_t=max(1, base.optim.epochs), grace_period=opts.grace_epochs
        )
        tuner = tune.Tuner(
            trainable,
            param_space=tune_space(space),
            tune_config=tune.TuneConfig(metric=space.metric, mode=space.mode, search_alg=searcher,
                                        scheduler=scheduler, num_samples=opts.num_samples),
            run_config=tune.RunConfig(name=name, storage_path=str(storage), verbose=0,
                                      failure_config=tune.FailureConfig(max_failures=opts.max_failures)),
        )  # fmt: skip
    grid = tuner.fit()
    return summarize(grid, space, recipe, list(overrides), storage / name)


def summarize(grid, space: SearchSpace, recipe, overrides: list[str], out: Path) -> dict[str, Any]:
    rows = []
    for result in grid:
        row = {f"param.{_decode(k)}": v for k, v in (result.config or {}).items()}
        metrics = result.metrics or {}
        row.update({k: metrics.get(k) for k in ("epoch", "train_loss", space.metric) if k in metrics})
        row["status"] = "error" if result.error else "ok"
        row["trial_dir"] = str(result.path)
        rows.append(row)
    write_trials_csv(rows, out / "trials.csv")
    summary: dict[str, Any] = {"trials": len(rows), "errors": sum(r["status"] == "error" for r in rows)}
    ok = [r for r in grid if not r.error and r.metrics and space.metric in r.metrics]
    if ok:
        best = grid.get_best_result(
            metric=space.metric, mode=space.mode, scope="all", filter_nan_and_inf=True
        )
        sample = {_decode(k): v for k, v in best.config.items()}
        base = load_run_config(recipe, overrides)
        write_best_recipe(recipe, overrides, trial_overrides(space, base, sample), out / "best_recipe.yaml")
        summary.update(best_params=sample, best_metric=best.metrics.get(space.metric),
                       best_recipe=str(out / "best_recipe.yaml"))  # fmt: skip
    summary["importances"] = _importances(rows, space)
    summary["plots"] = [str(p) for p in write_plots(rows, space, out / "plots")]
    (out / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
    logger.info("search: %d trials (%d failed), best %s = %s", summary["trials"], summary["errors"], space.metric,
                summary.get("best_metric"))  # fmt: skip
    return summary


def write_plots(rows: list[dict[str, Any]], space: SearchSpace, out: Path) -> list[Path]:
    """metric_vs_params.png and parallel_coordinates.png over the finished trials (none without any)."""
    from scaleprompt.plots import metric_vs_params, parallel_coordinates

    done = [r for r in rows if r["status"] == "ok" and r.get(space.metric) is not None]
    if not done:
        return []
    kinds = {"categorical": "categorical", "loguniform": "log"}
    axes = [(f"param.{k}", kinds.get(spec.type, "float"), spec.values) for k, spec in space.params.items()]
    return [
        metric_vs_params(done, axes, space.metric, out / "metric_vs_params.png", space.mode),
        parallel_coordinates(done, axes, space.metric, out / "parallel_coordinates.png"),
    ]


def _importances(rows: list[dict[str, Any]], space: SearchSpace) -> dict[str, float]:
    """Optuna's fANOVA-free default (mean decrease impurity) importances over the finished trials."""
    import optuna
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    dists = {}
    for key, spec in space.params.items():
        if spec.type == "categorical":
            dists[key] = CategoricalDistribution(list(spec.values or []))
        elif spec.type == "int":
            dists[key] = IntDistribution(int(spec.low), int(spec.high))
        else:
            dists[key] = FloatDistribution(spec.low, spec.high, log=spec.type == "loguniform")
    done = [r for r in rows if r["status"] == "ok" and r.get(space.metric) is not None]
    if len(done) < 2:
        return {}
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize" if space.mode == "max" else "minimize")
    for r in done:
        params = {k: r[f"param.{k}"] for k in space.params}
        study.add_trial(
            optuna.trial.create_trial(params=params, distributions=dists, value=float(r[space.metric]))
        )
    try:
        return dict(optuna.importance.get_param_importances(study))
    except (RuntimeError, ValueError) as exc:  # e.g. every trial has the same value
        logger.info("no parameter importances: %s", exc)
        return {}
