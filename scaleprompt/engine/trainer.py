"""The one training loop (used by ``train.py`` and by the search's trials).

``Trainer(cfg, ds_config, resume=False).fit()`` locks ``train.output_dir`` (one run per folder), puts the run
together with THE run assembly (:func:`~scaleprompt.engine.assembly.assemble`: the shards found or written by rank
0 and the val / test shards checked, the frozen backbone, the method in a DeepSpeed engine, ZeRO 1/2/3, fp32 / bf16
/ fp16, with a client torch optimizer over the prompt parameters only), trains with the releases' schedule
(constant warm-up epoch(s), then cosine over the epochs, stepped per epoch), validates every ``eval.every_epochs``,
checkpoints atomically (see :mod:`scaleprompt.engine.checkpoint`), and evaluates the last and the best-validation
prompts on the test split(s) of the setting. Results go to ``<output_dir>/results.json``
(:func:`~scaleprompt.engine.assembly.run_result`); the trained prompts to ``<output_dir>/prompts.safetensors`` (and
``prompts_best_val.safetensors``).

The loop reads top to bottom in :meth:`Trainer.train`: per epoch the lr, then the micro-steps (DeepSpeed steps the
optimizer at accumulation boundaries, after the non-finite guard's verdict), the step lines, a step checkpoint, an
agreed stop; after the epoch validation, the checkpoint, the report to a search, a signal's stop.

``resume=True`` continues the newest complete checkpoint: refused, naming each difference, if the math or the
data would change (:mod:`scaleprompt.identity`); a no-op on a finished run; the run's history and best
prompts come from the checkpoint (:mod:`scaleprompt.engine.progress`), so the results match an uninterrupted run.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from scaleprompt.config import ConfigError, to_dict
from scaleprompt.data.loader import ShardLoader
from scaleprompt.data.shards import read_manifest
from scaleprompt.engine import signals
from scaleprompt.engine.assembly import assemble, run_result, write_result
from scaleprompt.engine.checkpoint import CheckpointError, CheckpointManager, atomic_json, set_rng_state
from scaleprompt.engine.config import OptimConfig, RunConfig
from scaleprompt.engine.distributed import broadcast_object, init_distributed, run_on_main
from scaleprompt.engine.model import writing
from scaleprompt.engine.nonfinite import NonFiniteError, NonFiniteGuard, describe, skipped_step
from scaleprompt.engine.progress import RunProgress
from scaleprompt.engine.run import training_fingerprint
from scaleprompt.engine.trackers import Tracker, close_trackers, log_results, make_trackers
from scaleprompt.errors import OutputError, reported_elsewhere
from scaleprompt.failpoints import failpoint
from scaleprompt.identity import compare, run_identity
from scaleprompt.locks import DirLock
from scaleprompt.methods.base import LossOutput

logger = logging.getLogger(__name__)
# no tqdm monitor thread (it starts and ends with the bars): a thread starting or ending while a DataLoader forks
# its workers can deadlock the child on CPython before 3.11.8 / 3.12.2 (gh-112275; data.loader.stop_workers)
tqdm.monitor_interval = 0


# --- pure pieces ------------------------------------------------------------------------------------------------
def lr_at_epoch(epoch: int, optim: OptimConfig) -> float:
    """The lr of ``epoch`` under ``optim`` in the releases' schedule (Dassl): ``warmup_lr`` for the first
    ``warmup_epochs`` epochs, then cosine annealing with T_max = ``epochs``, stepped once per epoch and started after
    the warm-up."""
    if epoch < optim.warmup_epochs:
        return optim.warmup_lr
    t = epoch - optim.warmup_epochs
    return optim.min_lr + (optim.lr - optim.min_lr) * (1 + math.cos(math.pi * t / max(1, optim.epochs))) / 2


def batch_geometry(global_batch: int, micro_batch: int | None, world_size: int) -> tuple[int, int]:
    """(micro batch per rank, gradient accumulation steps) with micro x accumulation x ``world_size`` =
    ``global_batch``; ``micro_batch`` None: the global batch split over the ranks."""
    if micro_batch is None:
        micro_batch = max(1, global_batch // world_size)
    accumulation, rest = divmod(global_batch, micro_batch * world_size)
    if rest or accumulation < 1:
        raise ConfigError(
            f"optim.batch_size={global_batch} is not micro_batch_size={micro_batch} x world size {world_size} "
            "x an integer number of accumulation steps"
        )
    return micro_batch, accumulation


def _same_tensors(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def final_metrics(results: dict[str, Any]) -> dict[str, Any]:
    """The last report of a run (a search trial's final result), from its ``results``: the last validated epoch's
    numbers (or the last prompts' validation numbers when nothing was trained), marked ``final``."""
    last = results["history"][-1] if results.get("history") else None
    val = last["val"] if last else results["results"]["last"].get("val") or {}
    metrics = {
        "epoch": last["epoch"] if last else 0,
        "epochs": results["epochs"],
        "final": True,
        **{f"val_{k}": v for k, v in val.items()},
    }
    if last is not None:
        metrics["train_loss"] = last["train_loss"]
    if results.get("stopped_early"):
        metrics["stopped_early"] = results["stopped_early"]["epoch"]
    return metrics


# --- the trainer ------------------------------------------------------------------------------------------------
Report = Callable[[dict[str, Any], Path | None], None]
"""A search's report: (metrics, checkpoint folder or None) after each validated epoch; the last one, marked
``final``, only after results.json and the prompt files are written."""


class Trainer:
    """One run of ``cfg`` with the DeepSpeed JSON ``ds_config`` (None: ZeRO stage 0); ``local_rank``: the
    launcher's ``--local_rank``; ``report``: a search's report (:data:`Report`). ``resume=True`` continues the
    newest complete checkpoint in ``train.output_dir`` (refused if the run's math or data would differ; a finished
    run is left as it is); ``finish`` (with ``resume``, a reason, e.g. a search scheduler's early stop): nothing
    more is trained, the newest checkpoint's prompts are evaluated as the run's end. A run holds an exclusive lock
    on its output folder: a second run on the same folder fails at once, naming the holder."""

    def __init__(
        self,
        cfg: RunConfig,
        ds_config: dict[str, Any] | None = None,
        local_rank: int | None = None,
        report: Report | None = None,
        resume: bool = False,
        finish: str | None = None,
    ) -> None:
        self.cfg, self.report, self.finish = cfg, report, finish
        self.dist = init_distributed(local_rank)
        self.out = Path(cfg.train.output_dir)
        self.trackers: list[Tracker] = []  # train.report_to, rank 0 only (made when training starts)
        self._lock: DirLock | None = None
        self._stopping: tuple[int, int | None, str] | None = None  # (signal, rank that got it, why): all stop
        self._last_saved: Path | None = (
            None  # the newest checkpoint of this session (a search's final report)
        )
        run_on_main(self._take_output_dir)
        try:
            torch.manual_seed(cfg.train.seed)
            self.ckpt = CheckpointManager(
                self.out / "checkpoints", cfg.train.keep_checkpoints, self.dist.rank
            )
            self.resume_from: str | None = run_on_main(lambda: self._checkpoint_to_resume(resume))
            saved = None  # (run state, identity) of the checkpoint resumed
            if self.resume_from is not None:
                saved = broadcast_object(self.ckpt.read(self.resume_from) if self.dist.is_main else None)
            self.micro, self.accumulation = batch_geometry(
                cfg.optim.batch_size, cfg.optim.micro_batch_size, self.dist.world_size
            )
            zero_shot = saved[0].get("zero_shot") if saved is not None else None  # (computed before a stop)
            self.parts = assemble(
                cfg,
                self.dist,
                ds_config,
                micro=self.micro,
                accumulation=self.accumulation,
                zero_shot=zero_shot if zero_shot is not None else cfg.eval.zero_shot_baseline,
            )
            model = self.parts.model
            self.epochs = cfg.optim.epochs if model.trainable else 0
            self.identity = run_identity(
                cfg.to_dict(),
                to_dict(self.parts.method.effective_config()),
                {
                    "world_size": self.dist.world_size,
                    "zero_stage": model.zero_stage,
                    "micro_batch": self.micro,
                    "accumulation": self.accumulation,
                    "classes": list(self.parts.setting.classnames),
                    "data": training_fingerprint(self.parts.setting),
                },
            )
            self.config_changes = self._check_identity(*saved) if saved is not None else []
            if self.dist.is_main:  # (after the identity check: a refused resume changes nothing)
                with writing(self.out / "config.json"):
                    atomic_json(self.out / "config.json", cfg.to_dict())
        except BaseException:
            self.close()
            raise

    def _take_output_dir(self) -> None:
        try:
            self.out.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OutputError(f"train.output_dir: cannot create {self.out}: {exc.strerror or exc}") from None
        self._lock = DirLock(self.out / ".lock", f"train.output_dir {self.out}").acquire(wait=False)

    def close(self, failed: bool = False) -> None:
        """Close the trackers (``failed``: the run raised) and release the output folder (also done by ``fit``)."""
        trackers, self.trackers = self.trackers, []
        close_trackers(trackers, failed)
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def _checkpoint_to_resume(self, resume: bool) -> str | None:
        """The checkpoint ``--resume`` continues (None: start fresh); a fresh run never reuses a run's folder."""
        tag = self.ckpt.latest() if resume else None
        if resume and tag is None:
            if any(self.ckpt.root.glob("*")) and (self.out / "results.json").is_file():
                raise CheckpointError(f"{self.out} holds results but no complete checkpoint to resume from")
            logger.info("--resume: no checkpoint yet in %s, starting fresh", self.ckpt.root)
        if not resume and (self.ckpt.complete_tags() or (self.out / "results.json").is_file()):
            raise ConfigError(
                f"train.output_dir {self.out} already holds a run (checkpoints / results.json): pass --resume "
                "to continue it, or choose another train.output_dir"
            )
        return tag

    def _check_identity(self, state: dict[str, Any], saved: dict[str, Any]) -> list[dict[str, Any]]:
        """The config changes of the run so far plus this resume's (logged), or :class:`CheckpointError` if the
        checkpoint (its run ``state`` and ``saved`` identity) belongs to another run."""
        refusals, changes = compare(saved, self.identity, state["epoch"])
        if refusals:
            raise CheckpointError(
                f"checkpoint {self.ckpt.root / str(self.resume_from)} belongs to another run; a resume may not "
                "change: " + "; ".join(refusals)
            )
        for change in changes:
            change.update(epoch=state["epoch"], step=state["global_step"])
            logger.info(
                "resume: %s %r -> %r from epoch %d (step %d)",
                change["field"],
                change["from"],
                change["to"],
                change["epoch"],
                change["step"],
            )
        return list(state.get("config_changes", [])) + changes

    # the run -------------------------------------------------------------------------------------------------
    def fit(self) -> dict[str, Any]:
        """Train (or continue), evaluate, write ``results.json`` and the prompt files; returns the results."""
        failed, loader = True, None
        try:
            loader = self._train_loader() if self.parts.model.trainable else None
            run = self._restore(loader)
            results = self._finished_results(run) if self.resume_from is not None else None
            if results is None:
                if (
                    self.dist.is_main and not self.trackers
                ):  # (resumed: hides what a killed session logged after it)
                    at = run.global_step if self.resume_from is not None else None
                    self.trackers = make_trackers(
                        self.cfg.train.report_to, self.out, self.cfg.to_dict(), resume_step=at
                    )
                run.start_session(self.resume_from)
                if (
                    self.finish is None
                    and loader is not None
                    and loader.epoch < self.epochs
                    and not self._at_max_steps()
                ):
                    self.train(loader, run)
                run.end_session()
                results = self._final_results(run)
                log_results(self.trackers, results)  # (test / zero-shot numbers and hyperparameters)
            failed = False
        finally:  # (the training stream's workers stop now: an error must not leave them to interpreter exit)
            if loader is not None:
                loader.close()
            self.close(failed)
        if self.report is not None:
            self.report(final_metrics(results), self._last_saved)
        return results

    def train(self, loader: ShardLoader, run: RunProgress) -> None:
        """The loop over ``loader`` from ``run``'s state: per epoch set the lr, run the micro-steps (DeepSpeed steps
        the optimizer at accumulation boundaries), then validate, checkpoint and report."""
        cfg, dist, model = self.cfg, self.dist, self.parts.model
        ds_engine, optimizer = model.ds_engine, model.optimizer
        assert optimizer is not None  # (a run with prompts to train has its DeepSpeed engine)
        every_val, every_steps, every_epochs = (
            cfg.eval.every_epochs,
            cfg.train.checkpoint_every_steps,
            cfg.train.checkpoint_every_epochs,
        )
        with contextlib.ExitStack() as stack:
            stack.callback(loader.close)  # (its workers stop now, not at interpreter exit after an error)
            bar = stack.enter_context(
                tqdm(
                    total=self.epochs * (len(loader) // self.accumulation),
                    initial=ds_engine.global_steps,
                    disable=True if not dist.is_main else None,  # None: off when stderr is not a terminal
                    desc=cfg.method.name,
                    dynamic_ncols=True,
                )
            )
            # fp16: DeepSpeed's loss scaler skips its own gradient overflows; the loss is still watched
            guard = NonFiniteGuard(
                model.trainable, dist.device, watch_gradients=cfg.train.precision != "fp16"
            )
            stack.callback(guard.close)
            stack.enter_context(logging_redirect_tqdm())  # (log lines print above the bar, not through it)
            stack.enter_context(signals.deferred())  # (a stop signal waits for a step boundary)
            window: list[torch.Tensor] = []  # the micro-step losses of the current optimizer step
            while loader.epoch < self.epochs:
                lr = lr_at_epoch(loader.epoch, cfg.optim)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                ds_engine.train()
                for batch in loader:
                    # one micro-step; at an accumulation boundary the optimizer step, unless something was not
                    # finite on some rank (engine/nonfinite.py): then the run stops, or the step is skipped
                    images = batch.images.to(dist.device, non_blocking=True)  # (pinned on a GPU machine)
                    out = ds_engine(images, batch.labels.to(dist.device, non_blocking=True))
                    guard.watch_loss(out.loss, out.parts)
                    ds_engine.backward(out.loss)
                    # (asked before step(), which advances it)
                    boundary = ds_engine.is_gradient_accumulation_boundary()
                    window.append(out.loss.detach())  # (read at the boundary: no host sync per micro-step)
                    bad = guard.verdict() if boundary else []
                    if bad:
                        self._skip_or_stop(bad, run, lr)
                        with skipped_step(optimizer, model.trainable):
                            ds_engine.step()
                    else:
                        ds_engine.step()
                    run.images_seen += len(batch.labels) * dist.world_size
                    run.session_images += len(batch.labels) * dist.world_size
                    if not boundary:
                        continue
                    if not bad:  # (the train loss averages the micro-steps of the optimizer steps taken)
                        losses = [loss.item() for loss in window]
                        run.epoch_loss = [run.epoch_loss[0] + sum(losses), run.epoch_loss[1] + len(losses)]
                    window = []
                    bar.update(1)
                    self._log_step(out, batch.labels, lr, run, loader.consumed % len(loader) == 0)
                    if self._at_max_steps() or self._stop_agreed():
                        break
                    # a step checkpoint (one that falls on an epoch end is saved once, after validation)
                    step, epoch_end = ds_engine.global_steps, loader.consumed % len(loader) == 0
                    if every_steps and step % every_steps == 0 and not epoch_end:
                        self._save(loader, run)
                # after the epoch (or a max_steps / signal stop): validation, checkpoint, report, signal stop
                step, epoch = ds_engine.global_steps, loader.epoch
                epoch_done = loader.consumed % len(loader) == 0
                metrics = None
                if epoch_done and ((every_val and epoch % every_val == 0) or epoch == self.epochs):
                    metrics = self._validate(run, epoch, lr)
                if epoch_done:
                    run.epoch_loss = [0.0, 0]
                checkpoint_due = run.global_step != step and (  # (not saved at this step already)
                    (bool(every_steps) and step % every_steps == 0)
                    or (
                        epoch_done
                        and ((bool(every_epochs) and epoch % every_epochs == 0) or epoch == self.epochs)
                    )
                    or self._at_max_steps()
                )
                saved = self._save(loader, run) if checkpoint_due else None
                self._last_saved = saved or self._last_saved
                if self.report is not None and metrics is not None and epoch < self.epochs:
                    self.report(metrics, saved)  # (after the checkpoint: a search can attach it)
                if self._stop_agreed():
                    self._stop_for_signal(loader, run)
                if self._at_max_steps():
                    break

    # self-contained pieces of the run ---------------------------------------------------------------------------
    def _train_loader(self) -> ShardLoader:
        """The training stream: ``micro`` images per rank and micro-step, whole optimizer steps per epoch."""
        cfg, info, dist = self.cfg, self.parts.info, self.dist
        shards = self.parts.setting.train
        count = read_manifest(shards)["splits"]["train"]["count"]
        steps = max(1, count // cfg.optim.batch_size)  # optimizer steps per epoch
        return ShardLoader(
            shards,
            "train",
            batch_size=self.micro,
            train=True,
            augment=cfg.data.train_augment,
            crop_min_scale=cfg.data.train_crop_min_scale,
            shuffle_buffer=cfg.data.shuffle_buffer,
            resampled=cfg.data.resampled,
            epoch_samples=steps * cfg.optim.batch_size,
            image_size=cfg.data.image_size or info.image_size,
            mean=info.mean,
            std=info.std,
            num_workers=cfg.data.num_workers,
            max_bad_samples=cfg.data.max_bad_samples,
            seed=cfg.train.seed,
            rank=dist.rank,
            world_size=dist.world_size,
        )

    def _restore(self, loader: ShardLoader | None) -> RunProgress:
        """A fresh run's progress, or a resumed run's: the checkpoint's DeepSpeed state, run state, best prompts,
        the data position of ``loader`` and this rank's RNG."""
        if self.resume_from is None:
            return RunProgress.fresh(self.cfg.to_dict())
        loaded = self.ckpt.load(self.parts.model.ds_engine, self.resume_from)
        run = RunProgress.restore(loaded.state)
        run.best_prompts = loaded.best_prompts
        if loader is not None:
            loader.load_state_dict(loaded.state["data"])
        if loaded.rng is not None:
            set_rng_state(loaded.rng)
        logger.info(
            "resumed from %s at step %d (epoch %d of %d)",
            self.resume_from,
            run.global_step,
            run.epoch,
            self.epochs,
        )
        return run

    def _at_max_steps(self) -> bool:
        """``train.max_steps`` optimizer steps are taken."""
        steps = self.parts.model.ds_engine.global_steps if self.parts.model.ds_engine is not None else 0
        return bool(self.cfg.train.max_steps) and steps >= self.cfg.train.max_steps

    def _skip_or_stop(self, bad: list[str], run: RunProgress, lr: float) -> None:
        """``train.nonfinite`` for what was not finite (``bad``) at this step (``lr``): stop (NonFiniteError, on
        every rank: the verdict was collective), or record a skipped step in ``run`` while the run's budget of
        skips lasts."""
        train = self.cfg.train
        step = self.parts.model.ds_engine.global_steps + 1
        what = describe(bad, step, lr)
        if train.nonfinite == "skip" and len(run.nonfinite_skipped) < train.max_nonfinite_skips:
            run.nonfinite_skipped.append({"step": step, "what": bad})
            if self.dist.is_main:
                logger.warning(
                    "%s: step skipped (%d of at most %d; train.max_nonfinite_skips)",
                    what,
                    len(run.nonfinite_skipped),
                    train.max_nonfinite_skips,
                )
            return
        if train.nonfinite == "skip":
            what += f", after {len(run.nonfinite_skipped)} skipped steps (train.max_nonfinite_skips)"
        last = f"the newest checkpoint is {run.last_tag}" if run.last_tag else "no checkpoint was saved yet"
        error = NonFiniteError(
            f"training diverged: {what}; stopped without taking that step ({last}). Lower optim.lr, enable "
            f"optim.grad_clip, or set train.nonfinite=skip to skip rare bad steps"
        )
        raise error if self.dist.is_main else reported_elsewhere(error)

    def _validate(self, run: RunProgress, epoch: int, lr: float) -> dict[str, Any]:
        """Validation accuracy after ``epoch`` (trained with ``lr``), recorded in ``run``; the best epoch (on val,
        never on test) keeps its prompts. Returns the epoch's report to a search."""
        model = self.parts.model
        val = self.parts.evaluator.split(model, self.parts.setting.train, "val")
        train_loss = run.epoch_loss[0] / max(1, run.epoch_loss[1])
        run.history.append({"epoch": epoch, "val": val, "lr": lr, "train_loss": train_loss})
        # TensorBoard: one x-axis (the global step), the epoch as its own scalar
        scalars = {"train/epoch": epoch, **{f"val/{k}": v for k, v in val.items() if k != "images"}}
        self._log_scalars(scalars, model.ds_engine.global_steps)
        if self.dist.is_main:
            accuracy = "  ".join(f"val {k} {v:.2f}" for k, v in val.items() if k != "images")
            logger.info(
                "epoch %d/%d  train loss %.4f  %s  lr %.4g",
                epoch,
                self.epochs,
                train_loss,
                accuracy or "(no validation split)",
                lr,
            )
        if val and (run.best_val is None or val["top1"] > run.best_val["top1"]):
            run.best_epoch, run.best_val, run.best_prompts = epoch, val, model.snapshot()
        return {
            "epoch": epoch,
            "epochs": self.epochs,
            "train_loss": train_loss,
            **{f"val_{k}": v for k, v in val.items()},
        }

    def _stop_agreed(self) -> bool:
        """A stop signal on any rank, agreed by every rank at this optimizer-step boundary (one small all-reduce;
        none where no rank handles signals, e.g. a search trial)."""
        if self._stopping is None:
            signum, rank, why = signals.agree(self.dist.device)
            if signum:
                self._stopping = (signum, rank, why)
        return self._stopping is not None

    def _stop_for_signal(self, loader: ShardLoader, run: RunProgress) -> None:
        """After an agreed stop: every rank saves this step's checkpoint together (``train.checkpoint_on_signal``;
        once; ``loader``'s position, ``run``'s state), then raises :class:`signals.Stopped`."""
        assert self._stopping is not None
        step = self.parts.model.ds_engine.global_steps
        folder = None
        if self.cfg.train.checkpoint_on_signal:
            saved = run.global_step == step and run.last_tag is not None
            folder = self.ckpt.root / str(run.last_tag) if saved else self._save(loader, run)
        signum, rank, why = self._stopping
        raise signals.Stopped(signum, why, rank, step=step, checkpoint=folder)

    def _finished_results(self, run: RunProgress) -> dict[str, Any] | None:
        """A resumed run (``run``) with nothing left to train whose results.json came from this checkpoint: a
        no-op (its results)."""
        trainable = bool(self.parts.model.trainable)
        nothing_left = (
            not trainable or run.epoch >= self.epochs or self._at_max_steps() or self.finish is not None
        )
        path = self.out / "results.json"
        if not nothing_left or not path.is_file():
            return None
        try:
            results: dict[str, Any] = json.loads(path.read_text())
        except ValueError:
            return None
        if (
            results.get("checkpoint") != self.resume_from
            or self.config_changes != run.config_changes_at_start
        ):
            return None
        logger.info(
            "--resume: the run in %s is already finished (%s, epoch %d); nothing to do",
            self.out,
            self.resume_from,
            run.epoch,
        )
        return results

    def _final_results(self, run: RunProgress) -> dict[str, Any]:
        """Test the last and the best-validation prompts of ``run``, export both, write ``results.json``."""
        failpoint("run.final_evaluation")
        model, evaluator, setting = self.parts.model, self.parts.evaluator, self.parts.setting
        selections = {
            "last": {"val": evaluator.split(model, setting.train, "val"), **evaluator.test_all(model)}
        }
        model.export(self.out / "prompts.safetensors", self._provenance("last", run.epoch))
        if run.best_prompts is not None:
            final = model.snapshot()
            if _same_tensors(final, run.best_prompts):
                # the best validation prompts are the last ones: the same test numbers, not tested twice
                test = {k: v for k, v in selections["last"].items() if k != "val"}
            else:
                model.load_snapshot(run.best_prompts)
                test = evaluator.test_all(model)
            selections["best_val"] = {"val": run.best_val, **test}
            model.export(
                self.out / "prompts_best_val.safetensors", self._provenance("best_val", run.best_epoch)
            )
            model.load_snapshot(final)
        result = run_result(
            self.cfg,
            self.parts,
            selections,
            f"the results of {self.out}",
            timing={
                "train_seconds": run.train_seconds,
                "images_per_second": run.images_seen / run.train_seconds if run.images_seen else 0.0,
                "sessions": run.sessions,
            },
            epochs=self.epochs,
            steps=model.ds_engine.global_steps if model.ds_engine is not None else 0,
            checkpoint=run.last_tag,
            best_val_epoch=run.best_epoch,
            history=run.history,
            config_changes=self.config_changes,
            stopped_early=self._stopped_early(run),
            nonfinite_skipped=run.nonfinite_skipped,
        )
        write_result(self.out / "results.json", result, self.dist)
        return result

    def _provenance(self, selection: str, epoch: int | None) -> dict[str, str]:
        """What an exported prompt file is: the ``selection`` (``scaleprompt eval`` files its numbers under it), the
        ``epoch`` it was taken at, the run folder, and for a base-to-novel run the novel classes it was tested on
        (``novel_classnames``, JSON)."""
        provenance = {
            "selection": selection,
            "epoch": str(epoch if epoch is not None else 0),
            "run": str(self.out.resolve()),
        }
        novel = [t.classnames for t in self.parts.setting.test_sets if t.name == "novel"]
        if self.parts.setting.kind == "base2new" and novel:  # (predict scores base + novel by default)
            provenance["novel_classnames"] = json.dumps(list(novel[0]))
        return provenance

    def _stopped_early(self, run: RunProgress) -> dict[str, Any] | None:
        if self.finish is None or not self.parts.model.trainable or run.epoch >= self.epochs:
            return None
        return {"epoch": run.epoch, "of": self.epochs, "reason": self.finish}

    def _save(self, loader: ShardLoader, run: RunProgress) -> Path:
        """A checkpoint of this step (every rank): the DeepSpeed state, ``loader``'s position, ``run``'s state."""
        ds_engine = self.parts.model.ds_engine
        run.save_index += 1
        run.global_step, run.epoch, run.data = ds_engine.global_steps, loader.epoch, loader.state_dict()
        run.zero_shot = self.parts.zero_shot
        tag = f"step{ds_engine.global_steps:08d}"
        folder = self.ckpt.save(
            ds_engine, tag, run.to_state(self.config_changes), run.best_prompts, self.identity
        )
        run.last_tag = folder.name
        return folder

    def _log_step(
        self, out: LossOutput, labels: torch.Tensor, lr: float, run: RunProgress, epoch_end: bool = False
    ) -> None:
        """The step line and the trackers' scalars of this optimizer step (its last micro-step's ``out`` on
        ``labels``, at ``lr``), every ``train.log_every_steps``; the trackers' scalars also at the last step of
        an epoch (``epoch_end``, or ``train.max_steps``): a run shorter than ``log_every_steps`` has its loss
        curve too."""
        step = self.parts.model.ds_engine.global_steps
        every = self.cfg.train.log_every_steps
        if not every or (run.nonfinite_skipped and run.nonfinite_skipped[-1]["step"] == step):
            return  # (0: no step lines; a skipped step's numbers are not finite)
        line = step % every == 0
        if not line and not epoch_end and not self._at_max_steps():
            return
        scalars = {
            "train/loss": out.loss.item(),
            "train/lr": lr,
            "train/images_per_second": run.session_images / max(1e-9, time.time() - run.session_start),
        }
        scalars.update({f"train/{k}": v.item() for k, v in out.parts.items()})
        scalars["train/accuracy"] = 100.0 * (out.logits.argmax(-1).cpu() == labels).float().mean().item()
        self._log_scalars(scalars, step)
        if self.dist.is_main and line:
            logger.info("step %d  %s", step, "  ".join(f"{k[6:]}={v:.4g}" for k, v in scalars.items()))

    def _log_scalars(self, scalars: dict[str, float], step: int) -> None:
        """Every tracker of ``train.report_to``, against the global ``step`` (counts are not passed here)."""
        for tracker in self.trackers:
            tracker.log(scalars, step)
