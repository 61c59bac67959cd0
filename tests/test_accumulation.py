"""Gradient accumulation: the loop's optimizer-step boundary is the one DeepSpeed steps at."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from engine_utils import ROOT, base_overrides, make_color_folder
from safetensors.torch import load_file

from scaleprompt.engine.config import load_run_config
from scaleprompt.engine.trainer import Trainer

ZERO1 = json.loads((ROOT / "ds_configs/zero1.json").read_text())
# global batch 16 = micro batch 8 x 2 accumulation steps; a checkpoint after every optimizer step
ARGS = [
    "method.name=coop",
    "method.args.n_ctx=4",
    "optim.lr=0.05",
    "optim.epochs=1",  # (2 optimizer steps: the step-1 checkpoint is mid-epoch)
    "optim.micro_batch_size=8",
    "train.checkpoint_every_steps=1",
    "train.keep_checkpoints=10",
    "train.log_every_steps=1",
]


@pytest.fixture(scope="module")
def colors(tmp_path_factory):
    return make_color_folder(tmp_path_factory.mktemp("colors"), n_train=8, n_val=2, n_test=8)


def fit(colors: Path, tmp: Path, out: Path, resume: bool = False) -> dict:
    cfg = load_run_config(None, base_overrides(colors, tmp / "cache", out) + ARGS)
    return Trainer(cfg, ZERO1, resume=resume).fit()


@pytest.mark.slow  # (quick-loop budget: an end-to-end run / processes / a timeout)
def test_a_mid_epoch_checkpoint_under_accumulation_resumes_to_the_same_prompts(colors, tmp_path):
    """The loop asked DeepSpeed for the accumulation boundary AFTER ``engine.step()``, which had advanced its
    micro-step counter: with 2 accumulation steps every "boundary" came one micro-step late (after the first micro
    batch of the next optimizer step), so step checkpoints recorded a loader position one micro batch past the
    saved prompts, whose gradient was lost on resume."""
    reference = fit(colors, tmp_path, tmp_path / "out")
    out = tmp_path / "out"
    assert reference["steps"] == 2  # 32 images / 16 per optimizer step
    want = load_file(out / "prompts.safetensors")
    copy_dir = tmp_path / "from-step1"
    shutil.copytree(out / "checkpoints" / "step00000001", copy_dir / "checkpoints" / "step00000001")
    (copy_dir / "checkpoints" / "latest.json").write_text(json.dumps({"tag": "step00000001"}))
    resumed = fit(colors, tmp_path, copy_dir, resume=True)
    got = load_file(copy_dir / "prompts.safetensors")
    assert all(torch.equal(got[k], want[k]) for k in want)
    assert resumed["results"] == reference["results"]
