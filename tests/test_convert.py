"""Official-release checkpoints -> scaleprompt prompt files (scaleprompt/methods/convert.py, docs/porting.md).

Each test builds a scaleprompt method on a tiny backbone, sets its prompts to random values, writes them the way the
official release stores them (its parameter names, per-layer tensors, layouts, fp16 where the release keeps fp16,
inside a Dassl checkpoint dict with a real optimizer and warm-up scheduler state), converts that file and checks
that the prompt file computes the same logits as the method whose parameters were set directly.
"""

from __future__ import annotations

import json
import pickle
import warnings
from pathlib import Path

import pytest
import torch
from engine_utils import ArmedPickle

from scaleprompt import methods
from scaleprompt.cli import main
from scaleprompt.config import ConfigError
from scaleprompt.methods.convert import (
    OfficialCheckpointError,
    convert_official,
    convert_official_checkpoint,
    convert_official_file,
    read_official_checkpoint,
)
from scaleprompt.methods.io import open_prompt_file, read_prompt_file

from conftest import CLASSNAMES


# --- writing checkpoints the way the releases do -----------------------------------------------------------------
class ConstantWarmupScheduler(torch.optim.lr_scheduler.LRScheduler):
    """Dassl's warm-up scheduler (dassl/optim/lr_scheduler.py): its state_dict() is its __dict__, so the checkpoint
    pickles the ``successor`` scheduler OBJECT and, inside it, the optimizer object."""

    def __init__(self, optimizer, successor, warmup_epoch, cons_lr):
        self.successor, self.warmup_epoch, self.cons_lr = successor, warmup_epoch, cons_lr
        super().__init__(optimizer)

    def get_lr(self):
        if self.last_epoch >= self.warmup_epoch:
            return self.successor.get_last_lr()
        return [self.cons_lr for _ in self.base_lrs]


def dassl_checkpoint(state_dict: dict[str, torch.Tensor], epoch: int = 5) -> dict:
    """What Dassl's save_model writes: {state_dict, epoch, optimizer, scheduler, val_result}."""
    params = [
        torch.nn.Parameter(v.detach().float().clone()) for k, v in state_dict.items() if "token_" not in k
    ]
    optim = torch.optim.SGD(params, lr=0.002, momentum=0.9, weight_decay=5e-4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sched = ConstantWarmupScheduler(
            optim, torch.optim.lr_scheduler.CosineAnnealingLR(optim, 50.0), 1, 1e-5
        )
        for p in params:
            p.grad = torch.randn_like(p)
        optim.step()
        sched.step()
    return {
        "state_dict": state_dict,
        "epoch": epoch,
        "optimizer": optim.state_dict(),
        "scheduler": sched.state_dict(),
        "val_result": 71.25,
    }


def save_official(tmp_path: Path, state_dict: dict[str, torch.Tensor], name: str = "model.pth.tar-5") -> Path:
    path = tmp_path / "prompt_learner" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(dassl_checkpoint(state_dict), path)
    return path


def randomize(method: methods.PromptMethod, seed: int = 0) -> None:
    """Random prompt values, rounded to fp16 (so files the releases keep in fp16 hold them exactly)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in method.named_parameters():
            if not p.requires_grad:
                continue
            value = torch.randn(p.shape, generator=g) * (0.1 if "norm" in name else 0.05)
            offset = 1.0 if name.endswith(("norm1.weight", "norm2.weight")) else 0.0  # LayerNorm gains near 1
            p.copy_((value + offset).half())


def buffers(clip, n_ctx: int, prefix: str = "") -> dict[str, torch.Tensor]:
    """The per-class token_prefix / token_suffix buffers the prompt learners save (and drop again on load)."""
    c, t, d = len(CLASSNAMES), 77, clip.token_embedding.weight.shape[1]
    return {
        f"{prefix}token_prefix": torch.randn(c, 1, d).half(),
        f"{prefix}token_suffix": torch.randn(c, t - 1 - n_ctx, d).half(),
    }


def backbone(clip, prefix: str) -> dict[str, torch.Tensor]:
    """A few frozen CLIP tensors, as whole-model checkpoints (MaPLe, IVLP, the VPTs) hold them."""
    if prefix == "clip_model.":  # UPT's VPT-deep: the whole CLIP under clip_model.
        return {
            "clip_model.visual.conv1.weight": clip.visual.conv1.weight,
            "clip_model.logit_scale": clip.logit_scale,
        }
    return {
        "image_encoder.conv1.weight": clip.visual.conv1.weight.half(),
        "image_encoder.transformer.resblocks.0.ln_1.weight": clip.visual.transformer.resblocks[0].ln_1.weight,
        "text_encoder.ln_final.weight": clip.ln_final.weight,
        "logit_scale": clip.logit_scale.detach(),
    }


def official_coop(m, clip):  # KaiyangZhou/CoOp trainers/coop.py, PREC fp16: ctx in fp16
    return {"ctx": m.ctx.detach().half(), **buffers(clip, m.table.n_ctx)}


def official_cocoop(m, clip):  # KaiyangZhou/CoOp trainers/cocoop.py: meta_net.linear1 / relu / linear2
    net = m.meta_net
    return {
        "ctx": m.ctx.detach().half(),
        "meta_net.linear1.weight": net[0].weight.detach().half(),
        "meta_net.linear1.bias": net[0].bias.detach().half(),
        "meta_net.linear2.weight": net[2].weight.detach().half(),
        "meta_net.linear2.bias": net[2].bias.detach().half(),
        **buffers(clip, m.table.n_ctx),
    }


def official_ivlp(m, clip):  # multimodal-prompt-learning independentVL.py: the whole CustomCLIP's state dict
    sd = {"prompt_learner.ctx": m.ctx.detach().half(), **buffers(clip, m.table.n_ctx, "prompt_learner.")}
    for i, p in enumerate(m.deep_text, start=1):
        sd[f"text_encoder.transformer.resblocks.{i}.VPT_shallow"] = p.detach()
    sd["image_encoder.VPT"] = m.visual_prompts[0].detach()
    for i in range(1, len(m.visual_prompts)):
        sd[f"image_encoder.transformer.resblocks.{i}.VPT_shallow"] = m.visual_prompts[i].detach()
    return {**sd, **backbone(clip, "")}


def official_maple(m, clip):  # multimodal-prompt-learning maple.py: MultiModalPromptLearner inside CustomCLIP
    sd = {
        "prompt_learner.ctx": m.ctx.detach().half(),
        "prompt_learner.proj.weight": m.proj.weight.detach().half(),
        "prompt_learner.proj.bias": m.proj.bias.detach().half(),
        **buffers(clip, m.table.n_ctx, "prompt_learner."),
    }
    for i, (p, f) in enumerate(zip(m.deep_text, m.deep_proj, strict=True)):
        sd[f"prompt_learner.compound_prompts_text.{i}"] = p.detach()
        sd[f"prompt_learner.compound_prompt_projections.{i}.weight"] = f.weight.detach()
        sd[f"prompt_learner.compound_prompt_projections.{i}.bias"] = f.bias.detach()
    return {**sd, **backbone(clip, "")}


def official_vpt_maple(
    m, clip
):  # multimodal-prompt-learning vpt.py: image_encoder.VPT + per-block VPT_shallow
    sd = {"image_encoder.VPT": m.prompts[0].detach()}
    for i in range(1, len(m.prompts)):
        sd[f"image_encoder.transformer.resblocks.{i}.VPT_shallow"] = m.prompts[i].detach()
    return {**sd, **backbone(clip, "")}


def official_vpt_upt(m, clip):
    """UPT's vpt_deep.py: visual_ctx [N * L, Dv]. The reference prompts are set FROM it with the release's own
    reading code (clip/model.py Transformer.forward_prompt), so the token-major order is the release's."""
    depth, n, d = m.prompts.shape
    visual_ctx = (torch.randn(n * depth, d, generator=torch.Generator().manual_seed(7)) * 0.05).half()
    with torch.no_grad():
        m.prompts.copy_(
            visual_ctx.float().reshape(n, depth, -1).permute(1, 0, 2)
        )  # the release's forward_prompt
    return {"visual_ctx": visual_ctx, **backbone(clip, "clip_model.")}


def official_upt(m, clip):  # yuhangzang/UPT trainers/unified.py PromptLearner (all modules .type(fp16))
    layer = m.transform[0]
    sd = {
        "uni_ctx": m.unified.detach(),
        "self_attn.in_proj_weight": layer.mix.in_proj_weight.detach(),
        "self_attn.in_proj_bias": layer.mix.in_proj_bias.detach(),
        "self_attn.out_proj.weight": layer.mix.out_proj.weight.detach(),
        "self_attn.out_proj.bias": layer.mix.out_proj.bias.detach(),
        "mlp.weight": m.visual_proj.weight.detach(),
        "mlp.bias": m.visual_proj.bias.detach(),
        **buffers(clip, m.config.n_ctx),
    }
    for name in ("norm1", "norm2", "linear1", "linear2"):
        sd[f"{name}.weight"] = getattr(layer, name).weight.detach()
        sd[f"{name}.bias"] = getattr(layer, name).bias.detach()
    return {k: v.half() for k, v in sd.items()}


def official_provp(m, clip):  # MCG-NJU/ProVP trainers/provp.py PromptLearner (model name Prompt_learner)
    return {"prompt_embeddings": m.prompts.detach()}


# name, reference build kwargs, official writer, method args given to the converter
CASES = [
    ("coop", {"n_ctx": 4}, official_coop, {}),
    ("coop", {"n_ctx": 3, "class_position": "middle"}, official_coop, {"class_position": "middle"}),
    ("coop", {"n_ctx": 2, "class_specific": True}, official_coop, {}),
    ("cocoop", {}, official_cocoop, {}),
    ("ivlp", {"vision_depth": 5}, official_ivlp, {}),
    ("maple", {"prompt_depth": 4}, official_maple, {}),
    ("maple", {"prompt_depth": 1}, official_maple, {}),
    ("vpt_deep", {"layout": "maple", "depth": 6}, official_vpt_maple, {}),
    ("vpt_deep", {"layout": "upt"}, official_vpt_upt, {}),
    ("upt", {"variant": "per_token"}, official_upt, {}),
    ("provp", {"n_ctx": 5}, official_provp, {}),
    ("provp_ref", {"n_ctx": 6, "depth": 3, "lam": 0.5}, official_provp, {"lam": 0.5}),
]


def _id(case):
    name, kwargs, _, _ = case
    return name + "".join(f"-{k}={v}" for k, v in kwargs.items())


# the deep multi-modal cases take seconds each: the full suite's (maple depth 1 and vpt_deep depth 6 keep the
# converter's multi-modal and deep paths in the quick loop)
SLOW_CASES = {"ivlp-vision_depth=5", "maple-prompt_depth=4"}


@pytest.mark.parametrize(
    "case",
    [pytest.param(c, id=_id(c), marks=[pytest.mark.slow] if _id(c) in SLOW_CASES else []) for c in CASES],
)
def test_a_converted_official_checkpoint_computes_the_same_logits(case, clip12, images, tmp_path):
    name, kwargs, write_official, method_args = case
    reference = methods.build(name, clip12, CLASSNAMES, **kwargs)
    randomize(reference)
    official = save_official(tmp_path, write_official(reference, clip12))
    out = tmp_path / "converted.safetensors"
    done = convert_official_file(official, out, name, clip12, CLASSNAMES, **method_args)

    loaded = methods.load_prompts(out, clip12).eval()
    assert (
        loaded.effective_config() == reference.effective_config()
    )  # every field the file determines was inferred
    with torch.no_grad():
        expected = reference.eval().logits(images)
        assert torch.equal(loaded.logits(images), expected)
        assert torch.equal(done.method.logits(images), expected)
    meta, _ = read_prompt_file(out)
    assert json.loads(meta["converted_from"])["epoch"] == 5
    assert (
        open_prompt_file(out).checksum == "verified"
    )  # (save_prompts' tensors_sha256, as training's exports)
    assert set(done.mapping) == set(reference.prompt_state_dict())


def test_the_dassl_scheduler_objects_need_the_record_allow_list(clip12, tmp_path):
    """A real Dassl checkpoint pickles the warm-up scheduler's successor and its optimizer: plain weights-only
    loading refuses it; the converter reads those few classes as inert records."""
    ref = methods.build("coop", clip12, CLASSNAMES, n_ctx=4)
    path = save_official(tmp_path, official_coop(ref, clip12))
    with pytest.raises(pickle.UnpicklingError, match="CosineAnnealingLR|SGD|defaultdict"):
        torch.load(path, weights_only=True)
    ckpt = read_official_checkpoint(path)
    assert (
        ckpt.epoch == 5
        and ckpt.val_result == 71.25
        and set(ckpt.state) == {"ctx", "token_prefix", "token_suffix"}
    )


def test_mapping_names_the_official_tensors(clip12, tmp_path):
    ref = methods.build("ivlp", clip12, CLASSNAMES, vision_depth=3)
    path = save_official(tmp_path, official_ivlp(ref, clip12))
    done = convert_official_checkpoint(path, "ivlp", clip12, CLASSNAMES)
    assert done.mapping["ctx"] == "prompt_learner.ctx"
    assert done.mapping["deep_text"] == "text_encoder.transformer.resblocks.1..11.VPT_shallow (stacked)"
    assert done.mapping["visual_prompts"].startswith(
        "image_encoder.VPT + image_encoder.transformer.resblocks.1..2"
    )
    assert "logit_scale" in done.ignored and "prompt_learner.token_prefix" in done.ignored


@pytest.mark.parametrize(
    "name,kwargs,write_official,template",
    [
        ("provp", {"n_ctx": 5}, official_provp, "a type of pet, a photo of a {}."),  # ProVP's own templates
        (
            "vpt_deep",
            {"layout": "upt"},
            official_vpt_upt,
            "a photo of a {}, a type of pet.",
        ),  # UPT's = CoOp's
        (
            "vpt_deep",
            {"layout": "maple", "depth": 2},
            official_vpt_maple,
            "a photo of a {}.",
        ),  # fixed by MaPLe
    ],
)
def test_dataset_gives_fixed_text_methods_the_release_template(
    name, kwargs, write_official, template, clip12, images, tmp_path
):
    reference = methods.build(name, clip12, CLASSNAMES, **kwargs)
    randomize(reference)
    path = save_official(tmp_path, write_official(reference, clip12))
    out = tmp_path / "converted.safetensors"
    convert_official_file(path, out, name, clip12, CLASSNAMES, dataset="oxford_pets")
    loaded = methods.load_prompts(out, clip12).eval()
    assert loaded.templates == (template,)
    reference.use_dataset_templates([template])
    with torch.no_grad():
        assert torch.equal(loaded.logits(images), reference.eval().logits(images))
    mine = convert_official(path, name, clip12, CLASSNAMES, dataset="OxfordPets", templates=["{} here."])
    assert mine.templates == ("{} here.",)  # given templates win


def test_upt_converts_to_the_release_variant_unless_told_otherwise(clip12, images, tmp_path):
    ref = methods.build("upt", clip12, CLASSNAMES, variant="per_token")
    randomize(ref)
    path = save_official(tmp_path, official_upt(ref, clip12))
    assert convert_official(path, "upt", clip12, CLASSNAMES).config.variant == "per_token"
    paper = convert_official(
        path, "upt", clip12, CLASSNAMES, variant="attention"
    )  # same tensors, paper's math
    with torch.no_grad():
        assert not torch.allclose(paper.logits(images), ref.eval().logits(images))


# --- refusals and errors that name the problem -------------------------------------------------------------------
def test_a_crafted_pickle_is_refused_and_executes_nothing(clip12, tmp_path):
    marker = tmp_path / "pwned"
    ref = methods.build("coop", clip12, CLASSNAMES, n_ctx=4)
    path = tmp_path / "model.pth.tar-5"
    torch.save({"state_dict": official_coop(ref, clip12), "epoch": 5, "optimizer": ArmedPickle(marker)}, path)
    with pytest.raises(OfficialCheckpointError, match=r"refusing to load .*model\.pth\.tar-5.*system"):
        convert_official(path, "coop", clip12, CLASSNAMES)
    assert not marker.exists()
    torch.load(path, weights_only=False)  # the file was armed: a full unpickle runs the command
    assert marker.exists()


def _coop_state(clip12, **kwargs):
    return official_coop(methods.build("coop", clip12, CLASSNAMES, **kwargs), clip12)


def test_a_shape_mismatch_names_the_official_tensor_and_both_shapes(clip12, tmp_path):
    state = _coop_state(clip12, n_ctx=4)
    state["ctx"] = torch.randn(4, 31)  # a text width of 31: another backbone
    path = save_official(tmp_path, state)
    with pytest.raises(
        OfficialCheckpointError, match=r"official tensor ctx has shape \[4, 31\], coop's ctx needs \[4, 32\]"
    ):
        convert_official(path, "coop", clip12, CLASSNAMES)


def test_an_official_tensor_that_is_not_finite_is_refused_naming_it(clip12, tmp_path):
    state = _coop_state(clip12, n_ctx=4)
    state["ctx"][1, :3] = float("nan")
    path = save_official(tmp_path, state)
    with pytest.raises(
        OfficialCheckpointError, match=r"official tensor ctx has 3 of 128 values that are not finite"
    ):
        convert_official(path, "coop", clip12, CLASSNAMES)


def test_a_given_field_that_does_not_fit_the_file_is_an_error(clip12, tmp_path):
    path = save_official(tmp_path, _coop_state(clip12, n_ctx=3))
    with pytest.raises(OfficialCheckpointError, match=r"ctx has shape \[3, 32\], coop's ctx needs \[8, 32\]"):
        convert_official(path, "coop", clip12, CLASSNAMES, n_ctx=8)
    # CTX_INIT "a photo of" (3 words = 3 vectors in the release) vs "a photo of a" given here: 4 tokens
    with pytest.raises(OfficialCheckpointError, match=r"WORDS of CTX_INIT"):
        convert_official(path, "coop", clip12, CLASSNAMES, ctx_init="a photo of a")


def test_a_missing_layer_is_named(clip12, tmp_path):
    state = official_maple(methods.build("maple", clip12, CLASSNAMES, prompt_depth=5), clip12)
    del state["prompt_learner.compound_prompt_projections.1.weight"]
    path = save_official(tmp_path, state)
    with pytest.raises(OfficialCheckpointError, match=r"'compound_prompt_projections\.1\.weight' is missing"):
        convert_official(path, "maple", clip12, CLASSNAMES)
    state = official_ivlp(methods.build("ivlp", clip12, CLASSNAMES), clip12)
    del state["image_encoder.transformer.resblocks.3.VPT_shallow"]
    path = save_official(tmp_path, state)
    with pytest.raises(
        OfficialCheckpointError, match=r"'image_encoder\.transformer\.resblocks\.3\.VPT_shallow'"
    ):
        convert_official(path, "ivlp", clip12, CLASSNAMES)


def test_an_unexpected_or_missing_key_is_named(clip12, tmp_path):
    state = _coop_state(clip12, n_ctx=4)
    path = save_official(tmp_path, {**state, "prompt_learner.bonus": torch.zeros(3)})
    with pytest.raises(
        OfficialCheckpointError, match=r"unexpected official tensors for coop: prompt_learner\.bonus \[3\]"
    ):
        convert_official(path, "coop", clip12, CLASSNAMES)
    path = save_official(tmp_path, state)  # a CoOp file given as MaPLe
    with pytest.raises(
        OfficialCheckpointError, match=r"no official tensor 'proj\.weight' for maple.*holds: ctx \[4, 32\]"
    ):
        convert_official(path, "maple", clip12, CLASSNAMES)


def test_settings_without_an_equivalent_are_refused(clip12, tmp_path):
    state = official_upt(methods.build("upt", clip12, CLASSNAMES), clip12)
    state["uni_ctx"] = torch.randn(len(CLASSNAMES), 8, 32)  # the release's class-specific unified prompt
    path = save_official(tmp_path, state)
    with pytest.raises(OfficialCheckpointError, match="class-specific unified prompt"):
        convert_official(path, "upt", clip12, CLASSNAMES)
    vpt = official_vpt_upt(methods.build("vpt_deep", clip12, CLASSNAMES, layout="upt"), clip12)
    path = save_official(tmp_path, vpt)
    with pytest.raises(ConfigError, match="layout='maple'.*'upt' layout"):
        convert_official(path, "vpt_deep", clip12, CLASSNAMES, layout="maple")
    with pytest.raises(OfficialCheckpointError, match="no converter for method 'zsclip'"):
        convert_official(path, "zsclip", clip12, CLASSNAMES)


def test_unreadable_files_are_errors(clip12, tmp_path):
    garbage = tmp_path / "model.pth.tar-1"
    garbage.write_text("not a checkpoint")
    with pytest.raises(OfficialCheckpointError, match="cannot read"):
        convert_official(garbage, "coop", clip12, CLASSNAMES)
    with pytest.raises(OfficialCheckpointError, match="not found"):
        convert_official(tmp_path / "nope", "coop", clip12, CLASSNAMES)
    odd = tmp_path / "odd.pth"
    torch.save({"weights": [1, 2]}, odd)
    with pytest.raises(OfficialCheckpointError, match="neither a Dassl checkpoint"):
        convert_official(odd, "coop", clip12, CLASSNAMES)


# --- the command -----------------------------------------------------------------------------------------------------
def test_convert_command_writes_a_prompt_file(clip12, images, tmp_path):
    reference = methods.build("coop", clip12, CLASSNAMES, n_ctx=4, class_position="front")
    randomize(reference, seed=3)
    official = save_official(tmp_path, official_coop(reference, clip12), "model-best.pth.tar")
    names = tmp_path / "classnames.txt"
    names.write_text("\n".join(CLASSNAMES) + "\n")
    out = tmp_path / "coop.safetensors"
    rc = main(
        [
            "convert",
            "--method",
            "coop",
            "--official",
            str(official),
            "--classnames-file",
            str(names),
            "--model",
            "sp-tiny-vit-12",
            "--pretrained",
            "none",
            "--out",
            str(out),
            "class_position=front",
        ]
    )
    assert rc == 0
    loaded = methods.load_prompts(out, clip12).eval()
    with torch.no_grad():
        assert torch.equal(loaded.logits(images), reference.eval().logits(images))


def test_convert_command_reports_a_refused_file_on_one_line(clip12, tmp_path, capsys):
    path = tmp_path / "model.pth.tar-5"
    torch.save(
        {"state_dict": {"ctx": torch.zeros(4, 32)}, "epoch": 1, "scheduler": ArmedPickle(tmp_path / "m")},
        path,
    )
    rc = main(
        [
            "convert",
            "--method",
            "coop",
            "--official",
            str(path),
            "--classnames",
            "cat,dog",
            "--model",
            "sp-tiny-vit-12",
            "--pretrained",
            "none",
            "--out",
            str(tmp_path / "x.safetensors"),
        ]
    )
    assert rc == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "refusing to load" in err[0]
    assert not (tmp_path / "m").exists() and not (tmp_path / "x.safetensors").exists()


def test_provp_with_at_most_4_tokens_warns_about_the_release_quirk(clip12, tmp_path, caplog):
    reference = methods.build("provp", clip12, CLASSNAMES, n_ctx=3)
    path = save_official(tmp_path, official_provp(reference, clip12))
    with caplog.at_level("WARNING", logger="scaleprompt"):
        assert convert_official(path, "provp", clip12, CLASSNAMES).config.n_ctx == 3
    assert "N=3 <= 4" in caplog.text
