"""Exact math of each method against hand-written references."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from scaleprompt import methods
from scaleprompt.losses import reformation_loss

from conftest import CLASSNAMES


def capture_block_inputs(monkeypatch, blocks):
    """Record the input of every transformer block: what its ln_1 receives (the block's input x, in the fused
    attention path and in the block's own forward alike)."""
    seen: list[torch.Tensor] = []
    for block in blocks:
        norm = block.ln_1
        monkeypatch.setattr(
            norm, "forward", lambda x, *a, _f=norm.forward, **k: seen.append(x) or _f(x, *a, **k)
        )
    return seen


# --- identity settings: learned-context methods initialised from the template phrase compute zero-shot CLIP ---
def test_coop_from_phrase_equals_zero_shot(clip12, images):
    zs = methods.build("zsclip", clip12, CLASSNAMES, templates=["a photo of a {}."]).logits(images)
    coop = methods.build("coop", clip12, CLASSNAMES, ctx_init="a photo of a")
    assert coop.ctx.shape == (4, 32)
    assert torch.equal(coop.logits(images), zs)


def test_cocoop_with_zero_meta_net_equals_zero_shot(clip12, images):
    zs = methods.build("zsclip", clip12, CLASSNAMES).logits(images)
    cocoop = methods.build("cocoop", clip12, CLASSNAMES)
    with torch.no_grad():
        cocoop.meta_net[2].weight.zero_()
        cocoop.meta_net[2].bias.zero_()
    torch.testing.assert_close(cocoop.logits(images), zs, rtol=0, atol=1e-5)


def test_maple_and_ivlp_text_at_depth_one_is_the_template(clip12):
    zs = methods.build("zsclip", clip12, CLASSNAMES).text_features()
    for name, kw in (("maple", {"prompt_depth": 1}), ("ivlp", {"text_depth": 1})):
        method = methods.build(name, clip12, CLASSNAMES, **kw)
        assert torch.equal(method.text_features(), zs), name


# --- CoOp / CoCoOp --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("position", ["front", "middle"])
def test_coop_class_position(clip12, position):
    coop = methods.build("coop", clip12, ["sea turtle", "cat"], n_ctx=4, class_position=position)
    emb = clip12.token_embedding.weight
    ids = coop.table.ids
    ctx = coop.ctx.detach()
    for c, name_len in enumerate((2, 1)):  # "sea turtle" = 2 BPE tokens, "cat" = 1
        name = emb[ids[c, 5 : 5 + name_len]]
        rest = emb[ids[c, 5 + name_len :]]
        if position == "front":
            expected = torch.cat([emb[ids[c, :1]], name, ctx, rest])
        else:
            expected = torch.cat([emb[ids[c, :1]], ctx[:2], name, ctx[2:], rest])
        assert torch.equal(coop.table.assemble(coop.ctx)[c], expected)


def test_coop_class_specific_context_has_one_context_per_class(clip12, images):
    coop = methods.build("coop", clip12, CLASSNAMES, n_ctx=3, class_specific=True)
    assert coop.ctx.shape == (len(CLASSNAMES), 3, 32)
    coop.logits(images).sum().backward()
    assert (coop.ctx.grad.abs().sum(dim=(1, 2)) > 0).all()


def test_cocoop_logits_match_a_per_image_reference(clip12, images):
    cocoop = methods.build("cocoop", clip12, CLASSNAMES)
    img = clip12.encode_image(images)
    rows = []
    for b in range(len(images)):
        shift = cocoop.meta_net(F.normalize(img[b], dim=-1))
        ctx = cocoop.ctx + shift  # [4, Dt], the same shift on every context token
        embeds = cocoop.table.embeds.clone()
        embeds[:, 1:5] = ctx
        txt = cocoop.text(embeds, cocoop.table.ids)
        rows.append(clip12.logit_scale.exp() * F.normalize(img[b], dim=-1) @ F.normalize(txt, dim=-1).t())
    torch.testing.assert_close(cocoop.logits(images), torch.stack(rows), rtol=0, atol=1e-5)
    chunked = methods.build("cocoop", clip12, CLASSNAMES, text_chunk=1)
    chunked.load_state_dict(cocoop.state_dict())
    torch.testing.assert_close(chunked.logits(images), torch.stack(rows), rtol=0, atol=1e-5)


# --- ProVP / VPT-deep: a hand-written 2-block reference --------------------------------------------------------
def provp_reference(clip, images, prompts, alpha):
    """[CLS, P, patches] after ln_pre; block 1 gets alpha * O_0 + (1 - alpha) * P_1; prompts dropped at the end."""
    v = clip.visual
    x = v.conv1(images).flatten(2).transpose(1, 2)
    x = torch.cat([v.class_embedding.expand(len(images), 1, -1), x], 1) + v.positional_embedding
    x = v.ln_pre(x)
    n = prompts.shape[1]
    x = torch.cat([x[:, :1], prompts[0].expand(len(images), -1, -1), x[:, 1:]], 1)
    x = v.transformer.resblocks[0](x)
    mixed = alpha * x[:, 1 : 1 + n] + (1 - alpha) * prompts[1]
    x = torch.cat([x[:, :1], mixed, x[:, 1 + n :]], 1)
    x = v.transformer.resblocks[1](x)
    return v.ln_post(x[:, 0]) @ v.proj


@pytest.mark.parametrize("alpha", [0.01, 0.3])
def test_provp_progressive_mix_matches_reference(clip2, images, alpha):
    provp = methods.build("provp", clip2, CLASSNAMES, n_ctx=3, alpha=alpha)
    expected = provp_reference(clip2, images, provp.prompts, alpha)
    torch.testing.assert_close(provp.image_features(images), expected, rtol=0, atol=1e-5)


def test_provp_alpha_zero_is_vpt_deep_in_the_same_layout(clip2, images):
    provp = methods.build("provp", clip2, CLASSNAMES, n_ctx=3, alpha=0.0)
    vpt = methods.build("vpt_deep", clip2, CLASSNAMES, layout="upt", n_ctx=3)
    with torch.no_grad():
        vpt.prompts.copy_(provp.prompts)
    assert torch.equal(provp.logits(images), vpt.logits(images))
    provp_mixing = methods.build("provp", clip2, CLASSNAMES, n_ctx=3, alpha=0.01)
    with torch.no_grad():
        provp_mixing.prompts.copy_(provp.prompts)
    assert not torch.allclose(provp_mixing.logits(images), vpt.logits(images))


def test_provp_init_bound_uses_patch_size(clip2):
    for p, kw in ((8, {}), (14, {"init_patch_size": 14})):
        provp = methods.build("provp", clip2, CLASSNAMES, n_ctx=50, **kw)
        bound = math.sqrt(6 / (3 * p * p + 96))
        assert provp.prompts.abs().max() <= bound
        assert provp.prompts.abs().max() > 0.95 * bound


@pytest.mark.parametrize("layout", ["upt", "maple"])
def test_vpt_deep_layouts_replace_prompts_each_block(clip12, images, layout, monkeypatch):
    vpt = methods.build("vpt_deep", clip12, CLASSNAMES, layout=layout, depth=6)
    seen = capture_block_inputs(monkeypatch, clip12.visual.transformer.resblocks)
    vpt.image_features(images)
    n, total = vpt.config.n_ctx, 1 + 4 + vpt.config.n_ctx  # 32 px / patch 16 = 4 patches
    slots = slice(1, 1 + n) if layout == "upt" else slice(total - n, total)
    assert n == (4 if layout == "upt" else 8)
    first = seen[0][:, slots]
    if layout == "maple":  # inserted before ln_pre: block 0 sees ln_pre(prompts)
        torch.testing.assert_close(
            first, clip12.visual.ln_pre(vpt.prompts[0]).expand_as(first), rtol=0, atol=1e-6
        )
    else:
        assert torch.equal(first, vpt.prompts[0].expand_as(first))
    for i in range(1, 6):
        assert torch.equal(seen[i][:, slots], vpt.prompts[i].expand_as(seen[i][:, slots]))
    for i in range(6, 12):  # past the depth, outputs carry on: block i sees block i-1's prompt outputs
        assert not torch.equal(seen[i][:, slots], seen[i - 1][:, slots])


# --- ProVP-Ref ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("tau", [1.0, 0.07])
def test_reformation_loss_hand_computed(tau):
    # frozen features: the unit axes; prompted features (scaled, to check the normalization):
    frozen = torch.eye(3) * torch.tensor([[2.0], [0.5], [3.0]])
    prompted = torch.tensor([[1.0, 1.0, 0.0], [0.0, 4.0, 0.0], [2.0, 0.0, 2.0]])
    a = 1 / math.sqrt(2) / tau  # cosine 1/sqrt(2) over tau
    row0 = math.log(math.exp(a) + math.exp(a) + 1) - a  # sims [a, a, 0], target 0
    row1 = math.log(1 + math.exp(1 / tau) + 1) - 1 / tau  # sims [0, 1/tau, 0], target 1
    row2 = math.log(math.exp(a) + 1 + math.exp(a)) - a  # sims [a, 0, a], target 2
    expected = (row0 + row1 + row2) / 3
    assert reformation_loss(prompted, frozen, tau).item() == pytest.approx(expected, rel=1e-6)


def test_provp_ref_loss_parts_and_frozen_branch(clip2, images, labels, monkeypatch):
    ref = methods.build("provp_ref", clip2, CLASSNAMES, n_ctx=3, lam=0.5, tau=0.07)
    frozen_outputs = []
    original = ref.frozen_image_features
    monkeypatch.setattr(
        ref, "frozen_image_features", lambda x: frozen_outputs.append(original(x)) or frozen_outputs[-1]
    )
    out = ref.loss(images, labels)
    (f_c,) = frozen_outputs
    assert not f_c.requires_grad, "the frozen branch must run without gradient"
    clip_features = clip2.encode_image(images)  # open_clip's own path; ours fuses attention (1e-5 relative)
    torch.testing.assert_close(f_c, clip_features, rtol=1e-5, atol=1e-5 * float(clip_features.abs().max()))
    f_p = ref.image_features(images)
    ce = F.cross_entropy(ref.logits_from(f_p), labels)
    expected_ref = reformation_loss(f_p, f_c, 0.07)
    torch.testing.assert_close(out.parts["ce"], ce.detach())
    torch.testing.assert_close(out.parts["ref"], expected_ref.detach())
    torch.testing.assert_close(out.loss, ce + 0.5 * expected_ref)


# --- UPT --------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("variant,mixes", [("attention", True), ("per_token", False)])
def test_upt_tokens_mix_only_in_attention_mode(clip12, variant, mixes):
    upt = methods.build("upt", clip12, CLASSNAMES, variant=variant).eval()
    text_before, vis_before = upt.split_prompts()
    with torch.no_grad():
        upt.unified[0, upt.config.n_ctx + 1] += 1.0  # a token of the VISUAL half
    text_after, vis_after = upt.split_prompts()
    assert not torch.allclose(vis_after, vis_before)
    assert (not torch.allclose(text_after, text_before)) == mixes


def test_upt_layer_follows_the_spec(clip12):
    """Post-norm attention residual, then pre-norm feed-forward residual (eval: no dropout)."""
    upt = methods.build("upt", clip12, CLASSNAMES).eval()
    layer = upt.transform[0]
    u = upt.unified
    attn = layer.mix(u, u, u, need_weights=False)[0]
    x = layer.norm1(u + attn)
    expected = x + layer.linear2(F.relu(layer.linear1(layer.norm2(x))))
    text, vis = upt.split_prompts()
    torch.testing.assert_close(text, expected[:, :4])
    torch.testing.assert_close(vis, upt.visual_proj(expected[:, 4:]))
    assert layer.linear1.out_features == 32  # feed-forward width Dt, not 4 Dt


def test_upt_prompts_reach_both_towers(clip12, images, monkeypatch):
    upt = methods.build("upt", clip12, CLASSNAMES).eval()
    text, vis = upt.split_prompts()
    seen = capture_block_inputs(monkeypatch, clip12.visual.transformer.resblocks)
    upt.image_features(images)
    # after the class token, before ln_pre: block 0 sees ln_pre(visual prompts) at positions 1..4
    torch.testing.assert_close(
        seen[0][:, 1:5], clip12.visual.ln_pre(vis[0]).expand(4, -1, -1), rtol=0, atol=1e-6
    )
    embeds = upt.table.assemble(text[0])
    assert torch.equal(embeds[:, 1:5], text[0].expand(len(CLASSNAMES), -1, -1))


def test_upt_layerwise_inserts_a_prompt_per_block(clip12, images, monkeypatch):
    upt = methods.build("upt", clip12, CLASSNAMES, layerwise=True, depth=3).eval()
    text, vis = upt.split_prompts()
    assert text.shape == (3, 4, 32) and vis.shape == (3, 4, 48)
    seen = capture_block_inputs(monkeypatch, clip12.transformer.resblocks)
    upt.text_features()
    for i in (1, 2):
        assert torch.equal(seen[i][:, 1:5], text[i].expand(len(CLASSNAMES), -1, -1))


# --- MaPLe / IVLP -------------------------------------------------------------------------------------------------
def test_maple_visual_prompts_are_projections_of_text_prompts(clip12, images, monkeypatch):
    maple = methods.build("maple", clip12, CLASSNAMES, prompt_depth=4)
    vis_seen = capture_block_inputs(monkeypatch, clip12.visual.transformer.resblocks)
    txt_seen = capture_block_inputs(monkeypatch, clip12.transformer.resblocks)
    maple.image_features(images)
    maple.text_features()
    text_prompts = [maple.ctx] + list(maple.deep_text)
    projections = [maple.proj] + list(maple.deep_proj)
    for layer in range(4):
        visual = projections[layer](text_prompts[layer])  # [2, Dv]
        if layer == 0:  # appended before ln_pre
            visual = clip12.visual.ln_pre(visual)
        torch.testing.assert_close(vis_seen[layer][:, -2:], visual.expand(4, -1, -1), rtol=0, atol=1e-6)
        if layer > 0:
            assert torch.equal(txt_seen[layer][:, 1:3], maple.deep_text[layer - 1].expand(5, -1, -1))
    assert not torch.equal(vis_seen[4][:, -2:], vis_seen[3][:, -2:])  # block J carries outputs on
    assert all(
        n.split(".")[0] in {"ctx", "deep_text", "proj", "deep_proj"} for n in maple.prompt_state_dict()
    )
    # the release clones ONE layer for the deep couplings: they start identical
    assert all(torch.equal(maple.deep_proj[0].weight, f.weight) for f in maple.deep_proj)


def test_ivlp_deep_prompts_replace_tokens_on_both_towers(clip12, images, monkeypatch):
    ivlp = methods.build("ivlp", clip12, CLASSNAMES)
    assert ivlp.deep_text.shape == (11, 2, 32) and ivlp.visual_prompts.shape == (12, 2, 48)
    vis_seen = capture_block_inputs(monkeypatch, clip12.visual.transformer.resblocks)
    txt_seen = capture_block_inputs(monkeypatch, clip12.transformer.resblocks)
    ivlp.image_features(images)
    ivlp.text_features()
    for i in range(1, 12):
        assert torch.equal(vis_seen[i][:, -2:], ivlp.visual_prompts[i].expand(4, -1, -1))
        assert torch.equal(txt_seen[i][:, 1:3], ivlp.deep_text[i - 1].expand(5, -1, -1))
    # "a photo" learned, initialised from those words; "of a {classname}." frozen
    ids = ivlp.table.ids
    torch.testing.assert_close(ivlp.ctx, clip12.token_embedding.weight[ids[0, 1:3]])
