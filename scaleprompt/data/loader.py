"""Streaming loader over WebDataset shards.

Sources: a shard folder written by :mod:`scaleprompt.data.shards` (its manifest gives shards, counts and class
names); a REMOTE shard folder, the same folder on an object store read through a ``pipe:`` command with ``{}``
where the file name goes (``pipe:aws s3 cp s3://bucket/pets-shards/{} -``, see :mod:`scaleprompt.data.remote`):
its manifest is fetched through the command and used exactly like a local one; a brace pattern
(``/data/train-{000000..000015}.tar``); a list of paths; or bare ``pipe:`` commands, one per shard, without a
manifest (``pipe:aws s3 cp s3://bucket/train-000000.tar -``).

Two modes:

* ``train=True``: each rank streams its own shards (shard order shuffled per pass with a seed shared by all
  ranks, so the rank split stays disjoint), repeated without end; a sample shuffle buffer; the CLIP train
  transform. An epoch is a DEFINED number of batches per rank, ``epoch_samples // (batch_size * world_size)``,
  so every rank steps the same number of times. ``resampled=True`` samples shards with replacement instead
  (long runs over many shards), each rank and worker with its own seeded draw.
* ``train=False``: one exact pass, the CLIP test transform, no shuffle; over all ranks and workers every sample
  is read exactly once (disjoint shards per rank, then per worker).

A sample that cannot be decoded is skipped and counted (``loader.skipped``); past ``max_bad_samples`` per
worker the run stops with :class:`DataError` naming the sample. Images are decoded by
:func:`~scaleprompt.data.images.load_rgb`: an image whose header says it is larger than Pillow's pixel limit (a
decompression bomb) is such a sample and is never decoded; 16-bit grayscale is scaled to 8 bit, not clipped. A missing local shard is a :class:`DataError`.

Integrity checks, each a :class:`DataError` naming the file, shard or sample:

* a shard folder's ``manifest.json`` must be valid (:func:`~scaleprompt.data.shards.read_manifest`);
* before the first batch, every LOCAL shard this rank is responsible for is hashed and compared with its manifest
  sha256 (once per process: cached by path, size, mtime, ctime and inode). Eval: the shards the rank reads. Train: the rank's
  1/world share of the split, so the ranks together hash every shard once (a mismatch on any rank stops the job);
* a REMOTE folder's shards are not hashed up front (that would download each twice): their bytes are hashed as
  they stream, and compared with the manifest sha256 when the shard ends. The shard's samples have then already
  been delivered (a corrupt sample may have been used) but the pass stops there; every read of a remote shard is
  checked, in training and in evaluation. A shard cut off by the end of a training run is not checked;
* every ``pipe:`` command (remote folder or bare) must exit with status 0 once its output was read to the end,
  and a shard that cannot be parsed reports its command's failure (exit status, end of its stderr) when it failed;
* when a shard ends, the samples read from it (undecodable ones included) must equal its manifest count: a
  damaged tar header or a truncated shard ends a tar archive early without an error, this check does not let it
  pass (it comes before the hash check, so a truncated shard is named as such);
* labels: ``.cls`` must lie in [0, number of classes of the manifest) and agree with the ``.json`` label;
* an eval pass over a manifest source reads the whole split: an undecodable sample is an error there (the
  ``max_bad_samples`` budget applies to training and to sources without a manifest), and a pass that read a
  different number of samples than the manifest's share of the rank is an error.

Sources without a manifest (patterns, lists, bare ``pipe:`` commands) get only the label agreement check (and the
exit status of their commands).
"""

from __future__ import annotations

import contextlib
import io
import itertools
import json
import logging
import os
import random
import signal
import time
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import braceexpand
import torch
import webdataset as wds
from torch.utils.data import DataLoader, IterableDataset, get_worker_info
from webdataset.tariterators import group_by_keys, tar_file_expander, tarfile_samples

from scaleprompt.data.images import load_rgb
from scaleprompt.data.remote import PipeStream, is_pipe, is_remote_folder, remote_command, remote_url
from scaleprompt.data.shards import DataError, check_shards, read_manifest  # (DataError: torch-free home)
from scaleprompt.data.transforms import clip_transform

logger = logging.getLogger(__name__)

IMAGE_KEYS = ("jpg", "jpeg", "png", "webp", "bmp", "gif", "tif", "tiff", "ppm")


class Batch(NamedTuple):
    images: torch.Tensor  # [B, 3, H, W]
    labels: torch.Tensor  # [B]
    keys: list[str]
    worker: int  # global worker id (rank * num_workers + worker)
    skipped: int  # samples this worker has skipped so far


@dataclass(frozen=True)
class ShardSource:
    urls: list[str]
    classnames: list[str] | None = None
    count: int | None = None  # samples in the split, when known (manifest)
    shard_dir: str | None = None  # the folder of the manifest (or a remote folder's pipe: template), if any
    entries: tuple[dict, ...] | None = None  # the manifest entry (name, count, sha256) of each url

    @property
    def counts(self) -> dict[str, int]:
        """url -> samples in that shard (manifest sources; empty otherwise)."""
        return {u: e["count"] for u, e in zip(self.urls, self.entries or (), strict=False)}

    @property
    def remote(self) -> bool:
        """A remote shard folder (``pipe:`` template): its shards are hashed as they stream, not up front."""
        return is_remote_folder(self.shard_dir)

    @property
    def commands(self) -> dict[str, list[str]]:
        """url -> the argument vector that prints the shard (remote folders: the shard name is an argument of the
        command, never shell text; empty otherwise)."""
        if not self.remote:
            return {}
        template = str(self.shard_dir)
        return {
            u: remote_command(template, e["name"]) for u, e in zip(self.urls, self.entries or (), strict=True)
        }

    @property
    def stream_hashes(self) -> dict[str, str]:
        """url -> manifest sha256 of the shards checked as they stream (remote folders; empty otherwise)."""
        if not self.remote:
            return {}
        return {u: e["sha256"] for u, e in zip(self.urls, self.entries or (), strict=True)}


def resolve_source(source: str | Path | Sequence[str], split: str = "train") -> ShardSource:
    """Shard URLs (+ class names and sample count when a manifest is available) of ``split`` of ``source``: a
    shard folder, a remote shard folder (``pipe:`` template), a brace pattern, a list of paths or ``pipe:``
    commands (see the module docstring)."""
    remote = is_remote_folder(source)
    if isinstance(source, str | Path) and (remote or (not is_pipe(source) and Path(source).is_dir())):
        # (absolute: no shard path can read as a URL scheme or a pipe: command)
        folder = str(source) if remote else Path(source).absolute()
        manifest = read_manifest(folder)
        if split not in manifest["splits"]:
            raise DataError(f"{folder} has no {split!r} split (has {sorted(manifest['splits'])})")
        info = manifest["splits"][split]
        if remote:
            urls = [remote_url(str(folder), s["name"]) for s in info["shards"]]
        else:
            urls = [str(Path(folder) / s["name"]) for s in info["shards"]]
        src = ShardSource(urls, manifest["classnames"], info["count"], str(folder), tuple(info["shards"]))
        return _checked(src)
    patterns = [str(source)] if isinstance(source, str | Path) else [str(s) for s in source]
    urls = [u for p in patterns for u in (braceexpand.braceexpand(p) if not p.startswith("pipe:") else [p])]
    return _checked(ShardSource(urls))


def _checked(src: ShardSource) -> ShardSource:
    if not src.urls:
        raise DataError("no shards to read")
    missing = [
        u
        for u in src.urls
        if not u.startswith(("pipe:", "http://", "https://", "gs://", "s3://"))
        and not Path(u.removeprefix("file:")).is_file()
    ]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise DataError(f"shard not found: {missing[0]}{more}")
    return src


def sample_label(sample: dict, num_classes: int | None = None) -> int:
    """The ``.cls`` label of ``sample``, checked: in [0, ``num_classes``) (when known) and equal to the ``.json``
    label.
    An unreadable ``.cls`` / ``.json`` is an undecodable sample (ValueError); a wrong label is a DataError."""
    label = int(sample["cls"])
    meta = json.loads(sample["json"]) if "json" in sample else {}
    where = f"shard {sample.get('__url__', '?')} sample {sample.get('__key__', '?')}"
    if label < 0 or (num_classes is not None and label >= num_classes):
        limit = f"[0, {num_classes}) (the manifest's classes)" if num_classes is not None else ">= 0"
        raise DataError(f"{where}: label {label} is outside {limit}: the shard is corrupt or was changed")
    if isinstance(meta, dict) and "label" in meta and meta["label"] != label:
        raise DataError(
            f"{where}: .cls label {label} disagrees with its .json label {meta['label']!r}: the shard is "
            "corrupt or was changed"
        )
    return label


def decode_sample(
    sample: dict, transform: Callable[[Any], torch.Tensor], num_classes: int | None = None
) -> tuple[torch.Tensor, int, str]:
    """The image (through ``transform``), checked label and key of ``sample`` (a WebDataset sample: its image under
    one of :data:`IMAGE_KEYS`); ``num_classes``: the label range, when known. An undecodable sample raises any
    exception but :class:`DataError`, a wrong label a DataError (:func:`sample_label`)."""
    key = next((k for k in IMAGE_KEYS if k in sample), None)
    if key is None:
        raise ValueError(f"no image in sample (keys: {sorted(k for k in sample if not k.startswith('__'))})")
    label = sample_label(sample, num_classes)
    image = transform(load_rgb(io.BytesIO(sample[key])))  # (a decompression bomb is refused before decoding)
    return image, label, sample["__key__"]


class ShardStream(IterableDataset):
    """The per-worker stream: shards for this rank and worker -> samples -> decoded, transformed batches."""

    def __init__(
        self,
        urls: Sequence[str],
        *,
        train: bool,
        batch_size: int,
        transform: Callable[[Any], torch.Tensor],
        rank: int,
        world_size: int,
        seed: int,
        shuffle_buffer: int,
        resampled: bool,
        max_bad_samples: int,
        drop_last: bool,
        epoch: int,
        counts: dict[str, int] | None = None,
        num_classes: int | None = None,
        strict: bool = False,
        hashes: dict[str, str] | None = None,
        commands: dict[str, list[str]] | None = None,
    ) -> None:
        super().__init__()
        # url -> manifest sample count, and url -> sha256 of the shards hashed as they stream (both checked when the
        # shard ends); classes for the label range; strict: an undecodable sample is an error (eval over a manifest)
        self.counts, self.num_classes, self.strict = dict(counts or {}), num_classes, strict
        self.hashes = dict(hashes or {})
        self.commands = dict(commands or {})  # url -> argument vector of a remote folder's shard
        self.urls, self.train, self.batch_size, self.transform = list(urls), train, batch_size, transform
        self.rank, self.world_size, self.seed, self.shuffle_buffer = rank, world_size, seed, shuffle_buffer
        self.resampled, self.max_bad = resampled, max_bad_samples
        self.drop_last, self.epoch = drop_last, epoch

    def _passes(self, worker: int, num_workers: int) -> Iterator[Iterable[str]]:
        """Shard lists, one per pass over this worker's part of the data (resampled: one endless draw)."""
        if self.resampled:  # with replacement: one endless pass per (rank, worker)
            rng = random.Random(f"{self.seed}-{self.epoch}-{self.rank}-{worker}")
            yield (rng.choice(self.urls) for _ in itertools.count())
            return
        for n in itertools.count() if self.train else range(1):
            urls = list(self.urls)
            if self.train:  # the same permutation on every rank for pass n: the rank split stays disjoint
                random.Random(f"{self.seed}-{self.epoch}-{n}").shuffle(urls)
            mine = urls[self.rank :: self.world_size][worker::num_workers]
            if self.train and not mine:
                raise DataError(
                    f"rank {self.rank} worker {worker} has no shard: {len(urls)} shards for {self.world_size} "
                    f"ranks x {num_workers} workers (write more shards: min_shards)"
                )
            yield mine

    def _shard_samples(self, urls: Iterable[str]) -> Iterator[dict]:
        """The samples of ``urls``, shard by shard. When a shard ends: a ``pipe:`` command must have exited with
        status 0 (read to the end of its output first); the samples read must equal the manifest count (tar
        readers take a damaged header for the end of the archive); a remote folder's shard must have its manifest
        sha256, hashed as it streamed (so its samples were already delivered when a mismatch is found)."""
        for url in urls:
            pipe = PipeStream(url, self.commands.get(url)) if is_pipe(url) else None
            try:
                n = yield from _tar_samples(url, pipe)
                digest = pipe.finish() if pipe is not None else None
            finally:  # (also when the consumer stops mid-shard: the command is stopped)
                if pipe is not None:
                    pipe.release()
            expected, want = self.counts.get(url), self.hashes.get(url)
            if expected is not None and n != expected:
                remedy = (
                    "write the folder again and upload it"
                    if want
                    else "delete the shard folder to rebuild it"
                )
                raise DataError(
                    f"shard {url} is corrupt or was changed: it ended after {n} samples, its manifest entry "
                    f"says {expected} (a damaged tar header or a truncated shard ends the archive early); {remedy}"
                )
            if want is not None and digest != want:
                raise DataError(
                    f"shard {url} is corrupt or was changed: the sha256 of its streamed bytes {str(digest)[:16]}... "
                    f"differs from {want[:16]}... in its manifest entry (its {n} samples were already read: a "
                    "streamed shard is hashed at its end); write the shard folder again and upload it"
                )

    def _samples(self, worker: int, num_workers: int) -> Iterator[dict]:
        for n, shards in enumerate(self._passes(worker, num_workers)):
            samples = self._shard_samples(shards)
            if self.train and self.shuffle_buffer > 1:  # (within a pass: every pass sees each sample once)
                rng = random.Random(f"{self.seed}-{self.epoch}-{self.rank}-{worker}-{n}")
                samples = wds.shuffle(self.shuffle_buffer, min(100, self.shuffle_buffer), rng=rng)(samples)
            yield from samples

    def __iter__(self) -> Iterator[Batch]:
        info = get_worker_info()
        worker, num_workers = (info.id, info.num_workers) if info else (0, 1)
        gid = self.rank * num_workers + worker
        samples = self._samples(worker, num_workers)
        bad = 0
        images, labels, keys = [], [], []
        for sample in samples:
            try:
                image, label, key = decode_sample(sample, self.transform, self.num_classes)
            except DataError:
                raise
            except Exception as exc:  # noqa: BLE001 - any failure means an undecodable sample
                bad += 1
                where = f"{sample.get('__url__', '?')}:{sample.get('__key__', '?')}"
                if self.strict:
                    raise DataError(
                        f"undecodable sample {where} ({type(exc).__name__}: {exc}): an evaluation over a manifest "
                        "must read every sample of the split; the shard is corrupt or was changed"
                    ) from exc
                logger.warning("skipping undecodable sample %s (%s: %s)", where, type(exc).__name__, exc)
                if bad > self.max_bad:
                    raise DataError(
                        f"{bad} undecodable samples on rank {self.rank} worker {worker} (limit max_bad_samples="
                        f"{self.max_bad}); last: {where}: {exc}"
                    ) from exc
                continue
            images.append(image)
            labels.append(label)
            keys.append(key)
            if len(images) == self.batch_size:
                yield Batch(torch.stack(images), torch.tensor(labels), keys, gid, bad)
                images, labels, keys = [], [], []
        if images and not self.drop_last:
            yield Batch(torch.stack(images), torch.tensor(labels), keys, gid, bad)


def _tar_samples(url: str, pipe: PipeStream | None) -> Generator[dict, None, int]:
    """The samples of one shard (a file, or the output of its ``pipe:`` command); returns how many there were. A
    shard that cannot be parsed is a DataError naming it, or naming its command when the command failed."""
    if pipe is None:
        samples = tarfile_samples([{"url": url}], handler=_shard_error)
    else:  # (the opened stream goes in directly: webdataset's own pipe: opener does not check the exit status)
        files = tar_file_expander([{"url": url, "stream": pipe}], handler=_shard_error)
        samples = group_by_keys(files, handler=_shard_error)
    n = 0
    try:
        for sample in samples:
            n += 1
            yield sample
    except DataError as exc:
        status = pipe.status() if pipe is not None else 0
        if pipe is not None and status not in (0, None):  # a failed command (missing object, network error)
            raise DataError(pipe.failure(status)) from exc  # explains the bad tar
        raise
    return n


def _shard_error(exc: Exception) -> bool:
    """A shard that cannot be opened or parsed as tar stops the run, naming the shard."""
    raise DataError(f"cannot read shard: {exc}") from exc


def _collate(batch: Any) -> Any:
    """The identity: a :class:`ShardStream` yields whole batches (``batch_size=None``), passed through as they are.
    (Typed ``Any``: the DataLoader's ``collate_fn`` type is that of a batching loader, a list of samples in.)"""
    return batch


class ShardLoader:
    """Iterate batches of one split of a shard source. See the module docstring for the two modes."""

    def __init__(
        self,
        source: str | Path | Sequence[str],
        split: str = "train",
        *,
        batch_size: int = 32,
        train: bool | None = None,
        augment: bool = True,
        crop_min_scale: float = 0.08,
        image_size: int = 224,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        num_workers: int = 2,
        shuffle_buffer: int = 1000,
        resampled: bool = False,
        epoch_samples: int | None = None,
        max_bad_samples: int = 10,
        seed: int = 0,
        rank: int | None = None,
        world_size: int | None = None,
    ) -> None:
        self.src, self.split = resolve_source(source, split), split
        self.train = split == "train" if train is None else train
        self.batch_size, self.num_workers, self.seed = batch_size, num_workers, seed
        self.rank, self.world_size = _rank_world(rank, world_size)
        self.transform = clip_transform(
            image_size, train=self.train and augment, mean=mean, std=std, crop_min_scale=crop_min_scale
        )
        self.shuffle_buffer, self.resampled, self.max_bad = shuffle_buffer, resampled, max_bad_samples
        epoch_samples = epoch_samples or self.src.count
        if self.train and not epoch_samples:
            raise DataError("training from shards without a manifest needs epoch_samples (the epoch length)")
        self.epoch_samples = epoch_samples
        self.consumed = 0
        self._stream: Iterator[Batch] | None = None
        self._first: list[Batch] = []  # the training stream's first batch, read at its start, not yet used
        self._skipped: dict[int, int] = {}

    @property
    def classnames(self) -> list[str] | None:
        """The split's class names (a manifest source; None otherwise)."""
        return self.src.classnames

    @property
    def expected_images(self) -> int | None:
        """Images an eval pass over all ranks must yield (the manifest's split count); None if unknown / train."""
        return None if self.train else self.src.count

    def _my_urls(self) -> list[str]:
        """The shards this rank reads in an eval pass (its share of the split in training)."""
        return self.src.urls[self.rank :: self.world_size]

    def verify(self) -> None:
        """Hash this rank's shards against the manifest (cached per process); a mismatch is a DataError. A remote
        folder's shards are not hashed here (that would download them twice): they are hashed as they stream."""
        if self.src.entries is not None and self.src.shard_dir is not None and not self.src.remote:
            mine = set(self._my_urls())
            check_shards(
                self.src.shard_dir,
                [e for u, e in zip(self.src.urls, self.src.entries, strict=True) if u in mine],
            )

    @property
    def skipped(self) -> int:
        """Undecodable samples skipped so far (over this rank's workers)."""
        return sum(self._skipped.values())

    def __len__(self) -> int:
        """Batches per epoch on this rank (train: exact; eval: an estimate from the manifest count)."""
        if self.train:
            assert self.epoch_samples is not None  # (__init__ refuses a training loader without it)
            return max(1, self.epoch_samples // (self.batch_size * self.world_size))
        if self.src.count is None:
            raise TypeError("the length of an eval pass over shards without a manifest is unknown")
        return math_ceil(self.src.count, self.batch_size * self.world_size)

    def _make_iter(self, epoch: int) -> Iterator[Batch]:
        self.verify()
        has_manifest = self.src.entries is not None
        classnames = self.src.classnames if has_manifest else None  # (a manifest source has both)
        stream = ShardStream(
            self.src.urls,
            train=self.train,
            batch_size=self.batch_size,
            transform=self.transform,
            rank=self.rank,
            world_size=self.world_size,
            seed=self.seed,
            shuffle_buffer=self.shuffle_buffer,
            resampled=self.resampled,
            max_bad_samples=self.max_bad,
            drop_last=self.train,
            epoch=epoch,
            counts=self.src.counts,
            num_classes=len(classnames) if classnames is not None else None,
            strict=has_manifest and not self.train,
            hashes=self.src.stream_hashes,
            commands=self.src.commands,
        )
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch * 7919 + self.rank)
        loader = DataLoader(
            stream,
            batch_size=None,
            num_workers=self.num_workers,
            collate_fn=_collate,
            generator=generator,
            persistent_workers=False,
            prefetch_factor=2 if self.num_workers else None,
            # page-locked batches on a GPU machine: their copy to the device runs asynchronously (non_blocking)
            pin_memory=torch.cuda.is_available(),
            timeout=loader_timeout() if self.num_workers else 0,
        )
        return iter(loader)

    def _started(self) -> tuple[Iterator[Batch], list[Batch]]:
        """A new iterator of the stream and its first batch (none if the stream is empty). Workers that deliver no
        first batch within :func:`loader_timeout` are killed and the iterator is made again (at most
        :data:`START_ATTEMPTS` times): on CPython before 3.11.8 / 3.12.2 a worker forked while another thread of the
        run held the interpreter's thread-list lock never starts (gh-112275); nothing was read yet, so nothing is
        read twice."""
        for attempt in range(1, START_ATTEMPTS + 1):
            batches = self._make_iter(0)
            try:
                return batches, [next(batches)]
            except StopIteration:
                return batches, []
            except RuntimeError as exc:
                if not str(exc).startswith("DataLoader timed out") or attempt == START_ATTEMPTS:
                    raise
                kill_workers(batches)
                logger.warning(
                    "%s (%s): its DataLoader workers gave no first batch in %d s (a worker stuck at its start: "
                    "CPython < 3.11.8 / 3.12.2 fork deadlock, gh-112275); started again (%d of %d)",
                    self.src.shard_dir or "shards",
                    self.split,
                    loader_timeout(),
                    attempt + 1,
                    START_ATTEMPTS,
                )
        raise AssertionError("unreachable")

    def __iter__(self) -> Iterator[Batch]:
        if not self.train:
            seen = 0
            batches, first = self._started()
            try:
                for batch in itertools.chain(first, batches):
                    self._skipped[batch.worker] = batch.skipped
                    seen += len(batch.keys)
                    yield batch
            finally:  # stop the workers now (after an error or a break), not whenever the iterator is collected
                stop_workers(batches)
            counts = self.src.counts
            expected = sum(counts[u] for u in self._my_urls()) if counts else None
            if expected is not None and seen != expected:
                raise DataError(
                    f"eval pass of rank {self.rank} over {self.src.shard_dir} read {seen} samples, its shards hold "
                    f"{expected} per the manifest"
                )
            return
        if self._stream is None:  # one endless stream per run: epochs are slices of it
            self._stream, self._first = self._started()
        for _ in range(len(self) - self.consumed % len(self)):
            batch = self._first.pop() if self._first else next(self._stream)
            self.consumed += 1
            self._skipped[batch.worker] = batch.skipped
            yield batch

    def close(self) -> None:
        """Stop the training stream's DataLoader workers now (after an error or a stop), not whenever the loader is
        collected: at interpreter exit multiprocessing joins daemon workers after a SIGTERM that the run's workers
        block (:mod:`scaleprompt.engine.signals`), so a loader left open by an exception held the process forever."""
        stream, self._stream, self._first = self._stream, None, []
        stop_workers(stream)

    @property
    def epoch(self) -> int:
        """Training epochs completed (batches consumed // batches per epoch)."""
        return self.consumed // len(self)

    def state_dict(self) -> dict[str, int]:
        """The data position: training batches consumed from the stream."""
        return {"consumed": self.consumed}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Resume at the data position ``state`` (of :meth:`state_dict`): the stream is deterministic, so replaying
        it reaches the same samples."""
        self._stream, self._first = self._started()
        for _ in range(state["consumed"]):  # (the first batch, read at the start, is the first replayed)
            if self._first:
                self._first.pop()
            else:
                next(self._stream)
        self.consumed = state["consumed"]


TIMEOUT_VARIABLE = "SCALEPROMPT_LOADER_TIMEOUT"
START_ATTEMPTS = 3


def loader_timeout() -> int:
    """Seconds a DataLoader waits for a batch from its workers before the run fails with an error naming it
    (``$SCALEPROMPT_LOADER_TIMEOUT``, default 900): a worker that died or never started is an error, not a silent
    hang; a first batch that does not come is retried (:meth:`ShardLoader._started`)."""
    text = os.environ.get(TIMEOUT_VARIABLE, "900")
    if not text.isdigit() or int(text) < 1:
        raise DataError(f"{TIMEOUT_VARIABLE}={text!r}: a whole number of seconds >= 1")
    return int(text)


def kill_workers(batches: Any) -> None:
    """SIGKILL the worker processes of the DataLoader iterator ``batches`` and drop it: a worker stuck in a lock
    at its start ignores SIGTERM (its handlers never run), and multiprocessing would wait for it at exit."""
    workers = list(getattr(batches, "_workers", []))
    # (torch forgets their pids first, so their death is no error; SIGTERM after a wait)
    stop_workers(batches)
    for worker in workers:
        if worker.is_alive() and worker.pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(worker.pid, signal.SIGKILL)
            worker.join(timeout=5.0)


def stop_workers(batches: Any) -> None:
    """Stop the workers of the DataLoader iterator ``batches`` now, and let its queues' feeder threads end before
    anything forks again (the next evaluation pass forks its workers at once). CPython before 3.11.8 / 3.12.2 can
    deadlock a child forked while another thread of the parent is exiting (gh-112275: the child inherits the
    interpreter's thread-list lock held); torch's shutdown leaves the feeder threads to exit on their own, and a
    rank hung forever at the start of a pass, twice (test suites under load). Bounded waits: a thread that does
    not end is left as before."""
    shutdown = getattr(batches, "_shutdown_workers", None)
    if shutdown is None:
        return
    shutdown()
    queues = [*getattr(batches, "_index_queues", []), getattr(batches, "_worker_result_queue", None)]
    threads = [t for t in (getattr(q, "_thread", None) for q in queues) if t is not None]
    for thread in threads:
        thread.join(timeout=5.0)
    if threads:
        time.sleep(0.01)  # (a joined thread still deletes its thread state, under that lock, just after)


def math_ceil(a: int, b: int) -> int:
    """``ceil(a / b)`` in integers."""
    return -(-a // b)


def _rank_world(rank: int | None, world_size: int | None) -> tuple[int, int]:
    if rank is not None and world_size is not None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside world_size {world_size}")
        return rank, world_size
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1
