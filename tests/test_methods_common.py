"""Behaviour every registered method must have (published defaults on the 12-block tiny CLIP)."""

from __future__ import annotations

import pytest
import torch

from scaleprompt import methods
from scaleprompt.encoders import EncoderOptions, PromptedTextEncoder
from scaleprompt.methods import (
    FeatureMethod,
    FixedTextMethod,
    PromptFileError,
    PromptMethod,
    load_prompts,
    save_prompts,
)
from scaleprompt.methods.base import MethodConfig

from conftest import CLASSNAMES

ALL = methods.list_methods()


def test_registry_lists_all_nine_methods():
    assert ALL == ["zsclip", "coop", "cocoop", "vpt_deep", "ivlp", "maple", "provp", "provp_ref", "upt"]


@pytest.fixture(params=ALL)
def method(request, backbone12):
    torch.manual_seed(7)
    return methods.build(request.param, backbone12, CLASSNAMES)


def test_logits_shape(method, images):
    assert method.logits(images).shape == (len(images), len(CLASSNAMES))


def test_the_contract_is_logits_and_loss_and_the_feature_split_is_honest(method, images):
    """Every method implements logits (and loss); the image / text split is offered only by the methods that
    have it (FeatureMethod), and there it computes the same logits. Nothing raises from an inherited method."""
    assert isinstance(method, PromptMethod) and not type(method).__abstractmethods__
    if method.name == "cocoop":  # per-image text features: no one text side for all images
        assert not isinstance(method, FeatureMethod)
        assert not hasattr(method, "text_features") and not hasattr(method, "image_features")
        return
    assert isinstance(method, FeatureMethod)
    assert isinstance(method, FixedTextMethod) == (
        method.name in ("zsclip", "vpt_deep", "provp", "provp_ref")
    )
    method.eval()
    with torch.no_grad():
        image_features, text_features = method.image_features(images), method.text_features()
        assert image_features.shape == (len(images), 32) and text_features.shape == (len(CLASSNAMES), 32)
        torch.testing.assert_close(
            method.logits_from(image_features), method.logits(images), rtol=0, atol=1e-6
        )


def test_a_method_without_logits_cannot_be_built(backbone12):
    class NoLogits(PromptMethod):
        name, config_class = "no_logits", MethodConfig

    class NoTextFeatures(FeatureMethod):
        name, config_class = "no_text", MethodConfig

        def image_features(self, images):
            return self.frozen_image_features(images)

    for cls in (NoLogits, NoTextFeatures):
        with pytest.raises(TypeError, match="abstract"):
            cls(backbone12, CLASSNAMES, MethodConfig())
    with pytest.raises(TypeError, match="FixedTextConfig"):

        class WrongConfig(FixedTextMethod):
            name, config_class = "wrong", MethodConfig


def test_only_prompts_require_grad(method):
    assert not any(p.requires_grad for p in method.clip.parameters())
    trainable = dict((n, p) for n, p in method.named_parameters() if p.requires_grad)
    assert all(not n.startswith("clip.") for n in trainable)
    assert set(trainable) == set(method.prompt_state_dict())
    if method.name == "zsclip":
        assert trainable == {}
    else:
        assert trainable, f"{method.name} has no trainable prompt"


def test_backward_reaches_every_prompt_and_no_backbone_weight(method, images, labels):
    method.train()
    out = method.loss(images, labels)
    assert torch.isfinite(out.loss)
    if method.name == "zsclip":
        assert not out.loss.requires_grad
        return
    out.loss.backward()
    for name, p in method.named_parameters():
        if name.startswith("clip."):
            assert p.grad is None, f"backbone weight {name} got a gradient"
        else:
            assert p.grad is not None and p.grad.abs().sum() > 0, f"prompt tensor {name} got no gradient"


def test_optimizer_step_changes_prompts_and_nothing_else(method, images, labels):
    if method.name == "zsclip":
        pytest.skip("zero-shot CLIP has nothing to train")
    method.train()
    before = {n: t.clone() for n, t in method.state_dict(keep_vars=False).items()}
    opt = torch.optim.SGD(method.trainable_parameters(), lr=0.5)
    method.loss(images, labels).loss.backward()
    opt.step()
    after = method.state_dict()
    trainable = set(method.prompt_state_dict())
    for name, value in after.items():
        if name in trainable:
            assert not torch.equal(value, before[name]), f"prompt {name} did not change"
        else:
            assert torch.equal(value, before[name]), f"frozen tensor {name} changed"


def test_save_load_reproduces_logits(method, images, tmp_path, backbone12):
    method.eval()
    path = save_prompts(method, tmp_path / f"{method.name}.safetensors")
    with torch.no_grad():
        for p in method.trainable_parameters():  # trained values, not the init, must round-trip
            p.add_(0.01 * torch.randn_like(p))
        save_prompts(method, path)
        expected = method.logits(images)
    torch.manual_seed(999)  # a different init must not leak into the loaded method
    loaded = load_prompts(path, backbone12).eval()
    assert type(loaded) is type(method) and loaded.effective_config() == method.effective_config()
    with torch.no_grad():
        assert torch.equal(loaded.logits(images), expected)
    assert list(tmp_path.iterdir()) == [path], "atomic save left temporary files behind"


def test_load_rejects_wrong_backbone(tmp_path, backbone12, backbone2):
    method = methods.build("provp", backbone12, CLASSNAMES)
    path = save_prompts(method, tmp_path / "p.safetensors")
    with pytest.raises(PromptFileError, match="vision_width"):
        load_prompts(path, backbone2)


def test_load_rejects_missing_corrupt_and_foreign_files(tmp_path, clip12):
    with pytest.raises(PromptFileError, match="not found"):
        load_prompts(tmp_path / "nope.safetensors", clip12)
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x00garbage" * 10)
    with pytest.raises(PromptFileError, match="not a readable safetensors"):
        load_prompts(bad, clip12)
    from safetensors.torch import save_file

    foreign = tmp_path / "foreign.safetensors"
    save_file({"x": torch.zeros(2)}, str(foreign))
    with pytest.raises(PromptFileError, match="not a scaleprompt prompt file"):
        load_prompts(foreign, clip12)


def test_load_rejects_tensor_shape_mismatch(tmp_path, clip12):
    method = methods.build("coop", clip12, CLASSNAMES, n_ctx=4)
    path = save_prompts(method, tmp_path / "c.safetensors")
    from safetensors import safe_open
    from safetensors.torch import save_file

    from scaleprompt.methods.io import tensors_sha256

    with safe_open(str(path), framework="pt") as fh:
        meta = fh.metadata()
    tensors = {"ctx": torch.zeros(5, 32)}  # (its own checksum: the shape check refuses it, not the checksum)
    save_file(tensors, str(path), metadata={**meta, "tensors_sha256": tensors_sha256(tensors)})
    with pytest.raises(PromptFileError, match=r"tensor ctx has shape \(5, 32\), the method needs \(4, 32\)"):
        load_prompts(path, clip12)


def test_frozen_text_features_are_computed_once(clip12, images):
    method = methods.build("vpt_deep", clip12, CLASSNAMES)
    calls = []
    original = method.compute_text_features
    method.compute_text_features = lambda: calls.append(1) or original()
    method.logits(images)
    method.logits(images)
    assert len(calls) == 1
    assert "_text_cache" not in method.state_dict(), "cached text features must be a non-persistent buffer"


def test_set_classnames_moves_prompts_to_other_classes(method, images, backbone12):
    """Prompts evaluated on new classes equal a method built for those classes with the same prompts."""
    if method.name == "coop":
        method = methods.build("coop", backbone12, CLASSNAMES, n_ctx=4)
    method.eval()
    novel = ["lighthouse", "red fox", "tram"]
    fresh = methods.build(method.name, backbone12, novel, config=method.config).eval()
    fresh.load_state_dict(method.state_dict())
    method.logits(images)  # fill any cache for the old classes first
    method.set_classnames(novel)
    with torch.no_grad():
        assert torch.equal(method.logits(images), fresh.logits(images))
    assert method.logits(images).shape == (len(images), 3)


@pytest.mark.parametrize(
    ("name", "args"), [(n, {}) for n in ALL] + [("coop", {"class_position": p}) for p in ("front", "middle")]
)
def test_moved_to_a_device_every_tensor_stays_there_also_after_new_classes(name, args):
    """A method moved to an accelerator keeps every parameter and buffer there, also those that moving it to other
    classes rebuilds (base-to-novel, transfer, eval and predict with other classes): checked on PyTorch's ``meta``
    device, which stands for any non-CPU device here (a CPU tensor among them is a CUDA run's crash)."""
    from scaleprompt.backbone import load_clip

    method = methods.build(name, load_clip("sp-tiny-vit-12"), CLASSNAMES, **args).to("meta")
    method.set_classnames(["lighthouse", "red fox", "tram"])
    elsewhere = {n: t.device.type for n, t in [*method.named_parameters(), *method.named_buffers()]}
    assert set(elsewhere.values()) == {"meta"}, {n: d for n, d in elsewhere.items() if d != "meta"}


def test_class_specific_coop_refuses_other_classes(clip12):
    coop = methods.build("coop", clip12, CLASSNAMES, n_ctx=4, class_specific=True)
    with pytest.raises(ValueError, match="class-specific"):
        coop.set_classnames(["a", "b"])


FAST_PATHS = {  # EncoderOptions field -> its value with the fast path off
    "truncate": False,
    "fused_attention": False,
    "pooled_only": False,
    "linear": "torch",
}


@pytest.mark.parametrize("switch", [*FAST_PATHS, "both"])
@pytest.mark.parametrize("name", methods.list_methods())
def test_fast_paths_change_nothing(name, switch, backbone12, images, labels):
    """The text tower cut after the batch's last end-of-text position, and the blocks' attention as one fused
    scaled_dot_product_attention call: each (and both) equal the full-context, nn.MultiheadAttention computation to
    1e-5 relative, in logits, loss and every prompt gradient (deep text and visual prompts included)."""
    switches = list(FAST_PATHS) if switch == "both" else [switch]
    runs = []
    for options in (EncoderOptions(), EncoderOptions(**{sw: FAST_PATHS[sw] for sw in switches})):
        torch.manual_seed(0)
        method = methods.build(name, backbone12, CLASSNAMES, options=options)
        method.train()
        torch.manual_seed(1)  # (dropout, if any, draws the same masks)
        logits = method.logits(images)
        out = method.loss(images, labels) if method.trainable_parameters() else None
        if out is not None:
            out.loss.backward()
        grads = [p.grad.clone() for p in method.trainable_parameters() if p.grad is not None]
        runs.append((logits.detach(), None if out is None else out.loss.detach(), grads))
    (logits, loss, grads), (slow_logits, slow_loss, slow_grads) = runs

    def close(a: torch.Tensor, b: torch.Tensor) -> None:  # 1e-5 relative to the tensor's scale
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5 * float(b.abs().max()))

    close(logits, slow_logits)
    if loss is not None:
        close(loss, slow_loss)
    assert len(grads) == len(slow_grads) and (grads or loss is None)
    for g, slow in zip(grads, slow_grads, strict=True):
        close(g, slow)


def test_the_text_cut_happens_on_the_test_backbone(backbone12):
    text = methods.build("coop", backbone12, CLASSNAMES).text
    ids = text.tokenize([f"X X X X {c}." for c in CLASSNAMES])
    assert text.kept_length(ids) < text.context_length


def test_the_text_cut_is_read_once_per_ids_tensor_and_again_when_they_change(backbone12):
    """The cut needs the last pooled position on the host (a device sync per forward on a GPU): read once per
    class-prompt ids tensor, again for another tensor or after an in-place change, never stale."""
    text = methods.build("coop", backbone12, CLASSNAMES).text
    ids = text.tokenize([f"X X X X {c}." for c in CLASSNAMES])
    first = text.kept_length(ids)
    cached = text._pooled_cache
    assert cached is not None and cached[0]() is ids and cached[2] == first - 1
    assert text.kept_length(ids) == first and text._pooled_cache is cached  # (not read again)
    longer = text.tokenize([f"X X X X {c} and a much longer name." for c in CLASSNAMES])
    assert text.kept_length(longer) > first  # another tensor: read
    assert text.kept_length(ids) == first and text._pooled_cache[0]() is ids  # (cached again)
    ids[0, first + 2] = ids[0].max() + 1  # (in place: the end-of-text token moves further right)
    ids[0, first - 1] = 0
    assert text.kept_length(ids) == first + 3  # the changed tensor: read again, not the cached length


LEARNED_TEXT = [
    n for n in methods.list_methods() if not getattr(methods.method_class(n), "frozen_text", False)
]


@pytest.mark.parametrize("name", LEARNED_TEXT)
def test_text_chunks_change_nothing(name, backbone12, images, labels):
    """Class prompts encoded 2 at a time (each chunk recomputed in backward) give the logits, the loss and every
    prompt gradient of the one-pass encoding, to 1e-5 relative."""
    runs = []
    for chunk in (0, 2):
        torch.manual_seed(0)
        method = methods.build(name, backbone12, CLASSNAMES, options=EncoderOptions(text_chunk=chunk))
        method.train()
        torch.manual_seed(1)
        out = method.loss(images, labels)
        out.loss.backward()
        runs.append(
            (out.logits.detach(), out.loss.detach(), [p.grad.clone() for p in method.trainable_parameters()])
        )
    (logits, loss, grads), (chunked_logits, chunked_loss, chunked_grads) = runs
    assert len(CLASSNAMES) > 2  # (more than one chunk)
    for a, b in zip([logits, loss, *grads], [chunked_logits, chunked_loss, *chunked_grads], strict=True):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5 * float(a.abs().max()))


@pytest.mark.slow  # (quick-loop budget: an end-to-end run / processes / a timeout)
def test_text_chunks_bound_the_activations_kept_for_backward(backbone12):
    """What autograd keeps for the text side of CoOp over 120 classes: with chunks of 8, only each chunk's inputs
    (the chunks' activations are recomputed in backward), a small fraction of the one-pass encoding's."""
    names = [f"class number {i}" for i in range(120)]

    def kept_bytes(chunk: int) -> int:
        method = methods.build("coop", backbone12, names, options=EncoderOptions(text_chunk=chunk))
        total = 0

        def pack(t: torch.Tensor) -> torch.Tensor:
            nonlocal total
            total += t.numel() * t.element_size()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            features = method.compute_text_features()
        features.sum().backward()  # (the recomputation works)
        assert method.ctx.grad is not None and method.ctx.grad.abs().sum() > 0
        return total

    full, chunked = kept_bytes(0), kept_bytes(8)
    assert chunked < full / 4, (chunked, full)


def test_text_chunks_split_per_sequence_deep_prompts(backbone12):
    """Deep text prompts given per sequence (``[S, N, Dt]``) go to their own sequences' chunk."""
    method = methods.build("coop", backbone12, CLASSNAMES)
    text, embeds, ids = method.text, method.table.assemble(method.ctx).detach(), method.table.ids
    torch.manual_seed(0)
    deep = [torch.randn(len(CLASSNAMES), 2, text.width) for _ in range(2)]  # a different prompt per sequence
    chunks = PromptedTextEncoder(method.clip, text.tokenizer, EncoderOptions(text_chunk=2))
    with torch.no_grad():
        whole = text(embeds, ids, deep=deep)
        chunked = chunks(embeds, ids, deep=deep)
    torch.testing.assert_close(chunked, whole, rtol=1e-5, atol=1e-5 * float(whole.abs().max()))


@pytest.mark.parametrize("name", ["coop", "cocoop", "upt", "provp_ref"])
def test_under_bf16_weights_logits_and_losses_are_fp32_with_the_fp32_logit_scale(name, images, labels):
    """DeepSpeed's bf16 engine casts the whole method (logit scale included: ln 100 -> 4.594). Logits, the
    cross-entropy and ProVP-Ref's re-formation loss are computed in fp32 from the bf16 features, scaled by the
    backbone's fp32 logit scale read at build."""
    from scaleprompt.backbone import load_clip
    from scaleprompt.losses import cosine_logits

    torch.manual_seed(0)
    backbone = load_clip("sp-tiny-vit-12")
    fp32_scale = backbone.model.logit_scale.detach().clone()
    method = methods.build(name, backbone, CLASSNAMES).bfloat16()
    assert method.clip.logit_scale.dtype == torch.bfloat16 and method.clip.logit_scale.float() != fp32_scale
    x = images.bfloat16()
    out = method.loss(x, labels)
    assert out.loss.dtype == out.logits.dtype == torch.float32
    assert all(v.dtype == torch.float32 for v in out.parts.values()), out.parts
    with torch.no_grad():
        logits = method.logits(x)
        if name in ("coop", "provp_ref"):  # (UPT's logits come from one joint pass, not these two calls)
            features = method.image_features(x)
            assert features.dtype == torch.bfloat16  # (the towers run in bf16; only the comparison is fp32)
            assert torch.equal(logits, cosine_logits(features, method.text_features(), fp32_scale))
    torch.testing.assert_close(method.ln_logit_scale(), fp32_scale, rtol=0, atol=0)
