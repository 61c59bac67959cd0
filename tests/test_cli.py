"""The console script: shards from the embedded dataset, the method check."""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest

from scaleprompt.cli import main

ROOT = Path(__file__).resolve().parents[1]


def test_shards_command_writes_the_embedded_dataset(tmp_path):
    out = tmp_path / "shards"
    rc = main(["shards", "--dataset", "fashion_mnist", "--root", str(tmp_path / "data"), "--out", str(out),
               "--shots", "4", "--seed", "2", "--subset", "base", "--min-shards", "2"])  # fmt: skip
    assert rc == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["classnames"] == ["t-shirt", "trouser", "pullover", "dress", "coat"]
    assert manifest["splits"]["train"]["count"] == 20 and manifest["splits"]["test"]["count"] == 500
    assert (tmp_path / "data" / "fashion_mnist" / "split_zhou_FashionMNIST.json").is_file()


def test_shards_refuses_fewer_images_than_shots_unless_allowed(tmp_path, capsys):
    from engine_utils import make_color_folder

    data = make_color_folder(tmp_path / "colors", n_train=3, n_val=1, n_test=1)
    args = ["shards", "--dataset", f"folder:{data}", "--out", str(tmp_path / "out"), "--shots", "4",
            "--min-shards", "1", "--processes", "1"]  # fmt: skip
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "have fewer than 4 training images for 4-shot" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out" / "manifest.json").exists()
    assert main([*args, "--allow-fewer-shots"]) == 0
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["splits"]["train"]["count"] == 4 * 3  # 4 classes x the 3 images each has


def test_check_command_runs_a_step_and_a_reload_per_method():
    assert main(["check", "--methods", "coop", "provp_ref", "--batch-size", "4"]) == 0


# --- every subcommand and its help ------------------------------------------------------------------------------
def subcommands() -> list[str]:
    from scaleprompt.cli import build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return list(sub.choices)


def test_the_subcommand_list_is_the_documented_one():
    assert set(subcommands()) == {
        "methods", "check", "inspect", "datasets", "recipes", "shards", "results", "train", "eval", "tune",
        "pretrain-microworld", "predict", "convert", "plan", "analyze", "plot",
    }  # fmt: skip


@pytest.mark.parametrize("command", subcommands())
def test_every_subcommand_has_help_whose_usage_names_it(command, capsys):
    with pytest.raises(SystemExit) as exc:
        main([command, "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: scaleprompt {command} "), out[:200]
    undocumented = [
        a.option_strings for a in _subparser(command)._actions if a.help is None and a.option_strings
    ]
    assert not undocumented, f"scaleprompt {command}: options without help: {undocumented}"


@pytest.mark.parametrize("analysis", ["variance", "deviation", "attention"])
def test_every_analysis_has_help_whose_usage_names_it(analysis, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["analyze", analysis, "--help"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.startswith(f"usage: scaleprompt analyze {analysis} ")
    parser = _subparser("analyze")
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[analysis]
    undocumented = [a.option_strings for a in sub._actions if a.help is None and a.option_strings]
    assert not undocumented, f"scaleprompt analyze {analysis}: options without help: {undocumented}"


def _subparser(command: str) -> argparse.ArgumentParser:
    """The parser that handles ``command``, complete (a parser may add some arguments only when first used)."""
    from scaleprompt.cli import build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices[command].complete()


@pytest.mark.parametrize(
    "script,usage",
    [
        ("scaleprompt/train.py", "usage: train.py "),
        ("scaleprompt/evaluate.py", "usage: evaluate.py "),
        ("tune/ablation.py", "usage: tune/ablation.py "),
    ],
)
def test_the_entry_scripts_help_names_them(script, usage):
    out = subprocess.run(
        [sys.executable, script, "--help"], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert out.stdout.startswith(usage), out.stdout[:200]
    if script.endswith("train.py"):  # where the override keys are: listed with their defaults
        assert "data.train_crop_min_scale = 0.08" in out.stdout and "optim.epochs = 10" in out.stdout


def test_methods_lists_every_method_with_a_summary(caplog):
    from scaleprompt.methods import list_methods

    with caplog.at_level(logging.INFO, logger="scaleprompt"):
        assert main(["methods"]) == 0
    heads = [r.getMessage() for r in caplog.records if not r.getMessage().startswith(" ")]
    assert [h.split()[0] for h in heads] == list_methods()
    assert all(len(h.split()) > 2 for h in heads), heads  # a summary after each name
    assert any("n_ctx" in r.getMessage() for r in caplog.records)


def test_datasets_inspect_results_tune_and_pretrain_run(tmp_path, caplog):
    """The subcommands without a test file of their own run from the CLI (shards, check, convert, predict and the
    full sweeps are tested in their own files)."""
    from scaleprompt.backbone import load_clip
    from scaleprompt.methods import build, save_prompts

    with caplog.at_level(logging.INFO, logger="scaleprompt"):
        assert main(["datasets"]) == 0
    assert any(r.getMessage().startswith("FashionMNIST") for r in caplog.records)
    path = save_prompts(
        build("coop", load_clip("sp-tiny-vit", None), ["cat", "dog"], n_ctx=2), tmp_path / "p.safetensors"
    )
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="scaleprompt"):
        assert main(["inspect", str(path)]) == 0
    report = json.loads(caplog.records[-1].getMessage())
    assert report["method"] == "coop" and report["classnames"] == ["cat", "dog"]
    assert report["checksum"] == "verified (tensors_sha256)" and report["tensors"] == {"ctx": [2, 64]}
    assert main(["results", str(tmp_path / "no-runs-here")]) == 2  # one line, exit 2
    assert main(["tune", "--space", str(tmp_path / "missing.yaml")]) == 2
    assert (
        main(["train", "--config", str(tmp_path / "missing.yaml")]) == 2
    )  # = train.py (trained in test_engine)
    out = tmp_path / "micro.safetensors"
    assert main(["pretrain-microworld", "--out", str(out), "--steps", "2", "--eval-per-class", "1"]) == 0
    assert out.is_file()


def test_known_third_party_noise_is_filtered_and_nothing_else(caplog, capsys):
    """The installed filters drop exactly the known messages (checked on the loggers themselves, whatever level
    or propagation other code gave them); a library's print goes to the DEBUG log."""
    import warnings

    from scaleprompt.logs import captured_prints, quiet_third_party

    quiet_third_party()

    def passes(name: str, message: str) -> bool:
        record = logging.LogRecord(name, logging.WARNING, __file__, 0, message, None, None)
        return bool(logging.getLogger(name).filter(record))

    assert not passes("torch.utils.cpp_extension", "No CUDA runtime is found, using CUDA_HOME='/usr'")
    assert passes("torch.utils.cpp_extension", "a real compiler problem")
    assert not passes(
        "DeepSpeed", "**** You are using ZeRO with an untested optimizer, proceed with caution *****"
    )
    assert passes("DeepSpeed", "ZeRO found a real problem")
    with caplog.at_level(logging.DEBUG, logger="scaleprompt"), captured_prints("deepspeed"):
        print("DeepSpeed deepspeed.ops.comm.deepspeed_shm_comm_op built successfully")
    assert capsys.readouterr().out == ""  # the print went to the DEBUG log instead
    assert any(r.levelno == logging.DEBUG and "built successfully" in r.getMessage() for r in caplog.records)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("default")
        quiet_third_party()
        warnings.warn(
            "`torch.distributed.all_gather_into_tensor` is deprecated. Please use x",
            FutureWarning,
            stacklevel=1,
        )
        warnings.warn("something else is deprecated", FutureWarning, stacklevel=1)
    assert [str(w.message) for w in seen] == ["something else is deprecated"]


def test_recipes_lists_the_packaged_names_each_of_which_resolves(caplog):
    from scaleprompt.recipes import resolve_recipe

    with caplog.at_level(logging.INFO, logger="scaleprompt"):
        assert main(["recipes"]) == 0
    lines = [r.getMessage() for r in caplog.records]
    heads = [line for line in lines if not line.startswith(" ")]
    assert [h.split(" (")[0] for h in heads] == ["recipe", "DeepSpeed config", "search space"]
    names = [line.strip() for line in lines if line.startswith(" ")]
    assert {"provp_ref/base2new", "demo", "zero2", "provp_ref"} <= set(names)
    kinds = iter(["config", "ds", "space"])
    kind = None
    for line in lines:
        if not line.startswith(" "):
            kind = next(kinds)
        else:
            assert resolve_recipe(line.strip(), kind).is_file()


def test_version_is_the_installed_projects(capsys):
    """``scaleprompt --version``: the one version source, pyproject.toml's ``[project] version`` as installed."""
    import tomllib

    from scaleprompt import __version__
    from scaleprompt.cli import build_parser

    want = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    with pytest.raises(SystemExit) as done:
        build_parser().parse_args(["--version"])
    assert done.value.code == 0 and capsys.readouterr().out == f"scaleprompt {want}\n"
    assert __version__ == want
