"""A word-level tokenizer over the micro-world's small vocabulary (keeps the shipped backbone a few MB).

It behaves like open_clip's tokenizers where scaleprompt relies on them: ``tokenizer(texts, context_length)``
returns ``[N, context_length]`` int64 ids, start-of-text first, end-of-text last (truncated like open_clip),
zero padding, and end-of-text is the largest id so CLIP's argmax pooling finds it. Words outside the vocabulary
map to ``<unk>``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import torch

from scaleprompt.microworld import world

_SPLIT = re.compile(r"[a-z]+|[0-9]+|[^\sa-z0-9]")
_TEXT = " ".join(
    [
        *world.SHAPES,
        *world.COLOURS,
        *world.SIZES,
        *world.ALL_BACKGROUNDS,
        *world.POSITION_PHRASES,
        *(re.sub(r"\{\w+\}", " ", t) for t, _ in world.TEMPLATES),
    ]
)
_EXTRA = (
    "x a an the of on in at is this that photo picture image something object coloured shape type kind thing"
)
_WORDS = sorted((set(_SPLIT.findall(_TEXT)) | set(_EXTRA.split())) - {".", ","})
VOCAB: tuple[str, ...] = ("<pad>", "<unk>", *_WORDS, ".", ",", "<sot>", "<eot>")


class WordTokenizer:
    """Callable like open_clip's tokenizers; ``vocab_size`` must equal the text tower's."""

    def __init__(self, vocab: Sequence[str] = VOCAB, context_length: int = 24) -> None:
        self.vocab = tuple(vocab)
        self.index = {w: i for i, w in enumerate(self.vocab)}
        self.context_length = context_length
        self.sot, self.eot, self.unk = self.index["<sot>"], self.index["<eot>"], self.index["<unk>"]
        if self.eot != len(self.vocab) - 1:
            raise ValueError("<eot> must be the last (largest) id: CLIP pools the text at the argmax id")

    @property
    def vocab_size(self) -> int:
        """Words in the vocabulary (special tokens included)."""
        return len(self.vocab)

    def encode(self, text: str) -> list[int]:
        """The ids of the words of ``text`` (lower-cased; an unknown word: ``<unk>``), without ``<sot>`` / ``<eot>``."""
        return [self.index.get(w, self.unk) for w in _SPLIT.findall(text.lower())]

    def decode(self, ids: Sequence[int]) -> str:
        """The text of ``ids``, padding and ``<sot>`` / ``<eot>`` left out."""
        words = [self.vocab[int(i)] for i in ids if int(i) not in (0, self.sot, self.eot)]
        return " ".join(words).replace(" .", ".").replace(" ,", ",")

    def __call__(self, texts: str | Sequence[str], context_length: int | None = None) -> torch.Tensor:
        texts = [texts] if isinstance(texts, str) else list(texts)
        length = context_length or self.context_length
        out = torch.zeros(len(texts), length, dtype=torch.long)
        for i, text in enumerate(texts):
            ids = [self.sot, *self.encode(text), self.eot]
            if len(ids) > length:  # as open_clip: keep the start, end with end-of-text
                ids = [*ids[: length - 1], self.eot]
            out[i, : len(ids)] = torch.tensor(ids)
        return out
