"""Experiment trackers of a run (``train.report_to``): TensorBoard, Weights & Biases, both, or none.

Every scalar goes against ONE x-axis, the optimizer's global step (the epoch is a scalar of its own,
``train/epoch``); counts (images) are never scalars. Only rank 0 tracks.

* ``tensorboard`` (the default): event files in ``<output_dir>/tensorboard``. A resumed run hides what the
  interrupted session logged after its checkpoint (``purge_step``), so each curve is one history.
* ``wandb`` (optional: ``pip install wandb`` or the ``[wandb]`` extra): a W&B run whose files live in
  ``<output_dir>/wandb``, with the run config as its config, named after the output folder. W&B's own environment
  configures it: ``WANDB_MODE=offline`` (no network; ``wandb sync`` uploads later), ``WANDB_PROJECT`` (default
  ``scaleprompt``), ``WANDB_ENTITY``, ``WANDB_RUN_GROUP``, ``WANDB_API_KEY``. The run's id is kept in
  ``<output_dir>/wandb/run_id``: ``--resume`` continues the same W&B run, a fresh run starts a new one.
* ``none``: no tracker.

When the run has its results (:func:`log_results`), every tracker gets the final numbers at the run's last step:
the test accuracies of the last prompts (``test/...``), of the best-validation prompts (``test_best_val/...``)
and of zero-shot CLIP (``zero_shot/...``): top-1 and mean per class of each test split (``test``; ``base`` /
``novel`` and ``hm``; each transfer target), plus the run's hyperparameters: TensorBoard's hparams plugin (its
HPARAMS tab: one row per run, the final numbers as its metrics) in the run's own event folder; W&B has the config
already and gets the numbers in its run summary.

``train.report_to`` takes one name (``train.report_to=wandb``), several (``train.report_to=[tensorboard,wandb]`` or
``tensorboard,wandb``) or ``none``; :func:`report_targets` checks it when the config is loaded, so a misspelt
name, ``none`` with another tracker or a tracker that is not installed stops the run before it starts.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import secrets
import string
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from scaleprompt.config import ConfigError

logger = logging.getLogger(__name__)

TRACKERS = ("tensorboard", "wandb")
KEY = "train.report_to"
WANDB_PROJECT = "scaleprompt"  # when WANDB_PROJECT is not set
INSTALL_WANDB = "pip install 'scaleprompt[wandb]' (or pip install wandb; from a source checkout: pip install -e '.[wandb]')"


def report_targets(value: str | Sequence[str], check_installed: bool = True) -> list[str]:
    """``train.report_to`` (``value``) as a list of tracker names ([] for ``none``): names are separated by commas or given as
    a list; errors name the key. ``check_installed``: a tracker whose package is missing is an error too."""
    items = [value] if isinstance(value, str) else list(value)
    names: list[str] = []
    for item in items:
        if not isinstance(item, str):
            raise ConfigError(f"{KEY}: expected tracker names, got {item!r}")
        for part in item.split(","):
            name = part.strip().lower()
            if name and name not in names:
                names.append(name)
    unknown = [n for n in names if n not in (*TRACKERS, "none")]
    if unknown:
        raise ConfigError(
            f"{KEY}: unknown tracker {', '.join(map(repr, unknown))}; choose from {', '.join(TRACKERS)} "
            f"(several: {KEY}=[tensorboard,wandb]) or none"
        )
    if "none" in names:
        if len(names) > 1:
            raise ConfigError(f"{KEY}: 'none' cannot be combined with other trackers, got {names}")
        return []
    if check_installed and "wandb" in names and not _installed("wandb"):
        raise ConfigError(f"{KEY}: wandb is not installed: {INSTALL_WANDB}, or leave wandb out of {KEY}")
    return names


def _installed(package: str) -> bool:
    try:
        return importlib.util.find_spec(package) is not None
    except (ImportError, ValueError):  # (a module set to None in sys.modules, or without a spec)
        return False


def scalars_only(scalars: Mapping[str, Any]) -> dict[str, float]:
    """The numbers of ``scalars`` as floats (booleans and anything else left out)."""
    return {k: float(v) for k, v in scalars.items() if isinstance(v, int | float) and not isinstance(v, bool)}


def final_scalars(results: Mapping[str, Any]) -> dict[str, float]:
    """The final numbers of a run's ``results`` (the results.json schema) as scalars: ``test/<split>/<metric>``
    of the last prompts (``test/top1`` for the one test split of few-shot and transfer, ``test/hm`` for
    base-to-novel; a transfer target ``test/<target>/top1``), the same under ``test_best_val/`` for the
    best-validation prompts and ``zero_shot/`` for zero-shot CLIP. Validation numbers are left out (they are
    logged per epoch)."""
    out: dict[str, float] = {}
    selections = results.get("results") or {}
    for prefix, numbers in (
        ("test", selections.get("last")),
        ("test_best_val", selections.get("best_val")),
        ("zero_shot", results.get("zero_shot")),
    ):
        if not numbers:
            continue
        for split in ("test", "base", "novel"):
            for metric, value in (numbers.get(split) or {}).items():
                if metric != "images":
                    out[f"{prefix}/{metric}" if split == "test" else f"{prefix}/{split}/{metric}"] = value
        if numbers.get("hm") is not None:
            out[f"{prefix}/hm"] = numbers["hm"]
        for target, accuracy in (numbers.get("targets") or {}).items():
            for metric, value in accuracy.items():
                if metric != "images":
                    out[f"{prefix}/{target}/{metric}"] = value
    return scalars_only(out)


def hyperparameters(config: Mapping[str, Any]) -> dict[str, bool | int | float | str]:
    """A run ``config`` (nested) as TensorBoard hparams: ``section.key`` -> a bool, number or text (lists and
    objects as JSON, None as ``"null"``)."""
    import json

    from scaleprompt.identity import flatten

    out: dict[str, bool | int | float | str] = {}
    for key, value in flatten(dict(config)).items():
        out[key] = value if isinstance(value, bool | int | float | str) else json.dumps(value, default=str)
    return out


class Tracker(Protocol):
    """Where a run's scalars go: ``log`` at a global step, ``final`` once with the run's final numbers and
    hyperparameters, ``close`` once (``failed``: the run raised)."""

    name: str

    def log(self, scalars: Mapping[str, float], step: int) -> None: ...

    def final(
        self, scalars: Mapping[str, float], hparams: Mapping[str, bool | int | float | str], step: int
    ) -> None: ...

    def close(self, failed: bool = False) -> None: ...


class TensorBoardTracker:
    """``<output_dir>/tensorboard`` (``folder``); ``purge_step``: hide what earlier sessions logged at steps >= it."""

    name = "tensorboard"

    def __init__(self, folder: Path, purge_step: int | None = None) -> None:
        from torch.utils.tensorboard import SummaryWriter  # (here: ~0.25 s, paid only by runs that log to it)

        self.folder = folder
        self.writer = SummaryWriter(str(folder), purge_step=purge_step)

    def log(self, scalars: Mapping[str, float], step: int) -> None:
        for key, value in scalars_only(scalars).items():
            self.writer.add_scalar(key, value, step)
        self.writer.flush()

    def final(
        self, scalars: Mapping[str, float], hparams: Mapping[str, bool | int | float | str], step: int
    ) -> None:
        """The final ``scalars`` at ``step``, and the hparams plugin's records (``hparams``, with those scalars as
        its metrics) in this run's own event folder (``SummaryWriter.add_hparams`` would open a new timestamped
        subfolder: a second run in TensorBoard's list)."""
        from torch.utils.tensorboard.summary import hparams as hparams_summary

        numbers = scalars_only(scalars)
        experiment, start, end = hparams_summary(dict(hparams), dict(numbers))
        writer = self.writer.file_writer
        assert writer is not None  # (open until close)
        for summary in (experiment, start, end):
            writer.add_summary(summary, step)
        self.log(numbers, step)

    def close(self, failed: bool = False) -> None:
        self.writer.close()


class WandbTracker:
    """A W&B run in ``<output_dir>/wandb`` (``out``: the output folder) with the run ``config`` (``resume``: continue
    the run whose id the folder keeps)."""

    name = "wandb"

    def __init__(self, out: Path, config: Mapping[str, Any], resume: bool = False) -> None:
        try:
            import wandb  # (optional dependency)
        except ImportError as exc:
            raise ConfigError(f"{KEY}: wandb cannot be imported ({exc}): {INSTALL_WANDB}") from None
        folder = out / "wandb"
        folder.mkdir(parents=True, exist_ok=True)
        id_file = folder / "run_id"
        run_id = id_file.read_text().strip() if resume and id_file.is_file() else ""
        if not run_id:
            run_id = "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(8))
            tmp = id_file.with_name(f".{id_file.name}.tmp-{os.getpid()}")
            tmp.write_text(run_id + "\n")
            os.replace(tmp, id_file)
        try:
            self.run = wandb.init(
                project=os.environ.get("WANDB_PROJECT") or WANDB_PROJECT,
                dir=str(out),
                id=run_id,
                name="/".join(out.resolve().parts[-2:]),
                config=dict(config),
                resume="allow",
                reinit="create_new",  # (never finishes a W&B run of the caller's)
            )
        except (wandb.errors.UsageError, wandb.errors.AuthenticationError) as exc:
            raise ConfigError(
                f"{KEY}: wandb could not start a run: {exc} (log in with `wandb login`, or set WANDB_MODE=offline "
                "to track without a network)"
            ) from None
        self.run_id = run_id
        logger.info("wandb: run %s (%s mode) in %s", run_id, self.run.settings.mode, folder)

    def log(self, scalars: Mapping[str, float], step: int) -> None:
        self.run.log(scalars_only(scalars), step=step)

    def final(
        self, scalars: Mapping[str, float], hparams: Mapping[str, bool | int | float | str], step: int
    ) -> None:
        """The final ``scalars`` at ``step`` and in the run summary (the hyperparameters are the run's config)."""
        numbers = scalars_only(scalars)
        self.run.log(numbers, step=step)
        self.run.summary.update(numbers)

    def close(self, failed: bool = False) -> None:
        self.run.finish(exit_code=1 if failed else 0)


def make_trackers(
    report_to: str | Sequence[str], out: Path, config: Mapping[str, Any], resume_step: int | None = None
) -> list[Tracker]:
    """The trackers ``report_to`` names of a run writing to ``out`` with its ``config`` (rank 0 only). ``resume_step``: the global step of the checkpoint
    a resumed run continues (None: a fresh run)."""
    trackers: list[Tracker] = []
    try:
        for name in report_targets(report_to):
            if name == "tensorboard":
                purge = None if resume_step is None else resume_step + 1
                trackers.append(TensorBoardTracker(out / "tensorboard", purge_step=purge))
            else:
                trackers.append(WandbTracker(out, config, resume=resume_step is not None))
    except BaseException:
        close_trackers(trackers, failed=True)
        raise
    return trackers


def log_results(trackers: Sequence[Tracker], results: Mapping[str, Any]) -> None:
    """Every tracker of ``trackers`` gets the final numbers of a run's ``results`` (:func:`final_scalars`) and
    its hyperparameters (:func:`hyperparameters` of its config) at its last step. A tracker that fails is a
    warning: results.json is written already."""
    if not trackers:
        return
    scalars = final_scalars(results)
    hparams = hyperparameters(results.get("config") or {})
    step = int(results.get("steps") or 0)
    for tracker in trackers:
        try:
            tracker.final(scalars, hparams, step)
        except Exception as exc:  # (any tracker error)
            logger.warning("%s: the final numbers were not logged: %s", tracker.name, exc)


def close_trackers(trackers: Sequence[Tracker], failed: bool = False) -> None:
    """Close every tracker of ``trackers`` (``failed``: the run raised); one that fails to close is a warning (it must not hide the run's own error)."""
    for tracker in trackers:
        try:
            tracker.close(failed)
        except Exception as exc:  # (any tracker error)
            logger.warning("%s: closing failed: %s", tracker.name, exc)
