"""Trustworthy runs (issue 11), each reproduction done for real: kills at exact points of a save (failpoints) and
mid-training, a finished run resumed, a crafted pickle as DeepSpeed's model states, resumes that change the math,
two runs on one folder, a full disk, and the errors a user meets (one line, exit code 2)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest
import torch
from engine_utils import ROOT, ArmedPickle, base_overrides, deepspeed_cmd, env, launch, make_color_folder
from safetensors.torch import load_file

from scaleprompt.config import ConfigError
from scaleprompt.data.shards import sha256_file
from scaleprompt.engine.checkpoint import COMPLETE, CheckpointError, safe_torch_load
from scaleprompt.engine.config import load_run_config
from scaleprompt.engine.trainer import Trainer
from scaleprompt.locks import DirLock, LockError
from scaleprompt.train import main as train_main

ZERO1 = json.loads((ROOT / "ds_configs/zero1.json").read_text())
# UPT has dropout and the crops are random: a resume must restore optimizer, RNG and data position exactly
UPT = ["method.name=upt", "optim.lr=0.05", "optim.epochs=3", "train.checkpoint_every_steps=1"]
# the same over 2 epochs (4 steps: mid-epoch, epoch-end and last-epoch checkpoints)
UPT2 = [*UPT[:2], "optim.epochs=2", *UPT[3:]]


@pytest.fixture(scope="module")
def colors(tmp_path_factory):
    return make_color_folder(tmp_path_factory.mktemp("colors"), n_train=8, n_val=2, n_test=8)


def overrides(colors: Path, tmp: Path, *extra: str, out: Path | None = None) -> list[str]:
    return base_overrides(colors, tmp / "cache", out or tmp / "out") + list(extra)


def fit(
    colors: Path, tmp: Path, *extra: str, resume: bool = False, out: Path | None = None, report=None
) -> dict:
    cfg = load_run_config(None, overrides(colors, tmp, *extra, out=out))
    return Trainer(cfg, ZERO1, resume=resume, report=report).fit()


def without_timing(results: dict, like: dict | None = None) -> dict:
    """``results`` minus its timing; with ``like``: its output / cache folders set to those of ``like``."""
    out = {k: v for k, v in results.items() if k != "timing"}
    if like is not None:
        out["config"] = {k: dict(v) for k, v in out["config"].items()}
        out["config"]["train"]["output_dir"] = like["config"]["train"]["output_dir"]
        out["config"]["data"]["cache_dir"] = like["config"]["data"]["cache_dir"]
    return out


def tags(out: Path) -> list[str]:
    return sorted(p.name for p in (out / "checkpoints").iterdir() if p.is_dir())


def latest(out: Path) -> str:
    return json.loads((out / "checkpoints" / "latest.json").read_text())["tag"]


PROVP = ["method.name=provp", "method.args.n_ctx=2", "optim.epochs=2"]


@pytest.fixture(scope="module")
def finished(colors, tmp_path_factory):
    """One finished ProVP run (2 epochs, a checkpoint per epoch), read or copied by the tests that need a run
    folder but not their own training: (its tmp folder, holding ``cache`` and ``out``; its results)."""
    tmp = tmp_path_factory.mktemp("finished")
    return tmp, fit(colors, tmp, *PROVP)


def copy_run(run: Path, to: Path) -> Path:
    """A copy of the run folder ``run`` at ``to`` (its lock file left behind)."""
    shutil.copytree(run, to, ignore=shutil.ignore_patterns(".lock"))
    return to


# --- checkpoints that always resume ------------------------------------------------------------------------------
@pytest.mark.slow  # (quick-loop budget: an end-to-end run / processes / a timeout)
def test_an_epoch_end_step_checkpoint_is_saved_once_and_a_finished_run_resumes_as_a_no_op(
    colors, tmp_path, caplog
):
    # 2 steps per epoch: the step-4 checkpoint falls on the end of epoch 2 (it used to be saved twice there)
    first = fit(
        colors,
        tmp_path,
        "method.name=provp",
        "method.args.n_ctx=2",
        "optim.epochs=3",
        "train.checkpoint_every_steps=4",
    )
    out = tmp_path / "out"
    assert tags(out) == ["step00000004", "step00000006"] and latest(out) == "step00000006"
    assert first["checkpoint"] == "step00000006" and first["steps"] == 6
    state = json.loads((out / "checkpoints" / "step00000004" / "run_state.json").read_text())
    assert [h["epoch"] for h in state["history"]] == [1, 2], "saved after epoch 2's validation"
    before = (out / "results.json").read_bytes()
    with caplog.at_level("INFO", logger="scaleprompt"):
        again = fit(
            colors,
            tmp_path,
            "method.name=provp",
            "method.args.n_ctx=2",
            "optim.epochs=3",
            "train.checkpoint_every_steps=4",
            resume=True,
        )
    assert "already finished" in caplog.text
    assert (
        again == first
        and (out / "results.json").read_bytes() == before
        and tags(out) == ["step00000004", "step00000006"]
    )


@pytest.mark.slow  # (quick-loop budget: an end-to-end run / processes / a timeout)
def test_every_kind_of_checkpoint_resumes_to_the_uninterrupted_results(colors, tmp_path):
    """Mid-epoch, epoch-end and last-epoch checkpoints of one run: each, resumed in a copy of the run folder,
    reaches the same prompts and the same results.json (timing and the copy's own path aside)."""
    # 2 epochs of 2 steps hold the three kinds: step 1 mid-epoch, step 2 epoch-end, step 3 in the last epoch
    upt = [*UPT2, "train.keep_checkpoints=10"]
    reference = fit(colors, tmp_path, *upt)
    out = tmp_path / "out"
    assert tags(out) == [f"step{i:08d}" for i in range(1, 5)]
    want = load_file(out / "prompts.safetensors")
    for tag in ("step00000001", "step00000002", "step00000003"):
        copy_dir = tmp_path / f"from-{tag}"
        shutil.copytree(out / "checkpoints" / tag, copy_dir / "checkpoints" / tag)
        (copy_dir / "checkpoints" / "latest.json").write_text(json.dumps({"tag": tag}))
        resumed = fit(colors, tmp_path, *upt, out=copy_dir, resume=True)
        changes, resumed["config_changes"] = resumed["config_changes"], []
        assert [c["field"] for c in changes] == ["train.output_dir"], changes
        resumed["config"]["train"]["output_dir"] = str(out)
        assert without_timing(resumed) == without_timing(reference), tag
        got = load_file(copy_dir / "prompts.safetensors")
        assert all(torch.equal(got[k], want[k]) for k in want), tag
        assert [s["from_checkpoint"] for s in resumed["timing"]["sessions"]] == [None, tag]


@pytest.fixture(scope="module")
def launched_reference(colors, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("reference")
    launch([sys.executable, "scaleprompt/train.py", *overrides(colors, tmp, *UPT)], tmp)
    return tmp / "out"


def partials(out: Path) -> list[Path]:
    return [p for p in (out / "checkpoints").iterdir() if p.name.startswith(".partial-")]


# One run of 6 steps (a checkpoint after each; 1 DeepSpeed file per save) killed at every phase of a save in
# turn: each session resumes what the one before it left and is killed at the next phase (a failpoint counts the
# passes of its own process), and the last session finishes. What each kill leaves is checked before its resume;
# the end is the uninterrupted run's results and prompts. (One process per phase instead of a killed and a
# resumed one per phase: every phase's recovery is still what the next session starts from.)
KILL_CHAIN = [  # (failpoint, the tag latest.json names after the kill)
    # in the save of step 2: DeepSpeed's file written, not this rank's RNG
    ("checkpoint.deepspeed_file@2", "step00000001"),
    # step 3's files written (DeepSpeed's, the RNG), nothing marked complete
    ("checkpoint.files_written@2", "step00000002"),
    # step 3's COMPLETE.json written inside its partial folder, not renamed yet
    ("checkpoint.marked_complete@1", "step00000002"),
    # step 3 complete in place, latest.json still names step 2
    ("checkpoint.renamed@1", "step00000002"),
    # latest.json moved to step 4, old checkpoints not yet pruned
    ("checkpoint.latest_updated@1", "step00000004"),
    # training finished and saved, results.json not written
    ("run.final_evaluation", "step00000006"),
]


@pytest.mark.slow
def test_a_run_killed_at_every_point_of_a_save_resumes_to_identical_results(
    colors, tmp_path, launched_reference
):
    cmd = [sys.executable, "scaleprompt/train.py", *overrides(colors, tmp_path, *UPT)]
    out = tmp_path / "out"
    for i, (point, pointed) in enumerate(KILL_CHAIN):
        before = set(partials(out)) if i else set()
        killed = subprocess.run(
            [*cmd, "--resume"] if i else cmd,
            cwd=ROOT,
            env={**env(tmp_path / f"session{i}"), "SCALEPROMPT_FAILPOINT": point},  # (its own rendezvous)
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert killed.returncode == -signal.SIGKILL, (point, killed.stderr[-3000:])
        assert not (out / "results.json").exists() and latest(out) == pointed, point
        new = [p for p in partials(out) if p not in before]  # (left by this session)
        if point.startswith("checkpoint.deepspeed_file"):
            assert [sorted(f.name for f in p.iterdir()) for p in new] == [["mp_rank_00_model_states.pt"]]
        elif point.startswith("checkpoint.files_written"):
            assert len(new) == 1 and not (new[0] / COMPLETE).exists(), new
            assert (new[0] / "mp_rank_00_model_states.pt").is_file() and (new[0] / "rng_rank0.json").is_file()
        elif point.startswith("checkpoint.marked_complete"):
            assert [(p / COMPLETE).is_file() for p in new] == [True]
        elif point.startswith("checkpoint.renamed"):
            assert new == [] and (out / "checkpoints" / "step00000003" / COMPLETE).is_file()
        elif point.startswith("checkpoint.latest_updated"):
            complete = [t for t in tags(out) if not t.startswith(".")]
            assert complete == [f"step{k:08d}" for k in range(1, 5)]  # (steps 1 and 2 not pruned yet)
        else:
            assert tags(out) == ["step00000005", "step00000006"] and partials(out) == []
    launch([*cmd, "--resume"], tmp_path / "last")
    ref = json.loads((launched_reference / "results.json").read_text())
    got = json.loads((out / "results.json").read_text())
    assert without_timing(got, like=ref) == without_timing(ref)
    a, b = load_file(out / "prompts.safetensors"), load_file(launched_reference / "prompts.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in b)
    assert tags(out) == tags(launched_reference) == ["step00000005", "step00000006"]  # partial folders pruned
    # the sessions whose checkpoints the run kept: the one killed after marking step 3 complete left none, and
    # the one after it resumed from step 2; the one after the rename resumed from step 3, newer than latest.json
    assert [s["from_checkpoint"] for s in got["timing"]["sessions"]] == [
        None,
        "step00000001",
        "step00000002",
        "step00000003",
        "step00000004",
        "step00000006",
    ]


@pytest.fixture(scope="module")
def two_rank_references(colors, tmp_path_factory):
    """The uninterrupted 2-rank runs of UPT2 under ZeRO-2 and ZeRO-3, in one launch (tests/ds_driver.py: the same
    Trainer as train.py's, one run after the other; bit for bit train.py's numbers): ``zero<stage>`` in the folder."""
    tmp = tmp_path_factory.mktemp("two-rank-references")
    ds = ["--ds", "ds_configs/zero2.json", "ds_configs/zero3.json"]
    launch(
        deepspeed_cmd(
            2, "tests/ds_driver.py", *ds, "--out", str(tmp), "--data", str(colors), "--overrides", *UPT2
        ),
        tmp,
    )
    return tmp


@pytest.mark.slow
@pytest.mark.parametrize("stage", [2, 3])
def test_two_ranks_killed_during_a_save_resume_to_identical_results(
    colors, tmp_path, two_rank_references, stage
):
    """The deepspeed launcher, 2 processes: rank 0 dies between writing every rank's files and marking the save
    complete (the launcher then stops rank 1) in the 3rd of 4 saves; the resumed job matches an uninterrupted one."""
    args = ["--ds", f"ds_configs/zero{stage}.json"]
    ref = two_rank_references / f"zero{stage}"
    out = tmp_path / "out"
    cmd = deepspeed_cmd(2, "scaleprompt/train.py", *args, *overrides(colors, tmp_path, *UPT2, out=out))
    killed = subprocess.run(
        cmd,
        cwd=ROOT,
        env={**env(out), "SCALEPROMPT_FAILPOINT": "checkpoint.marked_complete@3"},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert killed.returncode != 0 and not (out / "results.json").exists(), killed.stderr[-3000:]
    assert latest(out) == "step00000002" and any(
        p.name.startswith(".partial-") for p in (out / "checkpoints").iterdir()
    )
    launch([*cmd, "--resume"], tmp_path / "resume")  # (a fresh rendezvous file)
    got, want = json.loads((out / "results.json").read_text()), json.loads((ref / "results.json").read_text())
    assert got["world_size"] == 2 and without_timing(got, like=want) == without_timing(want)
    a, b = load_file(out / "prompts.safetensors"), load_file(ref / "prompts.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in b)


# --- no code execution from files -------------------------------------------------------------------------------
def test_a_crafted_pickle_in_the_model_states_is_refused_and_executes_nothing(colors, finished, tmp_path):
    run = copy_run(finished[0] / "out", tmp_path / "out")
    folder = tmp_path / "out" / "checkpoints" / latest(tmp_path / "out")
    states = folder / "mp_rank_00_model_states.pt"
    marker = tmp_path / "pwned"
    real = safe_torch_load(states)  # (what DeepSpeed wrote loads weights-only)
    torch.save({**real, "client": ArmedPickle(marker)}, states)
    complete = json.loads((folder / COMPLETE).read_text())
    complete["files"][states.name] = sha256_file(states)  # whoever can write the folder can fix the hash
    (folder / COMPLETE).write_text(json.dumps(complete))
    (tmp_path / "out" / "results.json").unlink()
    with pytest.raises(CheckpointError, match=r"refusing to load .*mp_rank_00_model_states\.pt.*system"):
        fit(colors, finished[0], *PROVP, out=run, resume=True)
    assert not marker.exists()
    torch.load(states, weights_only=False)  # the file was armed: a full unpickle runs the command
    assert marker.exists()


# --- resume identity --------------------------------------------------------------------------------------------
@pytest.mark.slow  # (quick-loop budget: an end-to-end run / processes / a timeout)
def test_every_checkpoint_file_is_loaded_onto_the_cpu_whatever_deepspeed_asks(tmp_path, monkeypatch):
    """DeepSpeed loads model states with ``map_location=lambda storage, loc: storage`` (where they were saved: rank
    0's cuda:0 for every rank on a GPU node); the project's checkpoint engine loads onto the CPU, and
    load_state_dict copies to each rank's device."""
    from types import SimpleNamespace

    from scaleprompt.engine.checkpoint import use_weights_only_checkpoints

    holder = SimpleNamespace()
    use_weights_only_checkpoints(holder)
    torch.save({"module": {"prompts": torch.ones(2)}}, tmp_path / "states.pt")
    asked = []
    load = torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **k: asked.append(k["map_location"]) or load(*a, **k))
    for where in (lambda storage, loc: storage, None, torch.device("cuda", 0)):
        state = holder.checkpoint_engine.load(str(tmp_path / "states.pt"), map_location=where)
        assert state["module"]["prompts"].device.type == "cpu"
    assert asked == ["cpu", "cpu", "cpu"]


def test_a_resume_that_changes_math_or_data_is_refused_naming_each_difference(colors, tmp_path):
    base = ["method.name=provp", "method.args.n_ctx=2", "optim.epochs=2"]
    fit(colors, tmp_path, *base, "train.max_steps=3")  # stopped mid-epoch 2
    before = {p: p.read_bytes() for p in (tmp_path / "out").rglob("*") if p.is_file() and p.name != ".lock"}
    for change, named in (
        (["optim.lr=0.01", "train.seed=2"], ["optim.lr: 0.002 -> 0.01", "train.seed: 1 -> 2", "run.data"]),
        (["optim.name=adamw"], ["optim.name: 'sgd' -> 'adamw'"]),
        (["method.args.n_ctx=4"], ["method.config.n_ctx: 2 -> 4"]),
        (["data.shots=2"], ["data.shots: 0 -> 2"]),
        (["model.name=sp-tiny-vit-12"], ["model.name"]),
        (["optim.epochs=1"], ["optim.epochs: 2 -> 1"]),
    ):
        with pytest.raises(CheckpointError, match="belongs to another run") as err:
            fit(
                colors,
                tmp_path,
                *[o for o in base if o.split("=")[0] not in {c.split("=")[0] for c in change}],
                *change,
                resume=True,
            )
        for name in named:
            assert name in str(err.value), (name, str(err.value))
    after = {p: p.read_bytes() for p in (tmp_path / "out").rglob("*") if p.is_file() and p.name != ".lock"}
    assert after == before, "a refused resume changes nothing"
    # fields that cannot change the numbers may change; each is recorded with the epoch / step it took effect
    res = fit(
        colors,
        tmp_path,
        "method.name=provp",
        "method.args.n_ctx=2",
        "optim.epochs=3",
        "train.log_every_steps=7",
        "eval.batch_size=32",
        resume=True,
    )
    assert [h["epoch"] for h in res["history"]] == [1, 2, 3] and res["steps"] == 6
    assert sorted((c["field"], c["from"], c["to"], c["epoch"], c["step"]) for c in res["config_changes"]) == [
        ("eval.batch_size", 64, 32, 1, 3),
        ("optim.epochs", 2, 3, 1, 3),
        ("train.log_every_steps", 1000, 7, 1, 3),
        ("train.max_steps", 3, 0, 1, 3),
    ]


def test_a_fresh_run_never_reuses_a_folder_that_holds_a_run(colors, finished, tmp_path):
    run = copy_run(finished[0] / "out", tmp_path / "out")
    results = (run / "results.json").read_bytes()
    with pytest.raises(ConfigError, match="already holds a run .*--resume"):
        fit(colors, finished[0], *PROVP, out=run)
    assert (run / "results.json").read_bytes() == results


# --- one writer per folder --------------------------------------------------------------------------------------
def test_a_held_output_folder_is_refused_naming_the_holder(colors, finished, tmp_path):
    tmp, done = finished
    run = copy_run(tmp / "out", tmp_path / "out")
    holder = DirLock(run / ".lock", "test holder").acquire()
    try:
        with pytest.raises(LockError, match=f"in use by pid {os.getpid()} on host {socket.gethostname()}"):
            fit(colors, tmp, *PROVP, out=run, resume=True)
    finally:
        holder.release()
    # free again: the run goes on (finished: resumed as a no-op, which takes the folder as any run does)
    again = fit(colors, tmp, *PROVP, out=run, resume=True)
    assert again["checkpoint"] == done["checkpoint"] and again["results"] == done["results"]


def test_a_killed_holder_frees_its_lock_even_if_a_forked_worker_lives_on(tmp_path):
    """A DataLoader worker is a forked child holding a copy of the lock's descriptor; it must not keep the
    folder locked after its run was SIGKILLed."""
    script = (
        "import os, signal, sys, time\n"
        "from scaleprompt.locks import DirLock\n"
        f"DirLock({str(tmp_path / '.lock')!r}, 'x').acquire()\n"
        "child = os.fork()\n"
        "if child == 0:\n    os.close(1); os.close(2); time.sleep(60); os._exit(0)\n"
        "print(child, flush=True)\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, env=env(tmp_path), capture_output=True, text=True
    )
    child = int(done.stdout.split()[0])
    try:
        assert done.returncode == -signal.SIGKILL and os.path.exists(f"/proc/{child}"), "the worker lives on"
        DirLock(tmp_path / ".lock", "x").acquire(wait=False).release()  # free at once
    finally:
        os.kill(child, signal.SIGKILL)


def stopped(pid: int) -> bool:
    """Process ``pid`` is stopped (SIGSTOP)."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "T"


@pytest.mark.slow
def test_two_concurrent_runs_on_one_output_folder(colors, tmp_path):
    """The first run stops itself (SIGSTOP) at its first save, holding the folder, until the second has been
    refused; then it goes on and finishes as one session."""
    cmd = [
        sys.executable,
        "scaleprompt/train.py",
        *overrides(colors, tmp_path, "method.name=coop", "method.args.n_ctx=4", "optim.epochs=2"),
    ]
    log = tmp_path / "first.log"
    with open(log, "w") as sink:
        first = subprocess.Popen(
            cmd,
            cwd=ROOT,
            env={**env(tmp_path / "a"), "SCALEPROMPT_FAILPOINT": "checkpoint.files_written:SIGSTOP"},
            stdout=sink,
            stderr=sink,
        )
    try:
        deadline = time.time() + 300
        while time.time() < deadline and first.poll() is None and not stopped(first.pid):
            time.sleep(0.05)
        assert first.poll() is None and stopped(first.pid), log.read_text()[-3000:]
        second = subprocess.run(
            cmd, cwd=ROOT, env=env(tmp_path / "b"), capture_output=True, text=True, timeout=600
        )
        assert first.poll() is None, "the first run must still be running"
    finally:
        os.kill(first.pid, signal.SIGCONT)
    assert second.returncode == 2, second.stderr[-3000:]
    assert f"in use by pid {first.pid} on host {socket.gethostname()}" in second.stderr
    assert [line for line in second.stderr.splitlines() if "error" in line.lower()] == [
        second.stderr.strip().splitlines()[-1]
    ] and "Traceback" not in second.stderr, second.stderr
    assert first.wait(timeout=600) == 0, log.read_text()[-3000:]
    res = json.loads((tmp_path / "out" / "results.json").read_text())
    assert [h["epoch"] for h in res["history"]] == [1, 2] and len(res["timing"]["sessions"]) == 1


# --- disk full --------------------------------------------------------------------------------------------------
@pytest.fixture
def tiny_disk(tmp_path):
    mount = tmp_path / "tiny"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mount)], capture_output=True, text=True
    )
    if done.returncode != 0:
        pytest.skip(
            f"cannot mount a tmpfs here ({done.stderr.strip() or done.returncode}): disk-full not tested"
        )
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


@pytest.mark.slow
def test_a_full_disk_while_checkpointing_is_a_clear_error_and_loses_nothing(colors, tmp_path, tiny_disk):
    common = ["method.name=provp", "method.args.n_ctx=2", "optim.epochs=3"]
    reference = fit(colors, tmp_path, *common, out=tmp_path / "ref")
    filler = tiny_disk / "filler"

    def fill_the_disk(metrics, checkpoint) -> None:  # after epoch 1's checkpoint is complete
        if metrics["epoch"] == 1:
            with open(filler, "wb", buffering=0) as fh:
                try:
                    while True:
                        fh.write(b"\0" * 65536)
                except OSError:
                    pass

    out = tiny_disk / "out"
    with pytest.raises(CheckpointError, match=r"cannot write checkpoint step00000004 to .*the disk is full"):
        fit(colors, tmp_path, *common, out=out, report=fill_the_disk)
    assert tags(out) == ["step00000002"] and latest(out) == "step00000002"  # no partial folder left behind
    filler.unlink()
    resumed = fit(colors, tmp_path, *common, out=out, resume=True)
    resumed["config"]["train"]["output_dir"] = reference["config"]["train"]["output_dir"]
    assert without_timing(resumed) == without_timing(reference)


# --- errors a user meets: one line, exit code 2 ------------------------------------------------------------------
def one_line_error(capsys, argv: list[str]) -> str:
    """The error of ``train.py argv``: one line on stderr (progress bars aside), exit code 2."""
    capsys.readouterr()
    assert train_main(argv) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.replace("\r", "\n").splitlines() if line.strip() and "it/s]" not in line]
    assert len(lines) == 1 and lines[0].startswith("train.py: error: ") and "Traceback" not in err, err
    return lines[0]


def test_bad_inputs_are_one_line_errors_named_before_any_work(colors, tmp_path, capsys):
    args = overrides(colors, tmp_path)
    assert "optim.lrr" in one_line_error(capsys, [*args, "optim.lrr=0.1"])
    broken = tmp_path / "broken.json"
    broken.write_text('{"zero_optimization": {"stage": 2,}}')
    assert f"{broken}: invalid JSON at line 1" in one_line_error(capsys, ["--ds", str(broken), *args])
    stage7 = tmp_path / "stage7.json"
    stage7.write_text('{"zero_optimization": {"stage": 7}}')
    assert f"{stage7}: zero_optimization.stage: Input should be" in one_line_error(
        capsys, ["--ds", str(stage7), *args]
    )
    assert "optim.epochs: 0 trains nothing" in one_line_error(capsys, [*args, "optim.epochs=0"])
    one = make_color_folder(tmp_path / "one", n_train=2, n_val=1, n_test=2)
    for name in ("green", "blue", "yellow"):
        for split in ("train", "val", "test"):
            shutil.rmtree(one / split / name)
    err = one_line_error(capsys, [*overrides(one, tmp_path / "b2n"), "eval.setting=base2new"])
    assert "base-to-novel needs at least 2 classes" in err and "one has 1" in err
    assert not list((tmp_path / "b2n" / "cache").rglob("*.tar")), "rejected before any shard is written"
    empty = make_color_folder(tmp_path / "empty", n_train=2, n_val=1, n_test=2)
    for f in (empty / "train" / "blue").iterdir():
        f.unlink()
    assert str(empty / "train" / "blue") in one_line_error(capsys, overrides(empty, tmp_path / "e"))
    with pytest.raises(ConfigError):  # --debug: the traceback
        train_main([*args, "optim.lrr=0.1", "--debug"])


@pytest.mark.slow  # (quick-loop budget: an end-to-end run / processes / a timeout)
def test_a_launched_run_reports_errors_in_one_line_with_exit_code_2(tmp_path):
    done = subprocess.run(
        [sys.executable, "scaleprompt/train.py", "data.datset=x"],
        cwd=ROOT,
        env=env(tmp_path),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert (
        done.returncode == 2
        and done.stderr.strip().splitlines() == [done.stderr.strip()]
        and "data.datset" in done.stderr
    ), done.stderr
    cli = subprocess.run(
        [
            sys.executable,
            "-m",
            "scaleprompt.cli",
            "shards",
            "--dataset",
            f"folder:{tmp_path}/nope",
            "--out",
            str(tmp_path / "s"),
        ],
        cwd=ROOT,
        env=env(tmp_path),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert cli.returncode == 2 and len(cli.stderr.strip().splitlines()) == 1 and "nope" in cli.stderr, (
        cli.stderr
    )


# --- the data reproductions, end to end -------------------------------------------------------------------------
@pytest.mark.slow  # (quick-loop budget: an end-to-end run / processes / a timeout)
def test_two_datasets_with_one_basename_never_share_shards(tmp_path):
    a = make_color_folder(tmp_path / "a" / "flowers", n_train=2, n_val=1, n_test=2)
    b = make_color_folder(tmp_path / "b" / "flowers", n_train=2, n_val=1, n_test=2)
    for split in ("train", "val", "test"):
        shutil.rmtree(a / split / "yellow")
    common = ["method.name=coop", "method.args.n_ctx=2", "optim.epochs=1", "data.min_shards=1"]
    ra = Trainer(load_run_config(None, overrides(a, tmp_path, *common, out=tmp_path / "ra"))).fit()
    rb = Trainer(load_run_config(None, overrides(b, tmp_path, *common, out=tmp_path / "rb"))).fit()
    assert ra["results"]["last"]["test"]["images"] == 6 and rb["results"]["last"]["test"]["images"] == 8


@pytest.mark.slow  # (quick-loop budget: an end-to-end run / processes / a timeout)
def test_a_corrupted_cached_shard_stops_the_next_run_naming_it(colors, tmp_path, capsys):
    common = ["method.name=coop", "method.args.n_ctx=2", "optim.epochs=1"]
    fit(colors, tmp_path, *common)
    test_shard = sorted((tmp_path / "cache").rglob("test-000001.tar"))[0]
    with tarfile.open(test_shard) as tar:
        offset = tar.getmembers()[3].offset  # the header of the second sample's image
    raw = bytearray(test_shard.read_bytes())
    raw[offset + 100 : offset + 116] = b"\xff" * 16  # mode / uid / gid fields: the header checksum breaks
    test_shard.write_bytes(bytes(raw))
    err = one_line_error(capsys, [*overrides(colors, tmp_path, *common, out=tmp_path / "again")])
    assert test_shard.name in err and "corrupt" in err, err
    assert not (tmp_path / "again" / "checkpoints").exists(), "refused before training"


def test_results_record_what_they_were_computed_on(colors, finished):
    tmp, res = finished
    state = json.loads((tmp / "out" / "checkpoints" / res["checkpoint"] / "run_state.json").read_text())
    assert (
        state["history"] == res["history"]
        and state["epoch"] == 2
        and state["global_step"] == res["steps"] == 4
    )
    assert res["config_changes"] == [] and [s["from_checkpoint"] for s in res["timing"]["sessions"]] == [None]
    cache = tmp / "cache" / res["data"]["shards"]["train"]
    assert (cache / "manifest.json").is_file() and res["data"]["shards"]["train"].startswith(
        f"{colors.name}-full-seed1-all"
    )
    assert len(res["data"]["fingerprint"]) == 64
