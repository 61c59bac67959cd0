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
