"""Shard names are data, never code: a crafted manifest (local or remote) cannot make the loader run a command, the
file name reaches a ``pipe:`` template as an argument whatever quotes the user put around ``{}``, and a command that
writes nothing is killed after ``SCALEPROMPT_PIPE_TIMEOUT`` seconds.

Every trick is tried for real: a marker file that a successful injection would create must stay absent, and the
read either refuses with one :class:`DataError` naming the manifest and the name, or reads the right bytes.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import time
from pathlib import Path

import pytest
from engine_utils import make_color_folder

from scaleprompt.data.datasets import load_dataset
from scaleprompt.data.loader import DataError, ShardLoader
from scaleprompt.data.remote import (
    PipeStream,
    forget_remote_manifests,
    read_remote_manifest,
    remote_command,
    remote_url,
    template_script,
)
from scaleprompt.data.shards import read_manifest, write_shards

MARK = "PWNED"


@pytest.fixture(scope="module")
def shard_dir(tmp_path_factory) -> Path:
    """A local shard folder of 4 colour classes: train 8 images in 2 shards, test 4 in 2."""
    data = make_color_folder(tmp_path_factory.mktemp("data") / "colors", n_train=2, n_val=1, n_test=1)
    out = tmp_path_factory.mktemp("shards") / "colors"
    write_shards(load_dataset(f"folder:{data}"), out, shard_size=4, min_shards=2)
    return out


@pytest.fixture(autouse=True)
def _fresh_manifests():
    forget_remote_manifests()
    yield
    forget_remote_manifests()


def read(source, split: str = "test", **kw) -> list[tuple[str, int]]:
    kw.setdefault("num_workers", 0)
    loader = ShardLoader(source, split, batch_size=4, image_size=16, train=False, **kw)
    return [(k, int(y)) for b in loader for k, y in zip(b.keys, b.labels, strict=True)]


def evil_names(m: str = MARK) -> list[str]:
    """Shard names that run ``touch <m>`` if a shell ever sees them as code (or point outside the folder); ``m`` is
    relative (no ``/`` in the name but the ones a trick needs)."""
    return [
        f"pipe:touch {m};cat test-000000.tar",  # a name that is a pipe: URL (the case)
        f"$(touch {m})x.tar",
        f"$(touch${{IFS}}{m})x.tar",  # the case through a double-quoted template
        f"`touch {m}`.tar",
        f"x.tar;touch {m}",
        f"x;touch {m};.tar",
        f"x|touch {m}|.tar",
        f"x&&touch {m}&&.tar",
        f"x\ntouch {m}\n.tar",
        f"x'$(touch {m})'.tar",
        f'x"$(touch {m})".tar',
        "../test-000000.tar",
        "sub/test-000000.tar",
        "/etc/test-000000.tar",
        "file:test-000000.tar",
        "http://localhost/test-000000.tar",
        "-rf.tar",
        "..",
        "test-000000.tar ",
    ]


def craft(folder: Path, name: str) -> None:
    """Rename the first test shard in ``folder``'s manifest to ``name``, with a copy of the shard under that name
    where the file system allows it (so its sha256 matches)."""
    path = folder / "manifest.json"
    manifest = json.loads(path.read_text())
    entry = manifest["splits"]["test"]["shards"][0]
    if "/" not in name and name not in ("..", "."):
        shutil.copy(folder / entry["name"], folder / name)
    entry["name"] = name
    path.write_text(json.dumps(manifest))


# --- case 1: a crafted local folder -------------------------------------------------------------------------------
@pytest.mark.parametrize("index", range(len(evil_names())))
def test_a_crafted_local_manifest_name_is_refused_and_runs_nothing(shard_dir, tmp_path, monkeypatch, index):
    name = evil_names()[index]
    folder = Path(shutil.copytree(shard_dir, tmp_path / "crafted"))
    marker = folder / MARK
    craft(folder, name)
    monkeypatch.chdir(folder)  # data.shards=. : the shard path would stay the bare name
    manifest = re.escape(str(folder / "manifest.json"))
    with pytest.raises(DataError, match=rf"^{manifest} is damaged or inconsistent: split 'test' shard name "
                       rf"{re.escape(repr(name))} is not a plain shard file name"):  # fmt: skip
        read(".")
    assert not marker.exists()
    with pytest.raises(DataError, match=re.escape(repr(name))):
        ShardLoader(".", "train", batch_size=4, image_size=16, num_workers=0)
    assert not marker.exists()


@pytest.mark.slow
def test_train_py_on_a_crafted_folder_refuses_in_one_line_and_runs_nothing(
    shard_dir, tmp_path, monkeypatch, capsys
):
    """The issue's case: ``data.shards=.`` in a folder whose manifest names ``pipe:touch PWNED;cat ...``."""
    from scaleprompt.train import main

    folder = Path(shutil.copytree(shard_dir, tmp_path / "crafted"))
    name = evil_names()[0]
    craft(folder, name)
    monkeypatch.chdir(folder)
    args = ["model.name=sp-tiny-vit", "model.pretrained=null", "data.shards=.", "data.shots=0", "data.num_workers=0", "method.name=upt",
            f"train.output_dir={tmp_path / 'out'}", "train.report_to=none"]  # fmt: skip
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        f"train.py: error: {folder / 'manifest.json'} is damaged or inconsistent: split 'test' shard name {name!r} "
        "is not a plain shard file name (letters, digits, '.', '_', '-', ending in .tar); delete the shard folder "
        "to rebuild it"
    )
    assert not (folder / MARK).exists()


def test_a_local_folder_is_read_through_its_absolute_path(shard_dir, tmp_path, monkeypatch):
    """Every shard path handed to an opener (webdataset's or ours) is absolute: no relative path can read as a URL
    scheme or a pipe: command."""
    monkeypatch.chdir(shard_dir)
    loader = ShardLoader(".", "test", batch_size=4, image_size=16, num_workers=0, train=False)
    assert all(os.path.isabs(u) and Path(u).parent == shard_dir for u in loader.src.urls)
    assert loader.src.shard_dir == str(shard_dir)
    assert read(".") == read(shard_dir)


# --- case 1: a crafted remote folder -------------------------------------------------------------------------------
TEMPLATES = {  # how people write the template: the name must reach the command as an argument in every form
    "unquoted": "pipe:cat {bucket}/{{}}",
    "double quotes": 'pipe:cat "{bucket}/{{}}"',
    "single quotes": "pipe:cat '{bucket}/{{}}'",
    "nested sh -c": "pipe:sh -c 'cat {bucket}/{{}}'",
    "nested, double": 'pipe:sh -c "cat \\"{bucket}/{{}}\\""',
}


@pytest.mark.parametrize("form", TEMPLATES)
def test_every_quoting_of_the_template_reads_the_right_bytes(shard_dir, tmp_path, form):
    bucket = Path(shutil.copytree(shard_dir, tmp_path / "bucket"))
    template = TEMPLATES[form].format(bucket=bucket)
    assert read_remote_manifest(template) == read_manifest(shard_dir)
    assert read(template) == read(shard_dir) and len(read(template)) == 4


@pytest.mark.parametrize("form", ["unquoted", "double quotes", "single quotes"])
def test_a_crafted_remote_manifest_name_is_refused_and_runs_nothing(shard_dir, tmp_path, monkeypatch, form):
    monkeypatch.chdir(tmp_path)  # (where the commands run)
    marker = tmp_path / MARK
    for i, name in enumerate(evil_names()):
        bucket = Path(shutil.copytree(shard_dir, tmp_path / f"bucket{i}"))
        craft(bucket, name)
        template = TEMPLATES[form].format(bucket=bucket)
        forget_remote_manifests()
        with pytest.raises(DataError, match=rf"manifest\.json.* is damaged or inconsistent: split 'test' shard "
                           rf"name {re.escape(repr(name))} is not a plain shard file name"):  # fmt: skip
            read(template)
        assert not marker.exists(), name


def test_the_name_is_an_argument_of_the_command_never_shell_text(tmp_path, monkeypatch):
    """Even a name that got past the checks (an API caller) cannot run code: the script refers to ``$1``. (A
    template that starts a shell of its own, ``sh -c '... {}'``, parses the name again: there the name check is
    what keeps it safe, and the template still reads the right file.)"""
    monkeypatch.chdir(tmp_path)  # (where the commands run)
    marker = tmp_path / MARK
    (tmp_path / "x.tar").write_bytes(b"the right bytes")
    for form, pattern in TEMPLATES.items():
        template = pattern.format(bucket=tmp_path)
        for name in evil_names() if not form.startswith("nested") else []:
            argv = ["sh", "-c", template_script(template), "sh", name]  # (the checks bypassed)
            stream = PipeStream(f"pipe:{name}", argv)
            try:
                stream.read()
                stream.status()
            finally:
                stream.release()
            assert not marker.exists(), (form, name)
        stream = PipeStream(remote_url(template, "x.tar"), remote_command(template, "x.tar"))
        try:
            assert stream.read() == b"the right bytes" and stream.status() == 0, form
        finally:
            stream.release()


def test_the_url_and_command_refuse_a_name_that_is_not_a_plain_shard_file_name(tmp_path):
    for pattern in TEMPLATES.values():
        template = pattern.format(bucket=tmp_path)
        for name in evil_names():
            with pytest.raises(DataError, match=r"^refusing to read .* not a plain shard file name"):
                remote_url(template, name)
            with pytest.raises(DataError, match=r"^refusing to read .* not a plain shard file name"):
                remote_command(template, name)
    assert remote_url("pipe:cat '/b/{}'", "train-000001.tar") == "pipe:cat '/b/train-000001.tar'"


def test_templates_that_cannot_be_made_safe_are_refused(tmp_path):
    with pytest.raises(
        DataError, match=r"^remote shard folder 'pipe:cat /b/\\\\\{\}': a backslash before \{\}"
    ):
        remote_command("pipe:cat /b/\\{}", "x.tar")
    with pytest.raises(
        DataError, match=r"^remote shard folder \"pipe:cat it's/\{\}\" has an unclosed ' quote$"
    ):
        read_remote_manifest("pipe:cat it's/{}")
    assert template_script("pipe:cat /b/{} # {}") == 'cat /b/"$1" # "$1"'
    assert template_script("pipe:aws s3 cp 's3://b/my dir/{}' -") == "aws s3 cp 's3://b/my dir/'\"$1\"'' -"


# --- case 4: a command that never writes ----------------------------------------------------------------------------
HANG = """#!/bin/sh
echo $$ >> {pids}
case "$1" in *.tar) sleep 300 ;; esac
exec cat {bucket}/"$1"
"""


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


@pytest.mark.slow  # (quick-loop budget: an end-to-end run / processes / a timeout)
def test_a_command_that_writes_nothing_is_killed_after_the_read_timeout(shard_dir, tmp_path, monkeypatch):
    script, pids = tmp_path / "hang.sh", tmp_path / "pids"
    script.write_text(HANG.format(pids=shlex.quote(str(pids)), bucket=shlex.quote(str(shard_dir))))
    template = f"pipe:sh {shlex.quote(str(script))} {{}}"
    monkeypatch.setenv("SCALEPROMPT_PIPE_TIMEOUT", "1")
    pattern = (
        r"shard command pipe:sh .*hang\.sh test-00000\d\.tar wrote nothing for 1 s \(0 bytes read before\): killed "
        r"it \(set SCALEPROMPT_PIPE_TIMEOUT to wait longer, 0 to wait without end\)"
    )
    for num_workers in (0, 1):  # (1: from a loader worker process)
        with pytest.raises(DataError, match=pattern):
            read(template, num_workers=num_workers)  # (the manifest comes at once; the first shard hangs)
    hangers = [int(p) for p in pids.read_text().split()]
    assert len(hangers) == 3  # the manifest, then one hanging shard per pass
    deadline = time.monotonic() + 30
    while any(alive(p) for p in hangers) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(alive(p) for p in hangers), "the command (its whole process group) was killed"
    forget_remote_manifests()
    with pytest.raises(
        DataError, match=r"wrote nothing for 1 s .*stderr: \(empty\)$"
    ):  # the manifest fetch too
        read_remote_manifest("pipe:sleep 300; cat /x/{}")


def test_the_read_timeout_is_checked(monkeypatch, shard_dir):
    monkeypatch.setenv("SCALEPROMPT_PIPE_TIMEOUT", "soon")
    with pytest.raises(DataError, match=r"^SCALEPROMPT_PIPE_TIMEOUT='soon' is not a number of seconds >= 0"):
        read_remote_manifest(f"pipe:cat {shard_dir}/{{}}")
    monkeypatch.setenv("SCALEPROMPT_PIPE_TIMEOUT", "0")  # no limit: reads as usual
    assert read_remote_manifest(f"pipe:cat {shard_dir}/{{}}") == read_manifest(shard_dir)


def test_the_read_timeout_works_with_descriptors_past_1024(shard_dir, monkeypatch):
    """A big run holds many files open: the wait for output must not be limited to descriptors below 1024."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 1200:
        pytest.skip(f"the descriptor limit is {hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 1200), hard))
    held = [os.open(os.devnull, os.O_RDONLY) for _ in range(1100)]
    try:
        monkeypatch.setenv("SCALEPROMPT_PIPE_TIMEOUT", "60")
        assert read_remote_manifest(f"pipe:cat {shard_dir}/{{}}") == read_manifest(shard_dir)
    finally:
        for fd in held:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
