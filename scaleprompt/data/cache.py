"""The shard cache: one folder of shards per dataset source, dataset listing, protocol and shard layout.

:func:`ensure_shards` returns the cache folder of a dataset after a protocol, writing it when missing. The folder
name is readable and unique: ``<dataset>-<protocol tag>-<splits>-<hash of the key>``, e.g.
``flowers-16shot-seed1-all-train-val-test-3f9a1c2b7d4e``. The KEY is:

* the resolved dataset source: the absolute path of ``folder:<path>`` and of ``.json`` / ``.csv`` split files (plus
  their image root); registry name + absolute root for registered datasets; for generated datasets
  (FashionMNIST, MicroWorld*) their name and the folder they were generated in;
* a fingerprint of the dataset listing: every item of every split (path, label, class name, and the file's size,
  mtime_ns, ctime_ns and inode) and the class names;
* the protocol (shots, seed, subset), the splits, ``shard_size``, ``min_shards`` and the shard format.

Any difference builds a NEW folder (so ``folder:/a/flowers`` and ``folder:/b/flowers`` never share shards, and a
changed, added or removed image means new shards); old folders are left alone (delete unused ones yourself).
The listing costs a ``stat`` per image every time a run starts (ImageNet: 1.28M stats, run in a thread pool for
network file systems): that is the price of noticing changed images. The ctime and the inode are in it because
size and mtime alone miss an image rewritten with the same size whose mtime was put back (``touch -r``, ``cp -p``,
``rsync -a``): no user can set a ctime, and rewriting or replacing a file changes its ctime or its inode. (A
``chmod`` / ``chown`` changes the ctime too: such a folder is written again once.) They come with the same ``stat``,
so they cost nothing more; hashing the contents instead would read every image at every start (measured on 3000
PNGs of 2.9 kB, warm page cache: 8.5 ms of stats with or without ctime and inode, 59 ms to sha256 every file; on a
network file system, and cold, the reads dominate).

``source.json`` in the folder records the key inputs in readable form (not the listing: its hash and size).
A finished folder (valid manifest, every shard present) is reused without hashing its shards: the loader checks
their sha256 at first use. A half-written folder (a killed writer) is completed: :func:`write_shards` resumes
where it stopped. Writers of one folder are serialized by its lock (``<folder>/.lock``): the check is repeated
under the lock, so a second concurrent caller waits for the first and then reuses its folder.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path

from scaleprompt.data.datasets import (
    DatasetError,
    DatasetSplits,
    dataset_display_name,
    get_dataset,
    load_dataset,
)
from scaleprompt.data.protocols import Protocol
from scaleprompt.data.shards import (
    FORMAT,
    LOCK,
    MANIFEST,
    SPLITS,
    DataError,
    _write_json,
    check_shots,
    file_identity,
    finished_manifest,
    read_manifest,
    write_shards_locked,
)
from scaleprompt.locks import DirLock

logger = logging.getLogger(__name__)

SOURCE = "source.json"
KEY_VERSION = 2  # 2: the listing holds each image's ctime and inode
HASH_CHARS = 12
_STAT_CHUNK = 4096
_STAT_THREADS = 16


def ensure_shards(
    dataset: str,
    root: str | Path | None,
    protocol: Protocol,
    splits: tuple[str, ...],
    cache_dir: str | Path,
    *,
    shard_size: int,
    min_shards: int,
    allow_fewer_shots: bool = False,
) -> Path:
    """The cache folder of ``dataset`` (a :func:`~scaleprompt.data.datasets.load_dataset` spec, with ``root``)
    after ``protocol``, holding ``splits``; written if the cache has no finished folder for this exact key (see
    the module docstring), under ``cache_dir``, in shards of ``shard_size`` samples (at least ``min_shards`` per
    split). Call it on one process per file system (rank 0): a concurrent call waits.

    A few-shot protocol with classes that have fewer training images than its shots is a :class:`DataError` naming
    them unless ``allow_fewer_shots`` (checked on a reused folder too: one written with it is not silently reused
    without it)."""
    ds = load_dataset(dataset, root)
    key = cache_key(dataset, root, ds, protocol, splits, shard_size=shard_size, min_shards=min_shards)
    out = Path(cache_dir) / folder_name(dataset, protocol, splits, key)
    if _reusable(out, key):
        _check_reused_shots(out, protocol, allow_fewer_shots)
        logger.info("shard cache: reusing %s", out)
        return out
    with DirLock(out / LOCK, f"shard folder {out}").acquire(wait=True):
        if _reusable(out, key):  # finished by the writer this call waited for
            _check_reused_shots(out, protocol, allow_fewer_shots)
            logger.info("shard cache: reusing %s (written meanwhile by another process)", out)
            return out
        _explain_new_folder(out, key)
        _write_json(out / SOURCE, key)
        write_shards_locked(
            ds,
            out,
            protocol,
            splits=splits,
            shard_size=shard_size,
            min_shards=min_shards,
            processes=1,
            max_image_size=None,
            overwrite=False,
            allow_fewer_shots=allow_fewer_shots,
        )
    return out


def _check_reused_shots(out: Path, protocol: Protocol, allow_fewer_shots: bool) -> None:
    """:func:`~scaleprompt.data.shards.check_shots` on a finished folder's train split (its manifest's counts)."""
    manifest = read_manifest(out)
    train = manifest["splits"].get("train")
    if train is not None and train.get("class_counts") is not None:
        check_shots(
            manifest["dataset"],
            manifest["classnames"],
            train["class_counts"],
            protocol.shots,
            allow_fewer_shots,
        )


def dataset_source(dataset: str, root: str | Path | None, ds: DatasetSplits) -> dict:
    """Where the dataset ``dataset`` (a :func:`~scaleprompt.data.datasets.load_dataset` spec, with ``root``; read
    as ``ds``) comes from, resolved (absolute paths, registry names)."""
    image_root = str(Path(ds.image_root).resolve())
    if dataset.startswith("folder:"):
        return {"kind": "folder", "path": str(Path(dataset[len("folder:") :]).resolve())}
    if dataset.endswith((".json", ".csv")):
        return {"kind": "split_file", "path": str(Path(dataset).resolve()), "image_root": image_root}
    spec = get_dataset(dataset)
    if spec.generated:
        return {"kind": "generated", "name": spec.name, "location": image_root}
    return {"kind": "registered", "name": spec.name, "root": str(Path(root).resolve()) if root else None}


def listing_fingerprint(ds: DatasetSplits) -> dict:
    """sha256 over every item of every split of ``ds`` (path, label, class name, size, mtime_ns, ctime_ns, inode)
    and the class names."""
    rows = [(split, d.path, d.label, d.classname) for split in SPLITS for d in ds.split(split)]
    stats = _stat_all([r[1] for r in rows])
    digest = hashlib.sha256(repr((ds.classnames, ds.val_from_train)).encode())
    for row, st in zip(rows, stats, strict=True):
        digest.update(repr((*row, *st)).encode() + b"\n")
    return {"sha256": digest.hexdigest(), "images": len(rows)}


def cache_key(
    dataset: str,
    root: str | Path | None,
    ds: DatasetSplits,
    protocol: Protocol,
    splits: tuple[str, ...],
    *,
    shard_size: int,
    min_shards: int,
) -> dict:
    """The key inputs of the cache folder of ``dataset`` (with ``root``, read as ``ds``) after ``protocol``, holding
    ``splits`` in shards of ``shard_size`` (at least ``min_shards``): what ``source.json`` holds; ``key["key"]`` is
    their sha256 (the ``dataset`` spec as written and its display ``name`` are recorded, not hashed:
    ``folder:./x`` and ``folder:/abs/x`` are one key)."""
    start = time.monotonic()
    listing = listing_fingerprint(ds)
    inputs = {
        "key_version": KEY_VERSION,
        "format": FORMAT,
        "source": dataset_source(dataset, root, ds),
        "listing": listing,
        "protocol": asdict(protocol),
        "splits": list(splits),
        "shard_size": shard_size,
        "min_shards": min_shards,
    }
    digest = hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()
    key = {"dataset": dataset, "name": dataset_display_name(dataset), **inputs, "key": digest}
    logger.info(
        "shard cache: listed %d images of %s in %.1f s",
        listing["images"],
        dataset,
        time.monotonic() - start,
    )
    return key


def folder_name(dataset: str, protocol: Protocol, splits: tuple[str, ...], key: dict) -> str:
    """The cache folder's name: ``<dataset>-<protocol tag>-<splits>-<hash of the key>`` (``key``: of
    :func:`cache_key`; ``dataset``'s display name made file-safe)."""
    name = re.sub(r"[^A-Za-z0-9._+-]+", "_", dataset_display_name(dataset)).strip("._")[:64] or "dataset"
    return f"{name}-{protocol.tag()}-{'-'.join(splits)}-{key['key'][:HASH_CHARS]}"


def _stat_all(paths: list[str]) -> list[tuple[int, ...]]:
    """:func:`~scaleprompt.data.shards.file_identity` per path, in order; (-1, -1, -1, -1) for a missing file (the
    writer names it if it is needed)."""

    def stat_chunk(chunk: list[str]) -> list[tuple[int, ...]]:
        out: list[tuple[int, ...]] = []
        for path in chunk:
            try:
                out.append(file_identity(path))
            except FileNotFoundError:
                out.append((-1, -1, -1, -1))
            except OSError as exc:
                raise DatasetError(f"cannot read image {path}: {exc}") from exc
        return out

    chunks = [paths[i : i + _STAT_CHUNK] for i in range(0, len(paths), _STAT_CHUNK)]
    if len(chunks) <= 1:
        return stat_chunk(paths)
    with ThreadPoolExecutor(min(_STAT_THREADS, len(chunks))) as pool:
        return [st for part in pool.map(stat_chunk, chunks) for st in part]


def _reusable(out: Path, key: dict) -> bool:
    """``out`` is a finished cache folder of ``key`` (its source.json matches; manifest valid; shards present)."""
    if not (out / MANIFEST).is_file():
        return False
    recorded = _read_source(out)
    if recorded is not None and recorded.get("key") != key["key"]:
        raise DataError(
            f"{out / SOURCE} records another dataset / protocol than its folder name says (key "
            f"{str(recorded.get('key'))[:HASH_CHARS]}..., expected {key['key'][:HASH_CHARS]}...); delete {out}"
        )
    manifest = finished_manifest(out)
    return (
        recorded is not None
        and manifest is not None
        and manifest.get("protocol") == key["protocol"]
        and sorted(manifest["splits"]) == sorted(key["splits"])
    )


def _read_source(out: Path) -> dict | None:
    try:
        data = json.loads((out / SOURCE).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _explain_new_folder(out: Path, key: dict) -> None:
    """Log why a new folder is written when the cache holds folders of the same name / protocol / splits."""
    prefix = out.name[: -HASH_CHARS - 1]
    for other in sorted(out.parent.glob(f"{prefix}-*")):
        recorded = _read_source(other) if other != out and len(other.name) == len(out.name) else None
        if recorded is None:
            continue
        differ = [
            k
            for k in ("source", "listing", "shard_size", "min_shards", "format")
            if recorded.get(k) != key[k]
        ]
        if recorded.get("source") == key["source"] and differ == ["listing"]:
            logger.warning(
                "shard cache: the images of %s changed since %s was written (%d -> %d images, or sizes / mtimes "
                "/ ctimes / inodes differ): writing %s",
                key["dataset"],
                other,
                recorded["listing"].get("images", -1),
                key["listing"]["images"],
                out,
            )
        else:
            logger.info(
                "shard cache: %s differs from %s in %s: writing %s", key["dataset"], other, differ, out
            )
