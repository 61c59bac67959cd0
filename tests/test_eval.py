"""``scaleprompt eval``: a prompt file tested as training tests its prompts, with the same shard cache and schema.

The bar: evaluating a training run's exported prompts reproduces that run's test numbers exactly (same config,
same world size), in every setting, also under the deepspeed launcher."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from pathlib import Path

import pytest
from engine_utils import (
    ROOT,
    base_overrides,
    deepspeed_cmd,
    env,
    launch,
    make_color_folder,
    swatches_root,
    with_plugins,
)

from scaleprompt.cli import main
from scaleprompt.engine.config import load_run_config
from scaleprompt.engine.trainer import Trainer
from scaleprompt.report.load import load_runs
from scaleprompt.report.schema import RunResult


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """A source dataset named EuroSAT (so fixed-text methods take EuroSAT's template there) and a second colour
    set as a transfer target (the default template)."""
    root = tmp_path_factory.mktemp("evaldata")
    source = make_color_folder(root / "EuroSAT", n_train=8, n_val=2, n_test=8)
    target = make_color_folder(root / "colours", n_train=1, n_val=1, n_test=6, seed=5)
    return source, target


def train(source: Path, tmp: Path, *extra: str) -> dict:
    overrides = base_overrides(source, tmp / "cache", tmp / "run") + [
        "optim.epochs=2",
        "optim.lr=0.05",
        *extra,
    ]
    cfg = load_run_config(None, overrides)
    return Trainer(cfg, json.loads((ROOT / "ds_configs/zero1.json").read_text())).fit()


def evaluate(*argv: str) -> dict:
    out = Path(argv[argv.index("--output") + 1])
    assert main(["eval", *argv]) == 0
    return json.loads(out.read_text())


@pytest.fixture(scope="module")
def b2n(data, tmp_path_factory):
    """A base-to-novel UPT run with validation (last and best_val) and the zero-shot baseline: (folder, results)."""
    tmp = tmp_path_factory.mktemp("b2n")
    results = train(data[0], tmp, "method.name=upt", "eval.setting=base2new", "eval.zero_shot_baseline=true")
    return tmp, results


@pytest.mark.slow
def test_eval_reproduces_the_run_s_last_and_best_validation_numbers(b2n, tmp_path):
    folder, trained = b2n
    shards_before = sorted(p.name for p in (folder / "cache").iterdir())
    run = folder / "run"
    last = evaluate(str(run / "prompts.safetensors"), "--output", str(tmp_path / "last.json"))
    assert last["results"] == {
        "last": trained["results"]["last"]
    }  # val, base, novel, HM: every count and digit
    best = evaluate(str(run / "prompts_best_val.safetensors"), "--output", str(tmp_path / "best.json"))
    assert best["results"] == {"best_val": trained["results"]["best_val"]}
    assert sorted(p.name for p in (folder / "cache").iterdir()) == shards_before  # the run's own shards
    assert last["data"] == trained["data"] and last["config"]["data"] == trained["config"]["data"]
    evaluated = best["evaluated"]
    assert evaluated["selection"] == "best_val" and evaluated["epoch"] == trained["best_val_epoch"]
    assert evaluated["run"] == str(run.resolve()) and len(evaluated["sha256"]) == 64
    assert (
        last["epochs"] == 0 and last["steps"] == 0 and last["history"] == [] and last["setting"] == "base2new"
    )
    # the file is a valid run result, read back by the tables (its only selection is the file's)
    RunResult.from_dict(best, "best.json")
    assert [r.result.results.keys() for r in load_runs([tmp_path / "best.json"])] == [{"best_val"}]


@pytest.mark.slow
def test_eval_in_transfer_matches_the_training_run(data, tmp_path):
    """Transfer with a fixed-text method whose template is the dataset's (ProVP: EuroSAT's template on the source,
    the default one on the target, as in training)."""
    source, target = data
    transfer = train(
        source,
        tmp_path / "tr",
        "method.name=provp",
        "method.args.n_ctx=2",
        "eval.setting=transfer",
        f'eval.targets=["folder:{target}"]',
    )
    got = evaluate(str(tmp_path / "tr/run/prompts.safetensors"), "--output", str(tmp_path / "tr.json"))
    assert got["results"]["last"] == transfer["results"]["last"]
    assert set(got["results"]["last"]["targets"]) == {"colours"}


@pytest.mark.slow
def test_eval_of_a_file_outside_its_run_takes_flags_and_reports_zero_shot(data, b2n, tmp_path):
    """No config.json beside the file: the defaults + flags; the file decides method and backbone. The same
    prompts on base2new through the flags give the run's numbers; zero-shot CLIP is tested on the same sets."""
    source, _ = data
    folder, trained = b2n
    alone = tmp_path / "alone" / "p.safetensors"
    alone.parent.mkdir()
    shutil.copy(folder / "run/prompts.safetensors", alone)
    flags = [
        "--dataset",
        f"folder:{source}",
        "--setting",
        "base2new",
        "--shots",
        "0",
        f"data.cache_dir={folder / 'cache'}",
        "data.min_shards=2",
        "data.num_workers=1",
    ]
    got = evaluate(str(alone), *flags, "--zero-shot", "--output", str(tmp_path / "alone.json"))
    assert got["results"]["last"]["base"] == trained["results"]["last"]["base"]
    assert got["results"]["last"]["novel"] == trained["results"]["last"]["novel"]
    assert got["zero_shot"] == trained["zero_shot"] and got["method"] == "upt"
    assert got["config"]["model"]["name"] == "sp-tiny-vit" and got["evaluated"]["selection"] == "last"
    assert main(["eval", str(alone), *flags]) == 0
    default = alone.with_name("p.eval-EuroSAT-base2new.json")  # (the default output path)
    assert json.loads(default.read_text())["results"] == got["results"]


@pytest.fixture(scope="module")
def csc(data, tmp_path_factory) -> Path:
    """The run folder of a class-specific CoOp training run (2 epochs, validation)."""
    tmp = tmp_path_factory.mktemp("csc")
    train(data[0], tmp, "method.name=coop", "method.args.n_ctx=2", "method.args.class_specific=true")
    return tmp / "run"


def test_bad_evaluations_are_one_line_errors(csc, tmp_path, capsys):
    prompts = str(csc / "prompts.safetensors")
    assert main(["eval", str(tmp_path / "missing.safetensors")]) == 2
    assert "prompt file not found" in capsys.readouterr().err
    assert main(["eval", prompts, "model.name=sp-tiny-vit-12"]) == 2
    assert "were trained on sp-tiny-vit" in capsys.readouterr().err
    assert (
        main(["eval", prompts, "--setting", "base2new"]) == 2
    )  # class-specific prompts belong to their classes
    assert "class_specific" in capsys.readouterr().err
    assert main(["eval", prompts, "eval.nonsense=1"]) == 2
    assert "eval.nonsense" in capsys.readouterr().err
    assert main(["eval", prompts, "method.args.n_ctx=4"]) == 2  # (the file decides: never silently replaced)
    assert "decides the method" in capsys.readouterr().err


def test_inspect_reads_every_file_a_training_run_writes(csc, caplog, capsys):
    """The run's exports carry plain-string selection / epoch / run entries (before: JSONDecodeError) and a
    verified checksum; a checkpoint's bare best prompts are refused in one line."""
    for name, selection in (("prompts.safetensors", "last"), ("prompts_best_val.safetensors", "best_val")):
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="scaleprompt"):
            assert main(["inspect", str(csc / name)]) == 0
        report = json.loads(caplog.records[-1].getMessage())
        assert report["selection"] == selection and report["run"] == str(csc.resolve())
        assert report["epoch"].isdigit() and report["method"] == "coop" and report["config"]["n_ctx"] == 2
        assert report["checksum"].startswith("verified") and report["non_finite_values"] == {}
        assert report["classnames"] == ["blue", "green", "red", "yellow"]
    for best in sorted(csc.rglob("best_prompts.safetensors")):
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="scaleprompt"):
            code = main(["inspect", str(best)])
        if code == 0:  # (a checkpoint that keeps its best prompts as a prompt file)
            assert json.loads(caplog.records[-1].getMessage())["checksum"].startswith("verified")
        else:
            err = capsys.readouterr().err
            assert code == 2 and len(err.splitlines()) == 1 and "is not a scaleprompt prompt file" in err


@pytest.mark.slow
def test_eval_records_the_hash_selection_and_epoch_of_the_bytes_it_evaluated(b2n, tmp_path, monkeypatch):
    """The file is replaced by another export between reading it and evaluating (as training's final export
    replaces its files): the results, sha256, selection and epoch are all those of the bytes read (before: the
    old file's selection and epoch beside the new file's prompts and hash). The new file is the run's best_val
    export with its prompts set to NaN (a valid checksum): evaluating it instead could not pass unnoticed."""
    import torch
    from safetensors import safe_open
    from safetensors.torch import save_file

    from scaleprompt.engine import assembly
    from scaleprompt.methods.io import tensors_sha256

    folder, trained = b2n
    run = tmp_path / "run"
    run.mkdir()
    for name in ("config.json", "prompts.safetensors"):
        shutil.copy(folder / "run" / name, run / name)
    with safe_open(str(folder / "run/prompts_best_val.safetensors"), framework="pt") as fh:
        meta = fh.metadata()
        tensors = {k: torch.full_like(fh.get_tensor(k), float("nan")) for k in fh.keys()}  # noqa: SIM118
    save_file(tensors, str(tmp_path / "new.safetensors"), {**meta, "tensors_sha256": tensors_sha256(tensors)})
    last = (run / "prompts.safetensors").read_bytes()
    build_setting = assembly.build_setting

    def replace_the_file_then_build(cfg):
        shutil.copy(tmp_path / "new.safetensors", run / "new")
        os.replace(run / "new", run / "prompts.safetensors")
        return build_setting(cfg)

    monkeypatch.setattr(assembly, "build_setting", replace_the_file_then_build)
    got = evaluate(str(run / "prompts.safetensors"), "--output", str(tmp_path / "got.json"))
    assert (run / "prompts.safetensors").read_bytes() == (
        tmp_path / "new.safetensors"
    ).read_bytes()  # (it was)
    assert got["evaluated"]["sha256"] == hashlib.sha256(last).hexdigest()
    assert (got["evaluated"]["selection"], got["evaluated"]["epoch"]) == ("last", trained["epochs"])
    assert got["results"] == {"last": trained["results"]["last"]}


@pytest.mark.slow
def test_eval_under_the_deepspeed_launcher_reproduces_a_two_rank_run(tmp_path, plugin_site):
    """Train base-to-novel on 2 ranks (ZeRO-2), evaluate its prompts on 2 ranks: the same numbers. (Both under the
    deepspeed launcher: its file rendezvous listens on loopback only; torchrun's store listens on every interface.)
    The data is an installed plug-in's dataset (Swatches, examples/plugin): every rank of both launches sees it."""
    overrides = base_overrides(tmp_path / "unused", tmp_path / "cache", tmp_path / "run") + [
        "data.dataset=Swatches",
        f"data.root={swatches_root(tmp_path / 'datasets')}",
        "method.name=maple",
        "method.args.prompt_depth=2",
        "optim.epochs=1",
        "optim.lr=0.05",
        "eval.setting=base2new",
    ]
    plugins = with_plugins(env(tmp_path), plugin_site)
    cmd = deepspeed_cmd(2, "scaleprompt/train.py", "--ds", "ds_configs/zero2.json", *overrides)
    launch(cmd, tmp_path, extra_env=plugins)
    trained = json.loads((tmp_path / "run/results.json").read_text())
    out = tmp_path / "eval.json"
    proc = launch(
        deepspeed_cmd(
            2,
            "scaleprompt/evaluate.py",
            str(tmp_path / "run/prompts.safetensors"),
            "--ds",
            "ds_configs/zero2.json",
            "--output",
            str(out),
        ),
        tmp_path / "eval",  # (a fresh file rendezvous)
        extra_env=with_plugins(env(tmp_path / "eval"), plugin_site),
    )
    got = json.loads(out.read_text())
    assert got["world_size"] == 2 and got["results"]["last"] == trained["results"]["last"]
    assert trained["dataset"] == got["dataset"] == "Swatches"
    assert "prompts.safetensors: last, epoch 1" in proc.stderr + proc.stdout


def test_a_saved_fixed_text_method_keeps_the_template_rule(tmp_path):
    """A fixed-text method whose templates came from its dataset is saved as such: loaded, it classifies with the
    saved template, and moved to another dataset it takes that dataset's template, as in training. Templates set
    by the recipe stay on every dataset."""
    from scaleprompt.backbone import load_clip
    from scaleprompt.methods import build, load_prompts, save_prompts

    backbone = load_clip("sp-tiny-vit")
    satellite, plain = ("a centered satellite photo of {}.",), ("a photo of a {}.",)
    for args, on_target in (({}, plain), ({"templates": ["{} seen from above."]}, ("{} seen from above.",))):
        trained = build("provp", backbone, ["red", "green"], dataset_templates=satellite, n_ctx=2, **args)
        path = save_prompts(trained, tmp_path / "p.safetensors")
        loaded = load_prompts(path, backbone)
        assert loaded.class_prompts() == trained.class_prompts()
        trained.set_classnames(["blue", "yellow"], plain)
        loaded.set_classnames(["blue", "yellow"], plain)
        assert (
            loaded.class_prompts()
            == trained.class_prompts()
            == [[t.format(c) for c in ("blue", "yellow")] for t in on_target]
        )
