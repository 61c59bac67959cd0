"""``scaleprompt analyze deviation``: how far a prompt file's image features drift from frozen CLIP's (ProVP's
deviation analysis), through the command on a tiny model and a small colour dataset."""

from __future__ import annotations

import json

import pytest
import torch
from engine_utils import make_color_folder
from torch.nn import functional as F

from scaleprompt.analysis.deviation import (
    batched_reformation_loss,
    deviation_stats,
    image_encoder,
    same_image_cosine,
    uses_visual_prompts,
)
from scaleprompt.cli import main
from scaleprompt.losses import reformation_loss
from scaleprompt.methods import build, save_prompts

NAMES = ["red", "green", "blue", "yellow"]
VISUAL = {  # every method with visual prompts, its prompt tensors set to zero
    "vpt_deep": {"n_ctx": 2},
    "provp": {"n_ctx": 2},
    "provp_ref": {"n_ctx": 2},
    "ivlp": {},
    "maple": {"prompt_depth": 2},
    "upt": {},
}


def zeroed(method):
    with torch.no_grad():
        for p in method.trainable_parameters():
            p.zero_()
    return method.eval()


@pytest.mark.slow
def test_text_only_methods_keep_the_image_features_and_zero_visual_prompts_move_them(backbone2, images):
    """The methods' math: CoOp / CoCoOp / zero-shot put nothing into the image tower (cosine exactly 1); every visual
    method INSERTS its prompt tokens, so even zero prompts are keys of every attention and move the features."""
    frozen = F.normalize(build("zsclip", backbone2, NAMES).vision(images), dim=-1)
    for name, args in (("coop", {"n_ctx": 2}), ("cocoop", {"n_ctx": 2}), ("zsclip", {})):
        method = zeroed(build(name, backbone2, NAMES, **args))
        assert not uses_visual_prompts(method, images[:1])
        with torch.no_grad():
            prompted = F.normalize(image_encoder(method)(images), dim=-1)
        assert (same_image_cosine(prompted, frozen) == 1.0).all(), name
    for name, args in VISUAL.items():
        method = zeroed(build(name, backbone2, NAMES, **args))
        assert uses_visual_prompts(method, images[:1]), name
        with torch.no_grad():
            prompted = F.normalize(image_encoder(method)(images), dim=-1)
        cos = same_image_cosine(prompted, frozen)
        assert (cos < 1 - 1e-6).all() and (cos > 0).all(), name


def test_the_numbers_of_a_set_are_the_loss_function_s_over_its_batches():
    g = torch.Generator().manual_seed(0)
    frozen = F.normalize(torch.randn(10, 8, generator=g), dim=-1)
    prompted = F.normalize(frozen + 0.3 * torch.randn(10, 8, generator=g), dim=-1)
    labels = torch.tensor([0, 0, 0, 1, 1, 1, 1, 2, 2, 2])
    expected = (reformation_loss(prompted[:4], frozen[:4], 0.5) * 4 + reformation_loss(prompted[4:8], frozen[4:8], 0.5)
                * 4 + reformation_loss(prompted[8:], frozen[8:], 0.5) * 2) / 10  # fmt: skip
    assert batched_reformation_loss(prompted, frozen, 0.5, 4) == pytest.approx(float(expected), rel=1e-6)
    stats = deviation_stats(prompted, frozen, labels, 0.5, 4)
    cos = (prompted * frozen).sum(-1)
    assert stats["cosine_mean"] == pytest.approx(float(cos.mean()), rel=1e-6)
    assert stats["n_images"] == 10 and stats["n_classes"] == 3
    shift = (
        sum(float((prompted[labels == c].mean(0) - frozen[labels == c].mean(0)).norm()) for c in range(3)) / 3
    )
    assert stats["class_mean_shift"] == pytest.approx(shift, rel=1e-5)
    same = deviation_stats(frozen, frozen, labels, 0.5, 4)
    assert same["cosine_mean"] == 1.0 and same["cosine_std"] == 0.0 and same["class_mean_shift"] == 0.0
    assert same["reformation_loss"] == same["reformation_loss_no_drift"]


@pytest.fixture(scope="module")
def files(tmp_path_factory, backbone2):
    """A 4-colour dataset (12 test images per class) and zero-initialised CoOp / VPT-deep prompt files."""
    folder = tmp_path_factory.mktemp("deviation")
    data = make_color_folder(folder / "colours", n_train=1, n_val=1, n_test=12)
    coop = save_prompts(zeroed(build("coop", backbone2, NAMES, n_ctx=2)), folder / "coop.safetensors")
    vpt = save_prompts(zeroed(build("vpt_deep", backbone2, NAMES, n_ctx=2)), folder / "vpt.safetensors")
    return folder, data, coop, vpt


@pytest.mark.slow
def test_deviation_reports_base_and_novel_and_draws_the_tsne(files, tmp_path, caplog):
    folder, data, coop, vpt = files
    flags = ["--dataset", f"folder:{data}", "--setting", "base2new", "--cache-dir", str(folder / "cache")]
    assert (
        main(["analyze", "deviation", str(coop), *flags, "--no-tsne", "--out", str(tmp_path / "coop")]) == 0
    )
    got = json.loads((tmp_path / "coop/deviation.json").read_text())
    assert got["text_only"] and got["method"] == "coop" and set(got["sets"]) == {"base", "novel"}
    for part in got["sets"].values():  # (the image features ARE the frozen ones)
        assert part["cosine_mean"] == 1.0 and part["cosine_std"] == 0.0 and part["n_images"] == 24
        assert part["reformation_loss"] == part["reformation_loss_no_drift"] and part["n_classes"] == 2
    assert "puts no prompts into the image tower" in caplog.text
    assert not (tmp_path / "coop/deviation_tsne.png").exists()
    caplog.clear()
    argv = ["analyze", "deviation", str(vpt), *flags, "--max-points", "10", "--out", str(tmp_path / "vpt")]
    assert main(argv) == 0
    assert "feature cache: hit" in caplog.text  # (the frozen features of the first call, computed once)
    got = json.loads((tmp_path / "vpt/deviation.json").read_text())
    assert not got["text_only"] and got["tau"] == 1.0 and got["batch_size"] == 64
    for part in got["sets"].values():  # zero prompt tokens still take part in attention
        assert (
            0 < part["cosine_mean"] < 1
            and part["reformation_loss"] > part["reformation_loss_no_drift"] - 1e-3
        )
    assert got["tsne"]["panels"] == {
        "base": {"images": 10, "of": 24, "perplexity": 19.0},
        "novel": {"images": 10, "of": 24, "perplexity": 19.0},
    }
    assert (tmp_path / "vpt/deviation_tsne.png").stat().st_size > 10_000
    assert "t-SNE base: 10 of 24 images (seeded draw, --max-points)" in caplog.text


def test_bad_inputs_are_one_line_each(files, capsys):
    folder, data, _, vpt = files
    cases = [
        (["analyze", "deviation", str(folder / "missing.safetensors")], "prompt file not found"),
        (["analyze", "deviation", str(vpt), "--perplexity", "0"], "--perplexity must be > 0"),
        (["analyze", "deviation", str(vpt), "--max-points", "1"], "--max-points must be >= 2"),
    ]
    for argv, message in cases:
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
