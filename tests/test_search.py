"""Ablation search: real Ray Tune + Optuna sweeps of the training engine on CPU (loopback only)."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from engine_utils import ROOT, base_overrides, env, launch, make_color_folder

from scaleprompt.config import ConfigError
from scaleprompt.search import load_space

SPACE = """
metric: val_top1
mode: max
params:
  method.args.n_ctx: {type: categorical, values: [2, 4]}
  optim.lr: {type: loguniform, low: 0.001, high: 0.1}
"""


@pytest.fixture(scope="module")
def colors(tmp_path_factory):
    return make_color_folder(tmp_path_factory.mktemp("colors"), n_train=8, n_val=2, n_test=4)


def overrides(colors: Path, tmp: Path) -> list[str]:
    return [*base_overrides(colors, tmp / "cache", tmp / "unused"), "method.name=provp", "optim.epochs=2",
            "data.num_workers=0"]  # fmt: skip


def write(tmp: Path, name: str, text: str) -> Path:
    path = tmp / name
    path.write_text(text)
    return path


def test_space_parameters_are_validated_against_the_configs(tmp_path, colors):
    base = overrides(colors, tmp_path)
    bad = write(tmp_path, "bad.yaml", "params:\n  method.args.n_ctxx: {type: categorical, values: [2]}\n")
    with pytest.raises(ConfigError, match="method.args.n_ctxx"):
        load_space(bad, None, base)
    bad = write(tmp_path, "bad2.yaml", "params:\n  optim.lrr: {type: float, low: 0.1, high: 0.2}\n")
    with pytest.raises(ConfigError, match="optim.lrr"):
        load_space(bad, None, base)
    bad = write(tmp_path, "bad3.yaml", "params:\n  optim.lr: {type: float, low: 0.3, high: 0.2}\n")
    with pytest.raises(ConfigError, match="high"):
        load_space(bad, None, base)
    bad = write(tmp_path, "bad4.yaml", "params:\n  method.name: {type: categorical, values: [coop, upt]}\n"
                "  method.args.lam: {type: float, low: 0, high: 1}\n")  # fmt: skip
    with pytest.raises(ConfigError, match="no method of the space .* has 'lam'"):
        load_space(bad, None, base)
    for shipped in sorted((ROOT / "tune" / "spaces").glob("*.yaml")):
        recipe = ROOT / "configs" / ("upt" if "upt" in shipped.stem else "provp_ref") / "base2new.yaml"
        assert load_space(shipped, recipe).params, shipped


def sweep_cmd(space: Path, storage: Path, colors: Path, tmp: Path, *extra: str) -> list[str]:
    return [sys.executable, "tune/ablation.py", "--space", str(space), "--num-samples", "4", "--max-concurrent", "2",
            "--storage", str(storage), "--name", "sweep", *extra, *overrides(colors, tmp)]  # fmt: skip


def rows(storage: Path) -> list[dict]:
    with open(storage / "sweep" / "trials.csv") as fh:
        return list(csv.DictReader(fh))


@pytest.mark.slow
def test_sweep_of_4_trials_2_at_a_time_writes_a_best_recipe_that_trains(tmp_path, colors):
    space = write(tmp_path, "space.yaml", SPACE)
    study_db = tmp_path / "optuna.db"
    start = time.time()
    launch(
        sweep_cmd(space, tmp_path / "search", colors, tmp_path, "--optuna-storage", str(study_db)), tmp_path
    )
    assert time.time() - start < 180
    trials = rows(tmp_path / "search")
    assert len(trials) == 4 and all(t["status"] == "ok" for t in trials)
    summary = json.loads((tmp_path / "search" / "sweep" / "summary.json").read_text())
    assert set(summary["best_params"]) == {"method.args.n_ctx", "optim.lr"}
    assert summary["best_metric"] == max(float(t["val_top1"]) for t in trials)
    assert sorted(Path(p).name for p in summary["plots"]) == [
        "metric_vs_params.png",
        "parallel_coordinates.png",
    ]
    assert all(Path(p).read_bytes()[:4] == b"\x89PNG" for p in summary["plots"])
    # the sqlite study (what optuna-dashboard shows) holds the same 4 trials and parameters as the CSV
    study = optuna.load_study(study_name="sweep", storage=f"sqlite:///{study_db}")
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(done) == 4
    # (Tune parameter names cannot hold dots: the study names them method__args__n_ctx)
    assert sorted(t.params["method__args__n_ctx"] for t in done) == sorted(
        int(t["param.method.args.n_ctx"]) for t in trials
    )
    recipe = Path(summary["best_recipe"])
    out = tmp_path / "best-run"
    launch([sys.executable, "scaleprompt/train.py", "--config", str(recipe), f"train.output_dir={out}",
            "optim.epochs=1"], tmp_path / "best")  # fmt: skip
    result = json.loads((out / "results.json").read_text())
    assert result["config"]["method"]["args"]["n_ctx"] == summary["best_params"]["method.args.n_ctx"]
    assert result["config"]["optim"]["lr"] == pytest.approx(summary["best_params"]["optim.lr"])


@pytest.mark.slow
def test_a_failing_trial_is_recorded_and_the_sweep_goes_on(tmp_path, colors):
    # depth 5 passes the static checks but the 2-block backbone refuses it when the trial builds the method:
    # that trial raises (a real error) and the others finish
    space = write(tmp_path, "space.yaml", SPACE.replace("method.args.n_ctx", "method.args.depth").replace(
        "values: [2, 4]", "values: [1, 5]"))  # fmt: skip
    launch(
        sweep_cmd(space, tmp_path / "search", colors, tmp_path, "--max-failures", "0", "--seed", "3"),
        tmp_path,
    )
    trials = rows(tmp_path / "search")
    assert len(trials) == 4
    by_depth = {(t["param.method.args.depth"], t["status"]) for t in trials}
    assert by_depth == {("1", "ok"), ("5", "error")}, trials


@pytest.mark.slow
def test_a_killed_driver_resumes_and_completes_the_sweep(tmp_path, colors):
    space = write(tmp_path, "space.yaml", SPACE)
    storage = tmp_path / "search"
    cmd = sweep_cmd(space, storage, colors, tmp_path)
    # one trial at a time: after the first trial's first report 3 trials are still to run, a wide window to kill in
    cmd[cmd.index("--max-concurrent") + 1] = "1"
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env(tmp_path), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)  # fmt: skip
    deadline = time.time() + 240
    while (
        time.time() < deadline
        and proc.poll() is None
        and not any(p.stat().st_size for p in storage.glob("sweep/*/result.json"))
    ):
        time.sleep(0.05)
    assert proc.poll() is None, "the sweep ended before a trial reported: nothing to kill"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (storage / "sweep" / "trials.csv").exists(), "the driver must die before the sweep ends"
    ray = str(Path(sys.executable).parent / "ray")  # the killed driver's local cluster may outlive it
    subprocess.run([ray, "stop", "--force"], env=env(tmp_path), capture_output=True, check=False, timeout=120)
    launch([*cmd, "--resume"], tmp_path / "resume")
    trials = rows(storage)
    assert len(trials) == 4 and all(t["status"] == "ok" for t in trials), trials


LOOPBACK = {"0100007F", "00000000000000000000000001000000", "0000000000000000FFFF00000100007F"}


def listeners() -> set[tuple[str, int]]:
    """(hex address, port) of every TCP socket in LISTEN state on this machine."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            if state == "0A":
                address, port = local.split(":")
                found.add((address, int(port, 16)))
    return found


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
def test_dashboard_and_multi_worker_deepspeed_trials_listen_on_loopback_only(tmp_path, colors):
    """--dashboard serves on 127.0.0.1 and prints its URL; each trial is a 2-worker Ray Train + DeepSpeed run."""
    import urllib.request

    space = write(tmp_path, "space.yaml", SPACE)
    storage = tmp_path / "search"
    port = free_port()
    cmd = [*sweep_cmd(space, storage, colors, tmp_path, "--dashboard", "--dashboard-port", str(port),
                      "--workers-per-trial", "2", "--ds", "ds_configs/zero2.json", "--cpus-per-trial", "2"),
           "optim.epochs=1"]  # fmt: skip
    cmd[cmd.index("--num-samples") + 1] = "2"
    cmd[cmd.index("--max-concurrent") + 1] = "1"
    before = listeners()
    log = tmp_path / "driver.log"
    with open(log, "w") as fh:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env(tmp_path), stdout=fh, stderr=subprocess.STDOUT,
                                start_new_session=True)  # fmt: skip
    seen: set[tuple[str, int]] = set()
    version = None
    try:
        deadline = time.time() + 400
        while proc.poll() is None and time.time() < deadline:
            seen |= listeners()
            if version is None and f"Ray dashboard: http://127.0.0.1:{port}" in log.read_text():
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/version", timeout=10) as resp:
                    assert resp.status == 200
                    version = json.loads(resp.read())
            time.sleep(0.3)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.wait() == 0, log.read_text()[-3000:]
    assert version and "ray_version" in version, log.read_text()[-3000:]
    opened = seen - before
    assert ("0100007F", port) in opened
    assert {a for a, _ in opened} <= LOOPBACK, sorted(opened)
    trials = rows(storage)
    assert len(trials) == 2 and all(t["status"] == "ok" for t in trials), trials
    for trial in trials:
        result = json.loads((Path(trial["trial_dir"]) / "run" / "results.json").read_text())
        assert result["world_size"] == 2
        shards = {p.name for p in Path(trial["trial_dir"]).glob("train/checkpoint_*/**/*optim_states.pt")}
        assert any("rank_0" in n for n in shards) and any("rank_1" in n for n in shards), shards


def test_bad_search_options_exit_with_a_named_error(tmp_path, colors):
    space = write(tmp_path, "space.yaml", SPACE)
    base = [sys.executable, "tune/ablation.py", "--space", str(space), *overrides(colors, tmp_path)]
    for flag, value, name in [("--num-samples", "0", "num_samples"), ("--gpus-per-trial", "1.5", "gpus_per_trial"),
                              ("--cpus-per-trial", "0", "cpus_per_trial")]:  # fmt: skip
        done = subprocess.run([*base, flag, value], cwd=ROOT, env=env(tmp_path), capture_output=True, text=True,
                              timeout=120)  # fmt: skip
        assert done.returncode == 2 and name in done.stderr, done.stderr[-2000:]
    done = subprocess.run([*base, "--ds", str(tmp_path / "missing.json")], cwd=ROOT, env=env(tmp_path),
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 2 and "missing.json" in done.stderr, done.stderr[-2000:]
