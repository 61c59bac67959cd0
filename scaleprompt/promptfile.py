"""The prompt file's format, readable without torch: a safetensors file whose metadata records the method, its
config, the class names and the backbone (written by :func:`scaleprompt.methods.io.save_prompts`).

:func:`read_prompt_header` parses the safetensors header itself (8-byte little-endian length, then JSON), so
``scaleprompt inspect`` answers in a fraction of a second instead of importing torch and open_clip first.

**The metadata.** Every entry is a string. ``format`` (:data:`FORMAT`) and ``method`` are plain strings; the
entries of :data:`JSON_ENTRIES` (``config``, ``classnames``, ``backbone``, ``converted_from``) hold JSON; any
other entry (a training run's ``selection``, ``epoch`` and ``run``, ...) is a plain string.
:func:`decode_metadata` checks and decodes them; a bad entry is a :class:`PromptFileError` naming it.

**The checksum** (``tensors_sha256``, :data:`CHECKSUM_ENTRY`): the SHA-256 hex digest of the tensor data, so a
reader can check that the tensors are the ones the writer wrote. For each tensor, in the order of the names
sorted by code point, the hash is fed

* the UTF-8 bytes of the compact JSON array ``[name, dtype, shape, nbytes]`` (``json.dumps(...,
  separators=(",", ":"))``; ``dtype`` is the safetensors dtype string, e.g. ``"F32"``, ``shape`` a list of ints,
  ``nbytes`` the length of the data) followed by one newline byte, then
* the tensor's ``nbytes`` data bytes exactly as they lie in the safetensors file (little-endian, row-major).

The metadata itself is not covered (it is JSON, checked when decoded). :func:`read_prompt_bytes` reads a file's
bytes once, verifies the checksum (a mismatch is a :class:`PromptFileError` naming the file; a file without one
loads with a warning, once per file) and keeps the bytes, their SHA-256 and the parsed header together.
"""

from __future__ import annotations

import hashlib
import json
import logging
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from scaleprompt.errors import ScalepromptError

logger = logging.getLogger(__name__)

FORMAT = "scaleprompt.prompts/1"
MAX_HEADER = 100 * 2**20  # a prompt file's header is a few KB; anything near this is not one
CHECKSUM_ENTRY = "tensors_sha256"
JSON_ENTRIES = ("config", "classnames", "backbone", "converted_from", "novel_classnames")
Checksum = Literal["verified", "absent"]

_warned_unverified: set[str] = set()  # files whose missing checksum was already reported (once per file)


class PromptFileError(ScalepromptError, ValueError):
    """A prompt file is missing, corrupt, or does not fit the backbone / method."""


def _parse_header(head: bytes, size: int) -> tuple[dict[str, str], dict[str, dict[str, Any]], int]:
    """Metadata, tensor entries (``dtype``, ``shape``, ``data_offsets``) and the offset of the data, from the
    first bytes ``head`` of a file of ``size`` bytes (``head`` holds at least the whole header). Raises
    ``ValueError`` / ``KeyError`` / ``TypeError`` / ``struct.error`` on a malformed header."""
    (length,) = struct.unpack("<Q", head[:8])
    if not 0 < length <= min(MAX_HEADER, size - 8):
        raise ValueError(f"header length {length} does not fit a file of {size} bytes")
    header = json.loads(head[8 : 8 + length])
    if not isinstance(header, dict):
        raise ValueError("the header is not a JSON object")
    meta = header.pop("__metadata__", None) or {}
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise ValueError("its __metadata__ is not a table of strings")
    entries: dict[str, dict[str, Any]] = {}
    for name, entry in header.items():
        start, end = entry["data_offsets"]
        if not (isinstance(start, int) and isinstance(end, int) and 0 <= start <= end <= size - 8 - length):
            raise ValueError(f"tensor {name!r} lies outside the file")
        if not isinstance(entry["dtype"], str) or not all(isinstance(d, int) for d in entry["shape"]):
            raise ValueError(f"tensor {name!r} has a malformed dtype or shape")
        entries[name] = {"dtype": entry["dtype"], "shape": list(entry["shape"]), "data_offsets": [start, end]}
    return meta, entries, 8 + length


def _checked_format(meta: dict[str, str], path: Path) -> None:
    if meta.get("format") != FORMAT:
        hint = (
            ": bare tensors, as in a checkpoint's best_prompts.safetensors; a training run exports its prompts as "
            "prompts.safetensors and prompts_best_val.safetensors"
            if "format" not in meta
            else ""
        )
        raise PromptFileError(
            f"{path} is not a scaleprompt prompt file (format={meta.get('format')!r}{hint})"
        )


def read_prompt_header(path: str | Path) -> tuple[dict[str, str], dict[str, dict[str, Any]]]:
    """The metadata and the tensor table (name -> ``{"dtype", "shape"}``) of the prompt file ``path``, checked like
    :func:`scaleprompt.methods.io.read_prompt_file` (format tag, every tensor's bytes inside the file); the
    tensor data is not read (nor the checksum verified: :func:`read_prompt_bytes` does)."""
    path = Path(path)
    if not path.is_file():
        raise PromptFileError(f"prompt file not found: {path}")
    try:
        with path.open("rb") as fh:
            size = path.stat().st_size
            head = fh.read(8)
            (length,) = struct.unpack("<Q", head)
            head += fh.read(min(length, MAX_HEADER))
        meta, entries, _ = _parse_header(head, size)
    except (OSError, ValueError, KeyError, TypeError, struct.error) as exc:
        raise PromptFileError(f"{path} is not a readable safetensors file: {exc}") from exc
    _checked_format(meta, path)
    return meta, {k: {"dtype": v["dtype"], "shape": v["shape"]} for k, v in entries.items()}


def raw_tensors_sha256(entries: dict[str, dict[str, Any]], data: bytes | memoryview, start: int) -> str:
    """The checksum (module docstring) of the tensors ``entries`` (``dtype``, ``shape``, ``data_offsets``
    relative to ``start``) whose bytes lie in ``data``."""
    digest = hashlib.sha256()
    view = memoryview(data)
    for name in sorted(entries):
        entry = entries[name]
        begin, end = entry["data_offsets"]
        line = json.dumps([name, entry["dtype"], list(entry["shape"]), end - begin], separators=(",", ":"))
        digest.update(line.encode() + b"\n")
        digest.update(view[start + begin : start + end])
    return digest.hexdigest()


def safetensors_sha256(blob: bytes) -> str:
    """The checksum (module docstring) of the tensors of a whole safetensors file's bytes ``blob``."""
    _, entries, start = _parse_header(blob, len(blob))
    return raw_tensors_sha256(entries, blob, start)


def check_checksum(meta: dict[str, str], actual: str, path: str | Path) -> Checksum:
    """``"verified"`` when the checksum recorded in ``meta`` (the metadata of the file ``path``) is ``actual``;
    ``"absent"`` (with a warning, once per file) when it records none; a :class:`PromptFileError` naming the file
    when they differ."""
    recorded = meta.get(CHECKSUM_ENTRY)
    if recorded is None:
        key = str(Path(path).resolve())
        if key not in _warned_unverified:
            _warned_unverified.add(key)
            logger.warning(
                "%s records no %s (an older or foreign file): its tensors are not verified",
                path,
                CHECKSUM_ENTRY,
            )
        return "absent"
    if recorded != actual:
        raise PromptFileError(
            f"{path} is damaged: its tensor data does not match the {CHECKSUM_ENTRY} the file records "
            f"({recorded[:16]}..., the data gives {actual[:16]}...)"
        )
    return "verified"


@dataclass(frozen=True)
class RawPromptFile:
    """A prompt file read once (:func:`read_prompt_bytes`): its bytes, their SHA-256, the parsed header and
    whether the tensor checksum was verified or is absent."""

    path: Path
    data: bytes
    meta: dict[str, str]
    entries: dict[str, dict[str, Any]]
    start: int
    checksum: Checksum

    @property
    def sha256(self) -> str:
        """The SHA-256 of the file's bytes (the bytes read, whatever is at ``path`` now)."""
        return hashlib.sha256(self.data).hexdigest()

    def table(self) -> dict[str, dict[str, Any]]:
        """name -> ``{"dtype", "shape"}``."""
        return {k: {"dtype": v["dtype"], "shape": v["shape"]} for k, v in self.entries.items()}

    def non_finite(self) -> dict[str, int]:
        """name -> how many of its values are NaN or inf, for the floating point tensors that have any (numpy on
        the file's bytes: no torch)."""
        import numpy as np  # (import cost: numpy; `scaleprompt inspect` reads a file's header without it)

        kinds = {"F16": "<f2", "F32": "<f4", "F64": "<f8"}
        found = {}
        for name in sorted(self.entries):
            entry = self.entries[name]
            begin, end = entry["data_offsets"]
            data = self.data[self.start + begin : self.start + end]
            if entry["dtype"] == "BF16":  # (the upper half of a float32)
                values = (np.frombuffer(data, "<u2").astype("<u4") << 16).view("<f4")
            elif entry["dtype"] in kinds:
                values = np.frombuffer(data, kinds[entry["dtype"]])
            else:
                continue
            count = int((~np.isfinite(values)).sum())
            if count:
                found[name] = count
        return found


def read_prompt_bytes(path: str | Path) -> RawPromptFile:
    """Read the bytes of the prompt file ``path`` ONCE, parse its header from them, check its format tag and verify its
    checksum (:func:`check_checksum`)."""
    path = Path(path)
    if not path.is_file():
        raise PromptFileError(f"prompt file not found: {path}")
    try:
        data = path.read_bytes()
        meta, entries, start = _parse_header(data, len(data))
    except (OSError, ValueError, KeyError, TypeError, struct.error) as exc:
        raise PromptFileError(f"{path} is not a readable safetensors file: {exc}") from exc
    _checked_format(meta, path)
    checksum = check_checksum(meta, raw_tensors_sha256(entries, data, start), path)
    return RawPromptFile(path, data, meta, entries, start, checksum)


def decode_metadata(meta: dict[str, str], path: str | Path) -> dict[str, Any]:
    """The metadata ``meta`` (of the file ``path``) with its JSON entries (:data:`JSON_ENTRIES`) decoded and checked (``config`` an object,
    ``classnames`` a list of strings, ``backbone`` an object or null; ``method``, ``config`` and ``classnames``
    required); the other entries stay strings. A bad entry is a :class:`PromptFileError` naming the file and the entry."""
    decoded: dict[str, Any] = dict(meta)
    if not meta.get("method"):
        raise PromptFileError(f"{path}: the metadata records no method")
    for key in JSON_ENTRIES:
        if key not in meta:
            if key in ("config", "classnames"):  # (every prompt file records them)
                raise PromptFileError(f"{path}: the metadata records no {key!r}")
            continue
        try:
            decoded[key] = json.loads(meta[key])
        except ValueError as exc:
            raise PromptFileError(f"{path}: the metadata entry {key!r} is not valid JSON ({exc})") from None
    expected = {"config": (dict,), "classnames": (list,), "backbone": (dict, type(None))}
    for key, types in expected.items():
        if key in decoded and not isinstance(decoded[key], types):
            raise PromptFileError(
                f"{path}: the metadata entry {key!r} is a JSON {type(decoded[key]).__name__}, not "
                + " or ".join({dict: "an object", list: "a list", type(None): "null"}[t] for t in types)
            )
    for key in ("classnames", "novel_classnames"):
        if key in decoded and not (
            isinstance(decoded[key], list) and all(isinstance(c, str) for c in decoded[key])
        ):
            raise PromptFileError(f"{path}: the metadata entry {key!r} is not a list of strings")
    return decoded
