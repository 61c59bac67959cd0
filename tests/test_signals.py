"""Stopping runs (issue 23), each case for real: SIGTERM / SIGINT to a training process, a second signal during a
save, a SIGTERM to a deepspeed launch's process group, a SIGKILLed launcher, a SIGKILLed rank 0. Every stop is one
line with a documented exit code, no traceback, no surviving child, and a checkpoint that resumes."""

from __future__ import annotations

import ctypes
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch
from engine_utils import ROOT, base_overrides, deepspeed_cmd, env, launch, make_color_folder
from safetensors.torch import load_file

from scaleprompt.engine import signals
from scaleprompt.engine.checkpoint import CheckpointManager

# UPT (dropout, random crops): a resumed run must restore optimizer, RNG and data position exactly. 2 steps per
# epoch; the signals come after epoch 1's checkpoint: 5 epochs more leave a wide window, even on a loaded machine
UPT = ["method.name=upt", "optim.lr=0.05", "optim.epochs=6"]


@pytest.fixture(scope="module")
def colors(tmp_path_factory):
    return make_color_folder(tmp_path_factory.mktemp("colors"), n_train=8, n_val=2, n_test=8)


def train_cmd(colors: Path, tmp: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "scaleprompt/train.py",
        *base_overrides(colors, tmp / "cache", tmp / "out"),
        *extra,
    ]


def _default_stop_signals() -> None:
    """In the child before exec: the stop signals at their default disposition. A test run started in the background
    by a non-interactive shell (`pytest ... &`) inherits SIGINT ignored (under nohup: SIGHUP), which a run leaves
    alone."""
    for signum in signals.STOP_SIGNALS:
        signal.signal(signum, signal.SIG_DFL)


def start(cmd: list[str], tmp: Path, **env_extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        cmd,
        cwd=ROOT,
        env={**env(tmp), **env_extra},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        preexec_fn=_default_stop_signals,  # (signal dispositions only: no lock is taken in the child)
    )


def wait_for(path: Path, proc: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while not path.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    assert path.exists(), f"{path} never appeared: {proc.poll()}"


def descendants(pid: int) -> list[psutil.Process]:
    return psutil.Process(pid).children(recursive=True)


def survivors(procs: list[psutil.Process]) -> list[int]:
    return [p.pid for p in procs if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]


def stop_lines(stderr: str) -> list[str]:
    return [
        line
        for line in stderr.splitlines()
        if "stopped " in line or "abandoned" in line or "peer rank" in line
    ]


def latest(out: Path) -> str | None:
    return CheckpointManager(out / "checkpoints").latest()


def without_timing(results: dict, like: dict) -> dict:
    out = {k: v for k, v in results.items() if k != "timing"}
    out["config"] = {k: dict(v) for k, v in out["config"].items()}
    for section, key in (("train", "output_dir"), ("data", "cache_dir")):
        out["config"][section][key] = like["config"][section][key]
    return out


# --- one process ------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_sigterm_mid_training_saves_the_step_and_resume_matches_an_uninterrupted_run(colors, tmp_path):
    ref = tmp_path / "ref"
    launch(train_cmd(colors, ref, *UPT), ref)
    assert not (ref / "rdzv").exists(), "a finished run removes its file rendezvous"
    run = tmp_path / "run"
    cmd = train_cmd(colors, run, *UPT)
    proc = start(cmd, run)
    wait_for(run / "out" / "checkpoints" / "latest.json", proc)  # epoch 1 saved: training, workers running
    children = descendants(proc.pid)
    assert children, "a DataLoader worker runs"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 128 + signal.SIGTERM, err[-3000:]
    assert "Traceback" not in err and len(stop_lines(err)) == 1, err[-3000:]
    line = stop_lines(err)[0]
    step = int(line.split("at step ")[1].split(";")[0])
    tag = f"step{step:08d}"
    assert line.startswith("train.py: stopped by SIGTERM at step ") and "--resume" in line and tag in line, (
        line
    )
    assert latest(run / "out") == tag and not (run / "out" / "results.json").exists()
    assert survivors(children) == [], "no DataLoader worker outlives its run"
    launch([*cmd, "--resume"], run / "resume")
    got, want = (json.loads((d / "out" / "results.json").read_text()) for d in (run, ref))
    assert without_timing(got, want) == without_timing(want, want)
    assert [s["from_checkpoint"] for s in got["timing"]["sessions"]] == [None, tag]
    a, b = load_file(run / "out" / "prompts.safetensors"), load_file(ref / "out" / "prompts.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in b)


@pytest.mark.slow
def test_sigint_is_one_line_and_a_second_signal_during_the_save_abandons_it(colors, tmp_path):
    """Ctrl-C (SIGINT): one line, exit 130, no KeyboardInterrupt traceback. The failpoint sends SIGINT twice inside
    the 3rd save (after DeepSpeed's model states, after its optimizer states): the first asks for a stop, the
    second abandons the save at once; the previous complete checkpoint stays the newest."""
    cmd = [*train_cmd(colors, tmp_path, *UPT), "--ds", "ds_configs/zero1.json"]  # (2 DeepSpeed files a save)
    proc = start(
        cmd,
        tmp_path,
        SCALEPROMPT_FAILPOINT="checkpoint.deepspeed_file@5+:SIGINT",
        SCALEPROMPT_SIGNAL_REPEAT_S="0",
    )
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 128 + signal.SIGINT, err[-3000:]
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err[-3000:]
    assert stop_lines(err) == [
        "train.py: SIGINT again: abandoned at once, nothing more saved; continue from the newest complete "
        "checkpoint with --resume"
    ], err[-3000:]
    out = tmp_path / "out"
    assert latest(out) == "step00000004"  # (verified: every file's hash)
    assert any(p.name.startswith(".partial-") for p in (out / "checkpoints").iterdir()), "the save was cut"
    # one SIGINT, outside the training loop (the final evaluation): stops at once, names the newest checkpoint
    proc = start([*cmd, "--resume"], tmp_path / "resume", SCALEPROMPT_FAILPOINT="run.final_evaluation:SIGINT")
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 130 and "Traceback" not in err, err[-3000:]
    assert stop_lines(err) == [
        f"train.py: stopped by SIGINT outside a training step; newest complete checkpoint {out / 'checkpoints'}/"
        "step00000012; continue with --resume (exit code 130)"
    ], err[-3000:]


# --- the deepspeed launcher, 2 ranks ----------------------------------------------------------------------------
def ds_start(colors: Path, tmp: Path) -> tuple[subprocess.Popen, str]:
    cmd = deepspeed_cmd(
        2,
        "scaleprompt/train.py",
        "--ds",
        "ds_configs/zero2.json",
        *base_overrides(colors, tmp / "cache", tmp / "out"),
        *UPT,
    )
    return start(cmd, tmp), cmd[cmd.index("--master_port") + 1]


def leftovers(port: str, tmp: Path) -> list[str]:
    """The run's shared-memory buffers and rendezvous file, if any are left."""
    shm = [str(p) for p in Path("/dev/shm").glob(f"deepspeed_allreduce_buffer_*_127.0.0.1_{port}_*")]
    for p in shm:
        os.unlink(p)  # (never leave 66 MB behind, even when the assertion fails)
    return shm + [str(p) for p in tmp.glob("rdzv*")]


def ranks_of(procs: list[psutil.Process]) -> dict[int, psutil.Process]:
    """Rank -> the rank's process (not its DataLoader workers: they are children of a rank)."""
    ranks = {}
    for p in procs:
        args = p.cmdline()
        if (
            "scaleprompt/train.py" in args
            and p.parent() is not None
            and "deepspeed.launcher.launch" in " ".join(p.parent().cmdline())
        ):
            ranks[int(next(a for a in args if a.startswith("--local_rank=")).split("=")[1])] = p
    return ranks


@pytest.mark.slow
def test_sigterm_to_a_deepspeed_launch_stops_both_ranks_at_one_step_with_one_checkpoint(colors, tmp_path):
    proc, port = ds_start(colors, tmp_path)
    out = tmp_path / "out"
    wait_for(out / "checkpoints" / "latest.json", proc)
    tree = descendants(proc.pid)
    os.killpg(proc.pid, signal.SIGTERM)  # what `kill -- -PGID`, Slurm and Ctrl-C in a terminal do
    _, err = proc.communicate(timeout=300)
    psutil.wait_procs(tree, timeout=60)
    assert survivors(tree) == [], "launch.py, both ranks and their workers are gone"
    assert "Traceback" not in err and len(stop_lines(err)) == 1, err[-4000:]
    line = stop_lines(err)[0]
    assert "[rank 0]" not in line and line.startswith("train.py: stopped by SIGTERM at step "), line
    tag = f"step{int(line.split('at step ')[1].split(';')[0]):08d}"
    assert latest(out) == tag, "one complete checkpoint of the step both ranks stopped at"
    complete = json.loads((out / "checkpoints" / tag / "COMPLETE.json").read_text())["files"]
    assert {"zero_pp_rank_0_mp_rank_00_optim_states.pt", "zero_pp_rank_1_mp_rank_00_optim_states.pt"} <= set(
        complete
    ), "both ranks wrote their part"
    assert leftovers(port, tmp_path) == []


@pytest.mark.slow
def test_ranks_of_a_killed_launcher_stop_within_seconds(colors, tmp_path):
    """`deepspeed` SIGKILLed: its launch.py and ranks used to train on, detached; they notice and stop."""
    proc, port = ds_start(colors, tmp_path)
    out = tmp_path / "out"
    wait_for(out / "checkpoints" / "latest.json", proc)
    tree = descendants(proc.pid)
    proc.kill()
    proc.wait()
    gone, alive = psutil.wait_procs(tree, timeout=60)  # (launch.py waits for its ranks, then exits)
    assert alive == [], "every process of the launch exits"
    err = proc.stderr.read()
    lines = stop_lines(err)
    assert len(lines) == 1 and "Traceback" not in err, err[-4000:]
    said = re.search(
        rf"stopped because the launcher( \(pid {proc.pid}\))? exited( \(seen by rank 1\))?, at step (\d+);",
        lines[0],
    )
    assert said and "exit code 143" in lines[0], lines[0]
    assert latest(out) == f"step{int(said.group(3)):08d}"
    assert leftovers(port, tmp_path) == []


@pytest.mark.slow
def test_rank_1_says_in_one_line_that_its_peer_died(colors, tmp_path):
    proc, port = ds_start(colors, tmp_path)
    wait_for(tmp_path / "out" / "checkpoints" / "latest.json", proc)
    tree = descendants(proc.pid)
    ranks_of(tree)[0].kill()
    _, err = proc.communicate(timeout=300)
    psutil.wait_procs(tree, timeout=60)
    assert proc.returncode != 0 and survivors(tree) == []
    assert "Traceback" not in err, err[-4000:]
    lines = stop_lines(err)
    # rank 1 either meets the failed collective first (exit 75) or launch.py's SIGTERM (exit 143): one line
    assert len(lines) == 1 and (
        lines[0].startswith("train.py: rank 1: a peer rank died or left") or "stopped by SIGTERM" in lines[0]
    ), err[-4000:]
    assert "--resume" in lines[0]
    leftovers(port, tmp_path)


# --- the pieces -------------------------------------------------------------------------------------------------
def test_the_stop_line_names_signal_rank_step_checkpoint_and_exit_code(tmp_path):
    stop = signals.Stopped(signal.SIGTERM, "", 1, step=7, checkpoint=tmp_path / "step00000007")
    assert signals.stop_line(stop) == (
        f"stopped by SIGTERM on rank 1 at step 7; checkpoint {tmp_path}/step00000007; continue with --resume "
        "(exit code 143)"
    )
    assert "no checkpoint saved (train.checkpoint_on_signal=false)" in signals.stop_line(
        signals.Stopped(signal.SIGINT, step=3)
    )
    assert signals.Stopped(signal.SIGHUP).exit_code == 129
    launcher = signals.Stopped(signal.SIGTERM, "the launcher (pid 12) exited", 1)
    assert signals.stop_line(launcher).startswith(
        "stopped because the launcher (pid 12) exited (seen by rank 1), outside a training step; no checkpoint yet"
    )


def test_one_process_agrees_on_its_own_request_and_ignores_signals_in_forked_children():
    assert signals.agree(torch.device("cpu")) == (0, None, ""), "nothing installed: no request"
    signals.install("t", 0)
    try:
        with signals.deferred():
            os.kill(os.getpid(), signal.SIGTERM)  # (handled at the next bytecode: just a request here)
            time.sleep(0.01)
            assert signals.requested() == signal.SIGTERM
            assert signals.agree(torch.device("cpu")) == (signal.SIGTERM, 0, "")
            child = os.fork()
            if child == 0:  # a forked worker: the stop signals are blocked, it dies with its parent
                death = ctypes.c_int()
                ctypes.CDLL(None).prctl(2, ctypes.byref(death))  # PR_GET_PDEATHSIG
                blocked = signal.SIGTERM in signal.pthread_sigmask(signal.SIG_BLOCK, [])
                os._exit(0 if blocked and death.value == signal.SIGKILL else 1)
            assert os.waitpid(child, 0)[1] == 0
            signals.begin_exit()
    finally:
        signals.uninstall()
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
