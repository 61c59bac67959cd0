"""WebDataset shard writer: dataset + protocol -> ``{split}-{i:06d}.tar`` shards + ``manifest.json``.

Each sample holds the image bytes (``jpg`` / ``png`` / ... as on disk, or re-encoded when ``max_image_size`` caps
the short side), ``cls`` (the label, ASCII) and ``json`` (source path relative to the image root, class name,
label). The writer is deterministic: the same inputs give byte-identical shards (fixed tar metadata, a seeded
sample order, no timestamps). Shards are written to a temporary name and renamed when complete, so an
interrupted run never leaves a truncated shard that looks finished; running again skips finished shards and
writes the rest. ``manifest.json`` (class names, counts, protocol, sha256 per shard) is written last.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import math
import os
import random
import tarfile
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from multiprocessing import get_context
from pathlib import Path

from PIL import Image

from scaleprompt.data.datasets import DatasetError, DatasetSplits, Datum
from scaleprompt.data.protocols import Protocol, apply_protocol

logger = logging.getLogger(__name__)

FORMAT = "scaleprompt.shards/1"
MANIFEST = "manifest.json"
PLAN = ".plan.json"
SPLITS = ("train", "val", "test")
EXT = {".jpg": "jpg", ".jpeg": "jpg", ".png": "png"}


@dataclass(frozen=True)
class ShardJob:
    split: str
    index: int
    path: str  # output path
    items: tuple[tuple[str, int, str, str], ...]  # (absolute image path, label, class name, relative path)
    max_image_size: int | None


def _image_bytes(path: str, max_size: int | None) -> tuple[bytes, str]:
    """The sample's image bytes and extension; decodes once to reject unreadable images."""
    src = Path(path)
    try:
        raw = src.read_bytes()
    except FileNotFoundError:
        raise DatasetError(f"image not found: {src}") from None
    ext = EXT.get(src.suffix.lower(), src.suffix.lower().lstrip("."))
    try:
        with Image.open(io.BytesIO(raw)) as img:
            img.load()
            if max_size is None or min(img.size) <= max_size:
                return raw, ext
            scale = max_size / min(img.size)
            size = (max(1, round(img.width * scale)), max(1, round(img.height * scale)))
            small = img.convert("RGB").resize(size, Image.Resampling.BICUBIC)
    except (OSError, ValueError) as exc:
        raise DatasetError(f"image cannot be decoded: {src} ({exc})") from exc
    out = io.BytesIO()
    if ext == "png":
        small.save(out, format="PNG")
    else:
        small.save(out, format="JPEG", quality=95)
        ext = "jpg"
    return out.getvalue(), ext


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode, info.uid, info.gid = len(data), 0, 0o444, 0, 0
    info.uname = info.gname = ""
    tar.addfile(info, io.BytesIO(data))


def write_shard(job: ShardJob) -> dict:
    """Write one shard atomically; returns its manifest entry. Runs in a worker process."""
    out = Path(job.path)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    try:
        with tarfile.open(tmp, "w", format=tarfile.USTAR_FORMAT) as tar:
            for offset, (path, label, classname, rel) in enumerate(job.items):
                key = f"{job.split}-{job.index:06d}-{offset:06d}"
                data, ext = _image_bytes(path, job.max_image_size)
                meta = json.dumps({"path": rel, "classname": classname, "label": label}, sort_keys=True)
                _add(tar, f"{key}.{ext}", data)
                _add(tar, f"{key}.cls", str(label).encode())
                _add(tar, f"{key}.json", meta.encode())
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return shard_entry(out, len(job.items))


def shard_entry(path: Path, count: int) -> dict:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return {"name": path.name, "count": count, "sha256": digest.hexdigest()}


def plan_shards(
    items: list[Datum], split: str, shard_size: int, min_shards: int, seed: int
) -> list[list[Datum]]:
    """A seeded permutation cut into near-equal contiguous shards (so shards mix classes)."""
    if not items:
        return []
    order = list(items)
    random.Random(f"scaleprompt-shards-{seed}-{split}").shuffle(order)
    n = len(order)
    count = min(n, max(min_shards, math.ceil(n / shard_size)))
    return [order[n * i // count : n * (i + 1) // count] for i in range(count)]


def write_shards(
    ds: DatasetSplits,
    out_dir: str | Path,
    protocol: Protocol | None = None,
    *,
    splits: tuple[str, ...] = SPLITS,
    shard_size: int = 1000,
    min_shards: int = 1,
    processes: int = 1,
    max_image_size: int | None = None,
    overwrite: bool = False,
) -> dict:
    """Write the shards of ``ds`` (after ``protocol``, if given) to ``out_dir``; returns the manifest."""
    if shard_size < 1 or min_shards < 1 or processes < 1:
        raise ValueError("shard_size, min_shards and processes must be >= 1")
    if protocol is not None:
        ds = apply_protocol(ds, protocol)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    jobs: list[ShardJob] = []
    layout: dict[str, list[tuple[str, int]]] = {}
    root = Path(ds.image_root)
    for split in splits:
        planned = plan_shards(
            ds.split(split), split, shard_size, min_shards, protocol.seed if protocol else 0
        )
        layout[split] = []
        for i, shard in enumerate(planned):
            name = f"{split}-{i:06d}.tar"
            items = tuple((d.path, d.label, d.classname, os.path.relpath(d.path, root)) for d in shard)
            jobs.append(ShardJob(split, i, str(out / name), items, max_image_size))
            layout[split].append((name, len(items)))
    plan = {
        "format": FORMAT,
        "dataset": ds.name,
        "protocol": asdict(protocol) if protocol else None,
        "max_image_size": max_image_size,
        "shards": {Path(j.path).name: _fingerprint(j.items) for j in jobs},
    }
    _check_plan(out, plan, overwrite)
    for stale in out.glob(".*.tmp-*"):  # left by a killed run
        stale.unlink()
    todo = [j for j in jobs if not Path(j.path).exists()]
    done = {Path(j.path).name: shard_entry(Path(j.path), len(j.items)) for j in jobs if Path(j.path).exists()}
    if done:
        logger.info("%d of %d shards already written in %s: writing the rest", len(done), len(jobs), out)
    if processes > 1 and len(todo) > 1:
        with ProcessPoolExecutor(min(processes, len(todo)), mp_context=get_context("spawn")) as pool:
            entries = list(pool.map(write_shard, todo))
    else:
        entries = [write_shard(j) for j in todo]
    done.update({e["name"]: e for e in entries})
    manifest = {
        "format": FORMAT,
        "dataset": ds.name,
        "classnames": ds.classnames,
        "protocol": asdict(protocol) if protocol else None,
        "max_image_size": max_image_size,
        "splits": {
            split: {
                "count": sum(c for _, c in shards),
                "class_counts": _class_counts(ds.split(split), len(ds.classnames)),
                "shards": [done[name] for name, _ in shards],
            }
            for split, shards in layout.items()
        },
    }
    _write_json(out / MANIFEST, manifest)
    logger.info(
        "wrote %d shards (%s) to %s", len(jobs), ", ".join(f"{s}: {len(v)}" for s, v in layout.items()), out
    )
    return manifest


def _class_counts(items: list[Datum], num_classes: int) -> list[int]:
    counts = [0] * num_classes
    for d in items:
        counts[d.label] += 1
    return counts


def _fingerprint(items: tuple[tuple[str, int, str, str], ...]) -> str:
    """What a shard is made of: sample list plus each source file's size and mtime (a changed image = a new plan)."""
    digest = hashlib.sha256()
    for path, label, classname, rel in items:
        try:
            st = os.stat(path)
        except FileNotFoundError:
            raise DatasetError(f"image not found: {path}") from None
        digest.update(repr((path, label, classname, rel, st.st_size, st.st_mtime_ns)).encode())
    return digest.hexdigest()


def _check_plan(out: Path, plan: dict, overwrite: bool) -> None:
    previous = out / PLAN
    if not previous.is_file() and any(out.glob("*.tar")):
        if not overwrite:
            raise DatasetError(
                f"{out} holds shards written without a plan; pass overwrite=True (--overwrite)"
            )
        previous.write_text("{}")  # treated as a different plan below: old shards are removed
    if previous.is_file() and json.loads(previous.read_text()) != plan:
        if not overwrite:
            raise DatasetError(
                f"{out} holds shards of a different dataset / protocol / layout; pass overwrite=True (--overwrite) "
                "or choose another output folder"
            )
        for old in list(out.glob("*.tar")) + [out / MANIFEST]:
            old.unlink(missing_ok=True)
    if not previous.is_file() or json.loads(previous.read_text()) != plan:
        (out / MANIFEST).unlink(missing_ok=True)
        _write_json(previous, plan)


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
    os.replace(tmp, path)


def read_manifest(shard_dir: str | Path) -> dict:
    path = Path(shard_dir) / MANIFEST
    if not path.is_file():
        raise DatasetError(f"no {MANIFEST} in {shard_dir}: not a finished scaleprompt shard folder")
    manifest = json.loads(path.read_text())
    if manifest.get("format") != FORMAT:
        raise DatasetError(f"{path} is not a scaleprompt shard manifest (format={manifest.get('format')!r})")
    return manifest


def verify_shards(shard_dir: str | Path) -> list[str]:
    """Names of shards that are missing or whose sha256 differs from the manifest."""
    manifest = read_manifest(shard_dir)
    bad = []
    for split in manifest["splits"].values():
        for entry in split["shards"]:
            path = Path(shard_dir) / entry["name"]
            if not path.is_file() or shard_entry(path, entry["count"])["sha256"] != entry["sha256"]:
                bad.append(entry["name"])
    return bad
