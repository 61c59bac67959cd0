"""The training engine: schedule, batch geometry, configs, and in-process single-rank runs."""

from __future__ import annotations

import datetime
import json
import logging
import math
from pathlib import Path

import pytest
import torch
from engine_utils import COLORS, ROOT, base_overrides, make_color_folder
from safetensors.torch import load_file

from scaleprompt.config import ConfigError
from scaleprompt.engine.checkpoint import CheckpointError
from scaleprompt.engine.config import OptimConfig, load_run_config
from scaleprompt.engine.model import deepspeed_config
from scaleprompt.engine.trainer import Trainer, batch_geometry, lr_at_epoch
from scaleprompt.report.schema import RunResult
from scaleprompt.train import parse_args


def test_lr_schedule_is_constant_warmup_then_cosine_per_epoch():
    opt = OptimConfig(lr=0.1, epochs=5, warmup_epochs=1, warmup_lr=1e-5)
    got = [lr_at_epoch(e, opt) for e in range(5)]
    # Dassl: epoch 0 at 1e-5, then CosineAnnealingLR(T_max=5) from its step 0: 0.05 (1 + cos(pi t / 5))
    expected = [
        1e-5,
        0.1,
        0.05 * (1 + math.cos(math.pi / 5)),
        0.05 * (1 + math.cos(2 * math.pi / 5)),
        0.05 * (1 + math.cos(3 * math.pi / 5)),
    ]
    assert got == pytest.approx(expected)
    assert lr_at_epoch(0, OptimConfig(lr=0.1, epochs=5, warmup_epochs=0)) == pytest.approx(0.1)


def test_batch_geometry_keeps_micro_x_accumulation_x_world_equal_to_the_recipe():
    assert batch_geometry(32, None, 1) == (32, 1)
    assert batch_geometry(32, None, 2) == (16, 1)
    assert batch_geometry(32, 4, 2) == (4, 4)
    with pytest.raises(ConfigError, match="optim.batch_size=32 is not micro_batch_size=5"):
        batch_geometry(32, 5, 2)


def test_deepspeed_config_takes_the_geometry_and_precision_from_the_recipe():
    base = json.loads(Path(ROOT / "ds_configs/zero2.json").read_text())
    cfg = deepspeed_config(base, micro=4, accumulation=2, world=2, precision="bf16")
    geometry = (
        cfg["train_batch_size"],
        cfg["train_micro_batch_size_per_gpu"],
        cfg["gradient_accumulation_steps"],
    )
    assert geometry == (16, 4, 2)
    assert cfg["bf16"]["enabled"] and not cfg["fp16"]["enabled"] and cfg["zero_optimization"]["stage"] == 2
    assert cfg["communication_data_type"] == "fp32"  # (gradients reduced over ranks in fp32)
    assert "communication_data_type" not in deepspeed_config(base, 4, 2, 2, precision="fp32")
    assert base["train_batch_size"] == 32, "the JSON template is not modified"


def test_ds_configs_have_real_numbers():
    for stage in ("zero1", "zero2", "zero3", "zero3_offload"):
        text = Path(ROOT / f"ds_configs/{stage}.json").read_text()
        assert '"auto"' not in text
        assert json.loads(text)["zero_optimization"]["stage"] == int(stage[4])


def test_run_config_errors_name_the_key(tmp_path):
    with pytest.raises(ConfigError, match="optim.lrr"):
        load_run_config(None, ["optim.lrr=0.1"])
    with pytest.raises(ConfigError, match="unknown key 'n_ctxx' in provp_ref"):
        load_run_config(None, ["method.args.n_ctxx=4"])
    with pytest.raises(ConfigError, match="recipe not found"):
        load_run_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="not key=value"):
        load_run_config(None, ["optim.lr"])
    with pytest.raises(ConfigError, match="train.precision"):
        load_run_config(None, ["train.precision=fp8"])
    with pytest.raises(ConfigError, match="data.train_crop_min_scale"):
        load_run_config(None, ["data.train_crop_min_scale=0"])
    with pytest.raises(SystemExit):
        parse_args(["--config", "x.yaml", "--bogus"])
    args, overrides = parse_args(["--local_rank=1", "--ds", "d.json", "optim.lr=0.1"])
    assert args.local_rank == 1 and overrides == ["optim.lr=0.1"]


@pytest.fixture(scope="module")
def colors(tmp_path_factory):
    return make_color_folder(tmp_path_factory.mktemp("colors"), n_train=8, n_val=2, n_test=8)


def run(colors, tmp_path, *extra, resume=False):
    cfg = load_run_config(None, base_overrides(colors, tmp_path / "cache", tmp_path / "out") + list(extra))
    return Trainer(cfg, json.loads(Path(ROOT / "ds_configs/zero1.json").read_text()), resume=resume).fit()


@pytest.mark.slow  # (quick-loop budget: an end-to-end run / processes / a timeout)
def test_best_validation_prompts_equal_to_the_last_are_not_tested_twice(colors, tmp_path, monkeypatch):
    from scaleprompt.engine.evaluate import Evaluator

    calls: list[int] = []
    original = Evaluator.test_all

    def counting(self, model):
        calls.append(1)
        return original(self, model)

    monkeypatch.setattr(Evaluator, "test_all", counting)
    # validated after the last epoch only: the best-validation prompts ARE the last prompts
    res = run(
        colors,
        tmp_path,
        "method.name=coop",
        "method.args.n_ctx=4",
        "optim.epochs=2",
        "eval.every_epochs=0",
        "optim.lr=0.05",
    )
    last, best = res["results"]["last"], res["results"]["best_val"]
    assert res["best_val_epoch"] == 2 and best["test"] == last["test"] and best["val"] == last["val"]
    assert len(calls) == 1  # one test pass (it was two, with identical numbers)
    assert (tmp_path / "out" / "prompts_best_val.safetensors").is_file()


def test_fit_writes_results_prompts_and_checkpoints(colors, tmp_path):
    res = run(colors, tmp_path, "method.name=upt", "optim.lr=0.05", "optim.epochs=3")
    out = tmp_path / "out"
    assert res["format"] == "scaleprompt.run/3" and res["setting"] == "fewshot" and res["world_size"] == 1
    assert [h["epoch"] for h in res["history"]] == [1, 2, 3]
    assert res["history"][-1]["train_loss"] < res["history"][0]["train_loss"]
    assert set(res["results"]) == {"last", "best_val"} and 1 <= res["best_val_epoch"] <= 3
    assert res["results"]["last"]["test"]["images"] == 32
    saved = json.loads((out / "results.json").read_text())
    assert saved["results"] == res["results"]
    assert (out / "checkpoints" / "latest.json").is_file() and len(
        list((out / "checkpoints").glob("step*"))
    ) == 2
    # the exported prompts reproduce the reported test accuracy through the Predictor
    from scaleprompt.predict import Predictor

    predictor = Predictor(out / "prompts.safetensors")
    files = sorted((colors / "test").rglob("*.png"))
    predicted = [top[0][0] for top in predictor.classify_files(files)]
    accuracy = 100 * sum(p == f.parent.name for p, f in zip(predicted, files, strict=True)) / len(files)
    assert accuracy == pytest.approx(res["results"]["last"]["test"]["top1"])


@pytest.mark.slow  # (quick-loop budget: an end-to-end run / processes / a timeout)
def test_a_run_logs_one_line_per_epoch_and_tensorboard_on_one_axis(colors, tmp_path, caplog):
    """The console: one line per epoch (train loss, validation accuracy, lr); TensorBoard: every scalar against
    the global step (the epoch is its own scalar), no image counts as scalars."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    with caplog.at_level(logging.INFO, logger="scaleprompt"):
        res = run(
            colors,
            tmp_path,
            "method.name=coop",
            "method.args.n_ctx=2",
            "optim.epochs=2",
            "train.report_to=tensorboard",
            "train.log_every_steps=1",
        )
    epochs = [r.getMessage() for r in caplog.records if r.getMessage().startswith("epoch ")]
    assert len(epochs) == 2 and epochs[0].startswith("epoch 1/2  train loss ")
    assert f"val top1 {res['history'][1]['val']['top1']:.2f}" in epochs[1] and "  lr " in epochs[1]
    events = EventAccumulator(str(tmp_path / "out" / "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"val/top1", "train/epoch", "train/loss"} <= tags and "val/images" not in tags
    steps = [e.step for e in events.Scalars("val/top1")]
    assert (
        steps == [e.step for e in events.Scalars("train/epoch")] and steps[0] > 1 and steps[1] == 2 * steps[0]
    )
    assert [e.value for e in events.Scalars("train/epoch")] == [1.0, 2.0]


@pytest.mark.slow  # (quick-loop budget: an end-to-end run / processes / a timeout)
def test_base_to_novel_and_transfer_settings(colors, tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="scaleprompt"):
        b2n = run(
            colors,
            tmp_path / "b2n",
            "method.name=coop",
            "method.args.n_ctx=4",
            "eval.setting=base2new",
            "optim.epochs=1",
            "optim.lr=0.01",
            "eval.zero_shot_baseline=true",
        )
    # what it trained and tested on, as the manifests count it: at the start, and in results.json
    data = b2n["data"]
    assert data["splits"] == {"train": {"train": 16, "val": 4, "test": 16}, "novel": {"test": 16}}
    assert sorted(data["classes"]["train"] + data["classes"]["novel"]) == sorted(COLORS)
    said = [r.getMessage() for r in caplog.records]
    name = colors.name
    assert (
        f"data: {name}, base2new, all training images (seed 1): train 16 images (8 per class), val 4, "
        "base test 16, novel test 16"
    ) in said, said
    assert f"base classes (2): {', '.join(data['classes']['train'])}" in said
    assert f"novel classes (2): {', '.join(data['classes']['novel'])}" in said
    assert set(b2n["zero_shot"]) == {"base", "novel", "hm"} and b2n["zero_shot"]["novel"]["images"] == 16
    last = b2n["results"]["last"]
    assert last["base"]["images"] == 16 and last["novel"]["images"] == 16
    assert last["hm"] == pytest.approx(
        2 * last["base"]["top1"] * last["novel"]["top1"] / (last["base"]["top1"] + last["novel"]["top1"])
        if last["base"]["top1"] + last["novel"]["top1"]
        else 0.0
    )
    # predicting with the base-to-novel prompts scores every class, base then novel (the file records the novel
    # ones); the novel test images are classified as accurately as the run's novel test set says, by the same
    # prompts moved to base + novel (a novel image may now also be taken for a base class: not more accurate)
    from scaleprompt.predict import Predictor
    from scaleprompt.promptfile import decode_metadata, read_prompt_bytes

    file = tmp_path / "b2n" / "out" / "prompts.safetensors"
    header = decode_metadata(read_prompt_bytes(file).meta, file)
    base, novel = header["classnames"], header["novel_classnames"]
    assert len(base) == len(novel) == 2 and sorted(base + novel) == sorted(COLORS)
    predictor = Predictor(file)
    assert predictor.classnames == base + novel and "2 base + 2 novel" in predictor.scored
    novel_files = sorted(f for f in (colors / "test").rglob("*.png") if f.parent.name in novel)
    on_all = [top[0][0] for top in predictor.classify_files(novel_files)]
    assert set(on_all) - set(novel) <= set(base)  # (answers come from every class)
    on_novel = Predictor(file, classnames=novel).classify_files(novel_files)
    right = sum(top[0][0] == f.parent.name for top, f in zip(on_novel, novel_files, strict=True))
    assert 100 * right / len(novel_files) == pytest.approx(last["novel"]["top1"])
    assert sum(p == f.parent.name for p, f in zip(on_all, novel_files, strict=True)) <= right
    assert Predictor(file, classnames=base).scored == "the 2 classes given"
    transfer = run(
        colors,
        tmp_path / "tr",
        "method.name=provp",
        "method.args.n_ctx=2",
        "eval.setting=transfer",
        "eval.targets=[FashionMNIST]",
        f"data.root={tmp_path / 'data'}",
        "optim.epochs=1",
    )
    target = transfer["results"]["last"]["targets"]["FashionMNIST"]
    assert target["images"] == 1000 and 0 <= target["top1"] <= 100


def test_zero_shot_runs_without_training(colors, tmp_path):
    res = run(colors, tmp_path, "method.name=zsclip", "optim.epochs=5")
    assert res["epochs"] == 0 and res["history"] == [] and "test" in res["results"]["last"]


@pytest.mark.slow  # (quick-loop budget: an end-to-end run / processes / a timeout)
def test_resume_refuses_corrupt_and_foreign_checkpoints(colors, tmp_path):
    run(colors, tmp_path, "method.name=provp", "method.args.n_ctx=2", "optim.epochs=2")
    ckpts = tmp_path / "out" / "checkpoints"
    latest = json.loads((ckpts / "latest.json").read_text())["tag"]
    with pytest.raises(CheckpointError, match=r"belongs to another run.*method\.config\.n_ctx: 2 -> 3"):
        run(colors, tmp_path, "method.name=provp", "method.args.n_ctx=3", "optim.epochs=3", resume=True)
    victim = sorted(p for p in (ckpts / latest).rglob("*.pt"))[0]
    victim.write_bytes(victim.read_bytes()[:-10] + b"0123456789")
    with pytest.raises(CheckpointError, match=f"corrupt .*{victim.name}"):
        run(colors, tmp_path, "method.name=provp", "method.args.n_ctx=2", "optim.epochs=3", resume=True)
    (ckpts / latest / "COMPLETE.json").unlink()
    with pytest.raises(CheckpointError, match="incomplete or missing"):
        run(colors, tmp_path, "method.name=provp", "method.args.n_ctx=2", "optim.epochs=3", resume=True)


@pytest.mark.slow  # (quick-loop budget: an end-to-end run / processes / a timeout)
def test_resume_continues_where_it_stopped(colors, tmp_path):
    # stop after step 3 (mid-epoch 2 of 2) with a checkpoint every step: the resume needs optimizer, RNG and the
    # data position (random crops) to reach the uninterrupted run's prompts
    common = ["method.name=provp", "method.args.n_ctx=2", "optim.epochs=2", "train.checkpoint_every_steps=1"]
    full = run(colors, tmp_path / "a", *common)
    run(colors, tmp_path / "b", *common, "train.max_steps=3")
    assert (
        json.loads((tmp_path / "b" / "out" / "checkpoints" / "latest.json").read_text())["tag"]
        == "step00000003"
    )
    resumed = run(colors, tmp_path / "b", *common, resume=True)
    a = load_file(tmp_path / "a" / "out" / "prompts.safetensors")["prompts"]
    b = load_file(tmp_path / "b" / "out" / "prompts.safetensors")["prompts"]
    torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    assert resumed["results"]["last"]["test"] == full["results"]["last"]["test"]


@pytest.mark.slow  # (quick-loop budget: an end-to-end run / processes / a timeout)
def test_report_callback_gets_validation_metrics_and_the_epoch_checkpoint(colors, tmp_path):
    """The hook a search trial uses: metrics per validated epoch, after that epoch's checkpoint is complete; the
    last one, marked final, only after results.json and the prompts are written."""
    cfg = load_run_config(
        None,
        base_overrides(colors, tmp_path / "cache", tmp_path / "out")
        + ["method.name=provp", "method.args.n_ctx=2", "optim.epochs=2"],
    )
    calls = []
    out = tmp_path / "out"

    def report(metrics, ckpt):
        files = (out / "results.json").is_file(), (out / "prompts.safetensors").is_file()
        calls.append((metrics, ckpt, files))

    results = Trainer(cfg, None, report=report).fit()
    assert [(m["epoch"], m.get("final", False)) for m, _, _ in calls] == [(1, False), (2, True)]
    assert [files for _, _, files in calls] == [(False, False), (True, True)]
    assert all({"val_top1", "val_mean_per_class", "train_loss", "epochs"} <= set(m) for m, _, _ in calls)
    assert all(c is not None and (c / "COMPLETE.json").is_file() for _, c, _ in calls)
    assert (
        calls[1][0]["val_top1"] == results["history"][-1]["val"]["top1"] and results["stopped_early"] is None
    )


@pytest.mark.slow  # (quick-loop budget: an end-to-end run / processes / a timeout)
def test_finish_evaluates_the_newest_checkpoint_as_stopped_early(colors, tmp_path):
    """What a search does with a trial its scheduler stopped: resume=True + finish=reason trains nothing more and
    writes results.json from the newest checkpoint, labelled with its epoch; the prompts are that epoch's."""
    overrides = base_overrides(colors, tmp_path / "cache", tmp_path / "out") + [
        "method.name=provp",
        "method.args.n_ctx=2",
        "optim.epochs=1",
    ]
    first = Trainer(load_run_config(None, overrides)).fit()  # the state of a trial killed after its epoch 1
    saved = load_file(tmp_path / "out" / "prompts.safetensors")["prompts"]
    (tmp_path / "out" / "results.json").unlink()
    (tmp_path / "out" / "prompts.safetensors").unlink()
    cfg = load_run_config(None, [*overrides, "optim.epochs=3"])  # a 3-epoch schedule: only finish stops it
    results = Trainer(
        cfg, None, resume=True, finish="stopped early by the ASHA scheduler after epoch 1"
    ).fit()
    assert results["stopped_early"] == {
        "epoch": 1,
        "of": 3,
        "reason": "stopped early by the ASHA scheduler after epoch 1",
    }
    assert [h["epoch"] for h in results["history"]] == [1] and results["steps"] == first["steps"]
    torch.testing.assert_close(
        load_file(tmp_path / "out" / "prompts.safetensors")["prompts"], saved, rtol=0, atol=0
    )
    RunResult.from_dict(json.loads((tmp_path / "out" / "results.json").read_text()), "results.json")


def test_bf16_prompts_after_a_step_do_not_depend_on_the_zero_stage():
    """The same bf16 step under ZeRO-2 and under the shipped ZeRO-3 JSON gives the same prompts, bit for bit.
    (DeepSpeed's default ZeRO-3 linear, ``memory_efficient_linear``, adds the bias after the matmul: a second bf16
    rounding that moved CoOp's prompts by ~1e-2 after 3 steps; zero3.json turns it off.)"""
    from scaleprompt.backbone import load_clip
    from scaleprompt.engine.distributed import init_distributed
    from scaleprompt.engine.model import PromptedModel
    from scaleprompt.methods.registry import build

    dist = init_distributed()
    cfg = load_run_config(
        None,
        [
            "method.name=coop",
            "method.args.n_ctx=4",
            "train.precision=bf16",
            "optim.batch_size=2",
            "optim.lr=0.5",
        ],
    )
    g = torch.Generator().manual_seed(0)
    images, labels = torch.randn(2, 3, 32, 32, generator=g), torch.tensor([0, 2])
    linear = torch.nn.functional.linear  # (DeepSpeed's ZeRO-3 linear, if enabled, replaces it process-wide)
    prompts = {}
    try:
        for stage in ("zero2", "zero3"):
            torch.manual_seed(0)
            method = build(
                "coop",
                load_clip("sp-tiny-vit-12", None),
                ["red cat", "blue dog", "green bird"],
                **cfg.method.args,
            )
            ds = json.loads((ROOT / "ds_configs" / f"{stage}.json").read_text())
            model = PromptedModel(method, cfg, ds, dist, micro=2, accumulation=1)
            model.module.train()
            before = model.snapshot()
            for _ in range(2):
                model.module.backward(model.module(images, labels).loss)
                model.module.step()
            prompts[stage] = model.snapshot()
    finally:
        torch.nn.functional.linear = linear
    assert prompts["zero3"]["ctx"].dtype == torch.bfloat16 and not torch.equal(
        prompts["zero3"]["ctx"], before["ctx"]
    )
    torch.testing.assert_close(prompts["zero3"], prompts["zero2"], rtol=0, atol=0)


def test_no_deepspeed_op_is_compiled_and_builds_are_announced_in_a_per_environment_cache(
    tmp_path, monkeypatch, caplog
):
    """A run's process group waits an hour in a collective and starts without DeepSpeed's shm op (inference-only: it would be compiled for minutes
    on a first CPU run); the switch is undone afterwards; a build, when one happens, is announced in one line
    naming the op and its cache, a folder keyed by the Python environment unless TORCH_EXTENSIONS_DIR is set."""
    import deepspeed.ops

    from scaleprompt.engine import distributed

    distributed.init_distributed()  # (this process's group, as a run starts it)
    assert deepspeed.comm.comm.cdb.shm_comm_op is None
    # its collectives wait an hour, not DeepSpeed's 10 minutes (rank 0 may be writing a large dataset's shards)
    gloo = torch.distributed.group.WORLD._get_backend(torch.device("cpu"))
    assert gloo.options._timeout == distributed.collective_timeout() == datetime.timedelta(minutes=60)
    monkeypatch.setenv("SCALEPROMPT_COLLECTIVE_TIMEOUT_MINUTES", "1.5")
    assert distributed.collective_timeout() == datetime.timedelta(seconds=90)
    for bad in ("0", "soon", "-3"):
        monkeypatch.setenv("SCALEPROMPT_COLLECTIVE_TIMEOUT_MINUTES", bad)
        with pytest.raises(ConfigError, match=f"SCALEPROMPT_COLLECTIVE_TIMEOUT_MINUTES='{bad}': a number"):
            distributed.collective_timeout()
    monkeypatch.delenv("SCALEPROMPT_COLLECTIVE_TIMEOUT_MINUTES")
    compatible = deepspeed.ops.__compatible_ops__
    before = dict(compatible)
    with distributed._ops_switched_off(("deepspeed_shm_comm", "no_such_op")):
        assert compatible["deepspeed_shm_comm"] is False and compatible["no_such_op"] is False
    assert compatible == before  # (also an op DeepSpeed never listed is gone again)

    monkeypatch.delenv("TORCH_EXTENSIONS_DIR", raising=False)
    monkeypatch.setenv("SCALEPROMPT_CACHE", str(tmp_path / "cache"))
    here = distributed.extensions_dir()
    assert here.parent == tmp_path / "cache" / "torch_extensions" and here.name.startswith("env-")
    monkeypatch.setattr(distributed.sys, "prefix", "/another/venv")
    assert distributed.extensions_dir() != here  # another environment, another cache
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path / "mine"))
    assert distributed.extensions_dir() == tmp_path / "mine"

    first = distributed.build_notice("cpu_adam", tmp_path / "mine")
    assert "compiling" in first and "cpu_adam" in first and str(tmp_path / "mine") in first
    (tmp_path / "mine" / "cpu_adam").mkdir(parents=True)
    (tmp_path / "mine" / "cpu_adam" / "cpu_adam.so").touch()
    assert "loading its build cached" in distributed.build_notice("cpu_adam", tmp_path / "mine")

    from deepspeed.ops.op_builder.builder import OpBuilder

    monkeypatch.setattr(OpBuilder, "jit_load", lambda self, verbose=True: ("built", self.name))
    monkeypatch.setattr(distributed, "_announcing", False)
    distributed.announce_op_builds()
    builder = deepspeed.ops.op_builder.cpu.CPUAdamBuilder()
    with caplog.at_level(logging.INFO, logger="scaleprompt"):
        assert builder.jit_load() == ("built", builder.name)
    assert [r.getMessage() for r in caplog.records if "DeepSpeed op" in r.getMessage()] == [
        distributed.build_notice(builder.name, tmp_path / "mine")
    ]


def test_evaluation_counts_top1_and_mean_per_class_exactly():
    from scaleprompt.engine.evaluate import evaluate

    batches = [  # (logits standing in for images, labels): predictions 0 1 0 | 2 0
        (torch.tensor([[2.0, 1, 0], [0, 3, 1], [1, 0, 0]]), torch.tensor([0, 1, 2])),
        (torch.tensor([[0.0, 0, 5], [9, 1, 1]]), torch.tensor([2, 1])),
    ]
    result = evaluate(lambda x: x, batches, 3, "cpu", expected_images=5)
    assert result == {"top1": 60.0, "mean_per_class": pytest.approx(200 / 3), "images": 5}
