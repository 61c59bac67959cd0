"""The shard cache can be trusted: keyed by the resolved source and its listing, manifests and shards checked when
read (sha256, per-shard counts, labels, eval counts), one writer per folder, empty class folders named.

Real files throughout: tiny generated image folders, real shards, real processes for the concurrency tests.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from engine_utils import COLORS, ROOT, base_overrides, launch, make_color_folder, results
from PIL import Image

from scaleprompt.data import shards
from scaleprompt.data.cache import SOURCE, ensure_shards
from scaleprompt.data.datasets import DatasetError, dataset_display_name, load_dataset
from scaleprompt.data.loader import DataError, ShardLoader
from scaleprompt.data.protocols import Protocol
from scaleprompt.data.shards import read_manifest, write_shards
from scaleprompt.engine.evaluate import evaluate

SPLITS = ("train", "val", "test")
ALL = Protocol(shots=0, seed=1, subset="all")


def make_folder(root: Path, extra_class: str | None = None) -> Path:
    """4 colour classes (2 train / 1 val / 3 test images each), plus ``extra_class`` (a copy of red) if given."""
    make_color_folder(root, n_train=2, n_val=1, n_test=3)
    if extra_class:
        for split in SPLITS:
            shutil.copytree(root / split / "red", root / split / extra_class)
    return root


def ensure(folder: Path, cache: Path, protocol: Protocol = ALL, splits=SPLITS) -> Path:
    return ensure_shards(f"folder:{folder}", None, protocol, splits, cache, shard_size=100, min_shards=1)


def read_keys_labels(source, split: str, **kw) -> list[tuple[str, int]]:
    loader = ShardLoader(source, split, batch_size=4, image_size=16, num_workers=0, train=False, **kw)
    return [(k, int(y)) for b in loader for k, y in zip(b.keys, b.labels, strict=True)]


@pytest.fixture(scope="module")
def shard_dir(tmp_path_factory) -> Path:
    """Clean shards of a 4-class folder: test split = 12 images in 4 shards of 3 samples."""
    data = make_folder(tmp_path_factory.mktemp("data") / "colors")
    out = tmp_path_factory.mktemp("shards") / "colors"
    write_shards(load_dataset(f"folder:{data}"), out, shard_size=3, min_shards=1)
    return out


@pytest.fixture
def shard_copy(shard_dir, tmp_path) -> Path:
    """A private copy of the clean shards (new paths: nothing is cached for them in this process)."""
    return Path(shutil.copytree(shard_dir, tmp_path / "copy"))


def members(path: Path) -> list[tuple[tarfile.TarInfo, bytes]]:
    with tarfile.open(path) as tar:
        return [(m, tar.extractfile(m).read()) for m in tar.getmembers()]


def rewrite_tar(path: Path, change: dict[str, bytes]) -> None:
    """Rebuild ``path`` with the payload of members named in ``change`` replaced (same order and metadata)."""
    old = members(path)
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
        for info, data in old:
            data = change.get(info.name, data)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def sync_manifest_sha(shard_dir: Path, name: str) -> None:
    """Record the shard's CURRENT sha256 in the manifest: a manifest rewritten by a buggy tool, so that only the
    checks after the hash can catch the damage."""
    path = shard_dir / "manifest.json"
    manifest = json.loads(path.read_text())
    for info in manifest["splits"].values():
        for entry in info["shards"]:
            if entry["name"] == name:
                entry["sha256"] = hashlib.sha256((shard_dir / name).read_bytes()).hexdigest()
    path.write_text(json.dumps(manifest))


# --- the cache key ----------------------------------------------------------------------------------------------
def test_same_basename_different_folders_get_their_own_cache(tmp_path):
    a = make_folder(tmp_path / "a" / "flowers")
    b = make_folder(tmp_path / "b" / "flowers", extra_class="purple")
    cache = tmp_path / "cache"
    out_a, out_b = ensure(a, cache), ensure(b, cache)
    assert out_a != out_b
    for out in (out_a, out_b):
        assert re.fullmatch(r"flowers-full-seed1-all-train-val-test-[0-9a-f]{12}", out.name), out.name
    assert read_manifest(out_a)["classnames"] == sorted(COLORS)
    assert read_manifest(out_b)["classnames"] == sorted([*COLORS, "purple"])
    assert {y for _, y in read_keys_labels(out_a, "test")} == set(range(4))
    assert {y for _, y in read_keys_labels(out_b, "test")} == set(range(5))
    source = json.loads((out_b / SOURCE).read_text())  # readable: the inputs, not the listing
    assert source["source"] == {"kind": "folder", "path": str(b.resolve())}
    assert source["protocol"] == {"shots": 0, "seed": 1, "subset": "all"}
    assert source["listing"]["images"] == 5 * 6 and len(source["listing"]["sha256"]) == 64
    assert (source["splits"], source["shard_size"], source["min_shards"]) == (list(SPLITS), 100, 1)
    # a finished folder is reused as is: no shard is rewritten
    stamps = {p.name: p.stat().st_mtime_ns for p in out_a.glob("*.tar")}
    assert ensure(a, cache) == out_a
    assert {p.name: p.stat().st_mtime_ns for p in out_a.glob("*.tar")} == stamps
    # other protocols and splits are other folders, with the same readable prefix scheme
    other = ensure(a, cache, Protocol(shots=1, seed=2, subset="base"), ("train", "test"))
    assert other.name.startswith("flowers-1shot-seed2-base-train-test-")
    assert dataset_display_name(f"folder:{a}/") == "flowers"


def test_changed_images_give_a_new_cache_folder(tmp_path, caplog):
    data = make_folder(tmp_path / "flowers")
    cache = tmp_path / "cache"
    first = ensure(data, cache)
    image = data / "test" / "red" / "000.png"
    Image.new("RGB", (40, 40), (200, 10, 10)).save(image)  # a different size
    with caplog.at_level(logging.INFO, logger="scaleprompt.data.cache"):
        second = ensure(data, cache)
    assert second != first
    assert "images of" in caplog.text and "changed" in caplog.text
    stamp = time.time_ns() + 5 * 10**9
    os.utime(data / "train" / "blue" / "001.png", ns=(stamp, stamp))  # same bytes, new mtime
    third = ensure(data, cache)
    assert third not in (first, second)
    assert ensure(data, cache) == third
    (data / "test" / "green" / "000.png").unlink()  # a removed image
    assert ensure(data, cache) not in (first, second, third)


def same_size_same_mtime_rewrite(image: Path) -> None:
    """Rewrite ``image`` with other pixels of the same byte size, then put its mtime back (``touch -r``)."""
    reference = image.with_name("reference")
    shutil.copy2(image, reference)
    pixels = np.asarray(Image.open(image)).copy()
    for flip in range(1, 256):  # one pixel changed: the PNG almost always keeps its size
        pixels[0, 0, 0] ^= flip
        out = io.BytesIO()
        Image.fromarray(pixels).save(out, format="PNG")
        if len(out.getvalue()) == image.stat().st_size:
            break
        pixels[0, 0, 0] ^= flip
    assert len(out.getvalue()) == image.stat().st_size and out.getvalue() != image.read_bytes()
    image.write_bytes(out.getvalue())  # (in place: the same inode)
    subprocess.run(["touch", "-r", str(reference), str(image)], check=True)
    assert image.stat().st_mtime_ns == reference.stat().st_mtime_ns
    reference.unlink()


def test_an_image_rewritten_with_the_same_size_and_mtime_gives_new_shards(tmp_path, caplog):
    data = make_folder(tmp_path / "flowers")
    cache = tmp_path / "cache"
    first = ensure(data, cache)
    image = data / "test" / "red" / "000.png"
    before = image.stat()
    same_size_same_mtime_rewrite(image)
    after = image.stat()
    assert (after.st_size, after.st_mtime_ns, after.st_ino) == (
        before.st_size,
        before.st_mtime_ns,
        before.st_ino,
    )
    with caplog.at_level(logging.INFO, logger="scaleprompt.data.cache"):
        second = ensure(data, cache)
    assert second != first and "ctimes / inodes differ" in caplog.text
    with tarfile.open(second / "test-000000.tar") as tar:  # the new shards hold the new image's bytes
        payloads = [tar.extractfile(m).read() for m in tar.getmembers() if m.name.endswith(".png")]  # type: ignore[union-attr]
    assert image.read_bytes() in payloads
    assert ensure(data, cache) == second  # and nothing else changed: reused
    # an image replaced by another file (a new inode) of the same size and mtime
    replacement = image.with_name("new.tmp")
    shutil.copy2(image, replacement)
    os.replace(replacement, image)
    assert image.stat().st_ino != after.st_ino
    assert ensure(data, cache) not in (first, second)
    # a shard folder written with write_shards directly: its plan notices the rewrite too
    out = tmp_path / "direct"
    write_shards(load_dataset(f"folder:{data}"), out)
    same_size_same_mtime_rewrite(image)
    with pytest.raises(DatasetError, match=r"holds shards of a different dataset / protocol / layout"):
        write_shards(load_dataset(f"folder:{data}"), out)


def test_a_class_with_fewer_images_than_the_shots_is_refused_unless_allowed(tmp_path, caplog):
    data = make_folder(tmp_path / "flowers")  # 2 training images per class
    shutil.copy(data / "train" / "red" / "000.png", data / "train" / "red" / "002.png")  # red: 3
    cache = tmp_path / "cache"
    three = Protocol(shots=3, seed=1, subset="all")
    with pytest.raises(DataError, match=r"^flowers: 3 of 4 classes have fewer than 3 training images for 3-shot: "
                       r"'blue' \(2\), 'green' \(2\), 'yellow' \(2\); add images, lower data.shots, or set "
                       r"data.allow_fewer_shots=true"):  # fmt: skip
        ensure(data, cache, three)
    assert not list(cache.glob("*/*.tar")), "refused before writing a shard"
    with caplog.at_level(logging.WARNING, logger="scaleprompt.data.shards"):
        out = ensure_shards(f"folder:{data}", None, three, SPLITS, cache, shard_size=100, min_shards=1,
                            allow_fewer_shots=True)  # fmt: skip
    assert "training on 2 to 3 images per class" in caplog.text
    assert read_manifest(out)["splits"]["train"]["class_counts"] == [2, 2, 3, 2]  # blue, green, red, yellow
    with pytest.raises(
        DataError, match=r"3 of 4 classes have fewer than 3"
    ):  # a reused folder is checked too
        ensure(data, cache, three)
    # every class has the shots: no error, Dassl's draw as before
    two = ensure(data, cache, Protocol(shots=2, seed=1, subset="all"))
    assert read_manifest(two)["splits"]["train"]["class_counts"] == [2, 2, 2, 2]
    # base-to-novel: only the classes a folder trains on count (base: blue, green; novel: red (3), yellow)
    with pytest.raises(DataError, match=r"^flowers: 2 of 2 classes .*: 'blue' \(2\), 'green' \(2\);"):
        ensure(data, cache, Protocol(shots=3, seed=1, subset="base"))
    with pytest.raises(DataError, match=r"^flowers: 1 of 2 classes .*: 'yellow' \(2\);"):
        ensure(data, cache, Protocol(shots=3, seed=1, subset="new"))
    ensure(
        data, cache, Protocol(shots=3, seed=1, subset="new"), ("test",)
    )  # no train split written: no check


def test_a_half_written_cache_folder_is_completed(tmp_path):
    data = make_folder(tmp_path / "flowers")
    out = ensure(data, tmp_path / "cache")
    manifest = read_manifest(out)
    (out / "manifest.json").unlink()  # as a killed writer leaves it: some shards, no manifest
    (out / "test-000000.tar").unlink()
    assert ensure(data, tmp_path / "cache") == out
    assert read_manifest(out) == manifest and shards.verify_shards(out) == []
    (out / "manifest.json").write_text((out / "manifest.json").read_text()[:50])  # damaged: rewritten
    assert ensure(data, tmp_path / "cache") == out and read_manifest(out) == manifest


# --- damaged shards and manifests ---------------------------------------------------------------------------------
def test_a_byte_flipped_shard_is_refused_naming_it(shard_copy):
    path = shard_copy / "test-000001.tar"
    data = bytearray(path.read_bytes())
    data[700] ^= 0xFF  # inside the first image
    path.write_bytes(bytes(data))
    with pytest.raises(DataError, match=r"shard .*test-000001\.tar is corrupt or was changed.*sha256"):
        read_keys_labels(shard_copy, "test")


def test_an_overwritten_tar_header_is_refused_by_the_hash_and_by_the_shard_count(shard_copy):
    path = shard_copy / "test-000002.tar"
    third = members(path)[3][0]  # the first member of the second sample: not the first header
    assert third.offset > 0
    with open(path, "r+b") as fh:
        fh.seek(third.offset + 20)
        fh.write(b"\x00garbage-bytes!!")  # 16 bytes inside the header
    with tarfile.open(path) as tar:  # what made the damage silent: tar readers stop at the bad header
        assert len(tar.getmembers()) == 3
    with pytest.raises(DataError, match=r"shard .*test-000002\.tar is corrupt or was changed.*sha256"):
        read_keys_labels(shard_copy, "test")
    sync_manifest_sha(shard_copy, "test-000002.tar")  # the hash no longer sees it: the count check does
    for num_workers in (0, 1):  # (1: the error crosses from a worker process)
        loader = ShardLoader(shard_copy, "test", batch_size=4, image_size=16, num_workers=num_workers)
        with pytest.raises(DataError, match=r"shard .*test-000002\.tar is corrupt .*after 1 samples.*says 3"):
            list(loader)
    train = ShardLoader(shard_copy, "test", batch_size=2, image_size=16, num_workers=0, train=True,
                        shuffle_buffer=0, epoch_samples=24)  # fmt: skip
    with pytest.raises(DataError, match=r"test-000002\.tar is corrupt"):
        list(train)


def test_changed_labels_are_refused_naming_the_sample(shard_copy):
    path = shard_copy / "test-000003.tar"
    key = members(path)[4][0].name.split(".")[0]  # the second sample
    assert members(path)[4][0].name == f"{key}.cls"
    rewrite_tar(path, {f"{key}.cls": b"99"})
    sync_manifest_sha(shard_copy, "test-000003.tar")
    pattern = rf"shard .*test-000003\.tar sample {key}: label 99 is outside \[0, 4\)"
    with pytest.raises(DataError, match=pattern):
        read_keys_labels(shard_copy, "test")
    train = ShardLoader(shard_copy, "test", batch_size=2, image_size=16, num_workers=0, train=True,
                        shuffle_buffer=0, epoch_samples=24, max_bad_samples=100)  # fmt: skip
    with pytest.raises(DataError, match=pattern):  # not an undecodable sample to skip, even in training
        list(train)
    label = json.loads(dict((i.name, d) for i, d in members(path))[f"{key}.json"])["label"]
    rewrite_tar(path, {f"{key}.cls": str((label + 1) % 4).encode()})  # in range, but not the sample's label
    sync_manifest_sha(shard_copy, "test-000003.tar")
    with pytest.raises(
        DataError, match=rf"test-000003\.tar sample {key}: \.cls label \d disagrees with its \.json"
    ):
        read_keys_labels(shard_copy, "test")
    urls = [
        str(p) for p in sorted(shard_copy.glob("test-*.tar"))
    ]  # no manifest: the agreement is still checked
    with pytest.raises(DataError, match="disagrees"):
        read_keys_labels(urls, "test")


def test_a_damaged_manifest_is_a_data_error_naming_it(shard_copy):
    manifest = shard_copy / "manifest.json"
    good = manifest.read_text()
    named = re.escape(str(manifest))
    manifest.write_text(good[: len(good) // 2])
    with pytest.raises(DataError, match=rf"{named} is damaged \(truncated or not JSON"):
        read_manifest(shard_copy)
    with pytest.raises(DataError, match=named):
        ShardLoader(shard_copy, "test", num_workers=0)
    data = json.loads(good)
    data["splits"]["test"]["count"] += 1
    manifest.write_text(json.dumps(data))
    with pytest.raises(DataError, match=rf"{named} .*split 'test' has count 13 but its shards hold 12"):
        read_manifest(shard_copy)
    data = json.loads(good)
    del data["splits"]["train"]["shards"][0]["sha256"]
    manifest.write_text(json.dumps(data))
    with pytest.raises(DataError, match=rf"{named} .*shard #0 lacks"):
        read_manifest(shard_copy)
    data = json.loads(good)
    del data["classnames"]
    manifest.write_text(json.dumps(data))
    with pytest.raises(DataError, match="'classnames' is missing"):
        read_manifest(shard_copy)


def test_shard_hashes_are_cached_per_process_until_a_file_changes(shard_copy, monkeypatch):
    hashed: list[str] = []
    original = shards.sha256_file

    def counting(path):
        hashed.append(Path(path).name)
        return original(path)

    monkeypatch.setattr(shards, "sha256_file", counting)
    first = read_keys_labels(shard_copy, "test")
    assert sorted(hashed) == [f"test-{i:06d}.tar" for i in range(4)]
    assert read_keys_labels(shard_copy, "test") == first  # a second pass ...
    ShardLoader(shard_copy, "val", num_workers=0)
    assert read_keys_labels(shard_copy, "test") == first  # ... and a second loader: no hashing
    assert len(hashed) == 4
    path = shard_copy / "test-000000.tar"
    stamp = path.stat().st_mtime_ns + 10**9
    os.utime(path, ns=(stamp, stamp))  # a new mtime: hashed again (and still fine)
    assert read_keys_labels(shard_copy, "test") == first
    assert hashed[4:] == ["test-000000.tar"]
    data = bytearray(path.read_bytes())
    data[600] ^= 0x01
    path.write_bytes(bytes(data))
    os.utime(path, ns=(stamp + 1, stamp + 1))  # (explicit: file times can be coarser than a fast test)
    with pytest.raises(DataError, match=r"test-000000\.tar is corrupt"):
        read_keys_labels(shard_copy, "test")


# --- eval passes read the whole split -------------------------------------------------------------------------------
def test_eval_counts_every_image_and_undecodable_samples_are_errors(shard_copy):
    loader = ShardLoader(shard_copy, "test", batch_size=5, image_size=16, num_workers=0)
    assert loader.expected_images == 12

    def logits(images: torch.Tensor) -> torch.Tensor:
        return torch.zeros(len(images), 4)

    result = evaluate(logits, loader, 4, "cpu")
    assert result["images"] == 12
    with pytest.raises(DataError, match=r"evaluation read 12 images over all ranks, the split holds 13"):
        evaluate(logits, loader, 4, "cpu", expected_images=13)
    path = shard_copy / "train-000000.tar"
    image = next(i.name for i, _ in members(path) if i.name.endswith(".png"))
    rewrite_tar(path, {image: b"not a png at all"})
    sync_manifest_sha(shard_copy, "train-000000.tar")
    eval_pass = ShardLoader(shard_copy, "train", batch_size=4, image_size=16, num_workers=0, train=False)
    with pytest.raises(DataError, match=rf"undecodable sample .*train-000000\.tar:{image.split('.')[0]}"):
        list(eval_pass)
    training = ShardLoader(shard_copy, "train", batch_size=1, image_size=16, num_workers=0, shuffle_buffer=0,
                           max_bad_samples=2)  # fmt: skip
    assert len(list(training)) == 8 and training.skipped >= 1  # training keeps its budget


# --- one writer per folder ---------------------------------------------------------------------------------------
WRITER = """
import json, logging, sys, time
logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(name)s: %(message)s")
from pathlib import Path
import scaleprompt.data.shards as shards
from scaleprompt.data.cache import ensure_shards
from scaleprompt.data.datasets import load_dataset
from scaleprompt.data.protocols import Protocol
kind, data, out, slow = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
original = shards._image_bytes
def slowed(path, size):
    time.sleep(slow)
    return original(path, size)
shards._image_bytes = slowed
protocol = Protocol(shots=0, seed=1)
if kind == "ensure":
    folder = ensure_shards("folder:" + data, None, protocol, ("train", "val", "test"), out, shard_size=4,
                           min_shards=2)
else:
    folder = Path(out)
    shards.write_shards(load_dataset("folder:" + data), folder, protocol, shard_size=4, min_shards=2)
print(json.dumps({"folder": str(folder), "manifest": shards.read_manifest(folder), "done": time.time()}))
"""


@pytest.mark.parametrize("kind", ["ensure", "write"])
@pytest.mark.slow  # (quick-loop budget: an end-to-end run / processes / a timeout)
def test_concurrent_writers_of_one_folder_wait_and_agree(tmp_path, kind):
    data = make_folder(tmp_path / "flowers")
    out = tmp_path / ("cache" if kind == "ensure" else "shards")
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")

    def start(slow: float) -> subprocess.Popen:
        args = [sys.executable, "-c", WRITER, kind, str(data), str(out), str(slow)]
        return subprocess.Popen(
            args, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )

    first = start(0.1)  # 24 images: ~2.4 s of writing under the lock
    deadline = time.time() + 60
    while time.time() < deadline:  # the first holds the lock (DirLock writes the holder's pid into the file)
        locks = [p.read_text() for p in out.rglob(".lock")]
        if any(f'"pid": {first.pid}' in text for text in locks) and list(out.rglob(".*.tmp-*")):
            break
        time.sleep(0.02)
    else:
        raise AssertionError(f"the first writer never took the lock: {first.communicate()}")
    second = start(0.0)
    outputs = [p.communicate(timeout=120) for p in (first, second)]
    assert [p.returncode for p in (first, second)] == [0, 0], outputs
    (a, _), (b, err_b) = outputs
    a, b = json.loads(a), json.loads(b)
    assert a["folder"] == b["folder"] and a["manifest"] == b["manifest"]
    assert f"waiting for shard folder {a['folder']}, held by pid {first.pid}" in err_b, err_b
    assert "reusing" in err_b and "wrote" not in err_b, err_b  # it found the finished folder
    assert b["done"] >= a["done"] - 0.5
    assert shards.verify_shards(a["folder"]) == [] and not list(Path(a["folder"]).glob(".*.tmp-*"))


# --- class folders ------------------------------------------------------------------------------------------------
def test_a_class_folder_without_images_is_named(tmp_path):
    data = make_folder(tmp_path / "flowers")
    empty = data / "train" / "violet"
    empty.mkdir()
    (empty / "Thumbs.db").write_bytes(b"")
    with pytest.raises(
        DatasetError, match=rf"class folder {re.escape(str(empty))} holds no images \(.*\.png"
    ):
        load_dataset(f"folder:{data}")
    with pytest.raises(DatasetError, match=re.escape(str(empty))):  # (the engine's path: before any listing)
        ensure(data, tmp_path / "cache")
    assert not (tmp_path / "cache").exists()
    flat = tmp_path / "flat"
    for c in ("a", "b"):
        (flat / c).mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(flat / "a" / "1.png")
    with pytest.raises(DatasetError, match=rf"class folder {re.escape(str(flat / 'b'))} holds no images"):
        load_dataset(f"folder:{flat}")


@pytest.mark.slow
def test_train_py_refuses_fewer_shots_in_one_line_and_records_them_when_allowed(tmp_path, capsys):
    from scaleprompt.train import main

    data = make_color_folder(tmp_path / "colors", n_train=3, n_val=1, n_test=1)  # 3 training images per class
    (data / "train" / "red" / "002.png").unlink()  # red: 2
    out = tmp_path / "out"
    args = [
        *base_overrides(data, tmp_path / "cache", out),
        "data.shots=4",
        "method.name=upt",
        "optim.epochs=1",
    ]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("train.py: error: colors: 4 of 4 classes have fewer than 4 training images for 4-shot: "
                          "'blue' (3), 'green' (3), 'red' (2), 'yellow' (3); add images") and "\n" not in err  # fmt: skip
    assert not out.exists() or not (out / "results.json").exists()
    proc = launch(
        [sys.executable, "scaleprompt/train.py", *args, "data.allow_fewer_shots=true"], out, timeout=300
    )
    res = results(out)
    assert res["data"]["train_shots_per_class"] == {"min": 2, "max": 3} and res["shots"] == 4
    # said at the start as what it is: 11 images, 2-3 per class, not 4
    assert (
        "data: colors, fewshot, 4-shot (seed 1): train 11 images (2-3 per class: fewer than the 4 asked in some),"
        in proc.stderr
    )
