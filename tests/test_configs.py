"""Bad configurations raise errors that name the field."""

from __future__ import annotations

import pytest

from scaleprompt import methods
from scaleprompt.config import ConfigError

from conftest import CLASSNAMES


def test_unknown_key_is_named():
    with pytest.raises(ConfigError, match="unknown key 'n_ctxx' in coop"):
        methods.make_config("coop", n_ctxx=4)


def test_unknown_method_is_named(clip12):
    with pytest.raises(ConfigError, match="unknown method 'coopp'"):
        methods.build("coopp", clip12, CLASSNAMES)


@pytest.mark.parametrize(
    "name,field,value",
    [
        ("coop", "n_ctx", -1),
        ("cocoop", "n_ctx", 0),
        ("vpt_deep", "n_ctx", -4),
        ("ivlp", "vision_n_ctx", -2),
        ("maple", "n_ctx", -2),
        ("provp", "n_ctx", -50),
        ("provp_ref", "n_ctx", 0),
        ("upt", "n_ctx", -4),
        ("provp", "alpha", 1.5),
        ("provp_ref", "tau", 0.0),
        ("provp_ref", "lam", -1.0),
        ("upt", "dropout", 1.0),
        ("coop", "class_position", "middle-ish"),
        ("upt", "variant", "cross"),
        ("vpt_deep", "layout", "vpt"),
        ("zsclip", "templates", ["no placeholder"]),
        ("coop", "n_ctx", 2.5),
        ("coop", "class_specific", "yes"),
    ],
)
def test_bad_values_name_the_field(name, field, value):
    with pytest.raises(ConfigError, match=field):
        methods.make_config(name, **{field: value})


@pytest.mark.parametrize(
    "name,field,value",
    [
        ("vpt_deep", "depth", 13),
        ("provp", "depth", 13),
        ("ivlp", "text_depth", 13),
        ("ivlp", "vision_depth", 13),
        ("maple", "prompt_depth", 13),
        ("upt", "depth", 13),
    ],
)
def test_depth_larger_than_the_tower_names_the_field(clip12, name, field, value):
    extra = {"layerwise": True} if name == "upt" else {}
    with pytest.raises(ConfigError, match=rf"{field}=13 is larger than the 12 blocks"):
        methods.build(name, clip12, CLASSNAMES, **{field: value}, **extra)


def test_spec_defaults():
    c = methods.make_config
    assert (c("coop").n_ctx, c("coop").init_std, c("coop").class_position) == (16, 0.02, "end")
    assert (c("cocoop").n_ctx, c("cocoop").ctx_init) == (4, "a photo of a")
    assert (c("vpt_deep").n_ctx, c("vpt_deep", layout="maple").n_ctx) == (4, 8)
    assert (c("maple").n_ctx, c("maple").prompt_depth) == (2, 9)
    assert (c("provp").n_ctx, c("provp").alpha) == (50, 0.01)
    assert (c("provp_ref").lam, c("provp_ref").tau) == (1.0, 1.0)
    u = c("upt")
    assert (u.n_ctx, u.variant, u.num_layers, u.num_heads, u.ff_dim, u.dropout) == (
        4,
        "attention",
        1,
        1,
        None,
        0.1,
    )


def test_values_are_coerced_losslessly():
    cfg = methods.make_config("provp_ref", lam=2, templates=["{} texture."])
    assert isinstance(cfg.lam, float) and cfg.templates == ("{} texture.",)


def test_prompt_longer_than_text_context_is_a_clear_error(clip2):
    with pytest.raises(ValueError, match="needs 21 tokens but the text encoder's context holds 16"):
        methods.build("coop", clip2, ["golden retriever"], n_ctx=16)


# --- duplicate keys: YAML recipes and spaces, DeepSpeed JSON ----------------------------------------------------
RECIPE_DUPLICATES = [
    # (text, key path, lines)
    ("model:\n  name: sp-micro-clip\nmethod:\n  name: coop\n  args:\n    n_ctx: 4\n    n_ctx: 8\n",
     "method.args.n_ctx", "lines 6 and 7"),
    ("optim:\n  lr: 0.1\nmethod:\n  name: coop\noptim:\n  epochs: 2\n", "optim", "lines 1 and 5"),
    ("eval:\n  targets: [{name: a, name: b}]\n", "eval.targets[0].name", "line 2"),
]  # fmt: skip


@pytest.mark.parametrize("text,key,lines", RECIPE_DUPLICATES, ids=["nested", "top-level", "in-a-list"])
def test_a_duplicate_yaml_key_in_a_recipe_is_named_with_its_lines(tmp_path, text, key, lines):
    from scaleprompt.engine.config import load_run_config

    path = tmp_path / "recipe.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_run_config(path)
    assert str(err.value) == (
        f"{path}: duplicate key {key!r} in the recipe ({lines}): only the last value would be used, silently; "
        "keep one"
    )


def test_yaml_repeats_that_are_not_duplicates_still_load(tmp_path):
    """The same key in different mappings, and YAML's own merge keys (a key overriding a merged one), load."""
    from scaleprompt.config import read_yaml_mapping

    path = tmp_path / "ok.yaml"
    path.write_text("base: &b {lr: 0.1, epochs: 2}\noptim:\n  <<: *b\n  lr: 0.2\nother: {lr: 0.3}\n")
    data = read_yaml_mapping(path, "recipe", "sections")
    assert data["optim"] == {"lr": 0.2, "epochs": 2} and data["other"] == {"lr": 0.3}


def test_a_duplicate_parameter_in_a_search_space_is_named(tmp_path):
    from scaleprompt.search.space import load_space

    path = tmp_path / "space.yaml"
    path.write_text(
        "metric: val_top1\nparams:\n  optim.lr: {type: float, low: 0.1, high: 0.2}\n"
        "  optim.lr: {type: loguniform, low: 0.001, high: 0.1}\n"
    )
    with pytest.raises(
        ConfigError, match=r"duplicate key 'params.optim.lr' in the search space \(lines 3 and 4\)"
    ):
        load_space(path)


def test_a_duplicate_key_in_a_deepspeed_json_is_named_with_its_lines(tmp_path):
    from scaleprompt.engine.config import load_ds_config

    path = tmp_path / "ds.json"
    text = '{\n  "train_batch_size": 8,\n  "zero_optimization": {\n    "stage": 2,\n    "stage": 3\n  }\n}\n'
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_ds_config(path)
    assert str(err.value).startswith(
        f"{path}: duplicate key 'zero_optimization.stage' in the DeepSpeed config (lines 4 and 5)"
    )
    path.write_text('{"a": [{"x": 1}, {"x": 2, "y": [1, {"z": "\\"", "z": 2}]}], "zero_optimization": {}}')
    with pytest.raises(ConfigError, match=r"duplicate key 'a\[1\]\.y\[1\]\.z' .*\(line 1\)"):
        load_ds_config(path)
    path.write_text(text.replace('"stage": 3', '"overlap_comm": true'))  # (no duplicate: loads)
    assert load_ds_config(path)["zero_optimization"] == {"stage": 2, "overlap_comm": True}


@pytest.mark.slow
def test_train_py_refuses_a_duplicate_key_in_one_line(tmp_path):
    import subprocess
    import sys

    from engine_utils import ROOT, env

    path = tmp_path / "ds.json"
    path.write_text('{"zero_optimization": {"stage": 2},\n "zero_optimization": {"stage": 3}}\n')
    cmd = [
        sys.executable,
        "scaleprompt/train.py",
        "--config",
        "configs/microworld/coop.yaml",  # (a file: a packaged name logs which file it uses, a line of its own)
        "--ds",
        str(path),
        f"train.output_dir={tmp_path / 'out'}",
    ]
    done = subprocess.run(cmd, cwd=ROOT, env=env(tmp_path), capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr[-2000:]
    assert done.stderr.strip().splitlines() == [
        f"train.py: error: {path}: duplicate key 'zero_optimization' in the DeepSpeed config (lines 1 and 2): only "
        "the last value would be used, silently; keep one"
    ]
    assert not (tmp_path / "out").exists()


# --- each config validates only itself; check_run_config makes the checks of other layers ----------------------
def test_a_section_checks_its_own_fields_and_check_run_config_the_rest():
    """A section knows no method registry and no trackers (it imports neither torch nor the methods); the checks
    that need them are made by check_run_config, which load_run_config and derive_run_config end with."""
    import subprocess
    import sys

    from scaleprompt.engine.config import (
        MethodSection,
        RunConfig,
        TrainConfig,
        check_run_config,
        derive_run_config,
        load_run_config,
    )

    cfg = RunConfig(method=MethodSection("coopp"), train=TrainConfig(report_to="TensorBoard,wandb"))
    with pytest.raises(ConfigError, match="unknown method 'coopp'"):
        check_run_config(cfg)
    cfg = RunConfig(method=MethodSection("coop", {"n_ctx": 4}), train=TrainConfig(report_to="none"))
    assert check_run_config(cfg).train.report_to == []
    with pytest.raises(ConfigError, match="unknown key 'n_ctxx' in coop"):
        check_run_config(RunConfig(method=MethodSection("coop", {"n_ctxx": 4})))
    base = load_run_config(None, ["method.name=coop", "method.args.n_ctx=4"])
    with pytest.raises(ConfigError, match="optim.epochs: 0 trains nothing; coop needs >= 1 epoch"):
        derive_run_config(base, {"optim.epochs": 0})
    assert derive_run_config(base, {"method.name": "zsclip", "optim.epochs": 0}).method.args == {}
    assert base.optim.epochs == 10 and base.method.args == {"n_ctx": 4}  # (the base is left as it is)
    code = "import sys, scaleprompt.engine.config; print(sorted({'torch', 'scaleprompt.methods'} & set(sys.modules)))"
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert done.stdout.strip() == "[]"
