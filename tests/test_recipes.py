"""The recipes in configs/ load, validate, match the official numbers (docs/methods.md#recipes) and take a backbone override."""

from __future__ import annotations

import functools
from pathlib import Path

import pytest
import torch

from scaleprompt import methods
from scaleprompt.backbone import load_clip
from scaleprompt.data.datasets import BENCHMARKS, CROSS_DATASET_TARGETS, DG_TARGETS
from scaleprompt.engine.config import load_run_config

from conftest import CLASSNAMES

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
RECIPES = sorted(CONFIGS.rglob("*.yaml"))
OFFICIAL = [p for p in RECIPES if p.name != "demo.yaml" and p.parent.name != "microworld"]
SETTINGS = [f"fewshot_{k}shot" for k in (1, 2, 4, 8, 16)] + [
    "base2new",
    "cross_dataset",
    "domain_generalization",
]
TRAINED = [m for m in methods.list_methods() if m != "zsclip"]


def _id(path: Path) -> str:
    return str(path.relative_to(CONFIGS))


@functools.cache
def recipe(path: Path):
    """The recipe at ``path``, read once for the module (the tests read it; none changes it)."""
    return load_run_config(path)


def load(rel: str, overrides=()):
    return load_run_config(CONFIGS / rel, overrides) if overrides else recipe(CONFIGS / rel)


def test_every_method_has_every_setting():
    assert len(RECIPES) >= 9 * 8 + 1
    for name in methods.list_methods():
        for setting in SETTINGS:
            assert (CONFIGS / name / f"{setting}.yaml").is_file(), f"missing configs/{name}/{setting}.yaml"


@pytest.mark.parametrize("path", RECIPES, ids=_id)
def test_recipe_loads_and_validates(path):
    cfg = recipe(path)
    methods.make_config(cfg.method.name, cfg.method.args)  # typed method config builds
    if path.parent != CONFIGS:  # configs/<method>/<setting>.yaml or configs/microworld/<method>.yaml
        assert cfg.method.name == (path.stem if path.parent.name == "microworld" else path.parent.name)


@pytest.mark.parametrize("path", OFFICIAL, ids=_id)
def test_official_recipe_shared_parts(path):
    cfg = recipe(path)
    assert (cfg.model.name, cfg.model.pretrained) == ("ViT-B-16", "openai")
    assert cfg.optim.name == "sgd" and cfg.optim.momentum == 0.9
    assert cfg.optim.warmup_lr == 1e-5
    if cfg.method.name != "zsclip":
        assert cfg.optim.warmup_epochs == 1 and cfg.optim.epochs > 0
    else:
        assert cfg.optim.epochs == 0
    expected_set = "provp" if cfg.method.name in ("provp", "provp_ref") else "coop"
    assert cfg.data.template_set == expected_set
    stem = path.stem
    if stem.startswith("fewshot_"):
        assert cfg.eval.setting == "fewshot"
        assert cfg.data.shots == int(stem.removeprefix("fewshot_").removesuffix("shot"))
    elif stem.startswith("base2new"):
        assert cfg.eval.setting == "base2new" and cfg.data.shots == 16
    else:
        targets = {"cross_dataset": CROSS_DATASET_TARGETS, "domain_generalization": DG_TARGETS}[stem]
        assert cfg.eval.setting == "transfer" and cfg.eval.targets == targets
        assert cfg.data.dataset == "ImageNet" and cfg.data.shots == 16


@pytest.mark.parametrize("path", RECIPES, ids=_id)
def test_backbone_is_one_override(path):
    base = recipe(path).to_dict()
    large = load_run_config(path, ["model.name=ViT-L-14"]).to_dict()
    assert large["model"]["name"] == "ViT-L-14"
    large["model"]["name"] = base["model"]["name"]
    assert large == base


def test_cross_dataset_targets_are_the_other_benchmarks():
    assert sorted(CROSS_DATASET_TARGETS + ["ImageNet"]) == sorted(BENCHMARKS)


def test_coop_fewshot_16shot():
    cfg = load("coop/fewshot_16shot.yaml")
    assert cfg.method.args["n_ctx"] == 16 and cfg.method.args["ctx_init"] == ""
    assert (cfg.optim.lr, cfg.optim.batch_size, cfg.optim.epochs, cfg.optim.weight_decay) == (
        0.002,
        32,
        200,
        5e-4,
    )


@pytest.mark.parametrize("method", ["coop", "provp", "provp_ref"])
@pytest.mark.parametrize("shots,epochs", [(1, 50), (2, 100), (4, 100), (8, 200), (16, 200)])
def test_fewshot_schedule(method, shots, epochs):
    assert load(f"{method}/fewshot_{shots}shot.yaml").optim.epochs == epochs


def test_coop_base2new_and_imagenet():
    cfg = load("coop/base2new.yaml")
    assert cfg.method.args["n_ctx"] == 4 and cfg.method.args["ctx_init"] == "a photo of a"
    assert cfg.optim.epochs == 200
    imagenet = load("coop/base2new_imagenet.yaml")
    assert imagenet.data.dataset == "ImageNet" and imagenet.optim.epochs == 50
    assert load("coop/cross_dataset.yaml").optim.epochs == 50  # trained on ImageNet: 50 epochs


def test_maple_recipes():
    b2n = load("maple/base2new.yaml")
    assert b2n.method.args["prompt_depth"] == 9 and b2n.method.args["n_ctx"] == 2
    assert (b2n.optim.lr, b2n.optim.batch_size, b2n.optim.epochs) == (0.0035, 4, 5)
    for setting in ("cross_dataset", "domain_generalization"):
        cfg = load(f"maple/{setting}.yaml")
        assert cfg.method.args["prompt_depth"] == 3
        assert (cfg.optim.lr, cfg.optim.batch_size, cfg.optim.epochs) == (0.0026, 4, 2)


@pytest.mark.parametrize("method", ["provp", "provp_ref"])
def test_provp_recipes(method):
    b2n = load(f"{method}/base2new.yaml")
    assert b2n.method.args["n_ctx"] == 16 and b2n.method.args["depth"] is None
    assert b2n.method.args["alpha"] == 0.01
    assert (b2n.optim.lr, b2n.optim.weight_decay, b2n.optim.batch_size, b2n.optim.epochs) == (
        0.1,
        1e-3,
        32,
        100,
    )
    few = load(f"{method}/fewshot_16shot.yaml")
    assert few.method.args["n_ctx"] == 50 and few.optim.weight_decay == 5e-4 and few.optim.lr == 0.1


def test_provp_ref_loss_defaults():
    args = load("provp_ref/base2new.yaml").method.args
    assert (args["lam"], args["tau"]) == (1.0, 1.0)


def test_upt_recipes():
    cfg = load("upt/base2new.yaml")
    assert cfg.method.args["n_ctx"] == 4
    assert (cfg.optim.lr, cfg.optim.batch_size, cfg.optim.epochs) == (0.002, 32, 200)
    # the published UPT numbers come from the release's per-token transform (the paper's: variant=attention)
    upt = sorted((CONFIGS / "upt").glob("*.yaml"))
    assert upt and all(load(f"upt/{p.name}").method.args["variant"] == "per_token" for p in upt)
    assert load("upt/base2new_imagenet.yaml").optim.epochs == 50


def test_cocoop_ivlp_vpt_recipes():
    cocoop = load("cocoop/base2new.yaml")
    assert cocoop.method.args == {"n_ctx": 4, "ctx_init": "a photo of a"}
    assert (cocoop.optim.lr, cocoop.optim.batch_size, cocoop.optim.epochs) == (0.002, 1, 10)
    ivlp = load("ivlp/base2new.yaml")
    assert (ivlp.method.args["text_n_ctx"], ivlp.method.args["vision_n_ctx"]) == (2, 2)
    assert ivlp.method.args["text_depth"] is None and ivlp.method.args["vision_depth"] is None
    assert (ivlp.optim.lr, ivlp.optim.batch_size, ivlp.optim.epochs) == (0.0035, 4, 5)
    vpt = load("vpt_deep/fewshot_16shot.yaml")
    assert vpt.method.args == {"layout": "upt", "n_ctx": 4, "depth": None}
    assert (vpt.optim.lr, vpt.optim.batch_size) == (0.002, 32)
    assert [load(f"vpt_deep/fewshot_{k}shot.yaml").optim.epochs for k in (1, 2, 4, 8, 16)] == [
        10,
        50,
        50,
        200,
        200,
    ]


def test_demo_recipe():
    cfg = load("demo.yaml")
    assert (cfg.model.name, cfg.model.pretrained) == ("sp-micro-clip", "microworld")
    assert (cfg.data.dataset, cfg.data.shots, cfg.data.num_workers, cfg.data.min_shards) == (
        "MicroWorldClutter",
        16,
        1,
        2,
    )
    assert cfg.method.name == "provp_ref" and cfg.method.args["depth"] is None
    assert cfg.eval.setting == "base2new" and cfg.eval.zero_shot_baseline
    assert (cfg.optim.name, cfg.optim.lr, cfg.optim.epochs, cfg.optim.batch_size) == ("sgd", 0.1, 10, 32)
    assert cfg.optim.warmup_epochs == 1
    assert cfg.train.output_dir == "runs/demo"


def test_microworld_recipes_cover_every_method_on_the_shipped_backbone():
    for name in methods.list_methods():
        cfg = load(f"microworld/{name}.yaml")
        assert (cfg.method.name, cfg.model.name, cfg.model.pretrained) == (
            name,
            "sp-micro-clip",
            "microworld",
        )
        assert (cfg.eval.setting, cfg.data.shots, cfg.data.dataset) == ("base2new", 16, "MicroWorldClutter")


def test_override_beats_the_recipe():
    cfg = load(
        "provp_ref/base2new.yaml",
        ["data.dataset=DescribableTextures", "method.args.lam=0.5", "optim.lr=0.05"],
    )
    assert (cfg.data.dataset, cfg.method.args["lam"], cfg.optim.lr) == ("DescribableTextures", 0.5, 0.05)


def test_recipe_methods_build_on_a_12_block_tower(clip12):
    """Every distinct method.args of the recipes builds over a 12-block CLIP (the depths of ViT-B/16)."""
    seen = set()
    for path in OFFICIAL:
        cfg = recipe(path)
        key = (cfg.method.name, repr(sorted(cfg.method.args.items())))
        if key in seen:
            continue
        seen.add(key)
        model = methods.build(cfg.method.name, clip12, CLASSNAMES, **cfg.method.args)
        assert (
            sum(p.numel() for p in model.parameters() if p.requires_grad) > 0 or cfg.method.name == "zsclip"
        )


def test_microworld_methods_build_on_the_micro_backbone():
    backbone = load_clip("sp-micro-clip")  # (random init: the architecture is what matters here)
    for path in [CONFIGS / "demo.yaml", *sorted((CONFIGS / "microworld").glob("*.yaml"))]:
        cfg = recipe(path)
        model = methods.build(cfg.method.name, backbone, ["red circle", "blue heart"], **cfg.method.args)
        assert model.loss(torch.randn(2, 3, 64, 64), torch.tensor([0, 1])).loss.isfinite(), path
