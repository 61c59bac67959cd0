"""Run assembly: the evaluation settings and the template rule (which hand-crafted template a method uses where)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from engine_utils import ROOT, base_overrides, make_color_folder

from scaleprompt.engine.config import load_run_config
from scaleprompt.engine.run import BaseToNovel, EvalSet, FewShot, Transfer, build_method, build_setting
from scaleprompt.engine.trainer import Trainer
from scaleprompt.methods import load_prompts, save_prompts

PETS = ("a photo of a {}, a type of pet.",)
SATELLITE = ("a centered satellite photo of {}.",)
PHOTO = ("a photo of a {}.",)


def setting_of(templates: tuple[str, ...]) -> FewShot:
    return FewShot("unused", ("cat", "dog"), templates, ())


@pytest.mark.parametrize(
    ("method", "args", "on_pets", "on_satellite"),
    [
        ("zsclip", [], PETS, SATELLITE),  # takes each dataset's template
        ("provp", ["method.args.n_ctx=2"], PETS, SATELLITE),
        ("vpt_deep", ["method.args.layout=upt"], PETS, SATELLITE),  # the UPT release: the dataset template
        (
            "vpt_deep",
            ["method.args.layout=maple"],
            PHOTO,
            PHOTO,
        ),  # the MaPLe release: always "a photo of a {}."
        (
            "provp",
            ["method.args.n_ctx=2", "method.args.templates=['x {}.']"],
            ("x {}.",),
            ("x {}.",),
        ),  # recipe
        (
            "zsclip",
            ["method.args.templates=['a {}.', 'the {}.']"],
            ("a {}.", "the {}."),
            ("a {}.", "the {}."),
        ),
    ],
)
def test_the_template_rule(backbone12, tmp_path, method, args, on_pets, on_satellite):
    cfg = load_run_config(None, [f"method.name={method}", *args])
    model = build_method(cfg, backbone12, setting_of(PETS))
    assert model.templates == on_pets
    path = save_prompts(model, tmp_path / "p.safetensors")  # the file records the templates in use
    assert load_prompts(path, backbone12).templates == on_pets
    model.set_classnames(["forest", "river"], SATELLITE)  # a transfer target (EuroSAT-like)
    assert model.templates == on_satellite
    model.set_classnames(["cat", "dog"], PETS)
    assert model.templates == on_pets


def test_learned_text_methods_have_no_templates(backbone12):
    model = build_method(
        load_run_config(None, ["method.name=coop", "method.args.n_ctx=2"]), backbone12, setting_of(PETS)
    )
    assert model.templates is None


def test_settings_combine_their_test_sets():
    m = {"test": {"top1": 50.0}, "base": {"top1": 80.0}, "novel": {"top1": 60.0}, "EuroSAT": {"top1": 30.0}}
    tests = (EvalSet("base", "a", ("x",), PHOTO), EvalSet("novel", "b", ("y",), PHOTO))
    assert BaseToNovel("a", ("x",), PHOTO, tests).combine(m) == {
        "base": m["base"],
        "novel": m["novel"],
        "hm": pytest.approx(2 * 80 * 60 / 140),
    }
    transfer = Transfer(
        "a", ("x",), PHOTO, (EvalSet("test", "a", ("x",), PHOTO), EvalSet("EuroSAT", "e", ("f",), SATELLITE))
    )
    assert transfer.combine(m) == {"test": m["test"], "targets": {"EuroSAT": m["EuroSAT"]}}
    assert transfer.folders == {"train": "a", "EuroSAT": "e"}


def split_file(colors: Path, path: Path) -> Path:
    """A CoOp-format split file over a ``make_color_folder`` tree (named after a registered dataset: its template)."""
    rows = {
        s: [
            [str(p.relative_to(colors)), i, p.parent.name]
            for i, c in enumerate(sorted(p.name for p in (colors / s).iterdir()))
            for p in sorted((colors / s / c).iterdir())
        ]
        for s in ("train", "val", "test")
    }
    path.write_text(json.dumps(rows))
    return path


def test_a_transfer_target_is_tested_with_its_own_template(tmp_path):
    colors = make_color_folder(tmp_path / "colors", n_train=2, n_val=1, n_test=2)
    target = split_file(colors, tmp_path / "EuroSAT.json")
    cfg = load_run_config(
        None,
        [
            *base_overrides(colors, tmp_path / "cache", tmp_path / "out"),
            "data.min_shards=1",
            "eval.setting=transfer",
            f"eval.targets=[{target}]",
            f"eval.targets_root={colors}",
        ],
    )
    setting = build_setting(cfg)
    assert isinstance(setting, Transfer) and setting.templates == PHOTO
    assert [(t.name, t.templates) for t in setting.test_sets] == [("test", PHOTO), ("EuroSAT", SATELLITE)]
    assert setting.test_sets[1].classnames == ("blue", "green", "red", "yellow")


def test_a_run_on_a_dataset_with_its_own_template_trains_and_predicts_with_it(tmp_path):
    """A split file named OxfordPets.json is classified with the pets template; the exported prompts carry it, so
    the Predictor reproduces the reported test accuracy."""
    colors = make_color_folder(tmp_path / "colors", n_train=4, n_val=2, n_test=4)
    split = split_file(colors, tmp_path / "OxfordPets.json")
    overrides = base_overrides(colors, tmp_path / "cache", tmp_path / "out")
    overrides = [o for o in overrides if not o.startswith("data.dataset=")] + [
        f"data.dataset={split}",
        f"data.root={colors}",
        "method.name=provp",
        "method.args.n_ctx=2",
        "optim.epochs=1",
        "eval.zero_shot_baseline=true",
    ]
    cfg = load_run_config(None, overrides)
    trainer = Trainer(cfg, json.loads(Path(ROOT / "ds_configs/zero1.json").read_text()))
    assert trainer.parts.method.templates == PETS and trainer.parts.setting.templates == PETS
    res = trainer.fit()
    assert res["dataset"] == "OxfordPets" and "test" in res["zero_shot"]
    from scaleprompt.predict import Predictor

    predictor = Predictor(tmp_path / "out" / "prompts.safetensors")
    assert predictor.method.templates == PETS
    files = sorted((colors / "test").rglob("*.png"))
    predicted = [top[0][0] for top in predictor.classify_files(files)]
    accuracy = 100 * sum(p == f.parent.name for p, f in zip(predicted, files, strict=True)) / len(files)
    assert accuracy == pytest.approx(res["results"]["last"]["test"]["top1"])
