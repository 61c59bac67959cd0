"""Crash-safe engine checkpoints that never execute code when loaded.

One checkpoint is a folder ``<root>/<tag>/`` holding:

* DeepSpeed's files (the prompts, optimizer state and step counters of every rank; frozen backbone excluded);
  read back with ``torch.load(weights_only=True)`` and an allow-list of the few plain DeepSpeed types they hold
  (:func:`use_weights_only_checkpoints`, set once when the DeepSpeed engine is made), so a crafted file is
  refused, never executed;
* ``run_state.json``: everything else the run needs to continue and to write the same ``results.json`` (step,
  data position, history, best epoch, zero-shot numbers, identity, recorded config changes);
* ``best_prompts.safetensors``: the best-validation prompts so far; ``rng_rank<r>.json``: each rank's RNG states;
* ``COMPLETE.json``: the sha256 of every file above and the run identity, written last.

A save is atomic as a whole: every rank writes into a fresh hidden folder ``.partial-<tag>-<nonce>``; rank 0 adds
its files, hashes everything, writes ``COMPLETE.json``, renames the folder to its final name and only then
atomically replaces ``latest.json``. A complete checkpoint is never rewritten: saving a tag that already exists
complete picks a new name (``<tag>.1``). A crash at any point leaves the previous checkpoints untouched and at most
a hidden partial folder, which is never loaded and is removed by the next save. A failed save (disk full) removes
its partial folder and raises :class:`CheckpointError` on every rank. Rank 0 hashes every rank's files: the
checkpoint folder must be on a file system all ranks share.
"""

from __future__ import annotations

import json
import logging
import math
import os
import pickle
import random
import re
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from scaleprompt.data.shards import sha256_file
from scaleprompt.engine.distributed import broadcast_object, run_everywhere
from scaleprompt.errors import ScalepromptError
from scaleprompt.failpoints import failpoint
from scaleprompt.methods.io import tensors_sha256, verify_prompt_tensors

logger = logging.getLogger(__name__)
LATEST = "latest.json"
COMPLETE = "COMPLETE.json"
STATE = "run_state.json"
BEST = "best_prompts.safetensors"
PARTIAL = ".partial-"
FORMAT = "scaleprompt.checkpoint/2"


class CheckpointError(ScalepromptError, RuntimeError):
    """A checkpoint is missing, incomplete, corrupt, unsafe, or belongs to another run."""


# --- small file helpers ------------------------------------------------------------------------------------------
def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def finite_json(data: Any, where: str = "") -> tuple[Any, list[str]]:
    """``data`` with every non-finite float replaced by None (JSON has no NaN / Infinity: Python's ``json`` would
    write the bare tokens, which no strict parser reads), and the paths of the values replaced (``where``: the path
    of ``data`` itself, prefixed to them)."""
    replaced: list[str] = []

    def clean(value: Any, at: str) -> Any:
        if isinstance(value, float) and not math.isfinite(value):
            replaced.append(at or "(top)")
            return None
        if isinstance(value, dict):
            return {k: clean(v, f"{at}.{k}" if at else str(k)) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [clean(v, f"{at}[{i}]") for i, v in enumerate(value)]
        return value

    return clean(data, where), replaced


def _write_json(path: Path, data: Any) -> None:
    data, replaced = finite_json(data)
    if replaced:
        logger.warning("%s: non-finite numbers written as null: %s", path.name, ", ".join(replaced[:5]))
    with open(path, "w") as fh:
        json.dump(data, fh, indent=1, sort_keys=True, allow_nan=False)
        fh.flush()
        os.fsync(fh.fileno())


def atomic_json(path: Path, data: Any) -> None:
    """Write ``data`` as JSON to ``path`` atomically (temporary file, fsync, rename)."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        _write_json(tmp, data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _read_json(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{what} missing: {path}") from None
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{what} is corrupt: {path} ({exc})") from None


# --- RNG states as JSON (no pickle) ------------------------------------------------------------------------------
def rng_state() -> dict[str, Any]:
    """Python, numpy, torch (and CUDA) RNG states of this process as plain JSON values."""
    version, words, gauss = random.getstate()
    legacy = np.random.get_state()
    assert isinstance(legacy, tuple)  # (legacy=True, the default: MT19937's state as a tuple)
    name, keys, pos, has_gauss, cached = legacy
    state: dict[str, Any] = {
        "python": [version, list(words), gauss],
        "numpy": [name, keys.tolist(), int(pos), int(has_gauss), float(cached)],
        "torch": torch.get_rng_state().tolist(),
    }
    if torch.cuda.is_available():
        state["cuda"] = [s.tolist() for s in torch.cuda.get_rng_state_all()]
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore this process's RNG states from ``state`` (a :func:`rng_state`)."""
    version, words, gauss = state["python"]
    random.setstate((version, tuple(words), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([torch.tensor(s, dtype=torch.uint8) for s in state["cuda"]])


# --- weights-only loading of DeepSpeed's files -------------------------------------------------------------------
def deepspeed_safe_globals() -> list[Any]:
    """The non-tensor types DeepSpeed (0.19) pickles into its checkpoint files: plain records, no behaviour."""
    # (deepspeed imported here and below: ~5 s that the commands reading checkpoints without one never pay)
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return [LossScaler, DynamicLossScaler, ZeroStageEnum, fragment_address]


def safe_torch_load(path: str | Path, map_location: Any = "cpu") -> Any:
    """``torch.load`` of ``path`` onto ``map_location`` that only rebuilds tensors, plain containers and the
    allow-listed DeepSpeed records. Anything else (a crafted pickle calling ``os.system``, any class) is refused
    with a CheckpointError."""
    try:
        with torch.serialization.safe_globals(deepspeed_safe_globals()):
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        found = re.search(r"(?:unsupported|Unsupported global:) GLOBAL (\S+)", str(exc))
        reason = f"it would load {found.group(1)}" if found else type(exc).__name__
        raise CheckpointError(
            f"refusing to load {path}: it holds objects outside tensors and plain types ({reason})"
        ) from None
    except (RuntimeError, OSError, EOFError, ValueError) as exc:
        raise CheckpointError(f"cannot read checkpoint file {path}: {exc}") from None


def use_weights_only_checkpoints(ds_engine: Any) -> None:
    """THE one place that sets a DeepSpeed engine's checkpoint engine: ``ds_engine`` (made by
    :class:`~scaleprompt.engine.model.PromptedModel`) then loads with :func:`safe_torch_load` and saves with
    DeepSpeed's own code plus a crash point after each file (for the tests: a save killed between two of
    DeepSpeed's own files). DeepSpeed makes its checkpoint engine once, in its constructor; :class:`CheckpointManager`
    refuses an engine without this one."""
    from deepspeed.runtime.checkpoint_engine import TorchCheckpointEngine

    class WeightsOnlyCheckpointEngine(TorchCheckpointEngine):
        weights_only = True

        def save(self, state_dict: Any, path: str) -> None:
            super().save(state_dict, path)
            failpoint("checkpoint.deepspeed_file")

        def load(self, path: str, map_location: Any = None) -> Any:
            # always onto the CPU, whatever DeepSpeed asks: its model-state loads keep each tensor where it was
            # saved (map_location=lambda storage, loc: storage), i.e. every rank put rank 0's states on cuda:0 (a
            # CUDA context per rank on GPU 0); load_state_dict then copies them to each rank's own device
            return safe_torch_load(path, map_location="cpu")

    ds_engine.checkpoint_engine = WeightsOnlyCheckpointEngine(getattr(ds_engine, "_config", None))


def _check_weights_only(ds_engine: Any) -> None:
    if not getattr(getattr(ds_engine, "checkpoint_engine", None), "weights_only", False):
        raise CheckpointError(
            "a DeepSpeed engine without the weights-only checkpoint engine (use_weights_only_checkpoints)"
        )


# --- the manager -------------------------------------------------------------------------------------------------
@dataclass
class Loaded:
    """What :meth:`CheckpointManager.load` returns besides the DeepSpeed engine's own state."""

    tag: str
    state: dict[str, Any]  # run_state.json
    best_prompts: dict[str, torch.Tensor] | None
    rng: dict[str, Any] | None  # this rank's RNG states (None if the checkpoint has none for this rank)


class CheckpointManager:
    """The checkpoints of one run under ``root``: the newest ``keep`` complete ones are kept; ``rank``: this
    process's rank (rank 0 hashes, marks and renames)."""

    def __init__(self, root: str | Path, keep: int = 2, rank: int = 0) -> None:
        self.root, self.keep, self.rank = Path(root), keep, rank

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    # saving --------------------------------------------------------------------------------------------------
    def save(
        self,
        ds_engine: Any,
        tag: str,
        state: dict[str, Any],
        best_prompts: dict[str, torch.Tensor] | None,
        identity: dict[str, Any],
    ) -> Path:
        """Collective: write checkpoint ``tag`` on every rank (``ds_engine``'s files, this rank's RNG), then
        (rank 0) add the run ``state``, the ``best_prompts`` and the run ``identity``, hash, mark complete,
        rename, point latest."""
        _check_weights_only(ds_engine)
        partial = self.root / broadcast_object(
            f"{PARTIAL}{tag}-{uuid.uuid4().hex[:8]}" if self.is_main else None
        )

        def write_rank_files() -> None:
            self.root.mkdir(parents=True, exist_ok=True)
            ds_engine.save_checkpoint(
                str(self.root),
                tag=partial.name,
                client_state={},
                save_latest=False,
                exclude_frozen_parameters=True,
            )
            _write_json(partial / f"rng_rank{self.rank}.json", rng_state())

        def complete() -> Path:
            if not self.is_main:
                return partial
            failpoint("checkpoint.files_written")
            final = self._free_name(tag)
            if best_prompts:
                best = {k: v.contiguous() for k, v in best_prompts.items()}
                save_file(best, str(partial / BEST), metadata={"tensors_sha256": tensors_sha256(best)})
            _write_json(partial / STATE, {**state, "format": FORMAT, "tag": final.name})
            files = {
                str(p.relative_to(partial)): sha256_file(p) for p in sorted(partial.rglob("*")) if p.is_file()
            }
            _write_json(partial / COMPLETE, {"tag": final.name, "files": files, "identity": identity})
            _fsync_dir(partial)
            failpoint("checkpoint.marked_complete")
            os.rename(partial, final)
            _fsync_dir(self.root)
            failpoint("checkpoint.renamed")
            atomic_json(self.root / LATEST, {"tag": final.name})
            failpoint("checkpoint.latest_updated")
            self._prune(final.name)
            return final

        try:
            run_everywhere(write_rank_files)
            final = broadcast_object(run_everywhere(complete))
        except Exception as exc:
            if self.is_main:
                shutil.rmtree(partial, ignore_errors=True)
            if isinstance(exc, CheckpointError):
                raise
            free = shutil.disk_usage(self.root).free if self.root.exists() else 0
            full = f"the disk is full ({free // 1024} KiB free); " if free < 2**20 else ""
            raise CheckpointError(
                f"cannot write checkpoint {tag} to {self.root}: {full}{type(exc).__name__}: {exc}; "
                "the previous checkpoints are intact"
            ) from exc
        logger.info("checkpoint %s saved", final)
        return Path(final)

    def _free_name(self, tag: str) -> Path:
        """``<root>/<tag>``, or ``<tag>.<k>`` if a checkpoint of that name exists (never overwritten)."""
        candidate, k = self.root / tag, 0
        while candidate.exists():
            k += 1
            candidate = self.root / f"{tag}.{k}"
        return candidate

    def _prune(self, newest: str) -> None:
        complete = self.complete_tags()
        for old in complete[: -self.keep]:
            if old != newest:
                shutil.rmtree(self.root / old, ignore_errors=True)
        for p in self.root.iterdir():  # saves that crashed before their rename (one writer per run folder)
            if (
                p.is_dir()
                and p.name != newest
                and (p.name.startswith(PARTIAL) or not (p / COMPLETE).is_file())
            ):
                shutil.rmtree(p, ignore_errors=True)

    # finding and loading ---------------------------------------------------------------------------------------
    def complete_tags(self) -> list[str]:
        """Complete checkpoints, oldest first (by the save counter recorded in their state)."""
        if not self.root.is_dir():
            return []
        tags = [
            p.name
            for p in self.root.iterdir()
            if p.is_dir() and not p.name.startswith(".") and (p / COMPLETE).is_file()
        ]

        def order(tag: str) -> tuple[int, int, str]:
            try:
                state = json.loads((self.root / tag / STATE).read_text())
                return int(state.get("save_index", -1)), int(state.get("global_step", -1)), tag
            except (OSError, ValueError):
                return -1, -1, tag

        return sorted(tags, key=order)

    def latest(self) -> str | None:
        """The tag of the newest complete checkpoint, verified (hashes); None if there is none.

        ``latest.json`` names it. A newer complete checkpoint than the pointer's (a crash between the rename and
        the pointer update) is preferred; a pointer naming an incomplete or missing checkpoint is an error."""
        complete = self.complete_tags()
        pointer = self.root / LATEST
        named = None
        if pointer.is_file():
            try:
                named = str(json.loads(pointer.read_text())["tag"])
            except (OSError, ValueError, KeyError, TypeError):
                logger.warning("%s is unreadable: using the newest complete checkpoint", pointer)
        if named is not None and named not in complete:
            self.verify(named)  # raises, naming what is wrong with it
        if not complete:
            return None
        tag = complete[-1]
        if named is not None and named != tag:
            logger.warning("%s names %s, but %s is newer and complete: resuming from it", pointer, named, tag)
        try:
            self.verify(tag)
        except CheckpointError as exc:
            older = complete[:-1]
            hint = f"; an older complete checkpoint exists ({older[-1]}): remove {self.root / tag} to resume from it"
            raise CheckpointError(f"{exc}{hint if older else ''}") from None
        return tag

    def verify(self, tag: str) -> None:
        """Checkpoint ``tag`` is complete and every file it lists has its sha256, else :class:`CheckpointError`."""
        folder = self.root / tag
        marker = folder / COMPLETE
        if not marker.is_file():
            raise CheckpointError(f"checkpoint {folder} is incomplete or missing (no {COMPLETE})")
        files = _read_json(marker, "checkpoint marker").get("files")
        if not isinstance(files, dict) or STATE not in files:
            raise CheckpointError(f"{marker} does not list the checkpoint's files: not a {FORMAT} checkpoint")
        for name, digest in files.items():
            path = folder / name
            if not path.is_file():
                raise CheckpointError(f"checkpoint file missing: {path}")
            if sha256_file(path) != digest:
                raise CheckpointError(f"checkpoint file corrupt (sha256 mismatch): {path}")

    def read(self, tag: str) -> tuple[dict[str, Any], dict[str, Any]]:
        """(run state, identity) of the verified checkpoint ``tag``, without touching DeepSpeed."""
        folder = self.root / tag
        return _read_json(folder / STATE, "checkpoint state"), _read_json(folder / COMPLETE, "marker")[
            "identity"
        ]

    def load(self, ds_engine: Any, tag: str) -> Loaded:
        """Load checkpoint ``tag`` into ``ds_engine`` (weights-only; None: no DeepSpeed engine, only our files) and
        return our own state, best prompts and RNG."""
        folder = self.root / tag
        state, _ = self.read(tag)
        if ds_engine is not None:
            _check_weights_only(ds_engine)
            path, _ = ds_engine.load_checkpoint(
                str(self.root),
                tag=tag,
                load_module_strict=False,
                load_optimizer_states=True,
                load_lr_scheduler_states=False,
            )
            if path is None:
                raise CheckpointError(f"DeepSpeed could not load checkpoint {folder}")
        best = None
        if (folder / BEST).is_file():  # (hashed in COMPLETE.json; its own checksum since issue 23)
            with safe_open(str(folder / BEST), framework="pt") as fh:
                meta = fh.metadata() or {}
                best = {k: fh.get_tensor(k) for k in fh.keys()}  # noqa: SIM118 - safe_open has no __iter__
            if "tensors_sha256" in meta:
                verify_prompt_tensors(meta, best, folder / BEST)
        rng_file = folder / f"rng_rank{self.rank}.json"
        rng = _read_json(rng_file, "RNG state") if rng_file.is_file() else None
        return Loaded(tag, state, best, rng)
