"""The Python API (scaleprompt.train / evaluate / Predictor) and the examples/ scripts that use it, run as a user
runs them (in this process: what they do is the engine's, tested end to end elsewhere)."""

from __future__ import annotations

import json
import logging
import runpy
import sys
from pathlib import Path

import pytest
from engine_utils import ROOT, make_color_folder

import scaleprompt
from scaleprompt.api import run_config
from scaleprompt.config import ConfigError
from scaleprompt.engine.config import load_run_config


@pytest.fixture(scope="module")
def colors(tmp_path_factory):
    return make_color_folder(tmp_path_factory.mktemp("colors"), n_train=4, n_val=2, n_test=4)


def test_overrides_as_sections_mappings_and_strings_make_the_command_lines_config():
    cli = load_run_config(
        "coop/fewshot_16shot",
        ["optim.epochs=3", "method.args.n_ctx=4", "model.pretrained=null", "data.dataset=folder:/x"],
    )
    as_sections = run_config(
        "coop/fewshot_16shot",
        sections={
            "optim": {"epochs": 3},
            "method": {"args": {"n_ctx": 4}},
            "model": {"pretrained": None},
            "data": {"dataset": "folder:/x"},
        },
    )
    as_mapping = run_config(
        "coop/fewshot_16shot",
        {"optim.epochs": 3, "method.args.n_ctx": 4, "model.pretrained": None, "data.dataset": "folder:/x"},
    )
    as_strings = run_config(
        "coop/fewshot_16shot",
        ["optim.epochs=3", "method.args.n_ctx=4", "model.pretrained=null", "data.dataset=folder:/x"],
    )
    assert as_sections == as_mapping == as_strings == cli
    on_a_config = run_config(load_run_config("coop/fewshot_16shot"), sections={"optim": {"epochs": 3}})
    assert (
        on_a_config.optim.epochs == 3 and on_a_config.method == load_run_config("coop/fewshot_16shot").method
    )
    # a typed string stays a string (the command line would read null / 1e-3 / true as other types)
    assert run_config(None, {"train.output_dir": "null"}).train.output_dir == "null"
    assert run_config(None, {"eval.targets": ["DTD", "EuroSAT"]}).eval.targets == ["DTD", "EuroSAT"]


@pytest.mark.parametrize(
    ("call", "said"),
    [
        (lambda: run_config(None, {"optim.epoch": 3}), "optim.epoch"),
        (lambda: run_config(None, sections={"optimizer": {"lr": 1}}), "unknown config section(s) optimizer"),
        (lambda: run_config(None, sections={"optim": 3}), "optim=...: a section is a mapping"),
        (lambda: run_config(None, "optim.epochs=3"), "a list of key=value strings, or a mapping"),
        (lambda: run_config(None, ["optim.epochs"]), "override 'optim.epochs' is not key=value"),
        (lambda: scaleprompt.train(None, data={"dataset": "folder:/x"}), "no recipe (--config)"),
    ],
)
def test_bad_api_calls_are_config_errors_naming_the_problem(call, said):
    with pytest.raises(ConfigError, match=None) as err:
        call()
    assert said in str(err.value)


def test_training_with_no_recipe_on_a_random_backbone_is_refused_unless_asked_for(capsys):
    from scaleprompt.cli import main

    assert main(["train", "data.dataset=folder:/nowhere"]) == 2
    err = capsys.readouterr().err
    assert "no recipe (--config)" in err and "--config demo" in err and "model.pretrained=null" in err
    # with the weights named (or the random backbone asked for), the run goes on: here to the missing dataset
    assert main(["train", "data.dataset=folder:/nowhere", "model.pretrained=null"]) == 2
    assert "no recipe" not in capsys.readouterr().err
    # the failed run's one-process group stays usable for the process's next run (its rendezvous file is there:
    # without it the next run hung in DeepSpeed's first new_group)
    from scaleprompt.engine import distributed

    assert distributed._rendezvous_file is not None and Path(distributed._rendezvous_file).exists()


def test_the_api_switches_the_command_lines_logging_on_unless_the_caller_set_logging(monkeypatch):
    from scaleprompt import api

    root = logging.getLogger()
    monkeypatch.setattr(root, "handlers", [])
    monkeypatch.setattr(logging.getLogger("scaleprompt"), "handlers", [])
    monkeypatch.setattr(logging.getLogger("scaleprompt"), "level", logging.NOTSET)
    monkeypatch.delenv("RANK", raising=False)
    api._console()
    assert len(root.handlers) == 1 and logging.getLogger("scaleprompt").getEffectiveLevel() == logging.INFO
    mine = logging.NullHandler()
    monkeypatch.setattr(root, "handlers", [mine])
    api._console()
    assert root.handlers == [mine]


def test_scaleprompt_train_is_the_launched_module_and_the_api_function():
    import importlib

    module = importlib.import_module("scaleprompt.train")
    assert scaleprompt.train is module and callable(module) and callable(module.main)
    assert {"train", "evaluate", "Predictor", "RunResult"} <= set(scaleprompt.__all__)
    assert scaleprompt.Predictor.__module__ == "scaleprompt.predict"


def run_example(name: str, argv: list[str], capsys) -> list[str]:
    """The example ``examples/<name>`` run as ``python examples/<name> argv``: its stdout lines."""
    path = ROOT / "examples" / name
    old = sys.argv
    sys.argv = [str(path), *argv]
    try:
        runpy.run_path(str(path), run_name="__main__")
    finally:
        sys.argv = old
    return capsys.readouterr().out.splitlines()


@pytest.mark.slow  # (quick-loop budget: an end-to-end run)
def test_example_train_evaluate_predict(colors, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # (the shard cache: runs/shards under the working folder, as for a user)
    out = tmp_path / "run"
    lines = run_example(
        "train_evaluate_predict.py",
        [
            str(colors),
            "--model",
            "sp-tiny-vit",
            "--pretrained",
            "none",
            "--method",
            "vpt_deep",
            "--shots",
            "0",
        ]
        + ["--epochs", "1", "--out", str(out)],
        capsys,
    )
    results = json.loads((out / "results.json").read_text())
    test = results["results"]["last"]["test"]
    zero_shot = results["zero_shot"]["test"]["top1"]
    assert lines[0] == (
        f"vpt_deep: test top-1 {test['top1']:.2f} on {test['images']} images (zero-shot CLIP {zero_shot:.2f})"
    )
    assert len(lines) == 6 and all(line.startswith(str(colors)) for line in lines[1:])
    assert (out / f"prompts.eval-{colors.name}-fewshot.json").is_file()  # evaluate's file, beside the prompts


@pytest.mark.slow  # (quick-loop budget: an end-to-end run)
def test_notebook_example_on_a_base_to_novel_run(colors, tmp_path, capsys, monkeypatch):
    settings = {
        "recipe": None,
        "overrides": {
            "model.name": "sp-tiny-vit",
            "model.pretrained": None,
            "method.name": "coop",
            "method.args.n_ctx": 2,
            "data.dataset": f"folder:{colors}",
            "data.shots": 0,
            "data.cache_dir": str(tmp_path / "cache"),
            "eval.setting": "base2new",
            "eval.zero_shot_baseline": True,
            "optim.epochs": 1,
            "train.output_dir": str(tmp_path / "run"),
        },
    }
    monkeypatch.setenv("SCALEPROMPT_EXAMPLE_SETTINGS", json.dumps(settings))
    lines = run_example("notebook_base_to_novel.py", [], capsys)
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    last = results["results"]["last"]
    assert lines[1] == (
        f" learned prompts: base {last['base']['top1']:5.2f}  novel {last['novel']['top1']:5.2f}  "
        f"HM {last['hm']:5.2f}"
    )
    assert lines[2] == "scoring the 2 base + 2 novel classes of the base-to-novel run it comes from"
    assert lines[3].endswith("novel-class images right among all 4 classes") and lines[3].split()[2] == "8"
