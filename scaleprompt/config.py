"""Typed dataclass configs: field type checks, unknown-key errors, dict round-trips.

Every config in scaleprompt is a ``@dataclass`` whose ``__post_init__`` calls :func:`check_types` and then checks
its own values (and nothing another layer knows); a bad value raises :class:`ConfigError` naming the field.
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar, Union, get_args, get_origin

import yaml

from scaleprompt.errors import ScalepromptError

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

T = TypeVar("T", bound="DataclassInstance")


class ConfigError(ScalepromptError, ValueError):
    """A configuration value or key is invalid. The message names the field."""


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Return ``value`` converted to ``tp`` where that is lossless (int->float, list->tuple), else raise."""
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin is Literal:
        if value not in get_args(tp):
            raise ConfigError(f"{where}: {value!r} is not one of {list(get_args(tp))}")
        return value
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(f"{where}: {value!r} does not match {_type_name(tp)}")
    if origin in (tuple, list):
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        args = get_args(tp)
        item_tp = args[0] if args else Any
        items = [_coerce(v, item_tp, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        if not math.isfinite(value):  # (YAML's .inf / .nan: no setting of the project means them)
            raise ConfigError(f"{where}: expected a finite number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true/false, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return value if isinstance(value, tp) else from_dict(tp, value, where)
    return value


def check_types(cfg: Any, prefix: str = "") -> None:
    """Check (and losslessly coerce, in place) every field of the dataclass instance ``cfg`` against its
    annotation; an error names the field after ``prefix`` (``"optim."``)."""
    hints = typing.get_type_hints(type(cfg))
    for f in dataclasses.fields(cfg):
        where = f"{prefix}{f.name}"
        object.__setattr__(cfg, f.name, _coerce(getattr(cfg, f.name), hints[f.name], where))


def from_dict(cls: type[T], data: Mapping[str, Any] | None, where: str = "") -> T:
    """Build the dataclass ``cls`` from the mapping ``data`` (None: its defaults); an unknown key raises a
    :class:`ConfigError` naming it, and ``where`` (a method name, a section) when given."""
    data = dict(data or {})
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(
            f"unknown key{'s' if len(unknown) > 1 else ''} {', '.join(repr(k) for k in unknown)}"
            f"{f' in {where}' if where else ''}; valid keys: {', '.join(sorted(names))}"
        )
    return cls(**data)


def to_dict(cfg: Any) -> dict[str, Any]:
    """The dataclass instance ``cfg`` as a JSON-friendly dict (tuples become lists)."""

    def plain(v: Any) -> Any:
        if isinstance(v, tuple | list):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v

    return {k: plain(v) for k, v in dataclasses.asdict(cfg).items()}


def require(cond: bool, field: str, message: str) -> None:
    """Raise a ConfigError naming ``field``, saying ``message``, unless ``cond`` holds."""
    if not cond:
        raise ConfigError(f"{field}: {message}")


def _duplicate(source: str | Path, what: str, key_path: Sequence[Any], lines: Sequence[int]) -> ConfigError:
    key = "".join(f"[{k}]" if isinstance(k, int) else f".{k}" for k in key_path).lstrip(".")
    where = f"line {lines[0]}" if len(set(lines)) == 1 else f"lines {' and '.join(str(n) for n in lines)}"
    return ConfigError(
        f"{source}: duplicate key {key!r} in the {what} ({where}): only the last value would be used, silently; "
        "keep one"
    )


def _check_yaml_keys(
    node: Any, source: str | Path, what: str, path: tuple[Any, ...] = (), seen: frozenset[int] = frozenset()
) -> None:
    """Raise a :class:`ConfigError` on the first key that a mapping of the composed YAML ``node`` holds twice (at any
    depth; merge keys ``<<`` and anchors are YAML's own way to repeat and are left alone)."""
    if id(node) in seen:  # (a recursive alias)
        return
    seen = seen | {id(node)}
    if isinstance(node, yaml.MappingNode):
        first: dict[tuple[str, str], int] = {}
        for key, value in node.value:
            name = key.value if isinstance(key, yaml.ScalarNode) else None
            if name is not None and key.tag != "tag:yaml.org,2002:merge":
                line = key.start_mark.line + 1
                if (key.tag, name) in first:
                    raise _duplicate(source, what, (*path, name), (first[(key.tag, name)], line))
                first[(key.tag, name)] = line
            _check_yaml_keys(value, source, what, (*path, name if name is not None else "?"), seen)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _check_yaml_keys(item, source, what, (*path, i), seen)


def read_yaml_mapping(path: str | Path, what: str, expected: str) -> dict[str, Any]:
    """The YAML file ``path``, which must hold a mapping (a recipe, a search space); every problem is a ConfigError
    naming the file (``what``: "recipe", "search space"; ``expected``: what the mapping holds). A key given twice in one mapping
    (at any depth) is such a problem: the error names the key path and both lines (YAML would keep the last value
    silently)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{what} not found: {path}")
    try:
        loader = yaml.SafeLoader(path.read_text())
        try:
            node = loader.get_single_node()
            if node is not None:
                _check_yaml_keys(node, path, what)
            data = (loader.construct_document(node) if node is not None else None) or {}
        finally:
            loader.dispose()
    except (yaml.YAMLError, OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not a readable YAML {what}: {' '.join(str(exc).split())}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a {what} is a mapping of {expected}")
    return data


def check_json_keys(text: str, source: str | Path, what: str) -> None:
    """Raise a :class:`ConfigError` naming ``source``, the key path and both lines when an object of the JSON
    ``text`` (already known to parse) holds a key twice, at any depth (``json.loads`` keeps the last value
    silently); ``what`` names the file's kind ("DeepSpeed config")."""
    decoder = json.JSONDecoder()

    def skip(i: int) -> int:
        while i < len(text) and text[i] in " \t\n\r":
            i += 1
        return i

    def line(i: int) -> int:
        return text.count("\n", 0, i) + 1

    def walk(i: int, path: tuple[Any, ...]) -> int:
        i = skip(i)
        if text.startswith("{", i):
            i, first = skip(i + 1), dict[str, int]()
            while not text.startswith("}", i):
                start = i
                key, i = json.decoder.scanstring(text, i + 1)  # type: ignore[attr-defined]  # (not in typeshed)
                if key in first:
                    raise _duplicate(source, what, (*path, key), (first[key], line(start)))
                first[key] = line(start)
                i = walk(skip(i) + 1, (*path, key))  # (past the ':')
                i = skip(i)
                i = skip(i + 1) if text.startswith(",", i) else i
            return i + 1
        if text.startswith("[", i):
            i, n = skip(i + 1), 0
            while not text.startswith("]", i):
                i = skip(walk(i, (*path, n)))
                i, n = skip(i + 1) if text.startswith(",", i) else i, n + 1
            return i + 1
        return decoder.raw_decode(text, i)[1]

    walk(0, ())
