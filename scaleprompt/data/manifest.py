"""A shard folder's ``manifest.json``: its name, its format tag, the shard file names it may list, and the one
parser that checks it (:func:`parse_manifest`: valid JSON, the required fields, split counts = shard counts), shared
by local folders (:mod:`scaleprompt.data.shards`) and remote ones (:mod:`scaleprompt.data.remote`)."""

from __future__ import annotations

import json
import re

from scaleprompt.data.datasets import DatasetError

FORMAT = "scaleprompt.shards/1"
MANIFEST = "manifest.json"
# what a shard may be called in a manifest: a plain file name (no separator, no URL scheme, no shell character)
SHARD_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,250}\.tar")


class DataError(DatasetError):
    """Shards or their manifest are missing, damaged or inconsistent, or too many samples could not be decoded
    (the message names the file, shard or sample)."""


def parse_manifest(raw: bytes, where: str, remedy: str = "delete the shard folder to rebuild it") -> dict:
    """A manifest's bytes ``raw``, parsed and checked (``where``: the file or command it came from, named in errors;
    ``remedy``: what an error tells to do)."""
    try:
        manifest = json.loads(raw)
    except ValueError as exc:  # (UnicodeDecodeError included)
        raise DataError(f"{where} is damaged (truncated or not JSON: {exc}); {remedy}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        found = manifest.get("format") if isinstance(manifest, dict) else type(manifest).__name__
        raise DataError(f"{where} is not a scaleprompt shard manifest (format={found!r})")
    problem = _manifest_problem(manifest)
    if problem:
        raise DataError(f"{where} is damaged or inconsistent: {problem}; {remedy}")
    return manifest


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _manifest_problem(manifest: dict) -> str | None:
    """What is wrong with a manifest's structure, or None."""
    names = manifest.get("classnames")
    if not isinstance(names, list) or not all(isinstance(c, str) for c in names):
        return "'classnames' is missing or not a list of names"
    splits = manifest.get("splits")
    if not isinstance(splits, dict):
        return "'splits' is missing or not a mapping"
    for split, info in splits.items():
        if (
            not isinstance(info, dict)
            or not _is_count(info.get("count"))
            or not isinstance(info.get("shards"), list)
        ):
            return f"split {split!r} lacks 'count' or 'shards'"
        for i, entry in enumerate(info["shards"]):
            if not (
                isinstance(entry, dict)
                and isinstance(entry.get("name"), str)
                and _is_count(entry.get("count"))
                and isinstance(entry.get("sha256"), str)
                and len(entry["sha256"]) == 64
            ):
                return f"split {split!r} shard #{i} lacks 'name', 'count' or 'sha256'"
            if not SHARD_NAME.fullmatch(entry["name"]):
                return (
                    f"split {split!r} shard name {entry['name']!r} is not a plain shard file name (letters, digits, "
                    "'.', '_', '-', ending in .tar)"
                )
        total = sum(e["count"] for e in info["shards"])
        if total != info["count"]:
            return f"split {split!r} has count {info['count']} but its shards hold {total}"
        counts = info.get("class_counts")
        if counts is not None and (
            not isinstance(counts, list)
            or len(counts) != len(names)
            or not all(_is_count(c) for c in counts)
            or sum(counts) != info["count"]
        ):
            return f"split {split!r} class_counts do not match its count and {len(names)} classes"
    return None
