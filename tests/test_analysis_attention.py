"""``scaleprompt analyze attention``: the attention of prompt tokens and the class token to the image patches, read
from the ONE prompted vision encoder through its observer hook."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open

from scaleprompt.analysis.attention import block_attention
from scaleprompt.cli import main
from scaleprompt.encoders import PromptedVisionEncoder
from scaleprompt.methods import build, save_prompts

NAMES = ["red", "green", "blue"]


@pytest.fixture(scope="module")
def files(tmp_path_factory, backbone2):
    """Prompt files on sp-tiny-vit (VPT-deep, 3 tokens; CoOp) and two images (one of another size)."""
    folder = tmp_path_factory.mktemp("attention")
    torch.manual_seed(0)
    vpt = save_prompts(build("vpt_deep", backbone2, NAMES, n_ctx=3), folder / "vpt.safetensors")
    coop = save_prompts(build("coop", backbone2, NAMES, n_ctx=2), folder / "coop.safetensors")
    rng = np.random.default_rng(0)
    for name, shape in (("a.png", (40, 50, 3)), ("b.png", (32, 32, 3))):
        Image.fromarray((rng.random(shape) * 255).astype(np.uint8)).save(folder / name)
    (folder / "bad.png").write_bytes(b"not an image")
    return folder, vpt, coop


@pytest.mark.slow
def test_maps_have_the_grid_shape_and_full_rows_sum_to_one(files, tmp_path):
    folder, vpt, _ = files
    out = tmp_path / "out"
    argv = ["analyze", "attention", str(vpt), str(folder / "a.png"), str(folder / "b.png"), "--out", str(out)]
    assert main(argv) == 0
    with safe_open(str(out / "attention.safetensors"), framework="pt") as fh:
        meta = fh.metadata()
        tensors = {k: fh.get_tensor(k) for k in fh.keys()}  # noqa: SIM118 - safe_open has no __iter__
    grid, tokens = 32 // 8, 1 + 3  # sp-tiny-vit: 32 px, patch 8; class token + 3 prompt tokens
    assert sorted(tensors) == ["0.maps", "0.rows", "1.maps", "1.rows"]
    for i in range(2):
        assert tensors[f"{i}.maps"].shape == (tokens, grid, grid)
        assert tensors[f"{i}.rows"].shape == (tokens, 1 + 3 + grid * grid)
        torch.testing.assert_close(tensors[f"{i}.rows"].sum(-1), torch.ones(tokens))  # over ALL keys
        assert (
            tensors[f"{i}.maps"].sum((-1, -2)) < 1
        ).all()  # (the patch part: the rest went to other tokens)
    assert meta["block"] == "1" and meta["method"] == "vpt_deep"
    assert json.loads(meta["tokens"]) == ["class token", "prompt token 1", "prompt token 2", "prompt token 3"]
    assert {p.name for p in out.glob("*.png")} == {"a.attention.png", "b.attention.png"}
    # every head kept
    assert main([*argv[:-2], "--out", str(tmp_path / "all"), "--heads", "all", "--block", "0"]) == 0
    with safe_open(str(tmp_path / "all/attention.safetensors"), framework="pt") as fh:
        heads = fh.get_tensor("0.maps")
    assert heads.shape[1:] == (tokens, grid, grid) and heads.shape[0] > 1


def test_block_0_matches_a_hand_computation_of_softmax_qk(backbone2, images):
    """VPT's UPT layout: block 0's input is [CLS, prompts, patches] after ln_pre; its attention is
    softmax(Q K^T / sqrt(d)) per head, with Q, K the in-projections of ln_1(x)."""
    torch.manual_seed(3)
    method = build("vpt_deep", backbone2, NAMES, n_ctx=2).eval()
    found = block_attention(method, images, 0)
    vision = method.vision
    with torch.no_grad():
        x = vision.visual.ln_pre(vision.embed(images))  # [B, 1 + P, D]
        prompts = method.prompts[0].unsqueeze(0).expand(x.shape[0], -1, -1)
        x = torch.cat([x[:, :1], prompts, x[:, 1:]], dim=1)  # [B, 1 + 2 + P, D]
        block = vision.visual.transformer.resblocks[0]
        h = block.ln_1(x)
        width, heads = h.shape[-1], block.attn.num_heads
        w, b = block.attn.in_proj_weight, block.attn.in_proj_bias
        q = (h @ w[:width].T + b[:width]).view(*h.shape[:2], heads, -1).transpose(1, 2)  # [B, H, T, d]
        k = (h @ w[width : 2 * width].T + b[width : 2 * width]).view(*h.shape[:2], heads, -1).transpose(1, 2)
        probs = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]), dim=-1)  # [B, H, T, T]
    grid = int(math.isqrt(x.shape[1] - 3))
    expected = probs[:, :, :3, 3:].reshape(
        *probs.shape[:2], 3, grid, grid
    )  # queries CLS + 2 prompts; patches
    torch.testing.assert_close(found.maps, expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(found.rows, probs[:, :, :3])
    assert found.prompt_positions == [1, 2] and found.patch_positions == list(range(3, x.shape[1]))


def test_maple_layout_appends_the_prompts_after_the_patches(backbone2, images):
    method = build("maple", backbone2, NAMES, prompt_depth=2).eval()
    found = block_attention(method, images, 1)
    total = found.rows.shape[-1]
    assert found.prompt_positions == [total - 2, total - 1] and found.patch_positions == list(
        range(1, total - 2)
    )
    torch.testing.assert_close(found.rows.sum(-1), torch.ones(found.rows.shape[:-1]))


def test_the_encoder_is_bit_identical_with_the_hook_off_and_on(backbone2, images):
    torch.manual_seed(4)
    method = build("provp", backbone2, NAMES, n_ctx=3).eval()
    fresh = PromptedVisionEncoder(method.clip)  # (never had a hook)
    with torch.no_grad():
        before = fresh(images, method.prompts, method.plan)
        seen = []
        method.vision.block_input_hook = lambda i, x, slots: seen.append((i, tuple(x.shape), slots))
        try:
            hooked = method.vision(images, method.prompts, method.plan)
        finally:
            method.vision.block_input_hook = None
        after = method.vision(images, method.prompts, method.plan)
    assert torch.equal(before, hooked) and torch.equal(before, after)
    t = 1 + 3 + (32 // 8) ** 2
    assert seen == [(0, (4, t, 96), slice(1, 4)), (1, (4, t, 96), slice(1, 4))]


def test_bad_inputs_are_one_line_each(files, capsys):
    folder, vpt, coop = files
    image = str(folder / "a.png")
    cases = [
        ([str(folder / "missing.safetensors"), image], "prompt file not found"),
        ([str(coop), image], "coop has no visual prompts"),
        ([str(vpt), image, "--block", "2"], "--block 2 is out of range: the vision tower has 2 blocks"),
        ([str(vpt), str(folder / "bad.png")], "cannot read image"),
    ]
    for argv, message in cases:
        assert main(["analyze", "attention", *argv, "--out", str(folder / "o")]) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
