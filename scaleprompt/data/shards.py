"""WebDataset shard writer: dataset + protocol -> ``{split}-{i:06d}.tar`` shards + ``manifest.json``.

Each sample holds the image bytes (``jpg`` / ``png`` / ... as on disk, or re-encoded when ``max_image_size`` caps
the short side), ``cls`` (the label, ASCII) and ``json`` (source path relative to the image root, class name,
label). The writer is deterministic: the same inputs give byte-identical shards (fixed tar metadata, a seeded
sample order, no timestamps). Shards are written to a temporary name and renamed when complete, so an
interrupted run never leaves a truncated shard that looks finished; running again skips finished shards and
writes the rest. ``manifest.json`` (class names, counts, protocol, sha256 per shard) is written last.

One writer per folder: :func:`write_shards` holds a :class:`~scaleprompt.locks.DirLock` on ``<out>/.lock`` while it
writes; a second writer of the same folder waits for the first, then finds its finished manifest and returns it.

Reading checks the manifest: :func:`read_manifest` refuses a damaged or inconsistent ``manifest.json``
(:class:`DataError` naming the file) and :func:`check_shards` compares each shard's sha256 with its manifest
entry, hashing a file once per process (cached by path, size, mtime, ctime and inode).
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
from scaleprompt.data.images import open_image, to_rgb
from scaleprompt.data.manifest import FORMAT, MANIFEST, DataError, parse_manifest
from scaleprompt.data.protocols import Protocol, apply_protocol, fewer_shots_problem
from scaleprompt.data.remote import read_remote_manifest, verify_remote_shards
from scaleprompt.locks import DirLock

logger = logging.getLogger(__name__)

PLAN = ".plan.json"
SPLITS = ("train", "val", "test")
EXT = {".jpg": "jpg", ".jpeg": "jpg", ".png": "png"}
LOCK = ".lock"


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
        with open_image(io.BytesIO(raw)) as img:  # (a decompression bomb is refused before decoding)
            img.load()
            if max_size is None or min(img.size) <= max_size:
                return raw, ext
            scale = max_size / min(img.size)
            size = (max(1, round(img.width * scale)), max(1, round(img.height * scale)))
            small = to_rgb(img).resize(size, Image.Resampling.BICUBIC)
    except (OSError, ValueError) as exc:  # (ImageTooLarge is a ValueError)
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
    """Write the shard of ``job`` atomically; returns its manifest entry. Runs in a worker process."""
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


def sha256_file(path: str | Path) -> str:
    """The sha256 of the file ``path``, read in 1 MiB blocks (shards, checkpoint files, evaluated prompt files)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def shard_entry(path: Path, count: int) -> dict:
    """The manifest entry of the shard ``path`` holding ``count`` samples: name, count, sha256."""
    return {"name": path.name, "count": count, "sha256": sha256_file(path)}


def file_identity(path: str | Path) -> tuple[int, int, int, int]:
    """(size, mtime_ns, ctime_ns, inode) of the file ``path``: what tells that it changed without reading it. Size and mtime
    alone miss a file rewritten with the same size whose mtime was put back (``touch -r``); no one can set a ctime,
    and a file replaced by another (a rename) has another inode."""
    st = os.stat(path)
    return st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino


# absolute path -> (file identity, sha256): a file is hashed once per process until its identity changes
_SHA_CACHE: dict[str, tuple[tuple[int, int, int, int], str]] = {}


def cached_sha256(path: str | Path) -> str:
    """``sha256`` of ``path``, remembered in this process by its path and :func:`file_identity`."""
    key = os.path.abspath(path)
    identity = file_identity(key)
    hit = _SHA_CACHE.get(key)
    if hit is not None and hit[0] == identity:
        return hit[1]
    digest = sha256_file(key)
    # (keyed by the stat from BEFORE hashing: a file changed while it was hashed is hashed again next time)
    _SHA_CACHE[key] = (identity, digest)
    return digest


def check_shards(shard_dir: str | Path, entries: list[dict]) -> None:
    """Each shard of ``entries`` (manifest entries of the folder ``shard_dir``) exists and has its manifest sha256,
    else :class:`DataError`."""
    for entry in entries:
        path = Path(shard_dir) / entry["name"]
        if not path.is_file():
            raise DataError(f"shard not found: {path} (listed in {Path(shard_dir) / MANIFEST})")
        got = cached_sha256(path)
        if got != entry["sha256"]:
            raise DataError(
                f"shard {path} is corrupt or was changed after it was written: its sha256 {got[:16]}... differs "
                f"from {entry['sha256'][:16]}... in {Path(shard_dir) / MANIFEST}; delete the shard folder to "
                "rebuild it"
            )


def plan_shards(
    items: list[Datum], split: str, shard_size: int, min_shards: int, seed: int
) -> list[list[Datum]]:
    """The ``items`` of ``split`` in a permutation seeded by ``seed`` and ``split``, cut into near-equal contiguous
    shards (so shards mix classes): ``ceil(len / shard_size)`` of them, at least ``min_shards`` (at most one per
    item)."""
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
    allow_fewer_shots: bool = False,
) -> dict:
    """Write the shards of ``ds`` (after ``protocol``, if given) to ``out_dir``; returns the manifest. ``splits``:
    the splits written; ``shard_size``, ``min_shards``: the layout (:func:`plan_shards`); ``processes``: writer
    processes; ``max_image_size``: re-encode images whose short side is longer (None: the bytes as on disk);
    ``overwrite``: replace shards of another plan in ``out_dir`` (else an error).

    Holds the folder's lock (``<out_dir>/.lock``) while writing: a concurrent writer of the same folder waits, then
    returns the manifest the first one finished (nothing is rewritten when the folder is complete). A few-shot
    protocol whose train split is written refuses classes with fewer training images than its shots (a
    :class:`DataError` naming them) unless ``allow_fewer_shots``: then they keep the images they have (the
    manifest's ``class_counts`` record how many)."""
    _check_sizes(shard_size, min_shards, processes)
    out = Path(out_dir)
    with DirLock(out / LOCK, f"shard folder {out}").acquire(wait=True):
        return write_shards_locked(
            ds,
            out,
            protocol,
            splits=splits,
            shard_size=shard_size,
            min_shards=min_shards,
            processes=processes,
            max_image_size=max_image_size,
            overwrite=overwrite,
            allow_fewer_shots=allow_fewer_shots,
        )


def write_shards_locked(
    ds: DatasetSplits,
    out: Path,
    protocol: Protocol | None,
    *,
    splits: tuple[str, ...],
    shard_size: int,
    min_shards: int,
    processes: int,
    max_image_size: int | None,
    overwrite: bool,
    allow_fewer_shots: bool = False,
) -> dict:
    """:func:`write_shards` of ``ds`` to ``out`` (the other arguments as there) for a caller that already holds
    ``<out>/.lock``."""
    _check_sizes(shard_size, min_shards, processes)
    if protocol is not None:
        ds = apply_protocol(ds, protocol)
        if "train" in splits:
            check_shots(
                ds.name,
                ds.classnames,
                _class_counts(ds.train, len(ds.classnames)),
                protocol.shots,
                allow_fewer_shots,
            )
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
    finished = finished_manifest(out, layout)
    if finished is not None:  # the same plan, complete (e.g. by a writer this one waited for)
        logger.info("%s already holds these shards: reusing them", out)
        return finished
    for stale in out.glob(".*.tmp-*"):  # left by a killed run (safe: only the lock holder writes here)
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


def check_shots(
    dataset: str, classnames: list[str], counts: list[int], shots: int, allow_fewer: bool
) -> None:
    """A :class:`DataError` when some of ``classnames`` of ``dataset`` have fewer than ``shots`` training images
    (``counts`` per class), or with ``allow_fewer`` a warning naming them (see :func:`~scaleprompt.data.protocols.fewer_shots_problem`)."""
    problem = fewer_shots_problem(dataset, classnames, counts, shots)
    if problem is None:
        return
    if not allow_fewer:
        raise DataError(
            f"{problem}; add images, lower data.shots, or set data.allow_fewer_shots=true to train on the images "
            "there are (results.json then records the real shots per class)"
        )
    logger.warning(
        "data.allow_fewer_shots: training on %d to %d images per class: %s", min(counts), max(counts), problem
    )


def _check_sizes(shard_size: int, min_shards: int, processes: int) -> None:
    if shard_size < 1 or min_shards < 1 or processes < 1:
        raise ValueError("shard_size, min_shards and processes must be >= 1")


def finished_manifest(out: Path, layout: dict[str, list[tuple[str, int]]] | None = None) -> dict | None:
    """The manifest of ``out`` if the folder is complete: a valid manifest (of ``layout``: split -> [(shard name,
    count)], when given) whose shards all exist; else None (damaged manifests are logged). Hashes nothing."""
    if not (out / MANIFEST).is_file():
        return None
    try:
        manifest = read_manifest(out)
    except DataError as exc:
        logger.warning("%s: rewriting it", exc)
        return None
    have = {s: [(e["name"], e["count"]) for e in v["shards"]] for s, v in manifest["splits"].items()}
    if layout is not None and have != layout:
        return None
    if not all((out / name).is_file() for shards in have.values() for name, _ in shards):
        return None
    return manifest


def _class_counts(items: list[Datum], num_classes: int) -> list[int]:
    counts = [0] * num_classes
    for d in items:
        counts[d.label] += 1
    return counts


def _fingerprint(items: tuple[tuple[str, int, str, str], ...]) -> str:
    """What a shard is made of: sample list plus each source file's :func:`file_identity` (a changed image = a new
    plan)."""
    digest = hashlib.sha256()
    for path, label, classname, rel in items:
        try:
            identity = file_identity(path)
        except FileNotFoundError:
            raise DatasetError(f"image not found: {path}") from None
        digest.update(repr((path, label, classname, rel, *identity)).encode())
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
    """The folder's ``manifest.json``, checked: valid JSON, the required fields, split counts = shard counts.

    ``shard_dir`` is a local folder, or a remote one: a ``pipe:`` command with ``{}`` for the file name (see
    :mod:`scaleprompt.data.remote`; its manifest is fetched through the command, once per process)."""
    if isinstance(shard_dir, str) and shard_dir.startswith("pipe:"):
        return read_remote_manifest(shard_dir)
    path = Path(shard_dir).absolute() / MANIFEST
    if not path.is_file():
        raise DataError(f"no {MANIFEST} in {shard_dir}: not a finished scaleprompt shard folder")
    return parse_manifest(path.read_bytes(), str(path))


def verify_shards(shard_dir: str | Path) -> list[str]:
    """Names of the shards of ``shard_dir`` that are missing or whose sha256 differs from the manifest (a remote
    ``pipe:`` folder:
    every shard is downloaded once and hashed as it streams)."""
    if isinstance(shard_dir, str) and shard_dir.startswith("pipe:"):
        return verify_remote_shards(shard_dir)
    manifest = read_manifest(shard_dir)
    bad = []
    for split in manifest["splits"].values():
        for entry in split["shards"]:
            path = Path(shard_dir) / entry["name"]
            if not path.is_file() or sha256_file(path) != entry["sha256"]:
                bad.append(entry["name"])
    return bad
