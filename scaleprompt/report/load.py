"""Finding and reading runs' ``results.json`` files into typed :class:`~scaleprompt.report.schema.RunResult`.

``load_runs(["runs/", "more/*/results.json"])`` reads files, directories (searched recursively) and glob patterns;
each file is validated by the schema (:meth:`RunResult.from_dict`), so a file that is not JSON or not a
scaleprompt run stops here with a :class:`~scaleprompt.report.schema.ResultsError` naming it and the field. The
later stages (variants, aggregation, tables, rendering) only see :class:`LoadedRun` objects.
"""

from __future__ import annotations

import glob
import json
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scaleprompt.report.schema import ResultsError, RunResult

logger = logging.getLogger(__name__)

RESULTS_FILE = "results.json"


@dataclass(frozen=True)
class LoadedRun:
    """One run's results: ``result`` is the validated ``results.json``, ``source`` names where it came from (the
    file read, or ``<run i>`` for a run given as a dict)."""

    result: RunResult
    source: str


def read_run(path: str | Path) -> LoadedRun:
    """Read and validate one results file ``path``; a file that is not valid JSON or not a scaleprompt run raises
    :class:`ResultsError` naming it."""
    file = Path(path)
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ResultsError(f"{file}: not valid JSON ({exc})") from None
    return LoadedRun(RunResult.from_dict(data, file), str(file))


def as_loaded(runs: Iterable[LoadedRun | RunResult | Mapping[str, Any]]) -> list[LoadedRun]:
    """``runs`` as :class:`LoadedRun` objects: a :class:`RunResult` is named ``<run i>``; a parsed
    ``results.json`` dict is validated and named by its ``"_path"`` key, else ``<run i>`` (``i``: its position)."""
    out = []
    for i, run in enumerate(runs):
        if isinstance(run, LoadedRun):
            out.append(run)
        elif isinstance(run, RunResult):
            out.append(LoadedRun(run, f"<run {i}>"))
        else:
            source = str(run.get("_path", f"<run {i}>"))
            out.append(LoadedRun(RunResult.from_dict(run, source), source))
    return out


def _expand(item: str | Path) -> list[Path]:
    """A file -> itself; a directory -> its results.json files (recursive); else a glob pattern."""
    path = Path(item)
    if path.is_dir():
        found = sorted(path.rglob(RESULTS_FILE))
        if not found:
            raise FileNotFoundError(f"no {RESULTS_FILE} under {path}")
        return found
    if path.is_file():
        return [path]
    text = str(item)
    if any(c in text for c in "*?["):
        out: list[Path] = []
        for match in sorted(glob.glob(text, recursive=True)):
            p = Path(match)
            out.extend(sorted(p.rglob(RESULTS_FILE)) if p.is_dir() else [p])
        if not out:
            raise FileNotFoundError(f"no run results match {text}")
        return out
    raise FileNotFoundError(f"no such file or directory: {text}")


def load_runs(paths: str | Path | Iterable[str | Path]) -> list[LoadedRun]:
    """Read run results from ``paths``: files, directories (searched recursively for ``results.json``) and glob
    patterns.

    Returns the validated runs in argument order (files sorted within a directory / pattern; a file reached twice
    is read once), each with its ``source`` set to the file it came from. A file that is not valid JSON or not a
    scaleprompt run raises :class:`ResultsError` (a ``ValueError``) naming the file; a path or pattern that yields
    no file raises ``FileNotFoundError``.
    """
    items = [paths] if isinstance(paths, str | Path) else list(paths)
    if not items:
        raise ValueError("no run paths given")
    seen: set[Path] = set()
    runs: list[LoadedRun] = []
    for item in items:
        for path in _expand(item):
            key = path.resolve()
            if key not in seen:
                seen.add(key)
                runs.append(read_run(path))
    logger.debug("loaded %d runs", len(runs))
    return runs
