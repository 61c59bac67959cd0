"""Ray Tune's driver state in a sweep folder, made restorable after a driver killed while saving it.

Tune saves its driver state in one go into a local staging folder of the Ray session
(``<ray temp>/session_*/artifacts/*/<sweep name>/driver_artifacts/``): ``experiment_state-<session>.json``, then
``search_gen_state-<session>.json`` and ``searcher-state-<session>.pkl``. A background thread then copies them
into the sweep folder with a plain copy. A driver SIGKILLed during that copy leaves a truncated file in the sweep
folder, and ``Tuner.restore`` fails ("Failed to restore the run state", then the searcher has no space and the
resumed driver crashes), although every trial's results and checkpoints are intact.

:func:`repair_driver_state`, called before a resume: when a state file of the sweep folder is incomplete, the
killed driver's staging folder of the same session holds the last save, complete, and the copy was made from it.
All its state files are copied back TOGETHER (one save: restoring one file from another save can leave the
searcher waiting for a trial the experiment state does not know, and the resumed sweep hangs). Without such a
folder (another machine, a cleaned temp folder) it is a :class:`~scaleprompt.config.ConfigError` naming the file.

Complete means: a JSON file parses; a pickle's opcodes run to its STOP opcode (read with :mod:`pickletools`, which
executes nothing: no state file is unpickled here). A file is told apart by its content (Tune's
``search_gen_state-*.json`` is a pickle).
"""

from __future__ import annotations

import json
import logging
import os
import pickletools
import shutil
import tempfile
from pathlib import Path

from scaleprompt.config import ConfigError

logger = logging.getLogger(__name__)

PATTERNS = (
    "experiment_state-{}.json",
    "search_gen_state-{}.json",
    "searcher-state-{}.pkl",
    "callback-states-{}.pkl",
)


def is_complete(path: Path) -> bool:
    """Whether the state file ``path`` was written to its end (JSON that parses; a pickle whose opcodes reach
    STOP)."""
    try:
        data = path.read_bytes()
    except OSError:
        return False
    if not data:
        return False
    if not data.startswith(b"\x80"):  # (not a pickle: JSON)
        try:
            json.loads(data)
        except ValueError:
            return False
        return True
    try:
        opcodes = [opcode.name for opcode, _, _ in pickletools.genops(data)]
    except Exception:  # noqa: BLE001 - any malformed or truncated stream
        return False
    return bool(opcodes) and opcodes[-1] == "STOP"


def session_files(folder: Path, session: str) -> list[Path]:
    """Tune's driver-state files of the ``session`` (``2026-11-30_14-43-59``) in ``folder``."""
    return [folder / p.format(session) for p in PATTERNS if (folder / p.format(session)).is_file()]


def staging_folders(name: str, ray_temp: Path | None = None) -> list[Path]:
    """The driver staging folders of the experiment ``name`` on this machine (under ``ray_temp``, default Ray's
    temporary folder), newest first."""
    root = ray_temp or Path(os.environ.get("RAY_TMPDIR") or tempfile.gettempdir()) / "ray"
    found = [p for p in root.glob(f"session_*/artifacts/*/{name}/driver_artifacts") if p.is_dir()]
    return sorted(found, key=lambda p: p.stat().st_mtime, reverse=True)


def repair_driver_state(sweep: Path, ray_temp: Path | None = None) -> list[str]:
    """Put back the last complete save of every session whose state files in ``sweep`` are incomplete (from the
    killed driver's staging folder, under ``ray_temp``: :func:`staging_folders`); returns the files written."""
    written: list[str] = []
    for state in sorted(sweep.glob(PATTERNS[0].format("*"))):
        session = state.name[len("experiment_state-") : -len(".json")]
        broken = [p for p in session_files(sweep, session) if not is_complete(p)]
        if not broken:
            continue
        for staging in staging_folders(sweep.name, ray_temp):
            saved = session_files(staging, session)
            if saved and saved[0].name == state.name and all(is_complete(p) for p in saved):
                for source in saved:
                    tmp = sweep / f".{source.name}.tmp-{os.getpid()}"
                    shutil.copyfile(source, tmp)
                    os.replace(tmp, sweep / source.name)
                    written.append(source.name)
                logger.warning(
                    "--resume: %s was truncated (the driver was killed while saving it); restored the "
                    "last complete save of that session from %s",
                    broken[0].name,
                    staging,
                )
                break
        else:
            raise ConfigError(
                f"--resume: {broken[0]} is truncated (the driver was killed while saving it) and the driver's "
                f"staging copy (under the Ray temp folder, {sweep.name}/driver_artifacts) is gone; the trials' "
                f"results and checkpoints in {sweep} are intact, but Ray cannot continue this sweep: start another "
                "(--name)"
            )
    return written
