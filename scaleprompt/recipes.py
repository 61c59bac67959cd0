"""Recipes that travel with the package: ``configs/``, ``ds_configs/`` and ``tune/spaces/`` by name, from anywhere.

:func:`resolve_recipe` turns what ``--config`` / ``--ds`` / ``--space`` received into a file:

1. an existing file wins, as given (relative to the working directory);
2. else a packaged name, with or without the suffix and the leading folder: ``provp_ref/base2new``,
   ``provp_ref/base2new.yaml`` and ``configs/provp_ref/base2new.yaml`` are the packaged recipe; ``zero2``,
   ``zero2.json`` and ``ds_configs/zero2.json`` the packaged DeepSpeed config; ``provp_ref`` and
   ``tune/spaces/provp_ref.yaml`` the packaged search space (an absolute path or one with ``..`` is only a path);
3. else a :class:`~scaleprompt.config.ConfigError` naming what was tried and the closest packaged names.

The packaged copies: a wheel carries the three folders under ``scaleprompt/packaged/`` with their repository paths
(setup.py copies them at build time; read through importlib.resources, so a zipped install works too); from a
source checkout or an editable install they are the repository's own folders. :func:`list_recipes` names them.
"""

from __future__ import annotations

import atexit
import contextlib
import difflib
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path, PurePosixPath
from typing import Literal

from scaleprompt.config import ConfigError

logger = logging.getLogger(__name__)

RecipeKind = Literal["config", "ds", "space"]
PACKAGED = "packaged"  # the folder of the wheel's copies inside the scaleprompt package (setup.py's TARGET)


@dataclass(frozen=True)
class _Kind:
    folder: str  # relative to the repository (and to scaleprompt/packaged/)
    suffix: str
    what: str  # in messages


KINDS: dict[str, _Kind] = {
    "config": _Kind("configs", ".yaml", "recipe"),
    "ds": _Kind("ds_configs", ".json", "DeepSpeed config"),
    "space": _Kind("tune/spaces", ".yaml", "search space"),
}

_extracted = contextlib.ExitStack()  # packaged files copied out of a zipped install, removed at exit
atexit.register(_extracted.close)
_copies: dict[str, Path] = {}  # their paths, by packaged path (one copy per file and process)


def _kind(kind: str) -> _Kind:
    if kind not in KINDS:
        raise ValueError(f"unknown recipe kind {kind!r}; valid: {', '.join(KINDS)}")
    return KINDS[kind]


def packaged_root() -> Traversable | None:
    """Where the packaged folders are: the wheel's ``scaleprompt/packaged/``, else (source checkout, editable
    install) the repository holding this package; None when neither is there."""
    root = resources.files("scaleprompt") / PACKAGED
    if root.is_dir():
        return root
    checkout = Path(__file__).resolve().parent.parent
    folders = [checkout / k.folder for k in KINDS.values()]
    if (checkout / "pyproject.toml").is_file() and all(f.is_dir() for f in folders):
        return checkout
    return None


def _folder(kind: _Kind) -> Traversable | None:
    root = packaged_root()
    if root is None:
        return None
    node = root.joinpath(*kind.folder.split("/"))
    return node if node.is_dir() else None


def _walk(node: Traversable, prefix: str, suffix: str) -> Iterator[tuple[str, Traversable]]:
    for child in node.iterdir():
        if child.is_dir():
            yield from _walk(child, f"{prefix}{child.name}/", suffix)
        elif child.name.endswith(suffix):
            yield prefix + child.name[: -len(suffix)], child


def _packaged(kind: _Kind) -> dict[str, Traversable]:
    folder = _folder(kind)
    return dict(sorted(_walk(folder, "", kind.suffix))) if folder is not None else {}


def list_recipes(kind: RecipeKind) -> list[str]:
    """The packaged names of the ``kind`` (``"config"``, ``"ds"``, ``"space"``), sorted, without folder and suffix:
    ``["cocoop/base2new", ..., "demo", ...]``, ``["zero1", "zero2", ...]``; each resolves with
    :func:`resolve_recipe`."""
    return list(_packaged(_kind(kind)))


def packaged_name(name: str | Path, kind: RecipeKind) -> str | None:
    """The packaged name ``name`` would be as a file of ``kind`` (its leading folder and suffix dropped:
    ``configs/provp_ref/base2new.yaml`` -> ``provp_ref/base2new``), or None for an absolute path or one going up
    (``..``)."""
    spec = _kind(kind)
    path = PurePosixPath(str(name))
    parts = path.parts
    if path.is_absolute() or ".." in parts or not parts:
        return None
    folder = tuple(spec.folder.split("/"))
    if parts[: len(folder)] == folder and len(parts) > len(folder):
        parts = parts[len(folder) :]
    *dirs, last = parts
    if last.endswith(spec.suffix) and len(last) > len(spec.suffix):
        last = last[: -len(spec.suffix)]
    return "/".join([*dirs, last])


def _as_path(node: Traversable, rel: str) -> Path:
    if isinstance(node, Path):
        return node
    if rel not in _copies:  # a zipped install: a temporary copy, for the life of the process
        _copies[rel] = _extracted.enter_context(resources.as_file(node))
    return _copies[rel]


def resolve_recipe(name: str | Path, kind: RecipeKind) -> Path:
    """The file ``name`` means as a ``kind`` (``"config"``, ``"ds"``, ``"space"``): an existing file as given, else
    the packaged one (see the module doc); not found: a one-line ConfigError with what was tried and the closest
    packaged names."""
    spec = _kind(kind)
    path = Path(name)
    if path.is_file():
        return path
    key = packaged_name(name, kind)
    packaged = _packaged(spec)
    if key is not None and key in packaged:
        file = _as_path(packaged[key], f"{spec.folder}/{key}{spec.suffix}")
        logger.info("%s %s: using the packaged file %s", spec.what, name, file)
        return file
    tried = "no such file" if key is None else f"no such file, no packaged {spec.folder}/{key}{spec.suffix}"
    close = difflib.get_close_matches(key, list(packaged), n=3, cutoff=0.6) if key is not None else []
    if close:
        hint = f"; did you mean {', '.join(close)}?"
    elif key is not None and len(packaged) <= 12:
        hint = f"; packaged: {', '.join(packaged) or 'none'}"
    elif key is not None:
        hint = f"; {len(packaged)} packaged, listed by scaleprompt.recipes.list_recipes({kind!r})"
    else:
        hint = ""
    raise ConfigError(f"{spec.what} not found: {name} ({tried}){hint}")
