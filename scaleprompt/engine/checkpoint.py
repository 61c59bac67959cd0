"""Crash-safe DeepSpeed engine checkpoints.

``engine.save_checkpoint`` writes ``<root>/<tag>/`` (prompts, optimizer, scheduler via client state, RNG and the
data position), frozen backbone weights excluded. Only after every rank has finished does rank 0 write
``<tag>/COMPLETE.json`` (sha256 of every file) and then atomically replace ``<root>/latest.json``. A crash at any
point leaves either the previous checkpoint as ``latest`` or a tag folder without ``COMPLETE.json``, which is never
loaded (and is removed by the next save). Loading checks the hashes and that the checkpoint belongs to this run
(method, method config, classes); a mismatch or a corrupt file is a :class:`CheckpointError` naming it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from scaleprompt.engine.distributed import barrier
from scaleprompt.errors import ScalepromptError

logger = logging.getLogger(__name__)
LATEST = "latest.json"
COMPLETE = "COMPLETE.json"


class CheckpointError(ScalepromptError, RuntimeError):
    """A checkpoint is missing, incomplete, corrupt, or belongs to another run."""


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _atomic_json(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w") as fh:
        json.dump(data, fh, indent=1, sort_keys=True)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class CheckpointManager:
    def __init__(self, root: str | Path, keep: int = 2, is_main: bool = True) -> None:
        self.root, self.keep, self.is_main = Path(root), keep, is_main

    def save(self, engine, tag: str, client_state: dict[str, Any]) -> Path:
        """Save on every rank (collective), then mark complete and point ``latest`` at it."""
        engine.save_checkpoint(
            str(self.root),
            tag=tag,
            client_state=client_state,
            save_latest=False,
            exclude_frozen_parameters=True,
        )
        barrier()
        folder = self.root / tag
        if self.is_main:
            files = {str(p.relative_to(folder)): _sha256(p) for p in sorted(folder.rglob("*")) if p.is_file()}
            identity = client_state.get("identity")
            _atomic_json(folder / COMPLETE, {"tag": tag, "files": files, "identity": identity})
            _atomic_json(self.root / LATEST, {"tag": tag})
            self._prune(tag)
        barrier()
        logger.info("checkpoint %s saved", folder)
        return folder

    def _prune(self, newest: str) -> None:
        complete = sorted(
            (p for p in self.root.iterdir() if p.is_dir() and (p / COMPLETE).is_file()),
            key=lambda p: p.stat().st_mtime,
        )
        for old in complete[: -self.keep]:
            if old.name != newest:
                shutil.rmtree(old, ignore_errors=True)
        for partial in (p for p in self.root.iterdir() if p.is_dir() and not (p / COMPLETE).is_file()):
            shutil.rmtree(partial, ignore_errors=True)  # a save that crashed before completing

    def latest(self) -> str | None:
        """The tag of the newest complete checkpoint, verified; None if there is none."""
        pointer = self.root / LATEST
        if not pointer.is_file():
            return None
        try:
            tag = json.loads(pointer.read_text())["tag"]
        except (ValueError, KeyError) as exc:
            raise CheckpointError(f"{pointer} is corrupt: {exc}") from exc
        self.verify(tag)
        return tag

    def verify(self, tag: str) -> None:
        folder = self.root / tag
        marker = folder / COMPLETE
        if not marker.is_file():
            raise CheckpointError(f"checkpoint {folder} is incomplete or missing (no {COMPLETE})")
        files = json.loads(marker.read_text())["files"]
        for name, digest in files.items():
            path = folder / name
            if not path.is_file():
                raise CheckpointError(f"checkpoint file missing: {path}")
            if _sha256(path) != digest:
                raise CheckpointError(f"checkpoint file corrupt (sha256 mismatch): {path}")

    def load(self, engine, tag: str, expect: dict[str, Any]) -> dict[str, Any]:
        """Load ``tag`` into ``engine``; returns the client state. ``expect`` must match the saved run identity."""
        self.verify(tag)
        saved = json.loads((self.root / tag / COMPLETE).read_text()).get("identity")
        if saved != expect:
            diff = sorted(k for k in set(expect) | set(saved or {}) if (saved or {}).get(k) != expect.get(k))
            raise CheckpointError(f"checkpoint {self.root / tag} belongs to another run (differs in: {diff})")
        path, client_state = engine.load_checkpoint(
            str(self.root), tag=tag, load_module_strict=False, load_optimizer_states=True,
            load_lr_scheduler_states=False,
        )  # fmt: skip
        if path is None or client_state is None:
            raise CheckpointError(f"DeepSpeed could not load checkpoint {self.root / tag}")
        return client_state
