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
    start = time.time()
    launch(sweep_cmd(space, tmp_path / "search", colors, tmp_path), tmp_path)
    assert time.time() - start < 180
    trials = rows(tmp_path / "search")
    assert len(trials) == 4 and all(t["status"] == "ok" for t in trials)
    summary = json.loads((tmp_path / "search" / "sweep" / "summary.json").read_text())
    assert set(summary["best_params"]) == {"method.args.n_ctx", "optim.lr"}
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
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env(tmp_path), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)  # fmt: skip
    deadline = time.time() + 240
    while time.time() < deadline and not list(storage.glob("sweep/*/result.json")):
        time.sleep(0.2)
    while time.time() < deadline and not any(p.stat().st_size for p in storage.glob("sweep/*/result.json")):
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (storage / "sweep" / "trials.csv").exists(), "the driver must die before the sweep ends"
    ray = str(Path(sys.executable).parent / "ray")  # the killed driver's local cluster may outlive it
    subprocess.run([ray, "stop", "--force"], env=env(tmp_path), capture_output=True, check=False, timeout=120)
    launch([*cmd, "--resume"], tmp_path / "resume")
    trials = rows(storage)
    assert len(trials) == 4 and all(t["status"] == "ok" for t in trials), trials
