"""Experiment trackers (``train.report_to``): the setting's validation, TensorBoard and Weights & Biases (offline:
no network) on one x-axis, the global step, in single-process runs, and the trackers of sweep trials."""

from __future__ import annotations

import csv
import json
import os
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
from engine_utils import ROOT, base_overrides, env, make_color_folder

from scaleprompt.config import ConfigError
from scaleprompt.engine.config import load_run_config
from scaleprompt.engine.trackers import TensorBoardTracker, WandbTracker, make_trackers, report_targets
from scaleprompt.identity import compare

RECIPE = ROOT / "configs" / "microworld" / "coop.yaml"  # (train.report_to: none)
SPACE = "metric: val_top1\nmode: max\nparams:\n  optim.lr: {type: loguniform, low: 0.001, high: 0.1}\n"


# --- the setting --------------------------------------------------------------------------------------------------
def test_report_to_takes_one_tracker_several_or_none():
    assert load_run_config(None, []).train.report_to == ["tensorboard"]  # the default
    assert load_run_config(None, ["train.report_to=wandb"]).train.report_to == ["wandb"]
    both = ["tensorboard", "wandb"]
    assert load_run_config(None, ["train.report_to=[tensorboard,wandb]"]).train.report_to == both
    assert load_run_config(None, ["train.report_to=tensorboard,wandb"]).train.report_to == both
    assert load_run_config(None, ["train.report_to=none"]).train.report_to == []
    assert load_run_config(RECIPE).train.report_to == []  # (a recipe's `report_to: none`)
    assert report_targets([" TensorBoard", "tensorboard", "wandb"]) == both
    assert report_targets([]) == [] and report_targets(["none"]) == []
    # the config a run writes (config.json, results.json, best_recipe.yaml) loads back as the same setting
    cfg = load_run_config(None, ["train.report_to=[wandb,tensorboard]"])
    again = load_run_config(None, [f"train.report_to={json.dumps(cfg.to_dict()['train']['report_to'])}"])
    assert again.train.report_to == ["wandb", "tensorboard"]


def test_a_bad_report_to_is_an_error_naming_the_key(tmp_path):
    with pytest.raises(ConfigError, match=r"train.report_to: unknown tracker 'tensorbord'; choose from tensorboard, "
                       r"wandb \(several: train.report_to=\[tensorboard,wandb\]\) or none"):  # fmt: skip
        load_run_config(None, ["train.report_to=tensorbord"])
    with pytest.raises(ConfigError, match="train.report_to: 'none' cannot be combined with other trackers"):
        load_run_config(None, ["train.report_to=[none,wandb]"])
    with pytest.raises(ConfigError, match="train.report_to"):
        load_run_config(None, ["train.report_to=1"])
    # the removed boolean names its replacement, as an override and in an older recipe file
    with pytest.raises(ConfigError, match=r"train.tensorboard: .*replaced by train.report_to.*"
                       r"train.tensorboard=false is train.report_to=none"):  # fmt: skip
        load_run_config(None, ["train.tensorboard=false"])
    old = tmp_path / "old.yaml"
    old.write_text("train:\n  output_dir: runs/x\n  tensorboard: true\n")
    with pytest.raises(ConfigError, match="train.tensorboard: .*replaced by train.report_to"):
        load_run_config(old)


def test_wandb_requested_but_not_installed_is_a_config_error_before_the_run(monkeypatch, tmp_path):
    # import wandb raises ImportError, find_spec finds nothing
    monkeypatch.setitem(sys.modules, "wandb", None)
    with pytest.raises(
        ConfigError, match=r"train.report_to: wandb is not installed: pip install 'scaleprompt\[wandb\]'"
    ):
        load_run_config(None, ["train.report_to=[tensorboard,wandb]"])
    assert load_run_config(None, ["train.report_to=tensorboard"]).train.report_to == ["tensorboard"]
    with pytest.raises(ConfigError, match="train.report_to: wandb cannot be imported"):
        WandbTracker(tmp_path, {})
    assert not (tmp_path / "wandb").exists()


def test_report_to_may_change_on_resume_and_so_may_the_removed_tensorboard_key():
    saved = {"train.report_to": ["tensorboard"], "optim.lr": 0.1}
    refusals, changes = compare(saved, {"train.report_to": ["tensorboard", "wandb"], "optim.lr": 0.1}, 1)
    assert refusals == [] and [c["field"] for c in changes] == ["train.report_to"]
    # a checkpoint written before train.report_to existed
    refusals, changes = compare({"train.tensorboard": True, "optim.lr": 0.1},
                                {"train.report_to": [], "optim.lr": 0.1}, 1)  # fmt: skip
    assert refusals == [] and {c["field"] for c in changes} == {"train.tensorboard", "train.report_to"}


# --- TensorBoard --------------------------------------------------------------------------------------------------
def scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar of a TensorBoard folder: tag -> [(step, value)] (what TensorBoard shows: purged steps hidden)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder))
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def test_tensorboard_tracker_hides_what_an_interrupted_session_logged_after_the_checkpoint(tmp_path):
    first = TensorBoardTracker(tmp_path / "tensorboard")
    for step in (1, 2, 3, 4):
        first.log({"train/loss": float(step), "train/epoch": step // 2, "val/images": True}, step)
    first.close()  # (killed after step 4; the checkpoint it resumes from is at step 2)
    (again,) = make_trackers("tensorboard", tmp_path, {}, resume_step=2)
    for step in (3, 4, 5):
        again.log({"train/loss": 10.0 * step}, step)
    again.close()
    got = scalars(tmp_path / "tensorboard")
    assert got["train/loss"] == [(1, 1.0), (2, 2.0), (3, 30.0), (4, 40.0), (5, 50.0)]
    assert set(got) == {"train/loss", "train/epoch"}  # (a bool is not a scalar)


def hparams_records(folder: Path) -> tuple[dict, list[str]]:
    """The hparams plugin's records of a TensorBoard folder: (the run's hyperparameters, the metric tags)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    events = EventAccumulator(str(folder))
    events.Reload()
    content = events.PluginTagToContent("hparams")
    start = plugin_data_pb2.HParamsPluginData.FromString(
        content["_hparams_/session_start_info"]
    ).session_start_info
    hparams = {k: v.WhichOneof("kind") and getattr(v, v.WhichOneof("kind")) for k, v in start.hparams.items()}
    experiment = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"]).experiment
    return hparams, [m.name.tag for m in experiment.metric_infos]


def b2n_results() -> dict:
    """A base-to-novel run's results.json (the schema's own writer) with best-validation and zero-shot numbers."""
    from scaleprompt.report.schema import Accuracy, RunResult, SelectionResult

    def sel(base: float, novel: float) -> SelectionResult:
        return SelectionResult(val=Accuracy(base, base), base=Accuracy(base, base - 1, 50),
                               novel=Accuracy(novel, novel - 1, 50), hm=2 * base * novel / (base + novel))  # fmt: skip

    return RunResult(method="coop", dataset="OxfordPets", setting="base2new", shots=16, seed=1, backbone="ViT-B-16",
                     pretrained="openai", results={"last": sel(80.0, 70.0), "best_val": sel(81.0, 69.0)}, steps=12,
                     zero_shot=sel(70.0, 74.0),
                     config={"optim": {"lr": 0.002, "epochs": 3}, "method": {"name": "coop", "args": {"n_ctx": 4}},
                             "train": {"report_to": ["tensorboard"], "max_steps": None}}).to_dict()  # fmt: skip


def test_final_numbers_and_hyperparameters_go_to_the_runs_own_tensorboard_folder(tmp_path):
    """Test, best-validation and zero-shot numbers as scalars at the last step, and the hyperparameters through
    the hparams plugin (the final numbers its metrics), in the run's own event folder (no timestamped subfolder)."""
    from scaleprompt.engine.trackers import log_results

    tracker = TensorBoardTracker(tmp_path / "tensorboard")
    tracker.log({"train/loss": 1.0}, 12)
    log_results([tracker], b2n_results())
    tracker.close()
    folder = tmp_path / "tensorboard"
    assert [p for p in folder.iterdir() if p.is_dir()] == []
    got = scalars(folder)
    final = {tag: values for tag, values in got.items() if tag != "train/loss"}
    assert {tag: values[0][1] for tag, values in final.items()} == pytest.approx({
        "test/base/top1": 80.0, "test/base/mean_per_class": 79.0, "test/novel/top1": 70.0,
        "test/novel/mean_per_class": 69.0, "test/hm": 2 * 80 * 70 / 150,
        "test_best_val/base/top1": 81.0, "test_best_val/base/mean_per_class": 80.0, "test_best_val/novel/top1": 69.0,
        "test_best_val/novel/mean_per_class": 68.0, "test_best_val/hm": 2 * 81 * 69 / 150,
        "zero_shot/base/top1": 70.0, "zero_shot/base/mean_per_class": 69.0, "zero_shot/novel/top1": 74.0,
        "zero_shot/novel/mean_per_class": 73.0, "zero_shot/hm": 2 * 70 * 74 / 144,
    })  # fmt: skip
    assert {values[0][0] for values in final.values()} == {12}  # (the run's last step)
    hparams, metrics = hparams_records(folder)
    assert hparams == {"optim.lr": 0.002, "optim.epochs": 3.0, "method.name": "coop", "method.args.n_ctx": 4.0,
                       "train.report_to": '["tensorboard"]', "train.max_steps": "null"}  # fmt: skip
    assert sorted(metrics) == sorted(final)


# --- Weights & Biases, offline ------------------------------------------------------------------------------------
def wandb_core_children() -> list[int]:
    """Processes of wandb's service (wandb-core) started by this process."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            parent = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
            if parent == os.getpid() and b"wandb-core" in (proc / "cmdline").read_bytes():
                found.append(int(proc.name))
        except (OSError, IndexError, ValueError):
            continue  # (the process ended meanwhile)
    return found


@pytest.fixture
def offline_wandb(tmp_path, monkeypatch):
    """W&B in offline mode with every file in ``tmp_path`` (no network, no login, no error reports, quiet); its
    service process is shut down afterwards."""
    wandb = pytest.importorskip("wandb")
    for name in ("WANDB_API_KEY", "WANDB_PROJECT", "WANDB_ENTITY", "WANDB_RUN_GROUP", "WANDB_DIR", "WANDB_RESUME",
                 "WANDB_RUN_ID"):  # fmt: skip
        monkeypatch.delenv(name, raising=False)
    home = tmp_path / "wandb-home"
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_ERROR_REPORTING", "false")
    monkeypatch.setenv("WANDB_DISABLE_CODE", "true")
    for name, sub in (("WANDB_CONFIG_DIR", "config"), ("WANDB_CACHE_DIR", "cache"), ("WANDB_DATA_DIR", "data"),
                      ("WANDB_ARTIFACT_DIR", "artifacts")):  # fmt: skip
        monkeypatch.setenv(name, str(home / sub))
    yield wandb
    wandb.teardown()
    assert wandb_core_children() == [], "wandb's service process outlived the test"


def read_wandb_file(path: Path) -> list:
    """The records of a W&B run file, read with W&B's own protobuf schema from its LevelDB-style log (a 7-byte
    header, 32 KiB blocks, records split across blocks)."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    if len(data) < 7:
        return []
    assert struct.unpack("<4sHB", data[:7]) == (b":W&B", 0xBEE1, 0), path
    records, pos, chunk = [], 7, b""
    while pos + 7 <= len(data):
        if 32768 - pos % 32768 < 7:  # (block trailer)
            pos += 32768 - pos % 32768
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if kind == 0 and length == 0 or pos + 7 + length > len(data):
            break
        chunk += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # a full record, or the last piece of one
            record = wandb_internal_pb2.Record()
            record.ParseFromString(chunk)
            records.append(record)
            chunk = b""
    return records


def wandb_records(out: Path, timeout: float = 60.0) -> list[list]:
    """The records of every W&B session (run file) under ``out/wandb``, oldest first. W&B's service writes a run's
    file after ``finish`` returns: wait until every file holds its exit record."""
    deadline = time.monotonic() + timeout
    while True:
        sessions = [read_wandb_file(p) for p in (out / "wandb").glob("*run-*/run-*.wandb")]
        finished = all(exit_code(records) is not None for records in sessions)
        if finished or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    return sorted(sessions, key=started)


def started(records: list) -> int:
    """When a session started (ns; 0 for a file not written yet)."""
    runs = [r.run for r in records if r.WhichOneof("record_type") == "run"]
    return runs[0].start_time.ToNanoseconds() if runs else 0


def history(records: list) -> dict[str, list[tuple[int, float]]]:
    """key -> [(step, value)] of the logged scalars (W&B's own ``_*`` keys left out)."""
    out: dict[str, list[tuple[int, float]]] = {}
    for record in records:
        if record.WhichOneof("record_type") == "history":
            for item in record.history.item:
                key = item.key or "/".join(item.nested_key)
                if not key.startswith("_"):
                    out.setdefault(key, []).append((record.history.step.num, json.loads(item.value_json)))
    return out


def run_record(records: list):
    return next(r.run for r in records if r.WhichOneof("record_type") == "run")


def exit_code(records: list) -> int | None:
    return next((r.exit.exit_code for r in records if r.WhichOneof("record_type") == "exit"), None)


@pytest.mark.slow  # (quick-loop budget: an end-to-end run / processes / a timeout)
def test_wandb_tracker_offline_logs_on_the_step_and_a_resume_continues_the_same_run(offline_wandb, tmp_path):
    out = tmp_path / "run"
    tracker = WandbTracker(out, {"train": {"seed": 3}})
    assert tracker.run.settings.mode == "offline"
    tracker.log({"train/loss": 2.0, "train/lr": 0.1}, 1)
    tracker.log({"train/loss": 1.0, "val/images": True, "train/epoch": 1}, 2)  # (a bool is not a scalar)
    tracker.close()
    run_id = (out / "wandb" / "run_id").read_text().strip()
    assert run_id == tracker.run_id and len(run_id) == 8
    (records,) = wandb_records(out)
    expected = {"train/loss": [(1, 2.0), (2, 1.0)], "train/lr": [(1, 0.1)], "train/epoch": [(2, 1)]}
    assert history(records) == expected
    run = run_record(records)
    assert run.run_id == run_id and run.project == "scaleprompt" and exit_code(records) == 0
    assert {item.key: json.loads(item.value_json) for item in run.config.update}["train"] == {"seed": 3}
    # --resume continues the run, a failed session is marked so; a fresh run in the same folder is a new W&B run
    resumed = WandbTracker(out, {"train": {"seed": 3}}, resume=True)
    resumed.log({"train/loss": 0.5}, 3)
    resumed.close(failed=True)
    fresh = WandbTracker(out, {}, resume=False)
    fresh.close()
    first, second, third = wandb_records(out)
    assert run_record(second).run_id == run_id and history(second) == {"train/loss": [(3, 0.5)]}
    assert exit_code(second) == 1
    assert run_record(third).run_id == fresh.run_id != run_id
    assert (out / "wandb" / "run_id").read_text().strip() == fresh.run_id


# --- runs ---------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def colors(tmp_path_factory):
    return make_color_folder(tmp_path_factory.mktemp("colors"), n_train=8, n_val=2, n_test=8)


def train(colors: Path, tmp: Path, *extra: str, resume: bool = False) -> dict:
    from scaleprompt.engine.trainer import Trainer

    overrides = [*base_overrides(colors, tmp / "cache", tmp / "out"), "method.name=coop", "method.args.n_ctx=2",
                 "train.log_every_steps=1", *extra]  # fmt: skip
    ds = json.loads((ROOT / "ds_configs" / "zero1.json").read_text())
    return Trainer(load_run_config(None, overrides), ds, resume=resume).fit()


@pytest.mark.slow  # (quick-loop budget: an end-to-end run / processes / a timeout)
def test_a_run_reports_to_tensorboard_and_wandb_on_the_global_step(offline_wandb, colors, tmp_path):
    """Both trackers get the same scalars against the global step: the epoch is a scalar of its own, image counts
    are not scalars."""
    res = train(colors, tmp_path, "optim.epochs=2", "train.report_to=[tensorboard,wandb]")
    out = tmp_path / "out"
    tb = scalars(out / "tensorboard")
    (records,) = wandb_records(out)
    wb = history(records)
    assert set(tb) == set(wb)
    assert {"train/loss", "train/lr", "train/accuracy", "train/epoch", "val/top1"} <= set(tb)
    assert not [key for key in tb if "images" in key and key != "train/images_per_second"]
    steps = res["steps"]
    assert [s for s, _ in tb["train/loss"]] == [s for s, _ in wb["train/loss"]] == list(range(1, steps + 1))
    assert tb["train/epoch"] == [(steps // 2, 1.0), (steps, 2.0)]
    assert wb["train/epoch"] == [(steps // 2, 1), (steps, 2)]
    assert [v for _, v in wb["val/top1"]] == pytest.approx([h["val"]["top1"] for h in res["history"]])
    assert [v for _, v in tb["val/top1"]] == pytest.approx([v for _, v in wb["val/top1"]])
    run = run_record(records)
    config = {item.key: json.loads(item.value_json) for item in run.config.update}
    assert config["train"]["report_to"] == ["tensorboard", "wandb"] and config["method"]["name"] == "coop"
    assert run.display_name == "/".join(out.resolve().parts[-2:])  # (<its parent folder>/out)
    assert exit_code(records) == 0


def test_a_short_run_logs_its_loss_each_epoch_and_its_final_numbers_to_tensorboard(colors, tmp_path):
    """``train.log_every_steps`` larger than the run: the loss curve still has the last step of every epoch (a CoOp
    run once had no train/loss curve at all); the test and zero-shot numbers and the hyperparameters follow."""
    res = train(colors, tmp_path, "optim.epochs=2", "train.report_to=tensorboard", "train.log_every_steps=1000",
                "eval.zero_shot_baseline=true")  # fmt: skip
    folder = tmp_path / "out" / "tensorboard"
    got = scalars(folder)
    steps = res["steps"]
    assert [s for s, _ in got["train/loss"]] == [steps // 2, steps]
    assert got["test/top1"] == [(steps, pytest.approx(res["results"]["last"]["test"]["top1"]))]
    assert got["zero_shot/top1"] == [(steps, pytest.approx(res["zero_shot"]["test"]["top1"]))]
    hparams, metrics = hparams_records(folder)
    assert hparams["method.name"] == "coop" and hparams["optim.epochs"] == 2 and "test/top1" in metrics
    assert [p for p in folder.iterdir() if p.is_dir()] == []


def test_report_to_none_writes_no_tracker_files(colors, tmp_path):
    train(colors, tmp_path, "optim.epochs=1", "train.report_to=none")
    out = tmp_path / "out"
    assert (out / "results.json").is_file()
    assert not (out / "tensorboard").exists() and not (out / "wandb").exists()


@pytest.mark.slow  # (quick-loop budget: an end-to-end run / processes / a timeout)
def test_a_failed_session_closes_its_trackers_and_the_resume_continues_them(offline_wandb, colors, tmp_path,
                                                                             monkeypatch):  # fmt: skip
    """A run that raises closes its trackers (W&B: exit code 1) and releases its folder; ``--resume`` continues the
    same W&B run and the same TensorBoard curves, on the global step."""
    import scaleprompt.engine.trainer as trainer_module

    def boom(name: str) -> None:
        if name == "run.final_evaluation":
            raise RuntimeError("injected")

    monkeypatch.setattr(trainer_module, "failpoint", boom)
    both = "train.report_to=[tensorboard,wandb]"
    with pytest.raises(RuntimeError, match="injected"):
        train(colors, tmp_path, "optim.epochs=1", both)  # (epoch 1 is checkpointed, then the run fails)
    monkeypatch.undo()
    res = train(colors, tmp_path, "optim.epochs=2", both, resume=True)
    out = tmp_path / "out"
    first, second = wandb_records(out)
    run_id = (out / "wandb" / "run_id").read_text().strip()
    assert run_record(first).run_id == run_record(second).run_id == run_id
    assert (exit_code(first), exit_code(second)) == (1, 0)
    steps = res["steps"]
    assert history(first)["train/epoch"] == [(steps // 2, 1)]
    assert history(second)["train/epoch"] == [(steps, 2)]
    assert [s for s, _ in history(second)["train/loss"]] == list(range(steps // 2 + 1, steps + 1))
    tb = scalars(out / "tensorboard")
    assert tb["train/epoch"] == [(steps // 2, 1.0), (steps, 2.0)]
    assert [s for s, _ in tb["train/loss"]] == list(range(1, steps + 1))


# --- sweep trials -------------------------------------------------------------------------------------------------
def trial_trackers(tmp_path: Path, recipe: Path | None, *overrides: str) -> list[str]:
    """The trackers one trial of a sweep (``scaleprompt tune ... key=value``) reports to."""
    from scaleprompt.search.space import load_space
    from scaleprompt.search.trial import TrialJob, sweep_config

    space_file = tmp_path / "space.yaml"
    space_file.write_text(SPACE)
    job = TrialJob(sweep_config(recipe, overrides), load_space(space_file))
    return job.trial_config({"optim": {"lr": 0.01}}, tmp_path / "trial_1" / "run").train.report_to


def test_sweep_trials_report_to_tensorboard_unless_the_sweep_or_its_recipe_says_otherwise(tmp_path):
    assert trial_trackers(tmp_path, RECIPE) == ["tensorboard"]  # (the recipe: none)
    assert trial_trackers(tmp_path, None) == ["tensorboard"]
    assert trial_trackers(tmp_path, RECIPE, "train.report_to=none") == []
    assert trial_trackers(tmp_path, RECIPE, "train.report_to=[tensorboard,wandb]") == ["tensorboard", "wandb"]
    recipe = tmp_path / "wandb.yaml"
    recipe.write_text("train:\n  report_to: wandb\n")
    assert trial_trackers(tmp_path, recipe) == ["wandb"]
    assert trial_trackers(tmp_path, recipe, "train.report_to=tensorboard") == ["tensorboard"]


@pytest.mark.slow
def test_a_sweep_trial_reports_to_tensorboard_and_wandb_offline(tmp_path, colors):
    """``scaleprompt tune ... train.report_to=[tensorboard,wandb]``: each trial's run folder holds both, W&B
    configured by the sweep's environment (offline, the sweep as the W&B group) and named after the trial."""
    pytest.importorskip("wandb")
    (tmp_path / "space.yaml").write_text(SPACE)
    overrides = [*base_overrides(colors, tmp_path / "cache", tmp_path / "unused"), "method.name=coop",
                 "method.args.n_ctx=2", "optim.epochs=2", "data.num_workers=0",
                 "train.report_to=[tensorboard,wandb]"]  # fmt: skip
    cmd = [sys.executable, "tune/ablation.py", "--space", str(tmp_path / "space.yaml"), "--num-samples", "1",
           "--max-concurrent", "1", "--storage", str(tmp_path / "search"), "--name", "sweep", *overrides]  # fmt: skip
    run_env = {k: v for k, v in env(tmp_path).items() if not k.startswith("WANDB_")}
    home = str(tmp_path / "wandb-home")
    run_env.update(WANDB_MODE="offline", WANDB_SILENT="true", WANDB_ERROR_REPORTING="false", WANDB_CONFIG_DIR=home,
                   WANDB_CACHE_DIR=home, WANDB_DATA_DIR=home, WANDB_RUN_GROUP="sweep")  # fmt: skip
    done = subprocess.run(cmd, cwd=ROOT, env=run_env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    with open(tmp_path / "search" / "sweep" / "trials.csv") as fh:
        (trial,) = list(csv.DictReader(fh))
    assert trial["status"] == "finished"
    run = Path(trial["trial_dir"]) / "run"
    tb = scalars(run / "tensorboard")
    (records,) = wandb_records(run)
    wb = history(records)
    assert [s for s, _ in wb["val/top1"]] == [s for s, _ in tb["val/top1"]] and len(wb["val/top1"]) == 2
    assert [v for _, v in wb["train/epoch"]] == [1, 2]
    info = run_record(records)
    assert info.run_group == "sweep" and info.display_name == f"{run.parent.name}/run"
    assert exit_code(records) == 0
