"""The one training loop (used by ``train.py`` and by ``tune/`` trials).

``Trainer(cfg, ds_config, resume=False).fit()`` locks ``train.output_dir`` (one run per folder), finds or writes
the shards (rank 0; the cache is keyed by the dataset's source and listing), checks the val / test shards, builds
the frozen backbone and the method, wraps the method in a DeepSpeed engine (ZeRO 1/2/3, fp32 / bf16 / fp16) with a
client torch optimizer over the prompt parameters only, trains with the releases' schedule (constant warm-up
epoch(s), then cosine over the epochs, stepped per epoch), validates every ``eval.every_epochs``, checkpoints
atomically (see :mod:`scaleprompt.engine.checkpoint`), and evaluates the last and the best-validation prompts on the
test split(s) of the setting. Results go to ``<output_dir>/results.json``; the trained prompts to
``<output_dir>/prompts.safetensors`` (and ``prompts_best_val.safetensors``).

``resume=True`` continues the newest complete checkpoint: refused, naming each difference, if the math or the
data would change (:mod:`scaleprompt.identity`); a no-op on a finished run; the run's history and best
prompts come from the checkpoint (:mod:`scaleprompt.engine.progress`), so the results match an uninterrupted run.
"""

from __future__ import annotations

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

from scaleprompt.backbone import load_clip
from scaleprompt.config import ConfigError, to_dict
from scaleprompt.data.datasets import dataset_display_name
from scaleprompt.data.loader import ShardLoader
from scaleprompt.data.shards import read_manifest
from scaleprompt.engine import signals
from scaleprompt.engine.checkpoint import (
    CheckpointError,
    CheckpointManager,
    atomic_json,
    set_rng_state,
)
from scaleprompt.engine.config import OptimConfig, RunConfig
from scaleprompt.engine.distributed import barrier, broadcast_object, init_distributed, run_on_main
from scaleprompt.engine.evaluate import Evaluator
from scaleprompt.engine.model import PromptEngine, writing
from scaleprompt.engine.nonfinite import NonFiniteError, NonFiniteGuard, describe, skipped_step
from scaleprompt.engine.progress import RunProgress
from scaleprompt.engine.run import (
    build_method,
    build_setting,
    check_eval_shards,
    describe_data,
    eval_loader,
    training_fingerprint,
)
from scaleprompt.engine.trackers import Tracker, close_trackers, make_trackers
from scaleprompt.errors import OutputError, reported_elsewhere
from scaleprompt.failpoints import failpoint
from scaleprompt.identity import compare, run_identity
from scaleprompt.locks import DirLock
from scaleprompt.methods import build
from scaleprompt.report.schema import RunResult, SelectionResult

logger = logging.getLogger(__name__)


# --- pure pieces ------------------------------------------------------------------------------------------------
def lr_at_epoch(epoch: int, optim: OptimConfig) -> float:
    """The releases' schedule (Dassl): ``warmup_lr`` for the first ``warmup_epochs`` epochs, then cosine
    annealing with T_max = ``epochs``, stepped once per epoch and started after the warm-up."""
    if epoch < optim.warmup_epochs:
        return optim.warmup_lr
    t = epoch - optim.warmup_epochs
    return optim.min_lr + (optim.lr - optim.min_lr) * (1 + math.cos(math.pi * t / max(1, optim.epochs))) / 2


def batch_geometry(global_batch: int, micro_batch: int | None, world_size: int) -> tuple[int, int]:
    """(micro batch per rank, gradient accumulation steps) with micro x accumulation x world = global batch."""
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
    """The last report of a run (a search trial's final result), from its results: the last validated epoch's
    numbers (or the last prompts' validation numbers when nothing was trained), marked ``final``."""
    last = results["history"][-1] if results.get("history") else None
    val = last["val"] if last else results["results"]["last"].get("val") or {}
    metrics = {"epoch": last["epoch"] if last else 0, "epochs": results["epochs"], "final": True,
               **{f"val_{k}": v for k, v in val.items()}}  # fmt: skip
    if last is not None:
        metrics["train_loss"] = last["train_loss"]
    if results.get("stopped_early"):
        metrics["stopped_early"] = results["stopped_early"]["epoch"]
    return metrics


# --- the trainer ------------------------------------------------------------------------------------------------
class Trainer:
    """One run. ``resume=True`` continues the newest complete checkpoint in ``train.output_dir`` (refused if the
    run's math or data would differ; a finished run is left as it is). A run holds an exclusive lock on its
    output folder: a second run on the same folder fails at once, naming the holder."""

    def __init__(self, cfg: RunConfig, ds_config: dict[str, Any] | None = None, local_rank: int | None = None,
                 report: Callable[[dict[str, Any], Path | None], None] | None = None,
                 resume: bool = False, finish: str | None = None) -> None:  # fmt: skip
        self.cfg = cfg
        self.ds_base = ds_config
        self.dist = init_distributed(local_rank)
        self.out = Path(cfg.train.output_dir)
        # (metrics, checkpoint folder or None) after each validated epoch (Ray Tune); the last one, marked
        # ``final``, only after results.json and the prompt files are written
        self.report = report
        self.finish = finish  # resume=True and stop here: evaluate the newest checkpoint as the run's end
        self._last_saved: Path | None = None
        self._stopping: tuple[int, int | None, str] | None = None  # (signal, rank that got it, why): all stop
        self._lock: DirLock | None = None
        self.trackers: list[Tracker] = []  # train.report_to, rank 0 only (made when training starts)
        run_on_main(self._take_output_dir)
        try:
            self._setup(resume)
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

    def _setup(self, resume: bool) -> None:
        cfg = self.cfg
        torch.manual_seed(cfg.train.seed)
        self.ckpt = CheckpointManager(self.out / "checkpoints", cfg.train.keep_checkpoints, self.dist.rank)
        self.resume_from: str | None = run_on_main(lambda: self._checkpoint_to_resume(resume))
        self.saved_state = None
        if self.resume_from is not None:
            self.saved_state = broadcast_object(
                self.ckpt.read(self.resume_from) if self.dist.is_main else None
            )
        self.setting = build_setting(cfg)  # (rank 0 finds or writes every shard folder of the setting)
        run_on_main(lambda: check_eval_shards(self.setting))
        self.classnames = list(self.setting.classnames)
        self.backbone = load_clip(cfg.model.name, cfg.model.pretrained, cache_dir=cfg.model.cache_dir)
        self.backbone.model.set_grad_checkpointing(cfg.model.grad_checkpointing)
        self.image_size = cfg.data.image_size or self.backbone.info.image_size
        self.micro, self.accumulation = batch_geometry(
            cfg.optim.batch_size, cfg.optim.micro_batch_size, self.dist.world_size
        )
        self.evaluator = Evaluator(
            self.setting, lambda shards, split: self._loader(shards, split, train=False), self.dist.device
        )
        self.zero_shot = None
        if self.saved_state is not None and self.saved_state[0].get("zero_shot") is not None:
            self.zero_shot = self.saved_state[0]["zero_shot"]  # computed before the interruption
        elif cfg.eval.zero_shot_baseline:
            self.zero_shot = self._zero_shot_baseline()
        self.method = build_method(cfg, self.backbone, self.setting)
        self.model = PromptEngine(self.method, cfg, self.ds_base, self.dist, self.micro, self.accumulation)
        self.engine, self.optimizer, self.zero_stage = (
            self.model.engine,
            self.model.optimizer,
            self.model.zero_stage,
        )
        self.trainable = self.model.trainable
        self.epochs = cfg.optim.epochs if self.trainable else 0
        self.identity = run_identity(cfg.to_dict(), to_dict(self.method.effective_config()), {
            "world_size": self.dist.world_size, "zero_stage": self.zero_stage, "micro_batch": self.micro,
            "accumulation": self.accumulation, "classes": self.classnames,
            "data": training_fingerprint(self.setting),
        })  # fmt: skip
        self.config_changes: list[dict[str, Any]] = []
        if self.saved_state is not None:
            self._check_identity(*self.saved_state)
        if self.dist.is_main:  # (after the identity check: a refused resume changes nothing)
            with writing(self.out / "config.json"):
                atomic_json(self.out / "config.json", cfg.to_dict())

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

    def _check_identity(self, state: dict[str, Any], saved: dict[str, Any]) -> None:
        refusals, changes = compare(saved, self.identity, state["epoch"])
        if refusals:
            raise CheckpointError(
                f"checkpoint {self.ckpt.root / self.resume_from} belongs to another run; a resume may not change: "
                + "; ".join(refusals)
            )
        self.config_changes = list(state.get("config_changes", []))
        for change in changes:
            change.update(epoch=state["epoch"], step=state["global_step"])
            logger.info("resume: %s %r -> %r from epoch %d (step %d)", change["field"], change["from"],
                        change["to"], change["epoch"], change["step"])  # fmt: skip
        self.config_changes += changes

    # building -------------------------------------------------------------------------------------------------
    def _zero_shot_baseline(self) -> dict[str, Any]:
        """Zero-shot CLIP's test metrics of the setting, before the backbone goes into an engine (ZeRO-3)."""
        zero_shot = build("zsclip", self.backbone, self.classnames, dataset_templates=self.setting.templates)
        model = PromptEngine(
            zero_shot, self.cfg, None, self.dist, self.micro, self.accumulation
        )  # (no engine)
        return self.evaluator.test_all(model)

    def _loader(self, shards: str, split: str, train: bool) -> ShardLoader:
        cfg = self.cfg
        info = self.backbone.info
        if not train:
            return eval_loader(cfg, info, self.dist, shards, split)
        kwargs = dict(
            image_size=self.image_size, mean=info.mean, std=info.std, num_workers=cfg.data.num_workers,
            max_bad_samples=cfg.data.max_bad_samples, seed=cfg.train.seed, rank=self.dist.rank,
            world_size=self.dist.world_size,
        )  # fmt: skip
        count = read_manifest(shards)["splits"]["train"]["count"]
        steps = max(1, count // cfg.optim.batch_size)  # optimizer steps per epoch
        return ShardLoader(
            shards, "train", batch_size=self.micro, train=True, augment=cfg.data.train_augment,
            crop_min_scale=cfg.data.train_crop_min_scale, shuffle_buffer=cfg.data.shuffle_buffer,
            resampled=cfg.data.resampled, epoch_samples=steps * cfg.optim.batch_size, **kwargs,
        )  # fmt: skip

    # training --------------------------------------------------------------------------------------------------
    def fit(self) -> dict[str, Any]:
        """Train (or continue), evaluate, write ``results.json`` and the prompt files; returns the results.

        With ``finish`` (a reason, e.g. a search scheduler's early stop) nothing more is trained: the newest
        checkpoint's prompts are evaluated and recorded as stopped early at their epoch."""
        failed = True
        try:
            results = self._fit()
            failed = False
        finally:
            self.close(failed)
        if self.report is not None:
            self.report(final_metrics(results), self._last_saved)
        return results

    def _fit(self) -> dict[str, Any]:
        loader = self._loader(self.setting.train, "train", train=True) if self.trainable else None
        try:
            return self._fit_with(loader)
        finally:  # (the training stream's workers stop now: an error must not leave them to interpreter exit)
            if loader is not None:
                loader.close()

    def _fit_with(self, loader: ShardLoader | None) -> dict[str, Any]:
        cfg, dist = self.cfg, self.dist
        run = RunProgress.fresh(cfg.to_dict())
        loaded = None
        if self.resume_from is not None:
            loaded = self.ckpt.load(self.engine, self.resume_from)
            run = RunProgress.restore(loaded.state)
            run.best_prompts = loaded.best_prompts
            if loader is not None:
                loader.load_state_dict(loaded.state["data"])
            if loaded.rng is not None:
                set_rng_state(loaded.rng)
            logger.info("resumed from %s at step %d (epoch %d of %d)", self.resume_from, run.global_step,
                        run.epoch, self.epochs)  # fmt: skip
            finished = self._finished_results(run)
            if finished is not None:
                return finished
        if dist.is_main and not self.trackers:  # (resumed: hides what a killed session logged after it)
            at = run.global_step if self.resume_from is not None else None
            self.trackers = make_trackers(cfg.train.report_to, self.out, cfg.to_dict(), resume_step=at)
        run.start_session(self.resume_from)
        if (
            self.finish is None
            and loader is not None
            and loader.epoch < self.epochs
            and not self._stop_early()
        ):
            self._train(loader, run)
            loader.close()  # (not needed for the final evaluation)
        run.end_session()
        return self._final_results(run)

    def _train(self, loader: ShardLoader, run: RunProgress) -> None:
        """The loop: per epoch set the lr, run the micro-steps (DeepSpeed steps the optimizer at accumulation
        boundaries), then validate, checkpoint and report."""
        bar = tqdm(total=self.epochs * (len(loader) // self.accumulation), initial=self.engine.global_steps,
                   disable=True if not self.dist.is_main else None,  # None: off when stderr is not a terminal
                   desc=self.cfg.method.name, dynamic_ncols=True)  # fmt: skip
        # fp16: DeepSpeed's loss scaler skips its own gradient overflows; the loss is still watched
        self._guard = NonFiniteGuard(self.trainable, self.dist.device,
                                     watch_gradients=self.cfg.train.precision != "fp16")  # fmt: skip
        self._window_loss: list[float] = []  # the micro-step losses of the current optimizer step
        try:
            # log lines print above the bar instead of through it; a stop signal waits for a step boundary
            with logging_redirect_tqdm(), signals.deferred():
                self._epochs(loader, run, bar)
        finally:
            self._guard.close()
            bar.close()
            loader.close()  # (its workers stop now; an error must not leave them for interpreter exit)

    def _epochs(self, loader: ShardLoader, run: RunProgress, bar: tqdm) -> None:
        while loader.epoch < self.epochs:
            lr = lr_at_epoch(loader.epoch, self.cfg.optim)
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            self.engine.train()
            for batch in loader:
                out, boundary = self._micro_step(batch, run, lr)
                if not boundary:
                    continue
                bar.update(1)
                self._log_step(out, batch.labels, lr, run)
                if self._stop_early() or self._stop_agreed():
                    break
                if self._step_checkpoint_due(loader):
                    self._save(loader, run)
            epoch_done = loader.consumed % len(loader) == 0
            metrics = (
                self._validate(run, loader.epoch, lr)
                if epoch_done and self._validation_due(loader.epoch)
                else None
            )
            if epoch_done:
                run.epoch_loss = [0.0, 0]
            saved = self._save(loader, run) if self._checkpoint_due(run, loader, epoch_done) else None
            self._last_saved = saved or self._last_saved
            if self.report is not None and metrics is not None and loader.epoch < self.epochs:
                self.report(metrics, saved)  # (after the checkpoint: a search can attach it)
            self._stop_on_signal(loader, run)
            if self._stop_early():
                break

    def _micro_step(self, batch, run: RunProgress, lr: float):
        """One micro-step; at an accumulation boundary (returned) the optimizer step, unless something was not
        finite on some rank (:mod:`scaleprompt.engine.nonfinite`): then the run stops, or the step is skipped."""
        out = self.engine(batch.images.to(self.dist.device), batch.labels.to(self.dist.device))
        self._guard.watch_loss(out.loss, out.parts)
        self.engine.backward(out.loss)
        boundary = self.engine.is_gradient_accumulation_boundary()  # (before step(), which advances it)
        self._window_loss.append(out.loss.item())
        bad = self._guard.verdict() if boundary else []
        if bad:
            self._skip_or_stop(bad, run, lr)
            with skipped_step(self.optimizer, self.trainable):
                self.engine.step()
        else:
            self.engine.step()
        images = len(batch.labels) * self.dist.world_size
        run.images_seen, run.session_images = run.images_seen + images, run.session_images + images
        if boundary:
            if not bad:  # (the train loss averages the micro-steps of the optimizer steps taken)
                run.epoch_loss = [run.epoch_loss[0] + sum(self._window_loss),
                                  run.epoch_loss[1] + len(self._window_loss)]  # fmt: skip
            self._window_loss = []
        return out, boundary

    def _skip_or_stop(self, bad: list[str], run: RunProgress, lr: float) -> None:
        """``train.nonfinite``: stop (NonFiniteError, on every rank: the verdict was collective), or record a
        skipped step while the run's budget of skips lasts."""
        train = self.cfg.train
        step = self.engine.global_steps + 1
        what = describe(bad, step, lr)
        if train.nonfinite == "skip" and len(run.nonfinite_skipped) < train.max_nonfinite_skips:
            run.nonfinite_skipped.append({"step": step, "what": bad})
            if self.dist.is_main:
                logger.warning("%s: step skipped (%d of at most %d; train.max_nonfinite_skips)", what,
                               len(run.nonfinite_skipped), train.max_nonfinite_skips)  # fmt: skip
            return
        if train.nonfinite == "skip":
            what += f", after {len(run.nonfinite_skipped)} skipped steps (train.max_nonfinite_skips)"
        last = f"the newest checkpoint is {run.last_tag}" if run.last_tag else "no checkpoint was saved yet"
        error = NonFiniteError(
            f"training diverged: {what}; stopped without taking that step ({last}). Lower optim.lr, enable "
            f"optim.grad_clip, or set train.nonfinite=skip to skip rare bad steps"
        )
        raise error if self.dist.is_main else reported_elsewhere(error)

    def _validate(self, run: RunProgress, epoch: int, lr: float) -> dict[str, float]:
        """Validation accuracy after ``epoch``; the best epoch (on val, never on test) keeps its prompts."""
        val = self.evaluator.split(self.model, self.setting.train, "val")
        train_loss = run.epoch_loss[0] / max(1, run.epoch_loss[1])
        run.history.append({"epoch": epoch, "val": val, "lr": lr, "train_loss": train_loss})
        step = (
            self.engine.global_steps
        )  # TensorBoard: one x-axis (the global step), the epoch as its own scalar
        self._log_scalars(
            {"train/epoch": epoch, **{f"val/{k}": v for k, v in val.items() if k != "images"}}, step
        )
        if self.dist.is_main:
            accuracy = "  ".join(f"val {k} {v:.2f}" for k, v in val.items() if k != "images")
            logger.info("epoch %d/%d  train loss %.4f  %s  lr %.4g", epoch, self.epochs, train_loss,
                        accuracy or "(no validation split)", lr)  # fmt: skip
        if val and (run.best_val is None or val["top1"] > run.best_val["top1"]):
            run.best_epoch, run.best_val, run.best_prompts = epoch, val, self.model.snapshot()
        return {"epoch": epoch, "epochs": self.epochs, "train_loss": train_loss,
                **{f"val_{k}": v for k, v in val.items()}}  # fmt: skip

    def _validation_due(self, epoch: int) -> bool:
        every = self.cfg.eval.every_epochs
        return bool(every) and epoch % every == 0 or epoch == self.epochs

    def _step_checkpoint_due(self, loader: ShardLoader) -> bool:
        """A mid-epoch step checkpoint (one that falls on an epoch end is saved once, after validation)."""
        every = self.cfg.train.checkpoint_every_steps
        epoch_end = loader.consumed % len(loader) == 0
        return bool(every) and self.engine.global_steps % every == 0 and not epoch_end

    def _checkpoint_due(self, run: RunProgress, loader: ShardLoader, epoch_done: bool) -> bool:
        """After an epoch (or a max_steps stop): a step or epoch checkpoint is due, or this is the last state."""
        if run.global_step == self.engine.global_steps:  # saved at this step already
            return False
        every_steps, every_epochs = (
            self.cfg.train.checkpoint_every_steps,
            self.cfg.train.checkpoint_every_epochs,
        )
        step_due = bool(every_steps) and self.engine.global_steps % every_steps == 0
        epoch_due = epoch_done and (bool(every_epochs) and loader.epoch % every_epochs == 0)
        last = epoch_done and loader.epoch == self.epochs
        return step_due or epoch_due or last or self._stop_early()

    def _stop_agreed(self) -> bool:
        """A stop signal on any rank, agreed by every rank at this optimizer-step boundary (one small all-reduce;
        none where no rank handles signals, e.g. a search trial)."""
        if self._stopping is None:
            signum, rank, why = signals.agree(self.dist.device)
            if signum:
                self._stopping = (signum, rank, why)
        return self._stopping is not None

    def _stop_on_signal(self, loader: ShardLoader, run: RunProgress) -> None:
        """After an agreed stop: every rank saves this step's checkpoint together (``train.checkpoint_on_signal``;
        once), then raises :class:`signals.Stopped`."""
        if not self._stop_agreed():
            return
        assert self._stopping is not None
        folder = None
        if self.cfg.train.checkpoint_on_signal:
            saved = run.global_step == self.engine.global_steps and run.last_tag is not None
            folder = self.ckpt.root / str(run.last_tag) if saved else self._save(loader, run)
        signum, rank, why = self._stopping
        raise signals.Stopped(signum, why, rank, step=self.engine.global_steps, checkpoint=folder)

    def _stop_early(self) -> bool:
        return bool(self.cfg.train.max_steps) and self.engine.global_steps >= self.cfg.train.max_steps

    def _finished_results(self, run: RunProgress) -> dict[str, Any] | None:
        """A resumed run with nothing left to train whose results.json came from this checkpoint: a no-op."""
        nothing_left = (
            not self.trainable or run.epoch >= self.epochs or self._stop_early() or self.finish is not None
        )
        path = self.out / "results.json"
        if not nothing_left or not path.is_file():
            return None
        try:
            results = json.loads(path.read_text())
        except ValueError:
            return None
        if (
            results.get("checkpoint") != self.resume_from
            or self.config_changes != run.config_changes_at_start
        ):
            return None
        logger.info("--resume: the run in %s is already finished (%s, epoch %d); nothing to do", self.out,
                    self.resume_from, run.epoch)  # fmt: skip
        return results

    def _final_results(self, run: RunProgress) -> dict[str, Any]:
        """Test the last and the best-validation prompts, export both, write ``results.json`` (a RunResult)."""
        cfg = self.cfg
        failpoint("run.final_evaluation")
        selections = {
            "last": {
                "val": self.evaluator.split(self.model, self.setting.train, "val"),
                **self.evaluator.test_all(self.model),
            }
        }
        self.model.export(self.out / "prompts.safetensors", self._provenance("last", run.epoch))
        if run.best_prompts is not None:
            final = self.model.snapshot()
            if _same_tensors(final, run.best_prompts):
                # the best validation prompts are the last ones: the same test numbers, not tested twice
                test = {k: v for k, v in selections["last"].items() if k != "val"}
            else:
                self.model.load_snapshot(run.best_prompts)
                test = self.evaluator.test_all(self.model)
            selections["best_val"] = {"val": run.best_val, **test}
            self.model.export(
                self.out / "prompts_best_val.safetensors", self._provenance("best_val", run.best_epoch)
            )
            self.model.load_snapshot(final)
        setting, where = cfg.eval.setting, f"the results of {self.out}"
        result = RunResult(
            method=cfg.method.name, dataset=dataset_display_name(cfg.data.dataset), setting=setting,
            shots=cfg.data.shots, seed=cfg.train.seed, backbone=cfg.model.name, pretrained=cfg.model.pretrained,
            results={k: SelectionResult.parse(v, setting, f"results.{k}", where) for k, v in selections.items()},
            world_size=self.dist.world_size, epochs=self.epochs,
            steps=self.engine.global_steps if self.engine is not None else 0, checkpoint=run.last_tag,
            data=describe_data(self.setting), best_val_epoch=run.best_epoch, history=run.history,
            zero_shot=SelectionResult.parse(self.zero_shot, setting, "zero_shot", where) if self.zero_shot else None,
            config=cfg.to_dict(), config_changes=self.config_changes, stopped_early=self._stopped_early(run),
            nonfinite_skipped=run.nonfinite_skipped,
            timing={
                "train_seconds": run.train_seconds,
                "images_per_second": run.images_seen / run.train_seconds if run.images_seen else 0.0,
                "sessions": run.sessions,
            },
        ).to_dict()  # fmt: skip
        if self.dist.is_main:
            with writing(self.out / "results.json"):
                atomic_json(self.out / "results.json", result)
            logger.info("results: %s", self.out / "results.json")
        barrier()
        return result

    def _provenance(self, selection: str, epoch: int | None) -> dict[str, str]:
        """What an exported prompt file is: the selection (``scaleprompt eval`` files its numbers under it), the
        epoch it was taken at, and the run folder."""
        return {"selection": selection, "epoch": str(epoch if epoch is not None else 0),
                "run": str(self.out.resolve())}  # fmt: skip

    def _stopped_early(self, run: RunProgress) -> dict[str, Any] | None:
        if self.finish is None or not self.trainable or run.epoch >= self.epochs:
            return None
        return {"epoch": run.epoch, "of": self.epochs, "reason": self.finish}

    def _save(self, loader: ShardLoader, run: RunProgress) -> Path:
        run.save_index += 1
        run.global_step, run.epoch, run.data = self.engine.global_steps, loader.epoch, loader.state_dict()
        run.zero_shot = self.zero_shot
        tag = f"step{self.engine.global_steps:08d}"
        folder = self.ckpt.save(
            self.engine, tag, run.to_state(self.config_changes), run.best_prompts, self.identity
        )
        run.last_tag = folder.name
        return folder

    def _log_step(self, out, labels: torch.Tensor, lr: float, run: RunProgress) -> None:
        step = self.engine.global_steps
        every = self.cfg.train.log_every_steps
        if not every or step % every or (run.nonfinite_skipped and run.nonfinite_skipped[-1]["step"] == step):
            return  # (0: no step lines; a skipped step's numbers are not finite)
        scalars = {
            "train/loss": out.loss.item(),
            "train/lr": lr,
            "train/images_per_second": run.session_images / max(1e-9, time.time() - run.session_start),
        }
        scalars.update({f"train/{k}": v.item() for k, v in out.parts.items()})
        scalars["train/accuracy"] = 100.0 * (out.logits.argmax(-1).cpu() == labels).float().mean().item()
        self._log_scalars(scalars, step)
        if self.dist.is_main:
            logger.info("step %d  %s", step, "  ".join(f"{k[6:]}={v:.4g}" for k, v in scalars.items()))

    def _log_scalars(self, scalars: dict[str, float], step: int) -> None:
        """Every tracker of ``train.report_to``, against the global step (counts are not passed here)."""
        for tracker in self.trackers:
            tracker.log(scalars, step)
