"""The sweep driver: Ray Tune trials of the training engine, sampled by Optuna's TPE (through Ray's
``OptunaSearch``, its study stored in ``<sweep>/optuna.db``), stopped early by ASHA (``epoch`` is its clock).

:func:`run_search` checks the space against the recipe and the backbone (:func:`~scaleprompt.search.space.
check_space`), writes the shards once, runs the trials (progress: a line per trial event), writes the results
of the trials ASHA stopped (:func:`~scaleprompt.search.trial.finish_trial`), then the sweep's files
(:mod:`scaleprompt.search.report`). A sweep in which no trial finished raises :class:`SearchFailed`. Tune's
driver state is kept restorable across a killed driver (:mod:`scaleprompt.search.driver_state`).

One driver per sweep: the driver holds a :class:`~scaleprompt.locks.DirLock` on ``<sweep>/.lock`` for its whole
life, taken before any check, shard or Ray work; a second driver of the sweep (fresh or ``--resume``) is refused
at once with a :class:`~scaleprompt.locks.LockError` naming the holder and changes nothing. The lock is an
``flock``: a killed driver's lock dies with it, and ``--resume`` takes it over.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import optuna
import ray
from optuna.storages import RDBStorage
from ray import tune
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
from ray.tune.search import ConcurrencyLimiter
from ray.tune.search.optuna import OptunaSearch

from scaleprompt.config import ConfigError
from scaleprompt.engine.checkpoint import atomic_json
from scaleprompt.engine.config import RunConfig
from scaleprompt.engine.run import build_setting
from scaleprompt.errors import OutputError, one_line
from scaleprompt.locks import DirLock, LockError
from scaleprompt.recipes import resolve_recipe
from scaleprompt.search.driver_state import repair_driver_state
from scaleprompt.search.options import SearchOptions
from scaleprompt.search.report import TrialRecord, fmt, read_results, summarize
from scaleprompt.search.space import SearchSpace, check_space, load_space
from scaleprompt.search.trial import (
    TrialJob,
    finish_trial,
    nest,
    run_trial,
    sample_of,
    sweep_config,
    trial_dirname,
    visible_gpus,
)

logger = logging.getLogger(__name__)


def init_ray(
    address: str | None, dashboard: bool, num_cpus: int | None = None, port: int = 8265
) -> str | None:
    """Start Ray, or join the cluster at ``address``; returns the dashboard's URL (None: no dashboard, or a joined
    cluster). A local start (``num_cpus``: its CPUs, default all) binds every listener, the dashboard included
    (``dashboard``: start it, on ``port``), to 127.0.0.1."""
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # loopback-only listeners
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    if ray.is_initialized():
        return None
    if address:
        ray.init(address=address, log_to_driver=False)
        return None
    info = ray.init(
        num_cpus=num_cpus,
        include_dashboard=dashboard,
        dashboard_host="127.0.0.1",
        dashboard_port=port,
        log_to_driver=False,
    )
    url = getattr(info, "dashboard_url", None) if dashboard else None
    if url:
        url = url if url.startswith("http") else f"http://{url}"
        logger.info("Ray dashboard: %s", url)
    return url


class SweepSearcher(OptunaSearch):
    """Ray's OptunaSearch that tells Optuna what happened: a trial the scheduler stopped early is PRUNED (Optuna
    keeps its last intermediate value; it is not a COMPLETE trial comparable with finished ones) and a trial
    that failed with a configuration / data error is FAIL (its report is marked ``failed``)."""

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if result and result.get("failed"):
            return super().on_trial_complete(trial_id, None, error=True)
        if result and (not result.get("final") or result.get("stopped_early")):
            # Tune hands a stopping result to on_trial_complete only: record it as the last intermediate value
            self.on_trial_result(trial_id, result)
            return super().on_trial_complete(trial_id, None, error=False)  # (no value: PRUNED)
        return super().on_trial_complete(trial_id, result, error)


class Progress(tune.Callback):
    """A log line per trial event (started, epoch k validated, stopped early, failed, retried, finished)."""

    def __init__(self, space: SearchSpace, total: int) -> None:
        self.metric, self.total, self.started = space.metric, total, 0

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.started += 1
        params = " ".join(f"{k.split('.')[-1]}={fmt(v)}" for k, v in sample_of(trial.config).items())
        logger.info("[%d/%d] trial %s started: %s", self.started, self.total, trial.trial_id, params)

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        if result.get("failed") or result.get("final"):
            return
        logger.info(
            "trial %s epoch %s/%s: %s %.2f (train loss %.4g)",
            trial.trial_id,
            result.get("epoch"),
            result.get("epochs"),
            self.metric,
            result.get(self.metric, float("nan")),
            result.get("train_loss", float("nan")),
        )

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        last = trial.last_result or {}
        if last.get("failed"):
            logger.info("trial %s FAILED (not retried): %s", trial.trial_id, last["failed"])
        elif last.get("final"):
            logger.info(
                "trial %s finished: epoch %s, %s %.2f",
                trial.trial_id,
                last.get("epoch"),
                self.metric,
                last.get(self.metric, float("nan")),
            )
        else:
            logger.info(
                "trial %s stopped early at epoch %s by ASHA (%s %.2f)",
                trial.trial_id,
                last.get("epoch"),
                self.metric,
                last.get(self.metric, float("nan")),
            )

    def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        logger.info(
            "trial %s: infrastructure fault (%s); retrying from its last checkpoint (failure %d of at "
            "most %d)",
            trial.trial_id,
            _error_line(trial),
            trial.num_failures,
            trial.max_failures,
        )

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        logger.info(
            "trial %s FAILED after %d attempt(s): %s", trial.trial_id, trial.num_failures, _error_line(trial)
        )


def _error_line(trial: Any) -> str:
    try:
        error = trial.get_pickled_error() or trial.get_error()
    except Exception:  # (an unreadable error file)
        error = None
    return one_line(error).splitlines()[0][:300] if error else "unknown error"


def tune_space(space: SearchSpace) -> dict[str, Any]:
    """The Tune ``param_space`` of the resolved ``space``: a Tune sampler per parameter, nested by key
    (:func:`~scaleprompt.search.trial.nest`)."""
    out = {}
    for key, spec in space.params.items():
        if spec.type == "categorical":
            out[key] = tune.choice(list(spec.values or []))
        elif spec.type == "int":
            out[key] = tune.randint(int(spec.range[0]), int(spec.range[1]) + 1)
        elif spec.type == "loguniform":
            out[key] = tune.loguniform(*spec.range)
        else:
            out[key] = tune.uniform(*spec.range)
    return nest(out)


def _sweep_record(
    space_path: str | Path, recipe: str | None, overrides: Sequence[str], opts: SearchOptions
) -> dict:
    return {
        "space": str(Path(space_path).resolve()),
        "recipe": recipe,
        "overrides": list(overrides),
        "num_samples": opts.num_samples,
        "seed": opts.seed,
    }


def _claim_sweep(sweep: Path, record: dict[str, Any], resume: bool) -> None:
    """A fresh sweep never reuses a sweep's folder; a resumed one must be the same sweep."""
    path = sweep / "sweep.json"
    if path.is_file():
        if not resume:
            raise ConfigError(
                f"{sweep} already holds a sweep: pass --resume to continue it, or another --name"
            )
        saved = json.loads(path.read_text())
        diffs = [f"{k}: {saved.get(k)!r} -> {v!r}" for k, v in record.items() if saved.get(k) != v]
        if diffs:
            raise ConfigError(f"--resume of {sweep} with different settings: {'; '.join(diffs)}")
        return
    sweep.mkdir(parents=True, exist_ok=True)
    atomic_json(path, record)


LOCK = ".lock"  # <sweep>/.lock: the driver's lock


@contextlib.contextmanager
def sweep_lock(sweep: Path) -> Iterator[DirLock]:
    """Hold the driver lock of the sweep folder ``sweep`` (``<sweep>/.lock``) for the block; taken: a :class:`LockError` naming the holder.
    A sweep folder made only for the lock (a fresh sweep that stopped before writing its ``sweep.json``, e.g. a
    failed pre-flight) is removed again."""
    created = not sweep.exists()
    try:
        lock = DirLock(sweep / LOCK, f"sweep {sweep}").acquire(wait=False)
    except LockError as exc:
        raise LockError(
            f"{exc}; one driver per sweep: wait for it to end (or stop it), then --resume"
        ) from None
    except OSError as exc:  # (an unwritable --storage)
        raise OutputError(f"cannot lock the sweep folder {sweep}: {exc}") from None
    try:
        yield lock
    finally:
        if created and not (sweep / "sweep.json").exists():
            with contextlib.suppress(OSError):  # (while still holding it: no other driver got in between)
                (sweep / LOCK).unlink()
                sweep.rmdir()
        lock.release()


def run_search(
    space_path: str | Path,
    recipe: str | Path | None,
    overrides: Sequence[str] = (),
    options: SearchOptions | None = None,
    ds_config: dict | None = None,
) -> dict[str, Any]:
    """Run (or resume) a sweep of the space ``space_path`` (a file or a packaged name) over the recipe ``recipe``
    (a file, a packaged name, or None for the defaults) with the sweep's ``key=value`` ``overrides``; ``options``:
    how it runs; ``ds_config``: the trials' DeepSpeed config. Returns its summary (also in
    ``<sweep>/summary.json``). The recipe and the overrides are read once, here: every check and every trial
    derives its config from that one :class:`~scaleprompt.engine.config.RunConfig`. The driver holds the
    sweep's lock throughout (:func:`sweep_lock`)."""
    opts = options or SearchOptions()
    # a file or a packaged name (scaleprompt.recipes), as an absolute path for the sweep record
    recipe = str(resolve_recipe(recipe, "config").resolve()) if recipe else None
    space_path = resolve_recipe(space_path, "space").resolve()
    overrides = list(overrides)
    space = load_space(space_path)
    base = sweep_config(recipe, overrides)
    name = opts.name or f"{space.name}-{base.method.name}"
    sweep = Path(opts.storage).resolve() / name
    with sweep_lock(sweep):
        return _run_search(space_path, recipe, overrides, opts, ds_config, space, base, sweep)


def _run_search(
    space_path: Path,
    recipe: str | None,
    overrides: list[str],
    opts: SearchOptions,
    ds_config: dict | None,
    space: SearchSpace,
    base: RunConfig,
    sweep: Path,
) -> dict[str, Any]:
    name, storage = sweep.name, sweep.parent
    check_space(space, base, ["a class"], ["a photo of a {}."])  # in seconds, before any data work
    setting = build_setting(base)  # every shard folder once, before the trials share the cache
    space = check_space(space, base, setting.classnames, setting.templates)  # (the real class names)
    params = ", ".join(f"{k} {s.describe()}" for k, s in space.params.items())
    logger.info(
        "search space %s checked on %s (%s): %s", space.name, base.model.name, base.method.name, params
    )
    opts.check_gpus(visible_gpus())  # (before the sweep is claimed: the GPUs its trials would see)
    _claim_sweep(sweep, _sweep_record(space_path, recipe, overrides, opts), opts.resume)
    init_ray(opts.address, opts.dashboard, port=opts.dashboard_port)
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # (with verbose=0: Tune prints nothing; Progress does)
    workers = opts.workers
    job = TrialJob(
        base, space, ds_config, workers, opts.cpus_per_trial / workers, opts.gpus_per_trial / workers
    )
    # a multi-worker trial's own process only drives Ray Train: its workers hold the trial's CPUs/GPUs
    # (Ray wants a non-empty bundle: the driver reserves memory only)
    resources: dict[str, float] = (
        {"cpu": opts.cpus_per_trial, "gpu": opts.gpus_per_trial}
        if workers == 1
        else {"cpu": 0.0, "memory": 256.0 * 2**20}
    )
    trainable = tune.with_resources(tune.with_parameters(run_trial, job=job), resources)
    study_file = Path(opts.optuna_storage).resolve() if opts.optuna_storage else sweep / "optuna.db"
    study_url = f"sqlite:///{study_file}"
    if opts.resume:
        repair_driver_state(sweep)  # (a driver killed while Tune copied its state leaves a truncated file)
    if opts.resume and tune.Tuner.can_restore(str(sweep)):
        tuner = tune.Tuner.restore(str(sweep), trainable, resume_errored=True, resume_unfinished=True)
    else:
        study_file.parent.mkdir(parents=True, exist_ok=True)
        searcher = SweepSearcher(
            metric=space.metric,
            mode=space.mode,
            seed=opts.seed,
            study_name=name,
            storage=RDBStorage(study_url),  # (a storage object, not a URL)
        )
        max_epochs = max(1, base.optim.epochs, *_searched_epochs(space))
        grace = min(max_epochs, opts.grace_epochs or base.optim.warmup_epochs + 1)  # (not judged on warm-up)
        scheduler = (
            FIFOScheduler()
            if opts.full_schedule
            else ASHAScheduler(time_attr="epoch", max_t=max_epochs, grace_period=grace)
        )
        tune_config = tune.TuneConfig(
            metric=space.metric,
            mode=space.mode,
            search_alg=ConcurrencyLimiter(searcher, max_concurrent=opts.max_concurrent),
            scheduler=scheduler,
            num_samples=opts.num_samples,
            trial_dirname_creator=trial_dirname,
            # a one-worker trial runs in a Ray actor that the next trial takes over (its imports, several seconds
            # per trial, are paid once per actor); the engine keeps nothing of a run that a later run in the same
            # process reads (scaleprompt/__init__.py); a multi-worker trial's workers are Ray Train's, per trial
            reuse_actors=workers == 1,
        )
        run_config = tune.RunConfig(
            name=name,
            storage_path=str(storage),
            verbose=0,
            callbacks=[] if opts.quiet else [Progress(space, opts.num_samples)],
            failure_config=tune.FailureConfig(max_failures=opts.max_failures),
        )
        tuner = tune.Tuner(
            trainable, param_space=tune_space(space), tune_config=tune_config, run_config=run_config
        )
    grid = tuner.fit()
    trials = _records(grid)
    _finish_stopped(trials, job, opts)
    study = optuna.load_study(study_name=name, storage=study_url)
    return summarize(trials, space, recipe, overrides, sweep, study, opts)


def _searched_epochs(space: SearchSpace) -> list[int]:
    spec = space.params.get("optim.epochs")
    if spec is None:
        return []
    return [int(v) for v in spec.extremes()]


def _records(grid: Any) -> list[TrialRecord]:
    """The trials from Tune's ResultGrid (its dataframe gives Tune's own columns), in the order they started."""
    frame = grid.get_dataframe()
    extra, starts = {}, {}
    if len(frame) and "trial_id" in frame:
        columns = [c for c in ("training_iteration", "time_total_s", "hostname") if c in frame]
        for _, row in frame.iterrows():
            extra[row["trial_id"]] = {c: row[c] for c in columns}
            starts[row["trial_id"]] = row.get("timestamp", 0) - row.get("time_total_s", 0)
    trials = []
    for result in grid:
        metrics = dict(result.metrics or {})
        trial_id = metrics.get("trial_id") or Path(result.path).name.removeprefix("trial_")
        error = f"{type(result.error).__name__}: {one_line(result.error)}" if result.error else None
        trials.append(
            TrialRecord(
                trial_id,
                sample_of(result.config),
                metrics,
                Path(result.path),
                error,
                extra=extra.get(trial_id, {}),
                checkpoint=result.checkpoint,
            )
        )
    trials.sort(key=lambda t: (starts.get(t.trial_id, 0.0), t.trial_id))
    return trials


def _finish_stopped(trials: list[TrialRecord], job: TrialJob, opts: SearchOptions) -> None:
    """Write the results of the trials ASHA stopped (Ray tasks with a trial's resources, in parallel)."""
    pending = {}
    for trial in trials:
        read_results(trial)
        if trial.tune_kind != "stopped" or (trial.results and trial.results.get("stopped_early")):
            continue
        reason = f"stopped early by the ASHA scheduler after epoch {trial.epoch}"
        single = job.workers == 1
        task = ray.remote(finish_trial).options(
            num_cpus=opts.cpus_per_trial if single else 0, num_gpus=opts.gpus_per_trial if single else 0
        )
        config = nest(trial.params)
        pending[task.remote(config, job, str(trial.path), trial.checkpoint, reason)] = trial
    if pending:
        logger.info("writing the results of %d trial(s) stopped early", len(pending))
    for ref, trial in pending.items():
        try:
            ray.get(ref)
        except Exception as exc:  # the sweep's own files are still written; the trial says what is missing
            trial.extra["finish_error"] = one_line(exc)[:300]
            logger.warning(
                "trial %s: its results could not be written: %s", trial.trial_id, trial.extra["finish_error"]
            )
        read_results(trial)
