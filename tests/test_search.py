"""Ablation search: space files and the pre-flight (fast), and real Ray Tune + Optuna sweeps of the engine on CPU
(loopback only): shipped spaces on the micro-world recipes, fail-fast errors, a killed trial retried, a killed
driver resumed, the dashboard and multi-worker DeepSpeed trials."""

from __future__ import annotations

import contextlib
import csv
import functools
import json
import logging
import math
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
import psutil
import pytest
import ray
import torch
from engine_utils import ROOT, base_overrides, env, launch, make_color_folder, swatches_root, with_plugins
from safetensors.torch import load_file

from scaleprompt.cli import main as cli_main
from scaleprompt.config import ConfigError
from scaleprompt.engine import config as engine_config
from scaleprompt.engine.config import RunConfig, load_run_config
from scaleprompt.identity import flatten
from scaleprompt.methods import list_methods, method_class
from scaleprompt.recipes import list_recipes
from scaleprompt.search.options import SearchFailed, SearchOptions
from scaleprompt.search.report import TrialRecord, choose_best, read_results, summarize, write_best_recipe
from scaleprompt.search.space import SearchSpace, SpaceError, check_space, load_space
from scaleprompt.search.trial import TrialJob, nest, sweep_config

SPACE = """
metric: val_top1
mode: max
params:
  method.args.n_ctx: {type: categorical, values: [2, 4]}
  optim.lr: {type: loguniform, low: 0.001, high: 0.1}
"""
SPACES = ROOT / "tune" / "spaces"
MICRO = ROOT / "configs" / "microworld"
NAMES = ["a class"]
TEMPLATES = ["a photo of a {}."]
# micro-world sweeps in minutes: 4 shots of the 32 base classes (4 steps per epoch), 2 epochs
# The micro-world sweeps: the recipes' method, backbone, optimizer and setting on a world of 8 classes (colour and
# shape both differ, cluttered like MicroWorldClutter): base-to-novel is 4 + 4 classes, 400 test images instead of
# the recipes' 3200 (each trial tests all of them; the machinery is what these tests check, not the numbers)
MICRO_FAST = [
    "data.dataset=MicroVarBoth-Loose",
    "data.shots=4",
    "optim.epochs=2",
    "data.num_workers=0",
    "train.log_every_steps=1000",
    "eval.zero_shot_baseline=false",
]


@pytest.fixture(scope="module")
def micro_structures():
    return {}  # the micro-world backbone's structure, built once for the module's pre-flight checks


@pytest.fixture(scope="module")
def micro_shards(tmp_path_factory):
    """One shard cache for the module's micro-world sweeps: their dataset is written to shards once."""
    return tmp_path_factory.mktemp("micro-shards")


@pytest.fixture(scope="module")
def colors(tmp_path_factory):
    return make_color_folder(tmp_path_factory.mktemp("colors"), n_train=8, n_val=2, n_test=4)


def overrides(colors: Path, tmp: Path) -> list[str]:
    return [
        *base_overrides(colors, tmp / "cache", tmp / "unused"),
        "method.name=provp",
        "optim.epochs=2",
        "data.num_workers=0",
    ]


def write(tmp: Path, name: str, text: str) -> Path:
    path = tmp / name
    path.write_text(text)
    return path


# --- spaces and the pre-flight ----------------------------------------------------------------------------------
def test_space_files_are_validated(tmp_path):
    for text, match in [
        ("params:\n  optim.lr: {type: float, low: 0.3, high: 0.2}\n", "high"),
        ("params:\n  method.args.depth: {type: int, low: 1, high: towers}\n", "vision_blocks"),
        ("params:\n  optim.lr: {type: float, low: 0.0, high: blocks}\n", "needs type int"),
        ("params:\n  optim.lr: {type: loguniform, low: 0, high: 1}\n", "low > 0"),
        ("params: {}\n", "no params"),
        ("metric: val_top1\nparms: {}\n", "unknown key"),
    ]:
        with pytest.raises(SpaceError, match=match):
            load_space(write(tmp_path, "s.yaml", text))


def test_preflight_names_unknown_keys_and_methods(tmp_path, colors):
    base = load_run_config(None, overrides(colors, tmp_path))
    for text, match in [
        ("params:\n  method.args.n_ctxx: {type: categorical, values: [2]}\n", "method.args.n_ctxx"),
        ("params:\n  optim.lrr: {type: float, low: 0.1, high: 0.2}\n", "optim.lrr"),
        ("params:\n  method.name: {type: categorical, values: [coop, upt]}\n"
         "  method.args.lam: {type: float, low: 0, high: 1}\n", "no method of the space .* has 'lam'"),
        ("params:\n  method.name: {type: categorical, values: [coop, nosuch]}\n", "nosuch"),
    ]:  # fmt: skip
        with pytest.raises(ConfigError, match=match):
            check_space(load_space(write(tmp_path, "s.yaml", text)), base, NAMES, TEMPLATES)


def test_preflight_builds_the_extremes_on_the_real_backbone(tmp_path, colors):
    """sp-tiny-vit has 2 blocks per tower: depth 5 cannot be built, and the error names the parameter, the range
    and the limit; a backbone bound resolves to the backbone's own size."""
    base = load_run_config(None, overrides(colors, tmp_path))
    space = load_space(
        write(tmp_path, "s.yaml", "params:\n  method.args.depth: {type: int, low: 1, high: 5}\n")
    )
    with pytest.raises(SpaceError) as err:
        check_space(space, base, NAMES, TEMPLATES)
    assert "'method.args.depth' (range [1, 5] (int))" in str(err.value)
    assert "larger than the 2 blocks" in str(err.value) and "high: vision_blocks" in str(err.value)
    space = load_space(
        write(tmp_path, "s.yaml", "params:\n  method.args.depth: {type: int, low: 1, high: vision_blocks}\n")
    )
    assert check_space(space, base, NAMES, TEMPLATES).params["method.args.depth"].high == 2
    # a text context that cannot hold the prompt: CoOp's 40 context tokens on a 16-token text tower
    space = load_space(
        write(tmp_path, "s.yaml", "params:\n  method.args.n_ctx: {type: categorical, values: [4, 40]}\n")
    )
    with pytest.raises(SpaceError, match="n_ctx=40"):
        coop = load_run_config(None, [*overrides(colors, tmp_path), "method.name=coop"])
        check_space(space, coop, NAMES, TEMPLATES)
    # an empty bounded range: low above the backbone's size
    space = load_space(
        write(tmp_path, "s.yaml", "params:\n  method.args.depth: {type: int, low: 3, high: vision_blocks}\n")
    )
    with pytest.raises(SpaceError, match="empty on sp-tiny-vit"):
        check_space(space, base, NAMES, TEMPLATES)


@functools.cache
def recipe_config(recipe: Path) -> RunConfig:
    return load_run_config(recipe)  # (read once: every space of its method checks it)


# what the few-shot recipes of one method differ in: the pre-flight reads none of it (it builds the method on the
# model for placeholder classes and validates each sampled config), so one of them stands for all
SHOT_FIELDS = (("data", "shots"), ("optim", "epochs"), ("train", "output_dir"))


def preflight_view(cfg: RunConfig) -> str:
    view = cfg.to_dict()
    for section, key in SHOT_FIELDS:
        view[section].pop(key)
    return json.dumps(view, sort_keys=True)


@functools.cache
def shipped_pairs() -> list[tuple[Path, Path]]:
    """Every shipped space with every shipped recipe of its method (a space searching ``method.name``: with the
    micro-world and base-to-novel recipe of each method it samples). Recipes that differ only in
    :data:`SHOT_FIELDS` (fewshot_1shot ... fewshot_16shot) are one pair: the first of them."""
    pairs, seen = [], set()
    for space_path in sorted(SPACES.glob("*.yaml")):
        space = load_space(space_path)
        searched = "method.name" in space.params
        # a space not searching method.name is named after its method: <method>.yaml or <method>_<what>.yaml
        own = [m for m in list_methods() if space_path.stem == m or space_path.stem.startswith(f"{m}_")]
        methods = space.params["method.name"].values if searched else [max(own, key=len)]
        for recipe in sorted(ROOT.glob("configs/**/*.yaml")):
            cfg = recipe_config(recipe)
            mine = cfg.method.name in methods and (
                not searched or recipe.parent == MICRO or recipe.name == "base2new.yaml"
            )
            if mine and (space_path, preflight_view(cfg)) not in seen:
                seen.add((space_path, preflight_view(cfg)))
                pairs.append((space_path, recipe))
    return pairs


@pytest.mark.slow
@pytest.mark.parametrize("space_path", sorted(SPACES.glob("*.yaml")), ids=lambda p: p.stem)
def test_shipped_spaces_fit_every_micro_world_recipe(space_path, micro_structures):
    for space, recipe in shipped_pairs():
        if space == space_path and recipe.parent == MICRO:
            check_space(load_space(space), recipe_config(recipe), NAMES, TEMPLATES, micro_structures)


@pytest.mark.slow
def test_shipped_spaces_fit_every_shipped_recipe():
    """The official recipes (ViT-B/16 structures, no weights) too: 5 provp_ref and 5 upt recipes for each of
    their two spaces, the methods space on the base recipe of each method it samples (the micro-world recipes:
    the test above)."""
    pairs, structures = shipped_pairs(), {}
    official = [(space, recipe) for space, recipe in pairs if recipe.parent != MICRO]
    fewshot = [recipe.name for space, recipe in official if space.stem == "upt" and "shot" in recipe.name]
    assert len(official) > 20 and fewshot == ["fewshot_16shot.yaml"], (len(official), fewshot)
    for space, recipe in official:
        check_space(load_space(space), recipe_config(recipe), NAMES, TEMPLATES, structures)


# --- trial configs: derived from the sweep's one base config, as the string path made them -----------------------
def string_path_trial(recipe: str, overrides: list[str], sample: dict, out: Path) -> RunConfig:
    """A trial's config the way the sweep made it before issue 25, kept as the reference: the recipe and every
    ``key=value`` override re-read from strings, with each sampled value as one more ``key=json`` string."""
    base = load_run_config(recipe, overrides)
    method = sample.get("method.name", base.method.name)
    fields = method_class(method).config_class.__dataclass_fields__
    items = [f"method.name={method}"] if "method.name" in sample else []
    items += [
        f"{k}={json.dumps(v)}"
        for k, v in sample.items()
        if k != "method.name" and not (k.startswith("method.args.") and k.split(".", 2)[2] not in fields)
    ]
    chosen = any(o.split("=", 1)[0].strip() == "train.report_to" for o in overrides)
    trackers = [] if chosen or base.train.report_to else ["train.report_to=tensorboard"]
    return load_run_config(recipe, [*trackers, *overrides, *items, f"train.output_dir={out}"])


def tune_like_samples(space: SearchSpace, rng: random.Random) -> list[dict]:
    """What Tune hands a trial: every parameter at its first value / low end, and one random draw (Python ints
    and floats, as tune.randint / uniform / loguniform / choice give them)."""
    draw = {}
    for key, spec in space.params.items():
        if spec.type == "categorical":
            draw[key] = rng.choice(spec.values)
        elif spec.type == "int":
            draw[key] = rng.randint(int(spec.low), int(spec.high))
        elif spec.type == "loguniform":
            draw[key] = math.exp(rng.uniform(math.log(spec.low), math.log(spec.high)))
        else:
            draw[key] = rng.uniform(spec.low, spec.high)
    return [{k: s.extremes()[0] for k, s in space.params.items()}, draw]


def test_trial_configs_derived_from_the_base_config_are_the_string_parsed_ones(tmp_path, monkeypatch):
    """Every packaged space, on the micro-world recipe (and base-to-novel recipe) of each method it samples, with
    and without sweep overrides: the trial config a :class:`TrialJob` derives from the sweep's one base config is
    the one the string path made (the same ``to_dict()``), without reading a file or parsing a string again, and
    a worker rebuilds it from its plain dict in one call."""
    rng, out, compared = random.Random(0), tmp_path / "trial_1" / "run", 0
    bounds = {"vision_blocks": 4, "text_blocks": 4, "blocks": 4}  # (the micro-world CLIP's)
    for name in list_recipes("space"):
        space = load_space(name).resolved(bounds)
        own = [m for m in list_methods() if name == m or name.startswith(f"{m}_")]
        methods = space.params["method.name"].values if "method.name" in space.params else [max(own, key=len)]
        recipes = [f"microworld/{m}" for m in methods]
        recipes += [] if "method.name" in space.params else [f"{m}/base2new" for m in methods]
        for i, recipe in enumerate(recipes):
            overrides = [] if i % 2 else [*MICRO_FAST, "train.report_to=none", "optim.lr=0.5"]
            job = TrialJob(sweep_config(recipe, overrides), space)
            for sample in tune_like_samples(space, rng):
                expected = string_path_trial(recipe, overrides, sample, out).to_dict()
                with monkeypatch.context() as m:  # (no file read, no string parsed: typed values only)
                    m.setattr(engine_config, "read_yaml_mapping", None)
                    m.setattr(engine_config.OmegaConf, "from_dotlist", None)
                    derived = job.trial_config(nest(sample), out)
                assert derived.to_dict() == expected, (name, recipe, overrides, sample)
                rebuilt = load_run_config(derived.to_dict())  # (what a Ray Train worker does with it)
                assert rebuilt.to_dict() == expected
                compared += 1
    assert compared == 30


# a valid results.json (what a trial's run writes; the sweep's files trust nothing less)
RUN = {
    "format": "scaleprompt.run/3",
    "method": "provp_ref",
    "dataset": "folder",
    "setting": "fewshot",
    "shots": 4,
    "seed": 1,
    "backbone": "sp-tiny-vit",
    "pretrained": None,
    "results": {"last": {"test": {"top1": 50.0, "mean_per_class": 50.0, "images": 16}}},
}


def record(trial_id: str, metrics: dict, **params) -> TrialRecord:
    return TrialRecord(trial_id, params, metrics, Path("/nowhere") / trial_id, results=RUN)


def test_best_trial_is_chosen_among_finished_trials_on_validation():
    finished = record("a", {"epoch": 3, "final": True, "val_top1": 70.0}, lr=0.1)
    better_but_stopped = record("b", {"epoch": 1, "val_top1": 90.0}, lr=0.2)
    failed = record("c", {"failed": "ConfigError: x", "val_top1": float("nan")}, lr=0.3)
    finished_best = record("d", {"epoch": 3, "final": True, "val_top1": 75.0}, lr=0.4)
    tie = record("e", {"epoch": 3, "final": True, "val_top1": 75.0}, lr=0.5)
    trials = [finished, better_but_stopped, failed, finished_best, tie]
    assert [t.status for t in trials] == [
        "finished",
        "stopped early at epoch 1",
        "failed: ConfigError: x",
        "finished",
        "finished",
    ]
    assert choose_best(trials, "val_top1", "max") is finished_best  # (the earlier of a tie)
    assert choose_best(trials, "val_top1", "min") is finished
    assert choose_best([better_but_stopped, failed], "val_top1", "max") is None


def test_best_recipe_keeps_the_base_schedule_and_names_its_sweep(tmp_path):
    space = load_space(SPACES / "provp_ref.yaml")
    best = record(
        "t1", {"epoch": 2, "final": True, "val_top1": 61.0}, **{"method.args.depth": 2, "optim.lr": 0.05}
    )
    recipe = str(MICRO / "provp_ref.yaml")
    path = write_best_recipe(recipe, ["optim.epochs=2", "data.shots=4"], space, best, tmp_path)
    cfg = load_run_config(path)
    assert cfg.optim.epochs == 10 and cfg.data.shots == 4  # the recipe's schedule; the other override kept
    assert cfg.method.args["depth"] == 2 and cfg.optim.lr == 0.05 and cfg.method.args["n_ctx"] == 8
    text = path.read_text()
    assert (
        f"# sweep: {tmp_path}" in text
        and "dropped (its shortened schedule" in text
        and "optim.epochs=2" in text
    )
    path = write_best_recipe(recipe, ["optim.epochs=2"], space, best, tmp_path, keep_schedule=True)
    assert load_run_config(path).optim.epochs == 2


def test_a_trial_without_valid_results_is_never_finished_ranked_or_best(tmp_path):
    """Tune recorded these trials as finished (or stopped), but their run folder has no results.json, a broken one,
    or one that is not a run: trials.csv, report.md and summary.json say so, count them with the failed trials, and
    the best trial and its recipe come from the one trial with valid results, although its value is the lowest."""
    space = load_space(write(tmp_path, "space.yaml", SPACE))
    sweep = tmp_path / "sweep"
    final = {"epoch": 2, "epochs": 2, "final": True}
    cases = {  # trial id -> (val_top1, results.json text or None)
        "good": (60.0, json.dumps(RUN)),
        "missing": (90.0, None),
        "broken": (91.0, json.dumps(RUN)[:40]),
        "notarun": (92.0, json.dumps({**RUN, "results": {}})),
    }
    trials = []
    for i, (trial_id, (value, text)) in enumerate(cases.items()):
        run = sweep / f"trial_{trial_id}" / "run"
        run.mkdir(parents=True)
        if text is not None:
            (run / "results.json").write_text(text)
        params = {"method.args.n_ctx": 2 + 2 * (i % 2), "optim.lr": 0.01 * (i + 1)}
        trials.append(TrialRecord(trial_id, params, {**final, "val_top1": value}, run.parent))
    stopped = TrialRecord(
        "stopped",
        {"method.args.n_ctx": 2, "optim.lr": 0.02},
        {"epoch": 1, "val_top1": 99.0},
        sweep / "trial_stopped",
    )
    trials.append(stopped)
    for trial in trials:
        read_results(trial)
    statuses = {t.trial_id: t.status for t in trials}
    assert statuses["good"] == "finished"
    assert (
        statuses["missing"]
        == f"finished without results: {sweep / 'trial_missing/run/results.json'} is missing"
    )
    assert statuses["broken"].startswith(
        f"finished without results: {sweep / 'trial_broken/run/results.json'} is not readable JSON"
    )
    assert statuses["notarun"] == (
        f"finished without results: {sweep / 'trial_notarun/run/results.json'}: results "
        "has no 'last' (last-epoch) results"
    )
    assert statuses["stopped"].startswith("stopped early at epoch 1 without results: ")
    assert choose_best(trials, "val_top1", "max").trial_id == "good"

    study = optuna.create_study(direction="maximize")
    recipe = str(MICRO / "provp_ref.yaml")
    summary = summarize(trials, space, recipe, [], sweep, study, SearchOptions(quiet=True))
    assert (summary["finished"], summary["failed"], summary["without_results"]) == (1, 4, 4)
    assert summary["best_trial"] == "good" and summary["best_metric"] == 60.0
    assert "trial: good, val_top1 = 60" in Path(summary["best_recipe"]).read_text()
    assert {r["trial_id"]: r["status"] for r in rows(tmp_path)} == statuses  # (the sweep is <tmp>/sweep)
    report = (sweep / "report.md").read_text()
    assert (
        "1 finished, 0 stopped early by the scheduler, 4 failed (4 of them ended without a valid results.json"
        in (report)
    )
    assert "`good` (`trial_good/run`)" in report and "| **val_top1** | **60.00** |" in report
    by_value = report.split("### method.args.n_ctx")[1].split("###")[0]
    assert "| 2 | 60.00 | 1 | 0 (—) | 2 |" in by_value and "| 4 | — | 0 | 0 (—) | 2 |" in by_value
    assert (
        f"| missing | finished without results: {sweep / 'trial_missing/run/results.json'} is missing |"
        in report
    )
    with pytest.raises(
        SearchFailed, match=r"no trial of the sweep finished \(3 failed: .*finished without results"
    ):
        summarize(trials[1:4], space, recipe, [], sweep, study, SearchOptions(quiet=True))


# --- real sweeps ------------------------------------------------------------------------------------------------
def sweep_cmd(
    space: Path, storage: Path, *extra: str, recipe: Path | None = None, samples: int = 3, concurrent: int = 2
) -> list[str]:
    config = ["--config", str(recipe)] if recipe else []
    return [
        sys.executable,
        "tune/ablation.py",
        "--space",
        str(space),
        *config,
        "--num-samples",
        str(samples),
        "--max-concurrent",
        str(concurrent),
        "--storage",
        str(storage),
        "--name",
        "sweep",
        *extra,
    ]


def second_driver(cmd: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """The sweep command ``cmd`` (``python tune/ablation.py ...``) run in this process as the file runs it (the
    same ``run_standalone``; the file itself: test_scaleprompt_tune_is_the_same_command), for a driver the sweep
    refuses before Ray and before any trial: its exit code and what it wrote to stderr."""
    from scaleprompt.commands import tune
    from scaleprompt.commands.common import run_standalone

    assert cmd[1] == "tune/ablation.py", cmd[:2]
    capsys.readouterr()
    code = run_standalone(tune, "tune/ablation.py", cmd[2:])
    assert not ray.is_initialized(), "a refused driver starts no Ray"
    return code, capsys.readouterr().err


def rows(storage: Path) -> list[dict]:
    with open(storage / "sweep" / "trials.csv") as fh:
        return list(csv.DictReader(fh))


def check_trial_runs(trials: list[dict], tensorboard: bool = True) -> None:
    """Every finished / stopped trial has a train.py run folder: results.json, prompts, TensorBoard."""
    for trial in trials:
        assert trial["status"] == "finished" or trial["status"].startswith("stopped early at epoch"), trial
        run = Path(trial["trial_dir"]) / "run"
        result = json.loads((run / "results.json").read_text())
        assert (run / "prompts.safetensors").is_file()
        assert any((run / "tensorboard").glob("events.*")) == tensorboard
        stopped = result.get("stopped_early")
        if trial["status"] == "finished":
            assert stopped is None and result["history"][-1]["epoch"] == result["epochs"]
        else:
            assert stopped["epoch"] == int(trial["epoch"]) < result["epochs"] and "ASHA" in stopped["reason"]
            assert result["history"][-1]["epoch"] == stopped["epoch"]
        last = result["results"]["last"]  # (the CSV's test numbers are the trial's results.json)
        split = "hm" if "hm" in last else "test"
        assert (last[split] if split == "hm" else last[split]["top1"]) == pytest.approx(
            float(trial[f"test_{split}"])
        )


@pytest.mark.slow
def test_shipped_provp_ref_space_on_the_micro_world_writes_the_best_trial_as_a_recipe(tmp_path, micro_shards):
    storage = tmp_path / "search"
    cache = f"data.cache_dir={micro_shards}"
    log = launch(
        [*sweep_cmd(SPACES / "provp_ref.yaml", storage, recipe=MICRO / "provp_ref.yaml"), *MICRO_FAST, cache],
        tmp_path,
    )
    trials = rows(storage)
    assert len(trials) == 3
    check_trial_runs(trials)
    text = log.stderr
    for trial in trials:  # a progress line per event
        assert f"trial {trial['trial_id']} started" in text and f"trial {trial['trial_id']} epoch 1/2" in text
    summary = json.loads((storage / "sweep" / "summary.json").read_text())
    finished = [t for t in trials if t["status"] == "finished"]
    assert summary["best_metric"] == max(float(t["val_top1"]) for t in finished)
    assert summary["finished"] == len(finished) and summary["failed"] == 0
    report = (storage / "sweep" / "report.md").read_text()
    assert "### method.args.depth" in report and f"{summary['best_metric']:.2f}" in report
    assert {Path(p).name for p in summary["plots"]} >= {
        "slice.png",
        "timeline.png",
        "intermediate_values.png",
    }
    # the searcher's own study: finished trials COMPLETE, stopped ones PRUNED (with their last value)
    study = optuna.load_study(study_name="sweep", storage=f"sqlite:///{storage / 'sweep' / 'optuna.db'}")
    states = sorted(t.state.name for t in study.trials)
    assert states == sorted("COMPLETE" if t["status"] == "finished" else "PRUNED" for t in trials)
    assert all(t.intermediate_values for t in study.trials if t.state.name == "PRUNED")
    assert sorted(t.params["method/args/depth"] for t in study.trials) == sorted(
        int(t["param.method.args.depth"]) for t in trials
    )
    # the best recipe: base recipe + best params, the recipe's full schedule. Loaded as train.py loads it, it is the
    # best trial's run config key for key but for the schedule, the output folder and the trials' TensorBoard: what
    # the recipe trains is what that trial trained through the engine (compared, not trained a second time)
    recipe = Path(summary["best_recipe"])
    cfg = load_run_config(recipe)
    assert cfg.optim.epochs == 10 and cfg.method.args["depth"] == summary["best_params"]["method.args.depth"]
    best_run = Path(summary["best_run"])
    assert best_run.parent.name == f"trial_{summary['best_trial']}"
    ran, written = flatten(json.loads((best_run / "config.json").read_text())), flatten(cfg.to_dict())
    assert ran.keys() == written.keys()
    differ = {key: (ran[key], written[key]) for key in ran if ran[key] != written[key]}
    assert differ == {
        "optim.epochs": (2, 10),
        "train.output_dir": (str(best_run), str(storage / "sweep" / "best")),
        "train.report_to": (["tensorboard"], []),
    }, differ


@pytest.mark.slow
def test_shipped_upt_space_on_the_micro_world_then_results_and_predict_on_trials(
    tmp_path, micro_shards, caplog
):
    storage = tmp_path / "search"
    # one trial at a time and ASHA judging after epoch 1 of 2: the decisions are deterministic (seeded sampler,
    # seeded CPU training) and this sweep stops a trial early, whose results are then written from its checkpoint
    log = launch(
        [
            *sweep_cmd(
                SPACES / "upt.yaml",
                storage,
                "--quiet",
                "--grace-epochs",
                "1",
                recipe=MICRO / "upt.yaml",
                concurrent=1,
            ),
            *MICRO_FAST,
            "optim.warmup_epochs=0",
            f"data.cache_dir={micro_shards}",
        ],
        tmp_path,
    )
    assert "trial" not in log.stderr  # --quiet
    trials = rows(storage)
    assert len(trials) == 3
    check_trial_runs(trials)
    assert {t["status"] for t in trials} == {"finished", "stopped early at epoch 1"}, trials
    # the commands in this process (the console script itself: test_scaleprompt_tune_is_the_same_command)
    with caplog.at_level(logging.INFO, logger="scaleprompt"):
        assert cli_main(["results", str(storage / "sweep")]) == 0
    table = caplog.text
    assert table.count("| upt (") == 3, table  # one row per trial: a variant each, never averaged
    image = next(micro_shards.rglob("*.tar"))  # any shard: predict needs image files
    import tarfile

    with tarfile.open(image) as tar:
        member = next(m for m in tar.getmembers() if m.name.endswith((".png", ".jpg", ".jpeg")))
        (tmp_path / ("img" + Path(member.name).suffix)).write_bytes(tar.extractfile(member).read())
    prompts = Path(trials[0]["trial_dir"]) / "run" / "prompts.safetensors"
    records = tmp_path / "predicted.jsonl"
    image_file = tmp_path / ("img" + Path(member.name).suffix)
    assert cli_main(["predict", str(prompts), str(image_file), "--output", str(records)]) == 0
    (record,) = [json.loads(line) for line in records.read_text().splitlines()]
    assert "img" in json.dumps(record)


@pytest.mark.slow
def test_an_impossible_range_exits_2_before_any_trial(tmp_path):
    space = write(tmp_path, "space.yaml", "params:\n  method.args.depth: {type: int, low: 1, high: 12}\n")
    start = time.time()
    done = subprocess.run(
        sweep_cmd(space, tmp_path / "search", recipe=MICRO / "provp_ref.yaml"),
        cwd=ROOT,
        env=env(tmp_path),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert time.time() - start < 60
    assert done.returncode == 2, done.stderr[-2000:]
    line = done.stderr.strip().splitlines()[-1]
    assert line.startswith("tune/ablation.py: error: search parameter 'method.args.depth' (range [1, 12]")
    assert "larger than the 4 blocks" in line
    assert not (tmp_path / "search" / "sweep").exists() and "Ray" not in done.stderr


@pytest.mark.slow
def test_deterministic_errors_fail_the_trial_once_and_the_sweep(tmp_path, colors):
    """Trials that raise the project's own error (an unknown dataset, found only when the trial builds its data)
    are failed at once, not retried, and a sweep in which none finished exits 2 naming the error."""
    space = write(
        tmp_path,
        "space.yaml",
        "params:\n  data.dataset: {type: categorical, values: [NoSuchSet]}\n"
        "  optim.lr: {type: loguniform, low: 0.001, high: 0.1}\n",
    )
    done = subprocess.run(
        [*sweep_cmd(space, tmp_path / "search", "--max-failures", "3"), *overrides(colors, tmp_path)],
        cwd=ROOT,
        env=env(tmp_path),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 2, done.stderr[-3000:]
    assert (
        "no trial of the sweep finished (3 failed: 3 x DatasetError: unknown dataset 'NoSuchSet'"
        in done.stderr
    )
    assert "retrying" not in done.stderr
    trials = rows(tmp_path / "search")
    assert [t["status"][:36] for t in trials] == ["failed: DatasetError: unknown datase"] * 3
    assert all(t["training_iteration"] == "1" for t in trials)  # one attempt each
    assert "## Failures" in (tmp_path / "search" / "sweep" / "report.md").read_text()


@pytest.mark.slow
def test_a_killed_driver_resumes_and_completes_the_sweep(tmp_path, colors, ray_tmp, capsys):
    space = write(tmp_path, "space.yaml", SPACE)
    storage = tmp_path / "search"
    # one trial at a time; the first trial's process stops itself (SIGSTOP) once its epoch-2 checkpoint is complete,
    # so the sweep cannot end before the kill: the driver is killed after the first trial's first report, with its
    # second epoch and a whole trial still to run (a window of a second or two otherwise, with the actor taken over)
    cmd = [
        *sweep_cmd(space, storage, "--full-schedule", samples=2, concurrent=1),
        *overrides(colors, tmp_path),
    ]
    own_ray = {"RAY_TMPDIR": str(ray_tmp)}  # (the driver's local cluster: stopped by this test only)
    run_env = {**env(tmp_path), **own_ray}
    proc = subprocess.Popen(
        cmd,
        cwd=ROOT,
        env={**run_env, "SCALEPROMPT_FAILPOINT": "checkpoint.latest_updated@2:SIGSTOP"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
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
    # the killed driver's lock file still names it; the lock itself died with it, and the next driver takes it over
    assert json.loads((storage / "sweep" / ".lock").read_text())["pid"] == proc.pid
    # the killed driver's cluster outlives it (Ray's daemons are sessions of their own)
    stop_processes_under(ray_tmp)
    code, stderr = second_driver(cmd, capsys)
    assert code == 2 and "already holds a sweep: pass --resume" in stderr, stderr[-3000:]
    # the kill as it sometimes lands: while Tune copied its experiment state (a truncated file, which Tune itself
    # cannot restore from); the resume puts back the last complete copy
    (state,) = (storage / "sweep").glob("experiment_state-*.json")
    state.write_bytes(state.read_bytes()[:0])
    resumed = launch([*cmd, "--resume"], tmp_path / "resume", extra_env=own_ray)
    assert f"{state.name} was truncated" in resumed.stderr + resumed.stdout
    trials = rows(storage)
    assert len(trials) == 2 and all(t["status"] == "finished" for t in trials), trials  # (--full-schedule)
    check_trial_runs(trials, tensorboard=False)  # (the sweep's overrides: train.report_to=none)
    assert not processes_under(ray_tmp), "the resumed driver stops its cluster"
    # the resumed driver ran both trials in ONE Ray actor (reuse_actors: the first resumed from its checkpoint, then
    # the second): the second trial's results and prompts are bit for bit those of its run alone, by train.py (a
    # process of its own: one thread from the start, as the actor; the sums of a process that starts with more
    # threads and then sets one differ in the last bits)
    pids = [
        json.loads((Path(t["trial_dir"]) / "result.json").read_text().splitlines()[-1])["pid"] for t in trials
    ]
    assert pids[0] == pids[1], pids
    second = Path(trials[1]["trial_dir"]) / "run"
    got = json.loads((second / "results.json").read_text())
    recipe = write(tmp_path, "second.yaml", json.dumps(got["config"]))
    alone = tmp_path / "alone"
    launch(
        [sys.executable, "scaleprompt/train.py", "--config", str(recipe), f"train.output_dir={alone}"],
        tmp_path / "a",
    )
    want = json.loads((alone / "results.json").read_text())
    for results in (got, want):
        results.pop("timing")
        results["config"]["train"]["output_dir"] = "<run>"
    assert got == want
    a, b = load_file(second / "prompts.safetensors"), load_file(alone / "prompts.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture
def ray_tmp():
    """A Ray temp folder of the test's own (``RAY_TMPDIR``; short: Ray's unix sockets live under it), so that the test
    stops that cluster only, never another test's; whatever still runs under it is stopped at the end, pass or
    fail."""
    folder = Path(tempfile.mkdtemp(prefix="sp-rk-", dir="/tmp"))
    yield folder
    stop_processes_under(folder)
    shutil.rmtree(folder, ignore_errors=True)


def processes_under(folder: Path) -> list[psutil.Process]:
    """The processes whose command line names ``folder`` (a Ray cluster's GCS, raylet and dashboard name its temp
    folder) and their descendants (agents and workers, renamed ``ray::...``), this one excepted."""
    found: dict[int, psutil.Process] = {}
    for proc in psutil.process_iter(["pid", "cmdline"]):
        if proc.pid != os.getpid() and str(folder) in " ".join(proc.info["cmdline"] or []):
            with contextlib.suppress(psutil.NoSuchProcess):
                found.update({p.pid: p for p in [proc, *proc.children(recursive=True)]})
    return list(found.values())


def stop_processes_under(folder: Path) -> None:
    """SIGKILL the processes of :func:`processes_under` (``ray stop --force`` would stop every cluster of the
    machine, other tests' included) and wait until they are gone."""
    procs = processes_under(folder)
    for proc in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.kill()
    psutil.wait_procs(procs, timeout=30)
    assert not processes_under(folder), "the killed driver's Ray cluster survived SIGKILL"


@pytest.mark.slow
def test_one_driver_per_sweep_and_a_killed_trial_is_retried_from_its_checkpoint(tmp_path, colors, capsys):
    """While a driver runs a trial of the sweep, a second driver of it (--resume, or fresh) exits 2 at once with one
    line naming the holder, before Ray: it restarts no trial (no run.attempt-N) and the first driver finishes every
    trial with its results. (The first driver is held by SIGSTOP meanwhile, so it cannot end first.)

    The same sweep's trial worker SIGKILLs itself once its epoch-2 checkpoint is complete (before reporting it):
    Tune retries the trial, which resumes from the newest complete checkpoint and finishes epoch 3."""
    import socket

    space = write(tmp_path, "space.yaml", SPACE)
    storage = tmp_path / "search"
    cmd = [
        *sweep_cmd(space, storage, "--full-schedule", samples=1, concurrent=1),
        *overrides(colors, tmp_path),
        "optim.epochs=3",
    ]
    run_env = {**env(tmp_path), "SCALEPROMPT_FAILPOINT": "checkpoint.latest_updated@2"}
    log = tmp_path / "first.log"
    with open(log, "w") as fh:
        first = subprocess.Popen(
            cmd, cwd=ROOT, env=run_env, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        deadline = time.time() + 300
        while (
            time.time() < deadline
            and first.poll() is None
            and not any(p.stat().st_size for p in storage.glob("sweep/*/result.json"))
        ):
            time.sleep(0.05)
        assert first.poll() is None, "the sweep ended before a trial reported: " + log.read_text()[-3000:]
        os.kill(first.pid, signal.SIGSTOP)  # (the driver only: its trial keeps its Ray worker)
        sweep_json = (storage / "sweep" / "sweep.json").read_bytes()
        for extra in (["--resume"], []):
            code, stderr = second_driver([*cmd, *extra], capsys)
            assert code == 2, stderr[-3000:]
            (line,) = stderr.strip().splitlines()
            assert line.startswith(
                f"tune/ablation.py: error: sweep {storage / 'sweep'} is in use by pid {first.pid} "
                f"on host {socket.gethostname()} (since "
            ), line
            assert line.endswith("one driver per sweep: wait for it to end (or stop it), then --resume"), line
        assert (storage / "sweep" / "sweep.json").read_bytes() == sweep_json
        assert not list(storage.glob("sweep/*/run.attempt-*"))
        os.kill(first.pid, signal.SIGCONT)
        assert first.wait(timeout=600) == 0, log.read_text()[-3000:]
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
    text = log.read_text()
    assert "infrastructure fault" in text and "retrying from its last checkpoint" in text, text[-3000:]
    (trial,) = rows(storage)
    assert trial["status"] == "finished", trial
    check_trial_runs([trial], tensorboard=False)
    assert not list(storage.glob("sweep/*/run.attempt-*"))
    result = json.loads((Path(trial["trial_dir"]) / "run" / "results.json").read_text())
    assert [h["epoch"] for h in result["history"]] == [1, 2, 3]
    sessions = result["timing"]["sessions"]
    assert (
        len(sessions) == 2 and sessions[1]["from_checkpoint"].startswith("step") and sessions[1]["epoch"] == 2
    )


LOOPBACK = {"127.0.0.1", "::1", "::ffff:127.0.0.1"}


def listeners(root: int) -> set[tuple[str, int]]:
    """(address, port) of every TCP socket in LISTEN state of the process ``root`` and its descendants (a sweep's
    driver: Ray's services and workers, the trials' ranks). Not the whole machine's: a test on the other xdist
    worker may listen elsewhere meanwhile (torchrun's rendezvous store listens on every interface)."""
    try:
        tree = {root, *(p.pid for p in psutil.Process(root).children(recursive=True))}
    except psutil.NoSuchProcess:
        return set()
    return {
        (c.laddr.ip, c.laddr.port)
        for c in psutil.net_connections(kind="tcp")
        if c.status == psutil.CONN_LISTEN and c.pid in tree
    }


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
def test_dashboard_and_multi_worker_deepspeed_trials_listen_on_loopback_only(tmp_path, plugin_site):
    """--dashboard serves on 127.0.0.1 and prints its URL; each trial is a 2-worker Ray Train + DeepSpeed run, here
    of an installed plug-in's method (vpt_shallow) on its dataset (Swatches): the driver's space check and both
    workers of the Ray trial see them."""
    import urllib.request

    space = write(tmp_path, "space.yaml", SPACE)
    storage = tmp_path / "search"
    port = free_port()
    cmd = [
        *sweep_cmd(
            space,
            storage,
            "--dashboard",
            "--dashboard-port",
            str(port),
            "--workers-per-trial",
            "2",
            "--ds",
            "ds_configs/zero2.json",
            "--cpus-per-trial",
            "2",
            samples=1,  # (one trial shows it: a second one ran the same 2-worker code path)
            concurrent=1,
        ),
        *overrides(tmp_path / "unused", tmp_path),
        "optim.epochs=1",
        "method.name=vpt_shallow",
        "data.dataset=Swatches",
        f"data.root={swatches_root(tmp_path / 'datasets')}",
    ]
    log = tmp_path / "driver.log"
    with open(log, "w") as fh:
        proc = subprocess.Popen(
            cmd,
            cwd=ROOT,
            env=with_plugins(env(tmp_path), plugin_site),
            stdout=fh,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    seen: set[tuple[str, int]] = set()
    version = None
    try:
        deadline = time.time() + 400
        while proc.poll() is None and time.time() < deadline:
            seen |= listeners(proc.pid)
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
    assert ("127.0.0.1", port) in seen, sorted(seen)
    assert {a for a, _ in seen} <= LOOPBACK, sorted(seen)
    trials = rows(storage)
    assert len(trials) == 1 and all(t["status"] == "finished" for t in trials), trials
    for trial in trials:
        result = json.loads((Path(trial["trial_dir"]) / "run" / "results.json").read_text())
        assert result["world_size"] == 2 and (result["method"], result["dataset"]) == (
            "vpt_shallow",
            "Swatches",
        )
        shards = {p.name for p in Path(trial["trial_dir"]).glob("train/checkpoint_*/**/*optim_states.pt")}
        assert any("rank_0" in n for n in shards) and any("rank_1" in n for n in shards), shards


@pytest.mark.slow
def test_bad_search_options_exit_with_a_named_error(tmp_path, colors):
    space = write(tmp_path, "space.yaml", SPACE)
    base = [sys.executable, "tune/ablation.py", "--space", str(space), *overrides(colors, tmp_path)]
    for flag, value, name in [("--num-samples", "0", "num_samples"), ("--gpus-per-trial", "1.5", "gpus_per_trial"),
                              ("--cpus-per-trial", "0", "cpus_per_trial")]:  # fmt: skip
        done = subprocess.run(
            [*base, flag, value], cwd=ROOT, env=env(tmp_path), capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 2 and name in done.stderr, done.stderr[-2000:]
    done = subprocess.run(
        [*base, "--ds", str(tmp_path / "missing.json")],
        cwd=ROOT,
        env=env(tmp_path),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2 and "missing.json" in done.stderr, done.stderr[-2000:]


def test_scaleprompt_tune_is_the_same_command(tmp_path):
    scaleprompt = str(Path(sys.executable).parent / "scaleprompt")
    mine = subprocess.run([scaleprompt, "tune", "--help"], capture_output=True, text=True, env=env(tmp_path))
    shim = subprocess.run(
        [sys.executable, "tune/ablation.py", "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=env(tmp_path),
    )
    assert mine.returncode == shim.returncode == 0
    assert mine.stdout.startswith("usage: scaleprompt tune") and shim.stdout.startswith(
        "usage: tune/ablation.py"
    )
    flags = [
        [line.split()[0] for line in out.stdout.splitlines() if line.startswith("  -")]
        for out in (mine, shim)
    ]
    assert flags[0] == flags[1] and len(flags[0]) > 15
    assert "--max-failures MAX_FAILURES" in mine.stdout and "(default: 2)" in mine.stdout


def test_a_gpu_workers_local_rank_is_its_device_index_among_the_gpus_it_sees():
    """DeepSpeed takes LOCAL_RANK as the CUDA device index; Ray shows each GPU worker only its own GPU."""
    from scaleprompt.search.trial import device_local_rank

    assert [device_local_rank(k, 1) for k in range(4)] == [
        0,
        0,
        0,
        0,
    ]  # one GPU each: cuda:0 for every worker
    assert [device_local_rank(k, 2) for k in range(4)] == [0, 1, 0, 1]  # (two GPUs each)
    assert [device_local_rank(k, 8) for k in range(8)] == list(range(8))  # every GPU of the node visible
    assert [device_local_rank(k, 0) for k in range(3)] == [0, 1, 2]  # CPU workers keep theirs


def test_gpu_requests_that_would_share_or_hide_a_gpu_are_refused():
    SearchOptions(gpus_per_trial=2, workers_per_trial=2)  # (one whole GPU per worker)
    SearchOptions(gpus_per_trial=0.5)  # (a one-worker trial may share a GPU)
    for gpus, workers in ((1, 2), (3, 2), (0.5, 2)):
        with pytest.raises(ConfigError, match="needs whole GPUs of its own"):
            SearchOptions(gpus_per_trial=gpus, workers_per_trial=workers)
    SearchOptions().check_gpus(0)  # a CPU machine
    SearchOptions(gpus_per_trial=1).check_gpus(8)
    with pytest.raises(ConfigError, match=r"--gpus-per-trial 0 on a machine with 8 GPU\(s\)"):
        SearchOptions().check_gpus(8)


def test_only_the_projects_own_errors_are_deterministic():
    """A trial fails without retries only for the project's errors, found through causes and Ray Train's
    per-worker failures; anything else (a lost worker, out of memory) is an infrastructure fault."""
    from scaleprompt.data.shards import DataError
    from scaleprompt.search.trial import deterministic_error

    config = ConfigError("depth=5 is larger than the 2 blocks of the tower")
    try:
        try:
            raise config
        except ConfigError as exc:
            raise RuntimeError("trial failed") from exc
    except RuntimeError as wrapped:
        assert deterministic_error(wrapped) is config

    class WorkerGroupError(Exception):  # the shape of Ray Train's error: failures by worker rank
        def __init__(self, failures):
            super().__init__("2 workers failed")
            self.worker_failures = failures

    shard = DataError("shard train-000001.tar: sample 'x' has label 9 outside 0..4")
    assert deterministic_error(WorkerGroupError({0: MemoryError(), 1: shard})) is shard
    assert deterministic_error(WorkerGroupError({0: MemoryError()})) is None
    assert deterministic_error(RuntimeError("actor died")) is None


def test_a_truncated_driver_state_is_restored_from_the_killed_driver_s_staging_copy(tmp_path):
    """The repair of a resume: every state file of the broken session comes back together from the staging folder
    (one save), pickles are checked with pickletools (never unpickled); without a staging copy: a named error."""
    import pickle

    from scaleprompt.config import ConfigError
    from scaleprompt.search.driver_state import is_complete, repair_driver_state

    session = "2026-01-01_00-00-00"
    sweep, ray_temp = tmp_path / "storage" / "sweep", tmp_path / "ray"
    staging = ray_temp / "session_1" / "artifacts" / "2026-01-01_00-00-00" / "sweep" / "driver_artifacts"
    files = {
        f"experiment_state-{session}.json": json.dumps({"trial_data": [1, 2, 3]}).encode(),
        f"search_gen_state-{session}.json": pickle.dumps({"counter": 3}),  # (a pickle, whatever its name)
        f"searcher-state-{session}.pkl": pickle.dumps({"space": list(range(50))}),
    }
    for folder in (sweep, staging):
        folder.mkdir(parents=True)
        for name, data in files.items():
            (folder / name).write_bytes(data)
    assert repair_driver_state(sweep, ray_temp) == []  # (complete: left alone)
    state = sweep / f"experiment_state-{session}.json"
    state.write_bytes(b"")  # killed while copying
    (sweep / f"searcher-state-{session}.pkl").write_bytes(pickle.dumps({"space": "a newer save"}))
    assert not is_complete(state) and not is_complete(staging.parent / "missing.pkl")
    assert sorted(repair_driver_state(sweep, ray_temp)) == sorted(files)
    assert {name: (sweep / name).read_bytes() for name in files} == files  # one save, all of it
    searcher = sweep / f"search_gen_state-{session}.json"
    searcher.write_bytes(files[searcher.name][:-3])
    shutil.rmtree(ray_temp)
    with pytest.raises(ConfigError, match=f"search_gen_state-{session}.json is truncated"):
        repair_driver_state(sweep, ray_temp)


def test_the_sweep_lock_names_its_holder_and_leaves_no_empty_sweep_folder(tmp_path):
    """In-process checks of the driver's lock (the two-driver sweep test runs real drivers): a second holder is
    refused naming the first; a sweep folder made only for the lock goes away with it; an unwritable storage is
    one named error."""
    import socket

    from scaleprompt.errors import OutputError
    from scaleprompt.locks import LockError
    from scaleprompt.search.driver import sweep_lock

    sweep = tmp_path / "storage" / "sweep"
    with sweep_lock(sweep):
        with pytest.raises(LockError) as err, sweep_lock(sweep):
            pass
        assert f"sweep {sweep} is in use by pid {os.getpid()} on host {socket.gethostname()}" in str(
            err.value
        )
        assert str(err.value).endswith("one driver per sweep: wait for it to end (or stop it), then --resume")
    assert not sweep.exists()  # (no sweep.json was written: nothing is left)
    with sweep_lock(sweep):
        (sweep / "sweep.json").write_text("{}")
    assert (sweep / "sweep.json").is_file()
    (tmp_path / "file").write_text("")
    bad = tmp_path / "file" / "sweep"
    with pytest.raises(OutputError, match=f"cannot lock the sweep folder {bad}: "), sweep_lock(bad):
        pass


def test_a_trial_restarted_from_scratch_sets_an_earlier_attempt_aside(tmp_path):
    """A driver killed before a trial's first report leaves that trial's run folder on the storage without a Tune
    checkpoint; the resumed sweep restarts the trial from scratch, in an empty folder (the engine refuses a folder
    that holds a run), and the earlier attempt is kept beside it."""
    from scaleprompt.search.trial import set_aside_earlier_attempt

    out = tmp_path / "trial_x" / "run"
    assert set_aside_earlier_attempt(out) is None  # nothing there
    out.mkdir(parents=True)
    assert set_aside_earlier_attempt(out) is None and out.is_dir()  # empty: used as it is
    for attempt in (1, 2):
        (out / "checkpoints").mkdir(parents=True)
        (out / "config.json").write_text(str(attempt))
        kept = set_aside_earlier_attempt(out)
        assert kept == tmp_path / "trial_x" / f"run.attempt-{attempt}" and not out.exists()
        assert (kept / "config.json").read_text() == str(attempt) and (kept / "checkpoints").is_dir()
