"""Learned-context text prompts shared by CoOp, CoCoOp, IVLP, MaPLe and UPT, and the check of every method's class
prompts.

The class prompts are the tokenized strings ``"{prefix} {classname}."``; the embeddings at positions
``1 .. n`` (right after start-of-text) are replaced by learned context vectors. ``prefix`` is either ``n``
placeholder words ``"X X ... X"`` or an initialisation phrase such as ``"a photo of a"``.

:func:`class_prompt_problems` finds, by tokenization alone, class prompts a backbone cannot tell apart or cannot
hold: class names with words its tokenizer does not know (the micro-world's word tokenizer reads them as
``<unk>``), prompts cut off by the context length, classes whose prompts are the same token ids. Every method runs
it when its class prompts are built (:meth:`~scaleprompt.methods.base.PromptMethod.check_classnames`) and logs
one warning per kind of problem (:func:`report_class_prompt_problems`); the engine makes them an error with
``data.strict_classnames``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, Literal

import torch
from torch import Tensor, nn

from scaleprompt.backbone import Tokenizer
from scaleprompt.config import ConfigError
from scaleprompt.encoders import PromptedTextEncoder, splice
from scaleprompt.microworld.tokenizer import WordTokenizer

logger = logging.getLogger(__name__)

ClassPosition = Literal["end", "middle", "front"]

LISTED = 8  # class names a problem lists before "and N more"
_REPORTED: set[str] = set()  # problems already logged by this process, each once (scaleprompt/__init__.py)


class ClassPromptTable(nn.Module):
    """Frozen token ids / embeddings of the C class prompts plus the splice of learned context."""

    ids: Tensor  # [C, T] (buffers, registered by rebuild)
    embeds: Tensor  # [C, T, Dt]
    order: Tensor  # [C, T] (a class position other than "end")

    def __init__(
        self,
        text: PromptedTextEncoder,
        classnames: Sequence[str],
        prefix: str,
        n_ctx: int,
        class_position: ClassPosition = "end",
    ) -> None:
        super().__init__()
        self.prefix, self.n_ctx, self.class_position = prefix, n_ctx, class_position
        self.rebuild(text, classnames)

    def texts(self, classnames: Sequence[str]) -> list[str]:
        """The class prompt strings ``"{prefix} {classname}."`` of ``classnames``."""
        return [f"{self.prefix} {name}." for name in classnames]

    def tokenize(self, text: PromptedTextEncoder, classnames: Sequence[str]) -> Tensor:
        """Token ids ``[C, T]`` of the class prompts of ``classnames``; a prompt longer than the context is a
        :class:`ConfigError` (the learned context would be spliced over a cut prompt)."""
        texts = self.texts(classnames)
        ids = text.tokenize(texts)  # [C, T]
        needed = text.tokenize(texts, context_length=4096, device="cpu").argmax(-1) + 1  # untruncated lengths
        too_long = [(t, int(k)) for t, k in zip(texts, needed.tolist(), strict=True) if k > ids.shape[1]]
        if too_long:
            raise ConfigError(
                f"class prompt {too_long[0][0]!r} needs {too_long[0][1]} tokens but the text encoder's context "
                f"holds {ids.shape[1]} ({len(too_long)} prompts too long): shorten n_ctx or the class names"
            )
        return ids

    def rebuild(self, text: PromptedTextEncoder, classnames: Sequence[str]) -> None:
        """Tokenize the class prompts of ``classnames`` (at construction, or to move prompts to other classes)."""
        ids = self.tokenize(text, classnames)
        self.register_buffer("ids", ids, persistent=False)
        self.register_buffer("embeds", text.embed(ids), persistent=False)  # [C, T, Dt]
        if self.class_position != "end":  # (the lengths read on the host; the order where the ids are)
            name_lens = (text.tokenize(list(classnames), device="cpu").argmax(-1) - 1).tolist()
            order = self._order(ids.shape[1], name_lens).to(ids.device)
            self.register_buffer("order", order, persistent=False)

    def _order(self, length: int, name_lens: list[int]) -> Tensor:
        """Per-class permutation of positions that moves the class-name tokens (CoOp's front / middle)."""
        n = self.n_ctx
        rows = []
        for name_len in name_lens:
            sos, ctx = [0], list(range(1, 1 + n))
            name = list(range(1 + n, 1 + n + name_len))
            rest = list(range(1 + n + name_len, length))
            if self.class_position == "front":
                rows.append(sos + name + ctx + rest)
            else:
                half = n // 2
                rows.append(sos + ctx[:half] + name + ctx[half:] + rest)
        return torch.tensor(rows, dtype=torch.long)  # [C, T]

    def assemble(self, ctx: Tensor) -> Tensor:
        """Prompt embeddings ``[C, T, Dt]`` for a shared ``[n, Dt]`` or class-specific ``[C, n, Dt]`` context."""
        x = splice(self.embeds, ctx, start=1)  # [C, T, Dt]: SOS, ctx(n), name, '.', EOT, pad
        if self.class_position == "end":
            return x
        index = self.order.unsqueeze(-1).expand(-1, -1, x.shape[-1])  # [C, T, Dt]
        return x.gather(1, index)


# --- the class-prompt check ------------------------------------------------------------------------------------
def _hf_inner(tokenizer: Tokenizer) -> Any:
    """The transformers tokenizer inside open_clip's HuggingFace wrappers (HFTokenizer, SigLipTokenizer), else
    None."""
    from open_clip.tokenizer import HFTokenizer, SigLipTokenizer  # (loaded already: a backbone exists)

    return tokenizer.tokenizer if isinstance(tokenizer, HFTokenizer | SigLipTokenizer) else None


def unknown_token(tokenizer: Tokenizer) -> tuple[int, str] | None:
    """The id and spelling of the token ``tokenizer`` puts for what it cannot spell; None if it spells everything.

    The micro-world :class:`~scaleprompt.microworld.tokenizer.WordTokenizer` reads every word outside its
    vocabulary as ``<unk>``; a HuggingFace tokenizer in open_clip (:class:`open_clip.tokenizer.HFTokenizer`,
    SigLIP's) has the unknown token of its vocabulary if it sets ``unk_token_id`` (WordPiece, SentencePiece).
    CLIP's byte-level BPE (:class:`open_clip.SimpleTokenizer`) and tokenizers this module does not know: None.
    """
    if isinstance(tokenizer, WordTokenizer):
        return tokenizer.unk, tokenizer.vocab[tokenizer.unk]
    inner = _hf_inner(tokenizer)
    if inner is not None and getattr(inner, "unk_token_id", None) is not None:
        return int(inner.unk_token_id), str(inner.unk_token)
    return None


def _content_ids(tokenizer: Tokenizer, texts: Sequence[str]) -> list[list[int]] | None:
    """Token ids of each text without start / end-of-text and padding (None: a tokenizer this module does not
    know)."""
    from open_clip.tokenizer import HFTokenizer, SimpleTokenizer, basic_clean, canonicalize_text

    if isinstance(tokenizer, WordTokenizer | SimpleTokenizer):
        return [list(tokenizer.encode(t)) for t in texts]
    inner = _hf_inner(tokenizer)
    if inner is None:
        return None
    if isinstance(tokenizer, HFTokenizer):  # (each wrapper cleans the text as its __call__ does)
        texts = [tokenizer.clean_fn(t) for t in texts]
    else:
        texts = [canonicalize_text(basic_clean(t)) for t in texts]
    return [list(ids) for ids in inner(list(texts), add_special_tokens=False)["input_ids"]]


def _spelling(tokenizer: Tokenizer, ids: list[int]) -> str | None:
    """What the text encoder reads for content ``ids``, e.g. ``"<unk>"``, for the tokenizers with an unknown token
    (CLIP's BPE spells every string back: None)."""
    if isinstance(tokenizer, WordTokenizer):
        return tokenizer.decode(ids)
    inner = _hf_inner(tokenizer)
    return None if inner is None else str(inner.decode(ids))


def _listing(items: Sequence[str], limit: int = LISTED) -> str:
    shown = ", ".join(items[:limit])
    return shown if len(items) <= limit else f"{shown} and {len(items) - limit} more"


def _count(n: int, one: str, many: str) -> str:
    return f"{n} {one if n == 1 else many}"


def _quoted(text: str, limit: int = 60) -> str:
    return f'"{text}"' if len(text) <= limit else f'"{text[: limit - 3]}..."'


def _unknown_words(tokenizer: Tokenizer, classnames: Sequence[str], on: str) -> str | None:
    """The problem line for class names with words ``tokenizer`` does not know, or None."""
    unk = unknown_token(tokenizer)
    name_ids = None if unk is None else _content_ids(tokenizer, classnames)
    if unk is None or name_ids is None:
        return None
    flagged = [name for name, ids in zip(classnames, name_ids, strict=True) if unk[0] in ids]
    if not flagged:
        return None
    words = sorted({w for name in flagged for w in name.split()})
    unknown = {w for w, ids in zip(words, _content_ids(tokenizer, words) or [], strict=True) if unk[0] in ids}
    shown = []
    for name in dict.fromkeys(flagged):
        named = [w for w in name.split() if w in unknown]
        partly = 0 < len(named) < len(name.split())
        shown.append(f"{name} ({', '.join(named)})" if partly else name)
    return (
        f"{_count(len(flagged), 'class name contains', 'class names contain')} words the tokenizer of {on} does not "
        f"know, read as {_quoted(unk[1])}: {_listing(shown)}"
    )


def class_prompt_problems(
    tokenizer: Tokenizer,
    context_length: int,
    classnames: Sequence[str],
    prompts: Sequence[Sequence[str]],
    backbone: str | None = None,
) -> list[str]:
    """What keeps a backbone from telling the classes apart, one line per kind of problem naming the classes
    (empty: nothing). Tokenization only (no forward pass).

    ``prompts``: the C class prompts (in the order of ``classnames``) once per template or prompt table;
    ``backbone``: its name in the messages. The kinds:

    * unknown words: a class name holds words the tokenizer reads as its unknown token (:func:`unknown_token`).
      Only the class names are checked, not the words a template or a learned context adds (the placeholders
      ``X``, which the micro-world vocabulary knows anyway).
    * cut prompts: a prompt longer than ``context_length`` tokens, whose end the tokenizer cuts off.
    * identical prompts: different classes whose prompts are the same token ids under every template, so their
      text features and probabilities are the same.
    """
    on = backbone or "this backbone"
    problems = []
    unknown = _unknown_words(tokenizer, classnames, on)
    if unknown:
        problems.append(unknown)
    # tokenizers cut a prompt to fit (the last slot becomes end-of-text): a prompt fits if one more slot changes
    # nothing; open_clip's "clips" mode keeps a class token in the last slot, which moves with the length
    keep = context_length - 1 if getattr(tokenizer, "tokenizer_mode", "") == "clips" else context_length
    rows: list[list[tuple[int, ...]]] = [[] for _ in classnames]
    cut: dict[int, str] = {}  # class index -> its first cut prompt
    for texts in prompts:
        ids = tokenizer(list(texts), context_length=context_length)  # [C, T]
        longer = tokenizer(list(texts), context_length=context_length + 1)  # [C, T + 1]
        fits = (ids[:, :keep] == longer[:, :keep]).all(-1).tolist()
        for c, (row, ok) in enumerate(zip(ids.tolist(), fits, strict=True)):
            rows[c].append(tuple(row))
            if not ok:
                cut.setdefault(c, texts[c])
    if cut:
        first = next(iter(cut.values()))
        needs = ""
        from open_clip.tokenizer import SimpleTokenizer

        if isinstance(tokenizer, WordTokenizer | SimpleTokenizer):  # (start + text + end-of-text)
            needs = f" needs {len(tokenizer.encode(first)) + 2} tokens"
        problems.append(
            f"{_count(len(cut), 'class prompt does', 'class prompts do')} not fit in the {context_length}-token "
            f"context of {on} and {'is' if len(cut) == 1 else 'are'} cut off: {_listing([classnames[c] for c in cut])} "
            f"(e.g. {_quoted(first)}{needs})"
        )
    groups: dict[tuple[tuple[int, ...], ...], list[int]] = {}
    for c, row_set in enumerate(rows):
        groups.setdefault(tuple(row_set), []).append(c)
    same = [members for members in groups.values() if len(members) > 1]
    if same:
        firsts = _content_ids(tokenizer, [classnames[m[0]] for m in same])
        shown = []
        for i, members in enumerate(same[:LISTED]):
            spelled = None if firsts is None else _spelling(tokenizer, firsts[i])
            names = _listing([classnames[m] for m in members])
            shown.append(f"{names} -> {_quoted(spelled)}" if spelled is not None else names)
        more = f"; and {len(same) - LISTED} more groups" if len(same) > LISTED else ""
        problems.append(
            f"{sum(len(m) for m in same)} classes have identical prompt tokens on {on}, so their text features "
            f"and probabilities are identical: {'; '.join(shown)}{more}"
        )
    return problems


def report_class_prompt_problems(problems: Sequence[str]) -> None:
    """Log each problem as a warning, once per process (a method rebuilt for the same classes, the base classes
    again after the novel ones, a search building many trials: no repeats)."""
    for problem in problems:
        if problem not in _REPORTED:
            _REPORTED.add(problem)
            logger.warning(problem)
