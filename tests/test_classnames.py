"""Class names a backbone cannot tell apart are reported: words its tokenizer does not know, prompts cut off by
the context, classes with identical prompts (a warning per kind of problem, an error with
``data.strict_classnames``)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import pytest
import torch
from open_clip.tokenizer import HFTokenizer

from scaleprompt import methods
from scaleprompt.backbone import load_clip
from scaleprompt.config import ConfigError
from scaleprompt.engine.config import load_run_config
from scaleprompt.engine.run import BaseToNovel, EvalSet, build_method
from scaleprompt.methods import prompts
from scaleprompt.methods.prompts import class_prompt_problems, unknown_token

FASHION = ["t-shirt", "bag", "sandal", "trouser", "red circle"]  # the last one the micro-world knows
KNOWN = ["red circle", "blue square", "large green star"]
TEMPLATE = "a photo of a {}."


@pytest.fixture(scope="module")
def micro():
    return load_clip("sp-micro-clip", "microworld")


@pytest.fixture(autouse=True)
def fresh_reports(monkeypatch):
    """Each problem is logged once per process: every test starts with none logged."""
    monkeypatch.setattr(prompts, "_REPORTED", set())


def warnings_of(caplog) -> list[str]:
    return [
        r.getMessage() for r in caplog.records if r.name == prompts.__name__ and r.levelno == logging.WARNING
    ]


def one(lines: Sequence[str], words: str) -> str:
    found = [line for line in lines if words in line]
    assert len(found) == 1, lines
    return found[0]


@pytest.mark.parametrize(
    "name,args",
    [("zsclip", {}), ("coop", {}), ("coop", {"ctx_init": "a photo of a"}), ("vpt_deep", {}), ("upt", {})],
)
def test_micro_world_unknown_names_warn_naming_the_classes(micro, caplog, name, args):
    with caplog.at_level(logging.WARNING):
        method = methods.build(name, micro, FASHION, dataset_templates=(TEMPLATE,), **args)
    lines = warnings_of(caplog)
    assert len(lines) == 2, lines  # one line per kind of problem, not one per class
    unknown = one(lines, "does not know")
    assert unknown.startswith("4 class names contain words the tokenizer of sp-micro-clip does not know")
    assert unknown.endswith(": t-shirt, bag, sandal, trouser") and '"<unk>"' in unknown
    same = one(lines, "identical")
    assert same.endswith(': bag, sandal, trouser -> "<unk>"')  # t-shirt is three <unk>: not the same prompt
    assert "red circle" not in unknown + same
    assert method.classname_problems() == lines
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        methods.build(name, micro, FASHION, dataset_templates=(TEMPLATE,), **args)
    assert warnings_of(caplog) == []  # once per process


@pytest.mark.parametrize(
    "name,args",
    [
        ("zsclip", {}),
        ("coop", {}),
        ("coop", {"ctx_init": "a photo of a"}),
        ("cocoop", {}),
        ("upt", {}),
        ("provp_ref", {"templates": ["a {} that is red.", "something {}."]}),
    ],
)
def test_names_the_micro_world_knows_do_not_warn(micro, caplog, name, args):
    # (the learned-context placeholders "X X X X" are not class-name words and are not checked)
    with caplog.at_level(logging.WARNING):
        method = methods.build(name, micro, KNOWN, **args)
    assert warnings_of(caplog) == []
    assert method.classname_problems() == []


def test_a_partly_unknown_name_names_its_unknown_words(micro):
    problems = class_prompt_problems(
        micro.tokenizer,
        24,
        ["blue bag", "blue sandal", "red circle"],
        [[TEMPLATE.format(c) for c in ("blue bag", "blue sandal", "red circle")]],
        "sp-micro-clip",
    )
    assert problems[0].endswith(": blue bag (bag), blue sandal (sandal)")
    assert problems[1].endswith(': blue bag, blue sandal -> "blue <unk>"')


def test_many_classes_are_capped(micro):
    names = [f"unknownword{chr(97 + i)}" for i in range(12)]
    problems = class_prompt_problems(micro.tokenizer, 24, names, [[TEMPLATE.format(c) for c in names]])
    assert problems[0].startswith("12 class names") and problems[0].endswith("unknownwordh and 4 more")
    assert "unknownwordi" not in problems[0] and "this backbone" in problems[0]


def test_strict_raises_naming_the_classes(micro):
    method = methods.build("coop", micro, KNOWN)
    assert method.check_classnames(strict=True) == []
    with pytest.raises(ConfigError, match=r"4 class names .*: t-shirt, bag, sandal, trouser"):
        method.check_classnames(FASHION, strict=True)
    assert method.classnames == KNOWN  # checking other classes does not move the prompts


def fashion_setting() -> BaseToNovel:
    base, novel = ("red circle", "blue square"), ("t-shirt", "bag", "sandal", "red star")
    tests = (
        EvalSet("base", "shards/base", base, (TEMPLATE,)),
        EvalSet("novel", "shards/novel", novel, (TEMPLATE,)),
    )
    return BaseToNovel("shards/base", base, (TEMPLATE,), tests)


@pytest.mark.parametrize("method", ["coop", "zsclip"])
def test_the_engine_checks_the_novel_classes_before_training(micro, caplog, method):
    strict = load_run_config(
        None, ["model.name=sp-micro-clip", f"method.name={method}", "data.strict_classnames=true"]
    )
    with pytest.raises(
        ConfigError, match=r"^data\.strict_classnames: 3 class names .*: t-shirt, bag, sandal;"
    ):
        build_method(strict, micro, fashion_setting())
    cfg = load_run_config(None, ["model.name=sp-micro-clip", f"method.name={method}"])
    assert cfg.data.strict_classnames is False
    with caplog.at_level(logging.WARNING):
        built = build_method(cfg, micro, fashion_setting())
    assert built.classnames == ["red circle", "blue square"]
    one(warnings_of(caplog), "t-shirt, bag, sandal")  # warned up front, not after training
    one(warnings_of(caplog), 'bag, sandal -> "<unk>"')


def test_strict_classnames_is_a_data_field():
    assert load_run_config(None, ["data.strict_classnames=true"]).data.strict_classnames is True
    assert load_run_config(None, []).to_dict()["data"]["strict_classnames"] is False
    with pytest.raises(ConfigError, match="data.strict_classnames"):
        load_run_config(None, ["data.strict_classnames=sometimes"])


def test_a_fixed_template_cut_by_the_context_warns(micro, caplog):
    template = "a photo of a {} " + "on a striped background " * 4 + "."  # > 24 tokens with any class name
    with caplog.at_level(logging.WARNING):
        method = methods.build("zsclip", micro, KNOWN, templates=[template, TEMPLATE])
    cut = one(warnings_of(caplog), "cut off")
    assert cut.startswith(
        "3 class prompts do not fit in the 24-token context of sp-micro-clip and are cut off: "
    )
    assert 'red circle, blue square, large green star (e.g. "a photo of a red circle on' in cut
    assert cut.endswith(" needs 25 tokens)")
    assert method.text_features().shape[0] == 3  # a warning, not an error


def test_a_learned_context_prompt_cut_by_the_context_stays_an_error(micro):
    with pytest.raises(ConfigError, match="needs 27 tokens but the text encoder's context holds 24"):
        methods.build("coop", micro, ["red circle " * 4], n_ctx=16)
    method = methods.build("coop", micro, KNOWN, n_ctx=16)
    with pytest.raises(ConfigError, match="needs 27 tokens"):  # also when another class set is only checked
        method.classname_problems(["red circle " * 4])


@pytest.mark.parametrize("name", ["coop", "zsclip"])
def test_set_classnames_checks_again(micro, caplog, name):
    method = methods.build(name, micro, KNOWN)
    with caplog.at_level(logging.WARNING):
        method.set_classnames(["sandal", "sneaker", "red circle"], (TEMPLATE,))
    assert one(warnings_of(caplog), "identical").endswith(': sandal, sneaker -> "<unk>"')
    assert method.classname_problems() == warnings_of(caplog)
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        method.set_classnames(KNOWN, (TEMPLATE,))
    assert warnings_of(caplog) == [] and method.classname_problems() == []


def test_clip_bpe_never_reports_unknown_words(caplog):
    bpe = load_clip("sp-tiny-vit", None)
    assert unknown_token(bpe.tokenizer) is None
    names = ["bag", "sandal", "qxzvbw", "日本の猫", "crème brûlée", "T-shirt", "t-shirt"]
    with caplog.at_level(logging.WARNING):
        methods.build("zsclip", bpe, names)
        methods.build("coop", bpe, names, n_ctx=4)
    # CLIP's BPE lowercases: only the two t-shirts are the same prompt
    assert warnings_of(caplog) == [
        "2 classes have identical prompt tokens on sp-tiny-vit, so their text features and probabilities are "
        "identical: T-shirt, t-shirt"
    ]


class FakeWordPiece:
    """The part of a transformers tokenizer that open_clip's HFTokenizer and the check use: a word-level vocabulary
    with ``[UNK]``, BERT's special tokens, truncation and padding to ``max_length``."""

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "a", "photo", "of", "cat", "dog", "."]
    unk_token, unk_token_id, pad_token_id, sep_token_id = "[UNK]", 1, 0, 3
    bos_token_id, eos_token_id, cls_token_id = 2, 3, 2  # (open_clip's "clips" mode)

    def _ids(self, text: str) -> list[int]:
        words = text.lower().replace(".", " .").split()
        return [self.vocab.index(w) if w in self.vocab else self.unk_token_id for w in words]

    def __call__(
        self,
        texts: list[str],
        add_special_tokens: bool = True,
        max_length: int | None = None,
        return_tensors: str | None = None,
        **kwargs: Any,
    ) -> dict[str, Any]:
        rows = [self._ids(t) for t in texts]
        if not add_special_tokens:
            return {"input_ids": rows}
        assert max_length is not None and return_tensors == "pt"
        out = torch.zeros(len(rows), max_length, dtype=torch.long)
        for i, row in enumerate(rows):
            ids = [2, *row[: max_length - 2], 3]
            out[i, : len(ids)] = torch.tensor(ids)
        return type("Encoding", (), {"input_ids": out})()

    def decode(self, ids: Sequence[int]) -> str:
        return " ".join(self.vocab[i] for i in ids)


def fake_hf_tokenizer(mode: str = "") -> HFTokenizer:
    tok = HFTokenizer.__new__(HFTokenizer)  # (open_clip's wrapper without downloading a tokenizer)
    tok.tokenizer, tok.context_length, tok.tokenizer_mode = FakeWordPiece(), 8, mode
    tok.clean_fn, tok.strip_sep_token = str.strip, False
    return tok


def test_hf_tokenizers_report_their_unknown_token():
    tok = fake_hf_tokenizer()
    assert unknown_token(tok) == (1, "[UNK]")
    names = ["cat", "dog", "axolotl", "quokka", "big cat"]
    problems = class_prompt_problems(tok, 10, names, [[TEMPLATE.format(c) for c in names]], "hf-hub:x/y")
    assert problems == [
        '3 class names contain words the tokenizer of hf-hub:x/y does not know, read as "[UNK]": axolotl, quokka, '
        "big cat (big)",
        "2 classes have identical prompt tokens on hf-hub:x/y, so their text features and probabilities are "
        'identical: axolotl, quokka -> "[UNK]"',
    ]
    long = class_prompt_problems(tok, 8, ["cat"], [["a photo of a photo of a cat."]])
    assert long == [
        "1 class prompt does not fit in the 8-token context of this backbone and is cut off: cat "
        '(e.g. "a photo of a photo of a cat.")'
    ]


@pytest.mark.parametrize("mode", ["", "clips"])
def test_hf_prompts_that_fit_are_not_reported_cut(mode):
    tok = fake_hf_tokenizer(mode)
    room = 8 - (3 if mode else 2)  # "clips" keeps start, end and a class token in the last slot
    fits, cut = " ".join(["cat"] * room), " ".join(["cat"] * (room + 1))
    assert class_prompt_problems(tok, 8, ["a"], [[fits]]) == []
    assert "1 class prompt does not fit" in class_prompt_problems(tok, 8, ["a"], [[cut]])[0]
