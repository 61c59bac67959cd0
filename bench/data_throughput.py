"""Data throughput per worker: WebDataset shards (``ShardLoader``) vs an image folder (PIL open per file), and the
same shards as a remote folder read through ``pipe:cat <shards>/{}`` (a stand-in for an object store's client).

All sources hold the same synthetic JPEGs (photo sized, ~45 KB each) and apply the same CLIP transform at
``--image-size`` (the test transform unless ``--train-transform``), through a torch ``DataLoader`` with the same
number of workers and batch size. The pipe source pays what any remote folder pays on the worker: one process
per shard, the bytes copied through a pipe, and the sha256 of every byte as it streams; not the network. Only reading is timed: the folder and the shards are written first. Each
source gets a warm-up pass, then ``--repeats`` timed full passes (interleaved between the sources, each up
to its last batch: worker start-up counted, teardown not); the median is reported.

    .venv/bin/python bench/data_throughput.py                    # 400 images, 1 worker, 3 repeats
    .venv/bin/python bench/data_throughput.py --images 2000 --workdir /tmp/dt --repeats 5

``--workdir`` must not already hold images (regenerated images would make the shard writer refuse the folder).
Not a test: it logs numbers and checks only that each source delivered the expected number of images.
"""

from __future__ import annotations

import argparse
import logging
import shlex
import statistics
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFilter
from torch.utils.data import DataLoader, Dataset

from scaleprompt.data.datasets import DatasetSplits, load_dataset
from scaleprompt.data.loader import ShardLoader
from scaleprompt.data.shards import write_shards
from scaleprompt.data.transforms import clip_transform

logger = logging.getLogger("bench.data_throughput")


# --- synthetic image folder ------------------------------------------------------------------------------------
def synthetic_photo(rng: np.random.Generator, width: int, height: int) -> Image.Image:
    """Smooth photo-like content: a blurry colour field + gradient + shapes, then fine sensor-like noise.
    At JPEG quality 90 and ~500x375 this gives ~25-65 KB (mean ~45 KB), like real photos of that size."""
    coarse = rng.integers(0, 256, (max(2, height // 60), max(2, width // 60), 3), dtype=np.uint8)
    field = np.asarray(Image.fromarray(coarse).resize((width, height), Image.Resampling.BICUBIC), np.float32)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    angle = rng.uniform(0, 2 * np.pi)
    gradient = np.cos(angle) * xx / width + np.sin(angle) * yy / height
    field = 0.7 * field + gradient[..., None] * rng.uniform(-80, 80, 3).astype(np.float32)
    img = Image.fromarray(np.clip(field, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(3, 9))):
        x0, y0 = int(rng.integers(0, width)), int(rng.integers(0, height))
        x1, y1 = x0 + int(rng.integers(20, width // 2)), y0 + int(rng.integers(20, height // 2))
        color = tuple(int(c) for c in rng.integers(0, 256, 3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)([x0, y0, x1, y1], fill=color)
    img = img.filter(ImageFilter.GaussianBlur(float(rng.uniform(1.0, 2.5))))
    noise = np.clip(rng.normal(128, 16, (height, width, 3)), 0, 255).astype(np.uint8)
    noise = np.asarray(Image.fromarray(noise).filter(ImageFilter.GaussianBlur(0.8)), np.float32) - 128
    return Image.fromarray(np.clip(np.asarray(img, np.float32) + noise, 0, 255).astype(np.uint8))


def make_image_folder(root: Path, images: int, classes: int, seed: int) -> list[Path]:
    """``root/train/class_XX/NNNNNN.jpg`` (so ``folder:`` puts every image in the train split)."""
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(images):
        width = int(rng.integers(420, 600))
        height = int(width * rng.uniform(0.65, 0.85))
        if rng.random() < 0.2:  # some portrait shots
            width, height = height, width
        folder = root / "train" / f"class_{i % classes:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{i:06d}.jpg"
        synthetic_photo(rng, width, height).save(path, format="JPEG", quality=90)
        paths.append(path)
    return paths


# --- the folder source: a map-style dataset, PIL open per file ------------------------------------------------
class FolderImages(Dataset):
    def __init__(self, ds: DatasetSplits, transform: Callable) -> None:
        self.items = [(d.path, d.label) for d in ds.train]
        self.transform = transform

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        path, label = self.items[index]
        with Image.open(path) as img:
            return self.transform(img.convert("RGB")), label


# --- timing -------------------------------------------------------------------------------------------------------
@dataclass
class Pass:
    images: int
    seconds: float  # start of the pass (worker start-up included) -> last batch received
    steady_images: int  # images after the first batch
    steady_seconds: float  # first batch -> last batch


def timed_pass(make_iterable: Callable[[], Iterable]) -> Pass:
    """Time one pass up to the arrival of its last batch: loader teardown is not counted (a train-mode
    ShardLoader stream is endless, so its worker is still busy prefetching the next epoch when a pass ends,
    and joining it would be charged to the shards only)."""
    start = time.perf_counter()
    first_at = last_at = start
    first_n = total = 0
    for batch in make_iterable():
        last_at = time.perf_counter()
        total += len(batch[0])
        if not first_n:
            first_at, first_n = last_at, total
    return Pass(total, last_at - start, total - first_n, last_at - first_at)


def measure(sources: list[tuple[str, Callable[[], Iterable], int]], repeats: int) -> dict[str, list[Pass]]:
    """A warm-up pass per source, then ``repeats`` rounds of one timed pass per source, interleaved so that
    drift of the machine (other load, CPU clocks) hits every source alike."""
    for name, make_iterable, _ in sources:
        warm = timed_pass(make_iterable)
        logger.info("%s: warm-up pass %d images in %.2f s", name, warm.images, warm.seconds)
    passes: dict[str, list[Pass]] = {name: [] for name, _, _ in sources}
    for r in range(repeats):
        for name, make_iterable, expected in sources:
            p = timed_pass(make_iterable)
            if p.images != expected:
                raise RuntimeError(f"{name}: pass {r + 1} delivered {p.images} images, expected {expected}")
            logger.info("%s: pass %d/%d %d images in %.2f s", name, r + 1, repeats, p.images, p.seconds)
            passes[name].append(p)
    return passes


def summarize(passes: list[Pass], workers: int) -> tuple[float, float, float]:
    """Median seconds, images/s/worker of the whole pass, images/s/worker after the first batch."""
    per = max(1, workers)  # workers=0 decodes in the main process: one "worker"
    seconds = statistics.median(p.seconds for p in passes)
    rate = statistics.median(p.images / p.seconds for p in passes) / per
    steady = statistics.median(
        p.steady_images / p.steady_seconds if p.steady_seconds > 0 else float("nan") for p in passes
    )
    return seconds, rate, steady / per


# --- main ---------------------------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=400, help="synthetic images to generate (default 400)")
    ap.add_argument("--classes", type=int, default=10, help="class folders (default 10)")
    ap.add_argument("--workers", type=int, default=1, help="DataLoader workers for both sources (default 1)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--shard-size", type=int, default=100, help="samples per shard (default 100)")
    ap.add_argument("--repeats", type=int, default=3, help="timed passes per source; median reported")
    ap.add_argument(
        "--train-transform",
        action="store_true",
        help="RandomResizedCrop + flip (train) instead of Resize + CenterCrop (test) for both sources",
    )
    ap.add_argument("--workdir", type=Path, help="keep images + shards here (default: a temp dir, removed)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if args.images < 1 or args.classes < 1 or args.repeats < 1 or args.workers < 0 or args.batch_size < 1:
        ap.error("--images, --classes, --repeats, --batch-size must be >= 1 and --workers >= 0")
    return args


def run(args: argparse.Namespace, workdir: Path) -> None:
    image_root, shard_dir = workdir / "images", workdir / "shards"
    if image_root.exists() and any(image_root.rglob("*.jpg")):
        raise SystemExit(f"{image_root} already holds images: pass an empty --workdir")
    t0 = time.perf_counter()
    paths = make_image_folder(image_root, args.images, args.classes, args.seed)
    jpeg_kb = [p.stat().st_size / 1024 for p in paths]
    logger.info("wrote %d JPEGs in %.1f s to %s", len(paths), time.perf_counter() - t0, image_root)

    ds = load_dataset(f"folder:{image_root}")
    t0 = time.perf_counter()
    manifest = write_shards(
        ds, shard_dir, splits=("train",), shard_size=args.shard_size, min_shards=max(1, args.workers)
    )
    shards = manifest["splits"]["train"]["shards"]
    shard_mb = sum((shard_dir / s["name"]).stat().st_size for s in shards) / 2**20
    logger.info("wrote %d shards (%.1f MB) in %.1f s", len(shards), shard_mb, time.perf_counter() - t0)
    expected = len(ds.train)
    if expected != args.images or manifest["splits"]["train"]["count"] != expected:
        raise RuntimeError(
            f"folder has {expected} train images, shards {manifest['splits']['train']['count']}"
        )

    train = args.train_transform
    transform = clip_transform(args.image_size, train=train)
    folder_set = FolderImages(ds, transform)

    def folder_iter() -> Iterable:
        return DataLoader(
            folder_set,
            batch_size=args.batch_size,
            shuffle=train,
            drop_last=False,
            num_workers=args.workers,
            prefetch_factor=2 if args.workers else None,
            persistent_workers=False,
        )

    def new_shard_loader(source: Path | str = shard_dir) -> ShardLoader:
        return ShardLoader(
            source,
            "train",
            batch_size=args.batch_size,
            train=train,
            image_size=args.image_size,
            num_workers=args.workers,
            seed=args.seed,
        )

    # A train epoch drops the last partial batch: ShardLoader delivers len(loader) full batches.
    batches = len(new_shard_loader())
    expected_shards = batches * args.batch_size if train else expected
    skipped = []
    remote = f"pipe:cat {shlex.quote(str(shard_dir))}/{{}}"  # the remote folder template

    def shard_iter(source: Path | str) -> Callable[[], Iterable]:
        def passes() -> Iterable:
            # A fresh loader per pass, like the folder DataLoader: both passes include worker start-up (in train
            # mode one ShardLoader would keep its endless stream, and its worker, alive across epochs).
            loader = new_shard_loader(source)
            yield from ((b.images, b.labels) for b in loader)
            skipped.append(loader.skipped)

        return passes

    names = ("folder (PIL per file)", "shards (ShardLoader)", "pipe:cat shards")
    passes = measure(
        [
            (names[0], folder_iter, expected),
            (names[1], shard_iter(shard_dir), expected_shards),
            (names[2], shard_iter(remote), expected_shards),
        ],
        args.repeats,
    )
    if any(skipped):
        logger.warning("the shard loader skipped undecodable samples: %s per pass", skipped)

    rows = [(name, passes[name]) for name in names]
    stats = {name: summarize(runs, args.workers) for name, runs in rows}
    mode = "train (RandomResizedCrop+flip)" if train else "test (Resize+CenterCrop)"
    lines = [
        f"data throughput at {args.image_size} px, transform {mode}, workers={args.workers}, "
        f"batch={args.batch_size}, median of {args.repeats} passes, torch threads={torch.get_num_threads()}",
        f"{len(paths)} JPEGs q90, mean {statistics.mean(jpeg_kb):.1f} KB (min {min(jpeg_kb):.1f}, "
        f"max {max(jpeg_kb):.1f}); {len(shards)} shards, {shard_mb:.1f} MB",
        f"{'source':<24}{'images':>8}{'seconds':>10}{'img/s/worker':>14}{'steady img/s/w':>16}",
    ]
    for name, runs in rows:
        seconds, rate, steady = stats[name]
        lines.append(f"{name:<24}{runs[0].images:>8}{seconds:>10.2f}{rate:>14.1f}{steady:>16.1f}")
    for (a, b), label in (((1, 0), "shards/folder"), ((2, 1), "pipe:cat shards/shards")):
        ratio = stats[rows[a][0]][1] / stats[rows[b][0]][1]
        steady_ratio = stats[rows[a][0]][2] / stats[rows[b][0]][2]
        lines.append(f"ratio {label}: {ratio:.2f} (whole pass), {steady_ratio:.2f} (after first batch)")
    logger.info("results\n%s", "\n".join(lines))


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    if args.workdir is not None:
        args.workdir.mkdir(parents=True, exist_ok=True)
        run(args, args.workdir)
        return
    with tempfile.TemporaryDirectory(prefix="scaleprompt-throughput-") as tmp:
        run(args, Path(tmp))


if __name__ == "__main__":
    main()
