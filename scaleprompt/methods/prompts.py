"""Learned-context text prompts shared by CoOp, CoCoOp, IVLP, MaPLe and UPT.

The class prompts are the tokenized strings ``"{prefix} {classname}."``; the embeddings at positions
``1 .. n`` (right after start-of-text) are replaced by learned context vectors. ``prefix`` is either ``n``
placeholder words ``"X X ... X"`` or an initialisation phrase such as ``"a photo of a"``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor, nn

from scaleprompt.config import ConfigError
from scaleprompt.encoders import PromptedTextEncoder, splice

ClassPosition = Literal["end", "middle", "front"]


class ClassPromptTable(nn.Module):
    """Frozen token ids / embeddings of the C class prompts plus the splice of learned context."""

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

    def rebuild(self, text: PromptedTextEncoder, classnames: Sequence[str]) -> None:
        """Tokenize the class prompts of ``classnames`` (at construction, or to move prompts to other classes)."""
        texts = [f"{self.prefix} {name}." for name in classnames]
        ids = text.tokenize(texts)  # [C, T]
        needed = text.tokenize(texts, context_length=4096).argmax(-1) + 1  # untruncated lengths
        too_long = [(t, int(k)) for t, k in zip(texts, needed.tolist(), strict=True) if k > ids.shape[1]]
        if too_long:
            raise ConfigError(
                f"class prompt {too_long[0][0]!r} needs {too_long[0][1]} tokens but the text encoder's context "
                f"holds {ids.shape[1]} ({len(too_long)} prompts too long): shorten n_ctx or the class names"
            )
        self.register_buffer("ids", ids, persistent=False)
        self.register_buffer("embeds", text.embed(ids), persistent=False)  # [C, T, Dt]
        if self.class_position != "end":
            name_lens = (text.tokenize(list(classnames)).argmax(-1) - 1).tolist()
            self.register_buffer("order", self._order(ids.shape[1], name_lens), persistent=False)

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
