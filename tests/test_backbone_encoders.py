"""Backbone loading and the shared prompted encoders: with no prompts they compute CLIP exactly."""

from __future__ import annotations

import json
import warnings

import pytest
import torch
from safetensors.torch import save_file

from scaleprompt import backbone as backbone_module
from scaleprompt import methods
from scaleprompt.backbone import (
    Backbone,
    BackboneError,
    import_open_clip,
    load_clip,
    model_spec,
    register_model,
    registered_models,
)
from scaleprompt.encoders import EncoderOptions, PromptedTextEncoder, PromptedVisionEncoder, VisualPlan

from conftest import CLASSNAMES

open_clip = import_open_clip()  # (with scaleprompt's models registered)


def test_own_models_are_registered_and_known_to_open_clip():
    names = registered_models()
    assert {"sp-tiny-vit", "sp-tiny-vit-12", "sp-micro-clip"} <= set(names) <= set(open_clip.list_models())
    assert set(model_spec("sp-micro-clip").weights) == {"microworld"}


def test_load_clip_returns_a_backbone_and_leaves_the_model_alone(backbone12, clip12):
    assert isinstance(backbone12, Backbone) and backbone12.model is clip12
    assert not any(name.startswith("scaleprompt") for name in vars(clip12))  # no attributes bolted on
    assert isinstance(backbone12.tokenizer, open_clip.SimpleTokenizer)
    assert backbone12.info.model_name == "sp-tiny-vit-12" and backbone12.info.init_seed == 0


def test_backbone_is_frozen_and_stays_in_eval(backbone12, clip12):
    assert not any(p.requires_grad for p in clip12.parameters())
    assert not clip12.training
    method = methods.build("coop", backbone12, CLASSNAMES, n_ctx=4).train()
    assert method.training and not clip12.training and not any(m.training for m in clip12.modules())
    assert method.clip is clip12 and method.backbone_info is backbone12.info
    info = backbone12.info
    assert (info.vision_layers, info.text_layers, info.vision_width, info.text_width) == (12, 12, 48, 32)


def test_a_bare_open_clip_model_builds_with_clip_tokenizer_and_no_info(backbone12, clip12, images):
    bare = methods.build("coop", clip12, CLASSNAMES, n_ctx=4)
    assert bare.backbone_info is None and isinstance(bare.text.tokenizer, open_clip.SimpleTokenizer)
    loaded = methods.build("coop", backbone12, CLASSNAMES, n_ctx=4)
    loaded.load_state_dict(bare.state_dict())
    assert torch.equal(bare.logits(images), loaded.logits(images))


def test_an_extension_registers_a_model_with_weights_and_tokenizer(tmp_path, clip2, images, monkeypatch):
    """register_model is how the micro-world's model is registered, and how a user's is."""
    monkeypatch.setattr(backbone_module, "_MODELS", dict(backbone_module._MODELS))  # (this test's entry only)
    config = tmp_path / "my-tiny-clip.json"
    config.write_text(json.dumps(open_clip.get_model_config("sp-tiny-vit")))
    save_file(dict(clip2.state_dict()), str(tmp_path / "w.safetensors"))
    calls = []

    def tokenizer(context_length):
        calls.append(context_length)
        return open_clip.SimpleTokenizer(context_length=context_length)

    register_model("my-tiny-clip", config, weights={"mine": tmp_path / "w.safetensors"}, tokenizer=tokenizer)
    backbone = load_clip("my-tiny-clip", "mine")
    assert calls == [16] and backbone.info.pretrained == "mine"
    assert torch.equal(backbone.model.encode_image(images), clip2.encode_image(images))
    assert "my-tiny-clip" in registered_models()
    with pytest.raises(BackboneError, match="already registered"):
        register_model("my-tiny-clip", config)  # other settings under the same name
    with pytest.raises(BackboneError, match="names a model after its config file"):
        register_model("other-name", config)
    (tmp_path / "w.safetensors").unlink()
    with pytest.raises(BackboneError, match="registered for my-tiny-clip are missing"):
        load_clip("my-tiny-clip", "mine")


def test_vision_encoder_without_prompts_is_clip(clip2, images):
    enc = PromptedVisionEncoder(clip2)
    expected = clip2.encode_image(images)
    torch.testing.assert_close(enc(images), expected, rtol=1e-5, atol=1e-5 * float(expected.abs().max()))
    # the blocks' own attention, every token through the last block: bit for bit
    enc = PromptedVisionEncoder(clip2, EncoderOptions(fused_attention=False))
    assert torch.equal(enc(images), clip2.encode_image(images))


def test_text_encoder_without_prompts_is_clip(clip2):
    enc = PromptedTextEncoder(clip2)
    texts = [f"a photo of a {c}." for c in CLASSNAMES]
    ids = open_clip.get_tokenizer("sp-tiny-vit")(texts)
    expected = clip2.encode_text(ids)
    torch.testing.assert_close(
        enc.encode_texts(texts), expected, rtol=1e-5, atol=1e-5 * float(expected.abs().max())
    )
    eot = ids == ids.max()  # CLIP's end-of-text token has the largest id
    assert (
        enc.kept_length(enc.tokenize(texts)) == int(eot.nonzero()[:, 1].max()) + 1 == 10 < enc.context_length
    )
    # every position, the blocks' own attention: bit for bit
    enc = PromptedTextEncoder(clip2, options=EncoderOptions(truncate=False, fused_attention=False))
    assert torch.equal(enc.encode_texts(texts), clip2.encode_text(ids))


def test_zsclip_logits_are_clip_logits(clip2, images):
    method = methods.build("zsclip", clip2, CLASSNAMES)
    ids = open_clip.get_tokenizer("sp-tiny-vit")([f"a photo of a {c.replace('_', ' ')}." for c in CLASSNAMES])
    expected, _ = clip2.get_logits(images, ids)
    torch.testing.assert_close(method.logits(images), expected, rtol=0, atol=1e-5)


def test_zsclip_template_ensemble_is_mean_of_normalized_features(clip2, images):
    templates = ("a photo of a {}.", "a sketch of the {}.")
    method = methods.build("zsclip", clip2, CLASSNAMES, templates=templates)
    feats = [
        clip2.encode_text(
            open_clip.tokenize([t.format(c.replace("_", " ")) for c in CLASSNAMES], context_length=16),
            normalize=True,
        )
        for t in templates
    ]
    text = (feats[0] + feats[1]) / 2
    expected = (
        clip2.logit_scale.exp()
        * clip2.encode_image(images, normalize=True)
        @ (text / text.norm(dim=-1, keepdim=True)).t()
    )
    torch.testing.assert_close(method.logits(images), expected, rtol=0, atol=1e-5)


def test_grad_checkpointing_switch_is_honoured(clip2, images, monkeypatch):
    """With open_clip's switch on, each block runs again in backward (recompute) and gradients are unchanged."""
    calls = []
    for (
        block
    ) in clip2.visual.transformer.resblocks:  # (module hooks are silenced during recompute: wrap forward)
        monkeypatch.setattr(  # (ln_1 runs in the fused path and in the block's own)
            block.ln_1, "forward", lambda *a, _f=block.ln_1.forward, **k: calls.append(1) or _f(*a, **k)
        )
    prompts = torch.randn(2, 3, 96, requires_grad=True)
    enc = PromptedVisionEncoder(clip2)
    try:
        grads = []
        for flag in (False, True):
            clip2.set_grad_checkpointing(flag)
            calls.clear()
            enc(images, prompts, VisualPlan()).sum().backward()
            grads.append(prompts.grad.clone())
            prompts.grad = None
            grads.append(len(calls))
    finally:
        clip2.set_grad_checkpointing(False)
    assert grads[1] == 2 and grads[3] == 4
    torch.testing.assert_close(grads[0], grads[2], rtol=0, atol=1e-6)


def test_load_local_open_clip_and_openai_format_files(tmp_path, clip2, images):
    state = {k: v.clone() for k, v in clip2.state_dict().items()}
    save_file(state, str(tmp_path / "w.safetensors"))
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, tmp_path / "w.pt")
    openai = dict(
        state,
        input_resolution=torch.tensor(32),
        context_length=torch.tensor(16),
        vocab_size=torch.tensor(49408),
    )
    openai["logit_scale"] = state["logit_scale"].reshape(1)
    torch.save(openai, tmp_path / "openai.pt")
    with warnings.catch_warnings():  # OpenAI's released .pt files are TorchScript archives
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.script(clip2).save(str(tmp_path / "openai_jit.pt"))
    expected = clip2.encode_image(images)
    for name in ("w.safetensors", "w.pt", "openai.pt", "openai_jit.pt"):
        model = load_clip("sp-tiny-vit", str(tmp_path / name)).model
        assert not any(p.requires_grad for p in model.parameters()) and not model.training
        assert torch.equal(model.encode_image(images), expected), name


def test_load_errors_name_the_problem(tmp_path, clip12):
    with pytest.raises(BackboneError, match="not found"):
        load_clip("sp-tiny-vit", str(tmp_path / "missing.pt"))
    with pytest.raises(BackboneError, match="unknown model name 'ViT-Nope'"):
        load_clip("ViT-Nope")
    save_file(dict(clip12.state_dict()), str(tmp_path / "other.safetensors"))
    with pytest.raises(BackboneError, match="wrong shapes|missing keys"):
        load_clip("sp-tiny-vit", str(tmp_path / "other.safetensors"))
    (tmp_path / "pickle.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(BackboneError, match="weights-only"):
        load_clip("sp-tiny-vit", str(tmp_path / "pickle.pt"))


def test_untrusted_pickle_is_never_executed(tmp_path):
    class Evil:
        def __reduce__(self):
            return (open, (str(tmp_path / "pwned"), "w"))

    torch.save({"x": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(BackboneError):
        load_clip("sp-tiny-vit", str(tmp_path / "evil.pt"))
    assert not (tmp_path / "pwned").exists()


@pytest.mark.slow
def test_text_cut_on_a_vit_b16_text_tower_keeps_features_and_prompt_gradients():
    """The wide check: ViT-B/16's random text tower (width 512, 77 positions), a CoOp-style context spliced in
    and deep prompts in blocks 1-2 (IVLP / MaPLe style): cut at the last end-of-text token vs all 77 positions,
    features and prompt gradients equal to 1e-5 relative."""
    from scaleprompt.backbone import load_clip
    from scaleprompt.encoders import splice

    model = load_clip("ViT-B-16", None).model
    enc = PromptedTextEncoder(model)
    ids = enc.tokenize([f"X X X X {c}." for c in CLASSNAMES])
    assert enc.kept_length(ids) < 16 < enc.context_length == 77
    torch.manual_seed(0)
    ctx = (0.02 * torch.randn(4, enc.width)).requires_grad_()
    deep = [(0.02 * torch.randn(2, enc.width)).requires_grad_() for _ in range(2)]
    outputs = []
    for truncate in (True, False):
        enc = PromptedTextEncoder(model, options=EncoderOptions(truncate=truncate))
        features = enc(splice(enc.embed(ids), ctx), ids, deep=deep)
        grads = torch.autograd.grad(features.square().sum(), [ctx, *deep])
        outputs.append((features.detach(), grads))
    for a, b in zip([outputs[0][0], *outputs[0][1]], [outputs[1][0], *outputs[1][1]], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5 * float(b.abs().max()))


@pytest.mark.slow
def test_fused_attention_on_vit_b16_width_blocks_keeps_features_and_prompt_gradients():
    """The wide check of the fused attention: ViT-B/16's random towers (vision width 768, 12 heads; text 512,
    causal), one block each with prompts in front of it, fused vs nn.MultiheadAttention to 1e-5 relative."""
    from scaleprompt.backbone import load_clip
    from scaleprompt.encoders import _fused_block, _is_causal

    clip = load_clip("ViT-B-16", None).model
    torch.manual_seed(0)
    for block, length, mask in [
        (clip.visual.transformer.resblocks[0], 197 + 16, None),
        (clip.transformer.resblocks[0], 20, clip.attn_mask[:20, :20]),
    ]:
        width = block.attn.embed_dim
        prompts = (0.02 * torch.randn(2, 16, width)).requires_grad_()
        tokens = torch.randn(2, length - 16, width)
        outputs = []
        for fused in (True, False):
            x = torch.cat([prompts, tokens], dim=1)  # [B, T, D]
            y = _fused_block(block, x, causal=mask is not None) if fused else block(x, attn_mask=mask)
            outputs.append((y.detach(), torch.autograd.grad(y.square().sum(), prompts)[0]))
        for a, b in zip(outputs[0], outputs[1], strict=True):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5 * float(b.abs().max()))
    assert _is_causal(clip.attn_mask) and not _is_causal(torch.zeros(4, 4))


def close_scaled(a: torch.Tensor, b: torch.Tensor) -> None:
    """Equal to 1e-5 relative to ``b``'s scale (float rounding of a reordered sum)."""
    a, b = a.detach(), b.detach()
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5 * float(b.abs().max()))


def test_frozen_linear_is_f_linear_with_the_input_gradient_only():
    """oneDNN's matmul on CPU: forward and input gradient equal F.linear's to 1e-5 relative; a trainable weight, a
    float64 input or an unavailable op take F.linear itself."""
    from scaleprompt.encoders import _onednn_available, frozen_linear

    assert _onednn_available()  # the CPU wheels this project installs ship oneDNN: the fast path is exercised
    torch.manual_seed(0)
    weight, bias = torch.randn(48, 32), torch.randn(48)
    x = torch.randn(3, 7, 32, requires_grad=True)
    grad_out = torch.randn(3, 7, 48)
    ours = frozen_linear(x, weight, bias)
    (ours_grad,) = torch.autograd.grad(ours, x, grad_out)
    ref = torch.nn.functional.linear(x, weight, bias)
    (ref_grad,) = torch.autograd.grad(ref, x, grad_out)
    assert ours.grad_fn is not None and "OneDNN" in type(ours.grad_fn).__name__
    close_scaled(ours, ref)
    close_scaled(ours_grad, ref_grad)
    trainable = weight.clone().requires_grad_()
    out = frozen_linear(x, trainable, bias)
    assert "OneDNN" not in type(out.grad_fn).__name__
    out.sum().backward()
    assert trainable.grad is not None
    x64 = x.detach().double()
    assert torch.equal(frozen_linear(x64, weight.double()), torch.nn.functional.linear(x64, weight.double()))
    with torch.autocast("cpu", dtype=torch.bfloat16):  # autocast's choice of precision is kept
        assert frozen_linear(x, weight, bias).dtype == torch.bfloat16


def test_frozen_linear_backward_sees_a_weight_changed_in_place():
    """The transposed weight of the backward is cached per weight, its storage AND its version: an in-place update
    (a load_state_dict into the frozen model) or a swapped ``.data`` is never answered with the old weight."""
    from scaleprompt.encoders import frozen_linear

    torch.manual_seed(0)
    weight = torch.randn(16, 8)
    x = torch.randn(4, 8, requires_grad=True)
    grad_out = torch.randn(4, 16)
    (first,) = torch.autograd.grad(frozen_linear(x, weight), x, grad_out)
    close_scaled(first, grad_out @ weight)
    with torch.no_grad():
        weight.mul_(3.0)
    (second,) = torch.autograd.grad(frozen_linear(x, weight), x, grad_out)
    close_scaled(second, grad_out @ weight)
    param = torch.nn.Parameter(weight.clone(), requires_grad=False)
    torch.autograd.grad(frozen_linear(x, param), x, grad_out)
    param.data = param.data * 2.0  # a new storage, the version counter untouched (module.to() does this too)
    (third,) = torch.autograd.grad(frozen_linear(x, param), x, grad_out)
    close_scaled(third, grad_out @ param.detach())


def rows_check(block: torch.nn.Module, length: int, n_prompts: int, causal: bool) -> None:
    """``_fused_block`` on some rows equals the block's own forward at those rows, output and prompt gradients."""
    from scaleprompt.encoders import _fused_block, _gather_rows

    width = block.attn.embed_dim
    torch.manual_seed(0)
    prompts = (0.02 * torch.randn(3, n_prompts, width)).requires_grad_()
    tokens = torch.randn(3, length - n_prompts, width)
    mask = torch.full((length, length), float("-inf")).triu(1) if causal else None
    rows = torch.tensor([[length - 1], [length - 4], [n_prompts + 1]]) if causal else torch.zeros(3, 1).long()
    outputs = []
    for fast in (True, False):
        x = torch.cat([prompts, tokens], dim=1)  # [B, T, D]
        y = (
            _fused_block(block, x, causal=causal, rows=rows)
            if fast
            else _gather_rows(block(x, attn_mask=mask), rows)
        )
        outputs.append((y.detach(), torch.autograd.grad(y.square().sum(), prompts)[0]))
    assert outputs[0][0].shape == (3, 1, width)
    for a, b in zip(outputs[0], outputs[1], strict=True):
        close_scaled(a, b)


def test_the_last_block_on_the_pooled_rows_only_equals_the_full_block(clip2):
    """The vision tower's class token (all keys) and the text tower's end-of-text rows (causal keys)."""
    rows_check(clip2.visual.transformer.resblocks[-1], 20, 4, causal=False)
    rows_check(clip2.transformer.resblocks[-1], 12, 4, causal=True)


@pytest.mark.slow
def test_pooled_rows_and_onednn_on_vit_b16_width_blocks_keep_features_and_prompt_gradients():
    """The wide check of the last-block row pruning (vision width 768, text 512 causal) and of frozen_linear on
    ViT-B/16's shapes."""
    from scaleprompt.encoders import frozen_linear

    clip = load_clip("ViT-B-16", None).model
    rows_check(clip.visual.transformer.resblocks[-1], 197 + 16, 16, causal=False)
    rows_check(clip.transformer.resblocks[-1], 20, 4, causal=True)
    fc = clip.visual.transformer.resblocks[0].mlp.c_fc
    x = torch.randn(2, 213, 768, requires_grad=True)
    grad_out = torch.randn(2, 213, 3072)
    ours, ref = frozen_linear(x, fc.weight, fc.bias), torch.nn.functional.linear(x, fc.weight, fc.bias)
    close_scaled(ours, ref)
    close_scaled(torch.autograd.grad(ours, x, grad_out)[0], torch.autograd.grad(ref, x, grad_out)[0])


@pytest.mark.slow
def test_a_compiled_encoder_runs_and_equals_the_eager_one(clip2, images):
    """torch.compile of the prompted vision encoder (prompts and gradients included): the oneDNN projections step
    aside while compiling (inductor cannot lower them on non-constant weights), and the numbers stay the same."""
    enc = PromptedVisionEncoder(clip2)
    prompts = [(0.02 * torch.randn(4, enc.width)).requires_grad_() for _ in range(2)]
    eager = enc(images, prompts)
    (eager_grad,) = torch.autograd.grad(eager.square().sum(), prompts[0])
    compiled = torch.compile(enc.forward)(images, prompts)
    (compiled_grad,) = torch.autograd.grad(compiled.square().sum(), prompts[0])
    close_scaled(compiled, eager)
    close_scaled(compiled_grad, eager_grad)


def test_hub_weights_without_network_are_one_line_within_seconds(tmp_path, monkeypatch):
    """No network (forced: the host probe says unreachable, so nothing is downloaded even where the hub is reachable)
    and an empty cache: one BackboneError naming the weights, the cache and the local-file override, without the
    hub's minute of retries."""
    import time

    monkeypatch.setattr(backbone_module, "_reachable", lambda host, **_: False)
    start = time.perf_counter()
    with pytest.raises(BackboneError) as exc:
        load_clip("ViT-B-16", "openai", cache_dir=str(tmp_path / "hub-cache"))
    message = str(exc.value)
    assert "ViT-B-16 / 'openai'" in message and str(tmp_path / "hub-cache") in message
    assert "model.pretrained=/path/to/weights" in message and "ViT-B-16-quickgelu" in message
    assert "\n" not in message and time.perf_counter() - start < 30
    import huggingface_hub.constants as hf_constants

    assert not hf_constants.HF_HUB_OFFLINE  # the offline switch is restored
    with pytest.raises(BackboneError, match="unknown pretrained tag 'nosuchtag' for ViT-B-16"):
        load_clip("ViT-B-16", "nosuchtag")
