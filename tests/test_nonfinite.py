"""Non-finite numbers stop a run (or skip a step exactly), are refused in configs, and never reach results.json."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from engine_utils import ROOT, base_overrides, make_color_folder

from scaleprompt.config import ConfigError
from scaleprompt.engine.checkpoint import CheckpointManager, atomic_json, finite_json
from scaleprompt.engine.config import load_run_config
from scaleprompt.engine.nonfinite import NonFiniteError, NonFiniteGuard, describe, skipped_step
from scaleprompt.engine.trainer import Trainer


# --- pure pieces --------------------------------------------------------------------------------------------------
def test_the_guard_names_what_was_not_finite_and_resets():
    p = torch.nn.Parameter(torch.ones(3))
    guard = NonFiniteGuard([p], "cpu")
    loss = (p * 2).sum()
    guard.watch_loss(loss, {"ce": loss.detach(), "ref": torch.tensor(float("nan"))})
    loss.backward()
    assert guard.verdict() == ["loss"] * 0 + ["ref"]  # the total was finite, its part "ref" was not
    assert guard.verdict() == [], "a verdict resets the marks"
    bad = (p * torch.tensor([1.0, float("inf"), 1.0])).sum()
    guard.watch_loss(bad, {"ce": bad.detach(), "ref": torch.tensor(0.0)})
    bad.backward()
    assert guard.verdict() == ["loss", "ce", "gradient"]
    # a finite loss whose gradient is not finite (sqrt at 0)
    q = torch.nn.Parameter(torch.zeros(2))
    g2 = NonFiniteGuard([q], "cpu")
    finite = torch.sqrt(q).sum()
    g2.watch_loss(finite, {"ce": finite.detach()})
    finite.backward()
    assert g2.verdict() == ["gradient"]
    guard.close(), g2.close()


def test_describe_says_step_what_and_lr():
    assert describe(["loss", "ce"], 7, 1e30) == "non-finite loss part ce at optimizer step 7 (lr 1e+30)"
    assert (
        describe(["gradient"], 3, 0.002)
        == "non-finite gradient (the loss was finite) at optimizer step 3 (lr 0.002)"
    )
    assert describe(["loss", "ref", "gradient"], 1, 0.1).startswith(
        "non-finite loss part ref and the gradient"
    )


def test_results_json_is_always_strict_json(tmp_path):
    data = {"a": [1.0, float("nan")], "b": {"c": float("inf")}, "d": 2}
    cleaned, replaced = finite_json(data)
    assert cleaned == {"a": [1.0, None], "b": {"c": None}, "d": 2} and replaced == ["a[1]", "b.c"]
    atomic_json(tmp_path / "r.json", data)
    text = (tmp_path / "r.json").read_text()
    assert "NaN" not in text and "Infinity" not in text
    json.loads(text, parse_constant=lambda c: pytest.fail(f"bare {c} in JSON"))


@pytest.mark.parametrize(
    "override, field",
    [
        ("optim.lr=.inf", "optim.lr"),
        ("optim.lr=nan", "optim.lr"),
        ("optim.weight_decay=-.inf", "optim.weight_decay"),
        ("method.args.lam=.nan", "lam"),
        ("train.log_every_steps=-1", "train.log_every_steps"),
        ("eval.batch_size=0", "eval.batch_size"),
        ("train.max_nonfinite_skips=-2", "train.max_nonfinite_skips"),
    ],
)
def test_non_finite_and_negative_settings_are_refused_at_config_time(override, field):
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        load_run_config(None, ["method.name=provp_ref", override])


# --- the optimizer step skipped exactly -------------------------------------------------------------------------------
@pytest.mark.parametrize("stage, optim", [(0, "sgd"), (2, "sgd"), (2, "adamw"), (3, "sgd")])
def test_a_skipped_step_leaves_prompts_and_optimizer_exactly_as_before(stage, optim):
    """Steps on batches A, B equal steps on A, <non-finite batch, skipped>, B: bit for bit, at every ZeRO stage,
    with momentum / Adam states (a zero-gradient step would still move SGD's momentum and Adam's moments)."""
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
            "optim.batch_size=2",
            "optim.lr=0.5",
            f"optim.name={optim}",
            "optim.weight_decay=0.01",
        ],
    )
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(2, 3, 32, 32, generator=g), torch.randn(2, 3, 32, 32, generator=g)
    bad = a.clone()
    bad[0, 0, 0, 0] = float("nan")
    labels = torch.tensor([0, 2])
    ds = {"zero_optimization": {"stage": stage, "stage3_param_persistence_threshold": 0}}
    prompts = []
    for batches in ([a, b], [a, bad, b]):
        torch.manual_seed(0)
        method = build(
            "coop", load_clip("sp-tiny-vit", None), ["red cat", "blue dog", "green bird"], **cfg.method.args
        )
        model = PromptedModel(method, cfg, ds, dist, micro=2, accumulation=1)
        guard = NonFiniteGuard(model.trainable, "cpu")
        model.module.train()
        skipped = []
        for images in batches:
            out = model.module(images, labels)
            guard.watch_loss(out.loss, out.parts)
            model.module.backward(out.loss)
            verdict = guard.verdict()
            if verdict:
                skipped.append(verdict)
                with skipped_step(model.optimizer, model.trainable):
                    model.module.step()
            else:
                model.module.step()
        guard.close()
        assert skipped == ([] if len(batches) == 2 else [["loss", "ce", "gradient"]])
        prompts.append(model.snapshot())
    assert torch.isfinite(prompts[1]["ctx"]).all()
    torch.testing.assert_close(prompts[1], prompts[0], rtol=0, atol=0)


# --- whole runs -----------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def colors(tmp_path_factory):
    return make_color_folder(tmp_path_factory.mktemp("colors"), n_train=8, n_val=2, n_test=8)


def trainer(colors, tmp_path, *extra):
    cfg = load_run_config(None, base_overrides(colors, tmp_path / "cache", tmp_path / "out") + list(extra))
    return Trainer(cfg, json.loads(Path(ROOT / "ds_configs/zero2.json").read_text()))


def test_a_diverging_run_stops_with_one_line_and_writes_no_result(colors, tmp_path):
    """optim.lr=1e30 used to finish with exit 0, a test top-1 of 1/64 (argmax over NaN logits), NaN prompts and a
    bare NaN in results.json. Now: NonFiniteError naming the step, what and the lr; no results, no prompt file, and
    the checkpoint that exists holds finite prompts only."""
    t = trainer(
        colors,
        tmp_path,
        "method.name=coop",
        "method.args.n_ctx=4",
        "optim.lr=1e30",
        "optim.epochs=3",
        "train.checkpoint_every_steps=1",
        "train.log_every_steps=0",
    )
    with pytest.raises(
        NonFiniteError, match=r"non-finite loss.* at optimizer step 2 \(lr 1e\+30\).*step00000001"
    ):
        t.fit()
    out = tmp_path / "out"
    assert not (out / "results.json").exists() and not (out / "prompts.safetensors").exists()
    ckpt = CheckpointManager(out / "checkpoints")
    assert ckpt.latest() == "step00000001"


@pytest.mark.slow  # (quick-loop budget: an end-to-end run / processes / a timeout)
def test_skip_mode_skips_a_bad_step_records_it_and_finishes(colors, tmp_path, monkeypatch):
    """train.nonfinite=skip: one micro-step whose loss is NaN (injected into the 3rd forward) is skipped, the run
    finishes with finite numbers and results.json lists the skipped step."""
    from scaleprompt.methods.coop import CoOp

    calls = {"n": 0}
    original = CoOp.loss

    def poisoned(self, images, labels):
        out = original(self, images, labels)
        calls["n"] += 1
        if calls["n"] == 3 and self.training:
            return out._replace(loss=out.loss * float("nan"), parts={"ce": out.parts["ce"] * float("nan")})
        return out

    monkeypatch.setattr(CoOp, "loss", poisoned)
    t = trainer(
        colors,
        tmp_path,
        "method.name=coop",
        "method.args.n_ctx=4",
        "optim.lr=0.01",
        "optim.epochs=2",
        "train.nonfinite=skip",
        "train.log_every_steps=1",
    )
    res = t.fit()
    assert res["nonfinite_skipped"] == [{"step": 3, "what": ["loss", "ce", "gradient"]}]
    assert all(math.isfinite(h["train_loss"]) for h in res["history"])
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    assert saved["nonfinite_skipped"] == res["nonfinite_skipped"]


def test_skip_mode_stops_after_its_budget(colors, tmp_path):
    t = trainer(
        colors,
        tmp_path,
        "method.name=coop",
        "method.args.n_ctx=4",
        "optim.lr=1e30",
        "optim.epochs=3",
        "train.nonfinite=skip",
        "train.max_nonfinite_skips=2",
        "train.log_every_steps=0",
    )
    with pytest.raises(NonFiniteError, match=r"after 2 skipped steps \(train.max_nonfinite_skips\)"):
        t.fit()


def test_a_checkpoints_best_prompts_are_verified_against_their_own_checksum(tmp_path):
    """The best prompts a resume continues with carry ``tensors_sha256`` (beside COMPLETE.json's file hashes): a
    file whose tensors differ from the checksum it records is refused naming it."""
    from safetensors.torch import save_file

    from scaleprompt.methods.io import tensors_sha256
    from scaleprompt.promptfile import PromptFileError

    folder = tmp_path / "checkpoints" / "step00000001"
    folder.mkdir(parents=True)
    atomic_json(folder / "run_state.json", {"tag": "step00000001"})
    atomic_json(folder / "COMPLETE.json", {"tag": "step00000001", "files": {}, "identity": {}})
    good = {"ctx": torch.ones(2, 3)}
    save_file(
        good, str(folder / "best_prompts.safetensors"), metadata={"tensors_sha256": tensors_sha256(good)}
    )
    loaded = CheckpointManager(tmp_path / "checkpoints").load(None, "step00000001")
    assert torch.equal(loaded.best_prompts["ctx"], good["ctx"])
    other = {"ctx": torch.zeros(2, 3)}
    save_file(
        other, str(folder / "best_prompts.safetensors"), metadata={"tensors_sha256": tensors_sha256(good)}
    )
    with pytest.raises(PromptFileError, match="best_prompts.safetensors is damaged"):
        CheckpointManager(tmp_path / "checkpoints").load(None, "step00000001")


@pytest.mark.slow
def test_train_py_exits_with_one_line_when_a_run_diverges_mid_epoch(colors, tmp_path):
    """The issue's case through the real entry point: exit code 2, one line, promptly. (An error raised inside the
    training loop left the training stream's DataLoader workers open; at interpreter exit multiprocessing sent them
    a SIGTERM they block and joined them: the process never exited.)"""
    import subprocess
    import sys

    from engine_utils import env

    args = base_overrides(colors, tmp_path / "cache", tmp_path / "out") + [
        "method.name=coop",
        "method.args.n_ctx=4",
        "optim.lr=1e30",
        "optim.epochs=3",
        "data.num_workers=1",
    ]
    proc = subprocess.run(
        [sys.executable, "scaleprompt/train.py", *args],
        cwd=ROOT,
        env=env(tmp_path),
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 2, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("train.py: error:")]
    assert len(errors) == 1 and "non-finite loss" in errors[0] and "Traceback" not in proc.stderr
    assert not (tmp_path / "out" / "results.json").exists()
