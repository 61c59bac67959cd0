"""Remote shard folders: a shard folder read through a ``pipe:`` command template (``pipe:aws s3 cp s3://b/f/{} -``)
gives the same samples as the local folder, with the same integrity checks (manifest, per-shard counts, labels) and
the sha256 of each shard computed as it streams; a failing command is an error naming it and its stderr.

The "object store" is another directory read through a small shell script that logs each request (no network).
"""

from __future__ import annotations

import logging
import shlex
import shutil
import tarfile
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from engine_utils import base_overrides, make_color_folder, results
from safetensors.torch import load_file

from scaleprompt.config import ConfigError
from scaleprompt.data.datasets import load_dataset
from scaleprompt.data.loader import DataError, ShardLoader
from scaleprompt.data.remote import check_template, forget_remote_manifests, read_remote_manifest, remote_url
from scaleprompt.data.shards import read_manifest, verify_shards, write_shards
from scaleprompt.engine.config import load_run_config
from scaleprompt.engine.run import shard_fingerprint
from scaleprompt.engine.trainer import Trainer

# A stand-in for an object store's command line client: prints one file of the bucket folder to stdout (cat's
# error on stderr and exit status 1 when it is missing) and logs the request, with the rank that made it. The file
# named by $FAIL_AFTER is printed whole, then the command fails (exit 3), as a client does that finds a problem
# after the download (a checksum, a dropped connection).
STORE = """#!/bin/sh
echo "${{RANK:-0}} $1" >> {log}
if [ "$1" = "$FAIL_AFTER" ]; then cat {bucket}/"$1"; echo "connection reset by peer" >&2; exit 3; fi
exec cat {bucket}/"$1"
"""


@dataclass
class Bucket:
    folder: Path  # the "remote" shard folder
    template: str  # the pipe: command printing one of its files
    log: Path

    def requests(self) -> list[str]:
        """Files requested so far (in request order)."""
        return [line.split()[1] for line in self.log.read_text().splitlines()] if self.log.exists() else []


def make_bucket(shard_dir: Path, where: Path) -> Bucket:
    folder = Path(shutil.copytree(shard_dir, where / "bucket" / "colors-shards"))
    log, script = where / "requests.log", where / "store.sh"
    script.write_text(STORE.format(log=shlex.quote(str(log)), bucket=shlex.quote(str(folder))))
    return Bucket(folder, f"pipe:sh {shlex.quote(str(script))} {{}}", log)


@pytest.fixture(scope="module")
def shard_dir(tmp_path_factory) -> Path:
    """A local shard folder of 4 colour classes: train 16 images in 6 shards, val 4 in 2, test 12 in 4."""
    data = make_color_folder(tmp_path_factory.mktemp("data") / "colors", n_train=4, n_val=1, n_test=3)
    out = tmp_path_factory.mktemp("shards") / "colors"
    write_shards(load_dataset(f"folder:{data}"), out, shard_size=3, min_shards=1)
    return out


@pytest.fixture
def bucket(shard_dir, tmp_path) -> Bucket:
    return make_bucket(shard_dir, tmp_path)


def read(source, split: str, num_workers: int = 0, **kw) -> list[tuple[str, int]]:
    loader = ShardLoader(
        source, split, batch_size=4, image_size=16, num_workers=num_workers, train=False, **kw
    )
    return [(k, int(y)) for b in loader for k, y in zip(b.keys, b.labels, strict=True)]


def json_member(path: Path, index: int = 0) -> tuple[int, bytes]:
    """(file offset, payload) of the ``index``-th ``.json`` member of a shard."""
    with tarfile.open(path) as tar:
        info = [m for m in tar.getmembers() if m.name.endswith(".json")][index]
        payload = tar.extractfile(info)
        assert payload is not None
        return info.offset_data, payload.read()


def flip_path_byte(path: Path) -> None:
    """Flip the case of one letter of the first sample's source path in its ``.json``: still valid JSON with the
    right label, so nothing but the hash can notice."""
    offset, payload = json_member(path)
    at = offset + payload.index(b'"path": "') + len(b'"path": "') + 1
    data = bytearray(path.read_bytes())
    data[at] ^= 0x20
    path.write_bytes(bytes(data))


def member_offsets(path: Path) -> list[int]:
    with tarfile.open(path) as tar:
        return [m.offset for m in tar.getmembers()]


# --- the template -----------------------------------------------------------------------------------------------
def test_the_template_names_one_file_with_exactly_braces():
    assert (
        remote_url("pipe:aws s3 cp s3://b/fm/{} -", "train-000000.tar")
        == "pipe:aws s3 cp s3://b/fm/train-000000.tar -"
    )
    assert (
        remote_url("pipe:curl -s https://h/{x}/{}?v={}", "a_b.tar")
        == "pipe:curl -s https://h/{x}/a_b.tar?v=a_b.tar"
    )
    with pytest.raises(
        DataError, match=r"^refusing to read 'a b\.tar' from remote shard folder .*not a plain shard"
    ):
        remote_url("pipe:curl -s https://h/{}", "a b.tar")  # (names are data: see test_shard_trust.py)
    with pytest.raises(
        DataError, match=r"remote shard folder 'pipe:cat /b/manifest.json' names no file: .*\{\}"
    ):
        check_template("pipe:cat /b/manifest.json")
    with pytest.raises(DataError, match=r"names no file"):
        read_manifest("pipe:cat /b/manifest.json")
    with pytest.raises(ConfigError, match=r"^data.shards: a pipe: shard folder is a command with \{\}"):
        load_run_config(None, ["data.shards=pipe:aws s3 cp s3://bucket/folder/manifest.json -"])


def test_train_py_reports_a_template_without_braces_in_one_line(capsys):
    from scaleprompt.train import main

    assert main(["data.shards=pipe:cat /nowhere/manifest.json"]) == 2
    err = capsys.readouterr().err.strip()
    assert (
        err.startswith("train.py: error: data.shards: a pipe: shard folder is a command with {}")
        and "\n" not in err
    )


# --- reads equal the local folder ----------------------------------------------------------------------------------
def test_a_remote_folder_reads_exactly_like_the_local_folder(shard_dir, bucket):
    manifest = read_manifest(shard_dir)
    assert read_remote_manifest(bucket.template) == manifest == read_manifest(bucket.template)
    assert bucket.requests() == ["manifest.json"], "the manifest is fetched once per process"
    for split in ("test", "val"):  # eval passes: same keys, labels AND order
        assert read(bucket.template, split) == read(shard_dir, split)
    assert read(bucket.template, "test", num_workers=2) == read(shard_dir, "test", num_workers=2)
    assert len(read(bucket.template, "test")) == manifest["splits"]["test"]["count"] == 12
    names = [s["name"] for s in manifest["splits"]["test"]["shards"]]
    assert bucket.requests().count(names[0]) == 3 and set(names) <= set(bucket.requests())
    remote = ShardLoader(bucket.template, "test", batch_size=5, image_size=16, num_workers=0)
    local = ShardLoader(shard_dir, "test", batch_size=5, image_size=16, num_workers=0)
    assert (remote.classnames, remote.expected_images, len(remote)) == (local.classnames, 12, len(local))
    for rank in range(2):  # ranks split the remote shards like the local ones
        assert read(bucket.template, "test", rank=rank, world_size=2) == read(
            shard_dir, "test", rank=rank, world_size=2
        )

    def train_keys(source) -> list[str]:  # training: the same seeded stream of samples
        loader = ShardLoader(
            source, "train", batch_size=4, image_size=16, num_workers=1, seed=7, shuffle_buffer=5
        )
        return [k for _ in range(2) for b in loader for k in b.keys]

    assert train_keys(bucket.template) == train_keys(shard_dir)
    assert verify_shards(bucket.template) == []
    assert shard_fingerprint({"train": bucket.template}) == shard_fingerprint({"train": str(shard_dir)})


# --- integrity ---------------------------------------------------------------------------------------------------
def test_a_byte_flipped_remote_shard_is_refused_by_the_stream_hash(shard_dir, bucket):
    shard = bucket.folder / "test-000001.tar"
    flip_path_byte(shard)
    assert len(read([str(shard)], "test")) == 3, "the damage is invisible to everything but the hash"
    pattern = (
        r"shard pipe:.*test-000001\.tar is corrupt or was changed: the sha256 of its streamed bytes [0-9a-f]{16}\.\.\. "
        r"differs from [0-9a-f]{16}\.\.\. in its manifest entry \(its 3 samples were already read"
    )
    for num_workers in (0, 1):  # (1: the error crosses from a worker process)
        with pytest.raises(DataError, match=pattern):
            read(bucket.template, "test", num_workers=num_workers)
    train = ShardLoader(bucket.template, "test", batch_size=2, image_size=16, num_workers=0, train=True,
                        epoch_samples=24)  # fmt: skip
    with pytest.raises(DataError, match=pattern):  # training checks every remote shard it reads too
        list(train)
    assert verify_shards(bucket.template) == ["test-000001.tar"]
    # the hash covers the whole file, the tar record padding after the end-of-archive blocks included
    shutil.copy(shard_dir / shard.name, shard)
    assert read(bucket.template, "test") == read(shard_dir, "test")
    data = bytearray(shard.read_bytes())
    with tarfile.open(shard) as tar:
        last = tar.getmembers()[-1]
    end = last.offset_data + -(-last.size // 512) * 512  # the end of the last member
    assert len(data) > end + 1024 and not any(data[end:])  # 2 zero blocks, then the record's zero padding
    data[-1] ^= 0x01  # in the record padding, which tar readers never look at
    shard.write_bytes(bytes(data))
    with pytest.raises(DataError, match=r"test-000001\.tar is corrupt .* sha256 of its streamed bytes"):
        read(bucket.template, "test")


def test_a_truncated_remote_shard_is_refused_by_the_count_check(bucket):
    shard = bucket.folder / "test-000002.tar"
    data = shard.read_bytes()
    second_sample = member_offsets(shard)[3]  # tar readers take the cut for the end of the archive
    shard.write_bytes(data[:second_sample])
    with pytest.raises(DataError, match=r"shard pipe:.*test-000002\.tar is corrupt .*ended after 1 samples, its "
                       r"manifest entry says 3"):  # fmt: skip
        read(bucket.template, "test")
    shard.write_bytes(data[: second_sample + 700])  # cut inside a member: the tar reader itself fails
    with pytest.raises(DataError, match=r"cannot read shard: .*test-000002\.tar"):
        read(bucket.template, "test")
    manifest = bucket.folder / "manifest.json"  # a truncated manifest: the local folder's checks apply
    manifest.write_text(manifest.read_text()[:300])
    forget_remote_manifests()
    with pytest.raises(DataError, match=r"^pipe:sh .* manifest\.json is damaged \(truncated or not JSON"):
        read_manifest(bucket.template)


def test_a_failing_command_is_an_error_naming_it_and_its_stderr(shard_dir, bucket, monkeypatch):
    missing = bucket.folder / "test-000002.tar"
    missing.unlink()  # a missing object
    with pytest.raises(DataError, match=r"shard command failed \(exit 1\): pipe:sh .* test-000002\.tar; stderr: "
                       r"cat: .*test-000002\.tar: No such file or directory$"):  # fmt: skip
        read(bucket.template, "test", num_workers=1)
    with pytest.raises(DataError, match=r"fetching the manifest of remote shard folder pipe:cat /no/bucket/\{\} "
                       r"failed \(exit 1\): pipe:cat /no/bucket/manifest.json; stderr: cat: /no/bucket/manifest"):  # fmt: skip
        ShardLoader("pipe:cat /no/bucket/{}", "test", num_workers=0)
    # a command that prints the whole shard, then fails (webdataset's own pipe: opener may miss this: it checks the
    # status only when a read happens to find the command ended, or on an explicit close, which its tar reader
    # never does)
    shutil.copy(shard_dir / missing.name, missing)
    assert read(bucket.template, "test") == read(shard_dir, "test")
    monkeypatch.setenv("FAIL_AFTER", "test-000001.tar")
    with pytest.raises(DataError, match=r"shard command failed \(exit 3\): pipe:sh .* test-000001\.tar; stderr: "
                       r"connection reset by peer$"):  # fmt: skip
        read(bucket.template, "test")
    url = remote_url(bucket.template, "test-000001.tar")
    with pytest.raises(DataError, match=r"exit 3"):  # bare pipe: shards (no manifest) get the check too
        read([url], "test")


# --- resampled streaming over ranks --------------------------------------------------------------------------------
def test_resampled_ranks_draw_their_own_shards_from_the_remote_folder(shard_dir, bucket):
    truth = dict(read(shard_dir, "train"))  # key -> label, from the local folder

    def loader(rank: int, seed: int = 5) -> ShardLoader:
        return ShardLoader(bucket.template, "train", batch_size=2, image_size=16, num_workers=1, rank=rank,
                           world_size=2, resampled=True, seed=seed, shuffle_buffer=0)  # fmt: skip

    loaders = [loader(0), loader(1)]
    assert [len(lo) for lo in loaders] == [4, 4]  # epoch = manifest count 16 // (batch 2 x 2 ranks)
    streams: list[list[tuple[str, int]]] = [[], []]
    for _ in range(3):
        for rank, lo in enumerate(loaders):
            batches = list(lo)
            assert len(batches) == 4 and all(len(b.keys) == 2 for b in batches)
            streams[rank] += [(k, int(y)) for b in batches for k, y in zip(b.keys, b.labels, strict=True)]
    draws = []  # the shards each rank read, in order (no shuffle buffer: the stream follows the draws)
    for stream in streams:
        assert len(stream) == 24 and all(truth[k] == y for k, y in stream)
        shards = [k.rsplit("-", 1)[0] for k, _ in stream]
        draws.append([s for i, s in enumerate(shards) if i == 0 or s != shards[i - 1]])
    assert draws[0] != draws[1], "each rank draws its own shards"
    assert all(len(d) > len(set(d)) for d in draws), "with replacement"
    assert [k for b in loader(0) for k in b.keys] == [k for k, _ in streams[0][:8]], "seeded: reproducible"
    names = {s["name"] for s in read_manifest(shard_dir)["splits"]["train"]["shards"]}
    fetched = [r for r in bucket.requests() if r.startswith("train-")]
    assert set(fetched) <= names and len(fetched) >= 6  # read through the command, with replacement
    for name in names:  # every train shard silently damaged: the first shard a rank finishes stops it
        flip_path_byte(bucket.folder / name)
    with pytest.raises(DataError, match=r"train-\d{6}\.tar is corrupt .* sha256 of its streamed bytes"):
        list(loader(1, seed=6))


# --- end to end ----------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def run_data(tmp_path_factory) -> tuple[Path, Path]:
    """A colour folder and its local shards: train 16 images in 4 shards, val 4, test 8."""
    root = tmp_path_factory.mktemp("e2e")
    data = make_color_folder(root / "colors", n_train=4, n_val=1, n_test=2)
    shards = root / "shards"
    write_shards(load_dataset(f"folder:{data}"), shards, shard_size=4, min_shards=2)
    return data, shards


def comparable(res: dict) -> dict:
    """What a run computed: metrics and per-epoch losses (not its paths or timings)."""
    history = [{k: v for k, v in h.items() if "time" not in k and "second" not in k} for h in res["history"]]
    return {"results": res["results"], "history": history, "fingerprint": res["data"]["fingerprint"]}


@pytest.mark.slow
def test_training_on_a_remote_folder_equals_training_on_the_local_folder(run_data, tmp_path, caplog):
    data, shards = run_data
    bucket = make_bucket(shards, tmp_path)
    common = ["method.name=upt", "optim.lr=0.05", "optim.epochs=2", "data.num_workers=1"]
    runs = {}
    # both runs by the engine in this process: what differs is where the shards come from (train.py's launches:
    # tests/test_launch.py and the other end-to-end files)
    for name, source in (("local", str(shards)), ("remote", bucket.template)):
        out = tmp_path / name
        args = [*base_overrides(data, tmp_path / "cache", out), *common, f"data.shards={source}"]
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="scaleprompt"):
            Trainer(load_run_config(None, args), None).fit()
        runs[name] = (results(out), load_file(out / "prompts.safetensors"), caplog.text)
    (local, local_prompts, _), (remote, remote_prompts, log) = runs["local"], runs["remote"]
    assert comparable(remote) == comparable(local)
    assert (
        remote["data"]["shards"]["train"] == bucket.template
        and local["results"]["last"]["test"]["images"] == 8
    )
    assert remote_prompts.keys() == local_prompts.keys()
    for key in local_prompts:
        torch.testing.assert_close(remote_prompts[key], local_prompts[key], rtol=0, atol=0)
    requests = set(bucket.requests())  # every split came through the command
    assert {"manifest.json", "train-000000.tar", "val-000000.tar", "test-000000.tar"} <= requests
    assert "val / test shards are hashed as they stream" in log
    assert not (tmp_path / "cache").exists(), "a data.shards run writes no shard cache"
