"""The ONE prompted vision encoder and the ONE prompted text encoder, run over open_clip's own modules.

A method never touches open_clip internals: it declares WHERE prompts go (a :class:`VisualPlan`, or a start
position for text) and hands over WHAT to insert (per-block prompt tensors). With no prompts both encoders compute
exactly ``clip.encode_image`` / ``clip.encode_text``: bit for bit with ``EncoderOptions(fused_attention=False)``
(and, for text, ``truncate=False``), else to float rounding (1e-5 relative; tested for every method, forward and gradients).

Vision sequence, batch-first ``[B, T, Dv]``::

    after_cls:  [CLS, prompts(N), patches(P)]
    append:     [CLS, patches(P), prompts(N)]

Block 0 receives ``prompts[0]`` (inserted before or after ``ln_pre``; never given a positional embedding).
Block ``i >= 1`` with ``i < len(prompts)``: the prompt slots are set to ``prompts[i]`` (``replace``) or to
``alpha * O_{i-1} + (1 - alpha) * prompts[i]`` (``progressive``, ProVP), where ``O_{i-1}`` are the prompt-slot
outputs of block ``i-1``. Blocks past ``len(prompts)`` carry the previous outputs on. The prompt slots are
dropped before pooling, so the pooled class token is open_clip's own ``_pool`` + ``proj``.

Text: ``embeds`` ``[S, T, Dt]`` are the (possibly prompt-spliced) token embeddings; ``deep[k]`` replaces the
hidden states at positions ``start .. start+N`` in the input of block ``k + 1`` (IVLP / MaPLe / deep UPT).

Fast paths (:class:`EncoderOptions`, given when an encoder is built; each is the same math to float rounding,
since smaller or differently blocked matmuls sum in another order):

* ``truncate`` (text): only the first ``L`` positions are computed, ``L`` = the last pooled (end-of-text) position
  + 1 over the batch: under CLIP's causal mask the later ones cannot change the features.
* ``fused_attention``: plain open_clip blocks run their attention as one ``F.scaled_dot_product_attention`` call
  (:func:`_fused_block`; causal for text).
* ``pooled_only`` (with ``fused_attention``): the last block computes only the rows pooling reads (the class
  token; each sequence's end-of-text token).
* ``linear`` (with ``fused_attention``): the kernel of the blocks' projections; ``"onednn"`` (the default) is
  :func:`frozen_linear`, oneDNN's fp32 matmul on CPU.

Two options change memory, not math: ``text_chunk`` (text sequences encoded a chunk at a time, recomputed in
backward) and ``partitioned`` (which blocks DeepSpeed ZeRO-3 partitions: they keep open_clip's own forward, or under
the planner's simulation the same steps written out, :func:`_unfused_block`, with the ``linear`` kernel).
"""

from __future__ import annotations

import functools
import logging
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, Literal

import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable
from torch.nn import functional as F
from torch.utils.checkpoint import checkpoint
from torch.utils.weak import WeakIdKeyDictionary

from scaleprompt.backbone import OpenClipModule, Tokenizer, import_open_clip, text_tower

logger = logging.getLogger(__name__)

Position = Literal["after_cls", "append"]
Stage = Literal["before_ln_pre", "after_ln_pre"]
Mix = Literal["replace", "progressive"]


@dataclass(frozen=True)
class VisualPlan:
    """Where visual prompts go and how deeper blocks treat them."""

    position: Position = "after_cls"
    stage: Stage = "after_ln_pre"
    mix: Mix = "replace"
    alpha: float = 0.0  # weight of the previous block's prompt outputs when mix == "progressive"


def _expand(prompt: Tensor, batch: int, dtype: torch.dtype) -> Tensor:
    """[N, D] or [B, N, D] -> [B, N, D] in the backbone's dtype."""
    prompt = prompt.to(dtype)
    return prompt.unsqueeze(0).expand(batch, -1, -1) if prompt.dim() == 2 else prompt


Linear = Callable[[Tensor, Tensor, "Tensor | None"], Tensor]  # F.linear's signature


@dataclass(frozen=True)
class EncoderOptions:
    """How the prompted encoders compute (given when they are built: ``methods.build(..., options=...)``); the
    defaults are the fast paths, each the same math as open_clip's own to float rounding (module doc).

    ``fused_attention``: plain open_clip blocks run their attention as one ``scaled_dot_product_attention`` call
    (:func:`_fused_block`); False: the blocks' own ``nn.MultiheadAttention`` (bit for bit open_clip's).
    ``pooled_only``: with ``fused_attention``, the last block computes only the rows pooling reads.
    ``linear``: the kernel of the fused blocks' projections (and, with a callable, of the blocks that run
    :func:`_unfused_block`): ``"onednn"`` = :func:`frozen_linear`, ``"torch"`` = ``F.linear``, or a function with
    ``F.linear``'s signature (the planner's DeepSpeed linear).
    ``truncate`` (text): compute only the positions the features depend on (:meth:`PromptedTextEncoder.kept_length`);
    False: all T, open_clip's own path.
    ``text_chunk`` (text): > 0 encodes the sequences this many at a time, each chunk recomputed in backward (its
    activations are not kept): memory bounded by the chunk instead of the class count; the same math.
    ``partitioned``: which blocks DeepSpeed ZeRO-3 partitions. Their parameters are gathered only when their own
    modules run, so they keep open_clip's own forward (no fused attention, row pruning or ``linear`` kernel).
    ``"detect"``: the blocks holding parameters with DeepSpeed's marks (``ds_id``, not ``ds_persist``), warned once
    per process; an int N: the blocks holding a parameter of more than N values (ZeRO-3's persistence threshold),
    without marks (the planner's simulation; with a callable ``linear`` they run :func:`_unfused_block`, the same
    steps written out, so the kernel computes every projection)."""

    fused_attention: bool = True
    pooled_only: bool = True
    linear: Literal["onednn", "torch"] | Linear = "onednn"
    truncate: bool = True
    text_chunk: int = 0
    partitioned: Literal["detect"] | int = "detect"

    def __post_init__(self) -> None:
        if self.text_chunk < 0:
            raise ValueError(f"text_chunk must be >= 0 (0: all sequences at once), got {self.text_chunk}")
        if not (self.partitioned == "detect" or (type(self.partitioned) is int and self.partitioned >= 0)):
            raise ValueError(f"partitioned must be 'detect' or a size >= 0, got {self.partitioned!r}")

    def kernel(self) -> Linear:
        """The projections' kernel (``F.linear`` looked up now: DeepSpeed's under ZeRO-3, which replaces it)."""
        if self.linear == "onednn":
            return frozen_linear
        if self.linear == "torch":
            return F.linear
        if isinstance(self.linear, str):
            raise ValueError(f"linear must be 'onednn', 'torch' or a function, got {self.linear!r}")
        return self.linear


def frozen_linear(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """``F.linear(x, weight, bias)`` over a frozen ``weight`` / ``bias``. On CPU in fp32 it runs oneDNN's matmul (:class:`_OneDNNLinear`): PyTorch's
    CPU ``F.linear`` calls MKL's sgemm, which on AMD processors runs at less than half of oneDNN's speed (on this
    project's AMD EPYC test machines 200 vs 450 GFLOPS on 2 cores, ViT-B/16 shapes). Same fp32 math, summed in
    another order (1e-6 relative). Anything else (GPU, bf16, CPU autocast, trainable weights, code being compiled by
    ``torch.compile``, whose CPU backend cannot lower this op on non-constant weights) is ``F.linear``."""
    if (
        x.device.type == "cpu"
        and not torch.compiler.is_compiling()
        and not torch.is_autocast_enabled("cpu")
        and x.dtype == weight.dtype == torch.float32
        and not weight.requires_grad
        and (bias is None or not bias.requires_grad)
        and _onednn_available()
    ):
        return _OneDNNLinear.apply(x, weight, bias)
    return F.linear(x, weight, bias)


class _OneDNNLinear(torch.autograd.Function):
    """``x @ weight.T + bias`` with frozen ``weight`` / ``bias``; the backward gives the input gradient only, as
    ``grad @ weight`` (a second oneDNN matmul over the transposed weight, kept per weight and its version)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        ctx.save_for_backward(weight)
        return _onednn_matmul(x, weight, bias)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, None, None]:
        if not ctx.needs_input_grad[0]:
            return None, None, None
        (weight,) = ctx.saved_tensors
        return _onednn_matmul(grad, _transposed(weight), None), None, None


def _onednn_matmul(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    return torch.ops.mkldnn._linear_pointwise(x.contiguous(), weight, bias, "none", [], "")


# weight -> (the storage it had, its version then, weight.T contiguous); a cache (listed in scaleprompt/__init__.py)
_TRANSPOSED: WeakIdKeyDictionary = WeakIdKeyDictionary()


def _transposed(weight: Tensor) -> Tensor:
    """``weight.T`` as a contiguous tensor, cached while the weight is unchanged: the same tensor, the same storage
    (``param.data = ...`` swaps it without bumping the version; the cache holds the old storage, so a new one
    cannot reuse its address) and the same version counter (every in-place write bumps it)."""
    cached = _TRANSPOSED.get(weight)
    if (
        cached is None
        or cached[0].data_ptr() != weight.data_ptr()
        or cached[0].shape != weight.shape
        or cached[1] != weight._version
    ):
        cached = (weight.detach(), weight._version, weight.detach().t().contiguous())
        _TRANSPOSED[weight] = cached
    return cached[2]


@functools.cache
def _onednn_available() -> bool:
    """oneDNN's linear op exists in this PyTorch build and computes ``F.linear`` (checked once on a tiny case)."""
    try:
        if not (torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")):
            return False
        gen = torch.Generator().manual_seed(0)
        x, w, b = (torch.randn(*shape, generator=gen) for shape in ((2, 3, 8), (5, 8), (5,)))
        return bool(torch.allclose(_onednn_matmul(x, w, b), F.linear(x, w, b), rtol=1e-5, atol=1e-5))
    except (RuntimeError, AttributeError):
        return False


def _run_block(
    transformer: nn.Module,
    block: nn.Module,
    x: Tensor,
    attn_mask: Tensor | None,
    options: EncoderOptions,
    causal: bool = False,
    rows: Tensor | None = None,
) -> Tensor:
    """One residual block, honouring open_clip's ``grad_checkpointing`` switch on its transformer. A plain open_clip
    block not partitioned (``options.partitioned``) runs as :func:`_fused_block` with ``options.fused_attention``
    (``causal``: ``attn_mask`` is the causal mask) and a callable ``options.linear`` as :func:`_unfused_block`;
    any other its own forward. Only the ``rows`` ``[B, R]`` given are returned (``[B, R, D]``; None: all)."""
    plain = _plain(block)
    split = _partitioned(block, options.partitioned) if plain else False
    run: Callable[[Tensor], Tensor]
    if plain and not split and options.fused_attention and (attn_mask is None or causal):
        run = partial(_fused_block, block, causal=causal, rows=rows, linear=options.kernel())
    elif plain and callable(options.linear) and not (split and options.partitioned == "detect"):
        run = partial(_unfused_block, block, attn_mask=attn_mask, rows=rows, linear=options.linear)
    else:
        run = partial(_rows_of_block, block, attn_mask=attn_mask, rows=rows)
    if getattr(transformer, "grad_checkpointing", False) and torch.is_grad_enabled():
        return checkpoint(run, x, use_reentrant=False)
    return run(x)


def _rows_of_block(block: nn.Module, x: Tensor, attn_mask: Tensor | None, rows: Tensor | None) -> Tensor:
    """The block's own forward, then the ``rows`` ``[B, R]`` of its output (all of them when None)."""
    y = block(x, attn_mask=attn_mask)
    return y if rows is None else _gather_rows(y, rows)


def _gather_rows(x: Tensor, rows: Tensor) -> Tensor:
    """``x[b, rows[b, r]]``: ``[B, T, D]`` -> ``[B, R, D]``."""
    return x[torch.arange(x.shape[0], device=x.device).unsqueeze(1), rows]


def _plain(block: nn.Module) -> bool:
    """An open_clip ``ResidualAttentionBlock`` whose attention is a plain self-attention ``nn.MultiheadAttention``
    (what :func:`_fused_block` and :func:`_unfused_block` compute)."""
    from open_clip.transformer import ResidualAttentionBlock  # (loaded already: the block is open_clip's)

    attn = getattr(block, "attn", None)
    return (
        type(block) is ResidualAttentionBlock
        and isinstance(attn, nn.MultiheadAttention)
        and attn.batch_first
        and attn._qkv_same_embed_dim
        and attn.in_proj_bias is not None
        and attn.bias_k is None
        and not attn.add_zero_attn
        and attn.dropout == 0.0
        and not hasattr(block, "ln_1_kv")
        and isinstance(block.mlp, nn.Sequential)
    )


def _partitioned(block: nn.Module, rule: Literal["detect"] | int) -> bool:
    """The block holds DeepSpeed ZeRO-3 parameters that are only gathered when their own module's forward runs
    (:attr:`EncoderOptions.partitioned`: ``"detect"`` reads DeepSpeed's marks, said once per process; an int is
    the persistence threshold of the planner's simulation)."""
    if rule != "detect":
        return any(p.numel() > rule for p in block.parameters())
    if not any(hasattr(p, "ds_id") and not getattr(p, "ds_persist", False) for p in block.parameters()):
        return False
    _say_partitioned()
    return True


@functools.cache
def _say_partitioned() -> None:
    """The warning of :func:`_partitioned`, once per process (a process-wide flag: ``scaleprompt/__init__.py``)."""
    logger.warning(
        "ZeRO-3 partitions the backbone's block weights: those blocks run open_clip's own forward (no fused "
        "attention, oneDNN projections or last-block row pruning)"
    )


def _fused_block(
    block: OpenClipModule,
    x: Tensor,
    causal: bool = False,
    rows: Tensor | None = None,
    linear: Linear = F.linear,
) -> Tensor:
    """open_clip's ``ResidualAttentionBlock.forward`` with the attention as one ``F.scaled_dot_product_attention``
    call on the block's own weights (``is_causal`` for text). The same math as ``nn.MultiheadAttention``, which
    takes its unfused path whenever autograd records (training); on CPU a ViT-B/16 vision block's forward +
    backward runs about 20% faster.

    ``rows`` ``[B, R]``: compute the output of these positions only (``[B, R, D]``): their queries attend to every
    key (``causal``: to the keys up to their own position), and the output projection and MLP run on R rows
    instead of T. The last block needs no more than the rows pooling reads (the class token; the end-of-text
    tokens), which saves about 80% of that block's matmuls. ``linear`` runs every projection (in, out, MLP):
    :func:`frozen_linear` on CPU."""
    attn = block.attn
    h = block.ln_1(x)
    batch, length, width = h.shape
    heads = attn.num_heads
    if rows is None:
        qkv = linear(h, attn.in_proj_weight, attn.in_proj_bias)  # [B, T, 3D]
        q, k, v = qkv.view(batch, length, 3, heads, width // heads).permute(
            2, 0, 3, 1, 4
        )  # 3 x [B, H, T, D/H]
        o = F.scaled_dot_product_attention(q, k, v, is_causal=causal)  # [B, H, T, D/H]
    else:
        w, b = attn.in_proj_weight, attn.in_proj_bias
        x = _gather_rows(x, rows)  # [B, R, D]
        q = linear(_gather_rows(h, rows), w[:width], b[:width])  # [B, R, D]
        q = q.view(batch, -1, heads, width // heads).transpose(1, 2)  # [B, H, R, D/H]
        kv = linear(h, w[width:], b[width:])  # [B, T, 2D]
        k, v = kv.view(batch, length, 2, heads, width // heads).permute(2, 0, 3, 1, 4)  # 2 x [B, H, T, D/H]
        mask = None
        if causal:  # a query at position p sees the keys 0..p
            mask = (torch.arange(length, device=x.device) <= rows.unsqueeze(-1)).unsqueeze(1)  # [B, 1, R, T]
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # [B, H, R, D/H]
    o = linear(
        o.transpose(1, 2).reshape(batch, -1, width), attn.out_proj.weight, attn.out_proj.bias
    )  # [B, T|R, D]
    x = x + block.ls_1(o)
    h = block.ln_2(x)
    for layer in block.mlp:  # c_fc, activation, c_proj
        h = linear(h, layer.weight, layer.bias) if isinstance(layer, nn.Linear) else layer(h)
    return x + block.ls_2(h)


def _unfused_block(
    block: OpenClipModule, x: Tensor, attn_mask: Tensor | None, rows: Tensor | None, linear: Linear
) -> Tensor:
    """open_clip's ``ResidualAttentionBlock.forward`` with ``nn.MultiheadAttention``'s unfused path (the one it takes
    whenever autograd records) written out step by step, every projection computed by ``linear``: the same
    operations on the same tensors, so it keeps what the block's own forward keeps for backward when ``F.linear``
    is ``linear`` (the planner's simulation of DeepSpeed's ZeRO-3 linear, :class:`EncoderOptions`). Then the
    ``rows`` ``[B, R]`` of the output (all of them when None)."""
    attn = block.attn
    mask = None if attn_mask is None else attn_mask.to(x.dtype)  # (as open_clip's attention() casts it)
    h = block.ln_1(x).transpose(1, 0)  # [T, B, D]: nn.MultiheadAttention's sequence-first layout
    length, batch, width = h.shape
    heads = attn.num_heads
    qkv = linear(h, attn.in_proj_weight, attn.in_proj_bias)  # [T, B, 3D]
    qkv = qkv.unflatten(-1, (3, width)).unsqueeze(0).transpose(0, -2).squeeze(-2).contiguous()  # [3, T, B, D]
    q, k, v = (t.view(length, batch * heads, -1).transpose(0, 1) for t in (qkv[0], qkv[1], qkv[2]))
    q, k, v = (t.view(batch, heads, length, -1) for t in (q, k, v))  # [B, H, T, D/H]
    o = F.scaled_dot_product_attention(q, k, v, None if mask is None else mask.unsqueeze(0).unsqueeze(0))
    o = o.permute(2, 0, 1, 3).reshape(batch * length, width)  # [T B, D]
    o = linear(o, attn.out_proj.weight, attn.out_proj.bias).view(length, batch, width).transpose(1, 0)
    x = x + block.ls_1(o)  # [B, T, D]
    h = block.ln_2(x)
    for layer in block.mlp:  # c_fc, activation, c_proj
        h = linear(h, layer.weight, layer.bias) if isinstance(layer, nn.Linear) else layer(h)
    x = x + block.ls_2(h)
    return x if rows is None else _gather_rows(x, rows)


def _is_causal(mask: Tensor) -> bool:
    """``mask`` ``[T, T]`` is the causal mask (an additive ``-inf`` above the diagonal, 0 elsewhere, as open_clip's)."""
    if mask.dim() != 2 or mask.shape[0] != mask.shape[1] or mask.dtype == torch.bool:
        return False
    above = torch.ones(mask.shape, dtype=torch.bool, device=mask.device).triu(1)
    return bool(torch.isneginf(mask[above]).all()) and bool((mask[~above] == 0).all())


def _check_batch_first(transformer: OpenClipModule) -> None:
    if not getattr(transformer, "batch_first", True):
        raise ValueError("scaleprompt's encoders need open_clip transformers built with batch_first=True")


class PromptedVisionEncoder(nn.Module):
    """CLIP's image tower with prompt insertion. Owns no parameters: it holds a reference to the frozen CLIP.

    ``clip``: the frozen open_clip model; ``options``: how it computes (:class:`EncoderOptions`; None: the
    defaults).

    ``block_input_hook`` is an observer for analyses (``scaleprompt analyze attention``), not a fast-path switch: set
    on an encoder, it is called as ``hook(i, x, slots)`` with the input ``[B, T, Dv]`` of every block i (prompts in
    place) and the prompt slots' positions in it; it only reads. None (the default): one attribute test per block."""

    def __init__(self, clip: nn.Module, options: EncoderOptions | None = None) -> None:
        super().__init__()
        self._clip: tuple[OpenClipModule] = (clip,)  # (a tuple: the frozen CLIP is not registered twice)
        self._options = options or EncoderOptions()
        self.block_input_hook: Callable[[int, Tensor, slice], None] | None = None
        _check_batch_first(self.visual.transformer)
        if getattr(self.visual, "attn_pool", None) is not None:
            raise ValueError("attention-pooled vision towers (CoCa) are not supported")

    @property
    def options(self) -> EncoderOptions:
        """How this encoder computes (fixed when it is built)."""
        return self._options

    @property
    def visual(self) -> OpenClipModule:
        """The frozen CLIP's image tower (open_clip's ``VisionTransformer``)."""
        return self._clip[0].visual

    @property
    def num_blocks(self) -> int:
        return len(self.visual.transformer.resblocks)

    @property
    def width(self) -> int:
        return self.visual.class_embedding.shape[-1]

    @property
    def patch_size(self) -> int:
        return int(self.visual.conv1.kernel_size[0])

    @property
    def dtype(self) -> torch.dtype:
        return self.visual.conv1.weight.dtype

    def embed(self, images: Tensor) -> Tensor:
        """conv1 -> [CLS, patches] + positional embedding. [B, 3, H, W] -> [B, 1 + P, Dv] (before ln_pre)."""
        v = self.visual
        x = v.conv1(images.to(self.dtype))  # [B, Dv, g, g]
        x = x.flatten(2).transpose(1, 2)  # [B, P, Dv]
        cls = v.class_embedding.to(x.dtype).view(1, 1, -1).expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], dim=1)  # [B, 1 + P, Dv]
        x = x + v.positional_embedding.to(x.dtype)
        return v.patch_dropout(x)

    def forward(
        self, images: Tensor, prompts: Sequence[Tensor] | None = None, plan: VisualPlan | None = None
    ) -> Tensor:
        """Image features ``[B, E]`` (not normalized). ``prompts[i]``: ``[N, Dv]`` or ``[B, N, Dv]`` for block i."""
        v = self.visual
        plan = plan or VisualPlan()
        prompts = [] if prompts is None else list(prompts)
        if len(prompts) > self.num_blocks:
            raise ValueError(f"{len(prompts)} prompt layers for a vision tower of {self.num_blocks} blocks")
        x = self.embed(images)  # [B, 1 + P, Dv]
        batch = x.shape[0]
        n = prompts[0].shape[-2] if prompts else 0
        if n and plan.stage == "before_ln_pre":
            x = self._insert(x, _expand(prompts[0], batch, x.dtype), plan.position)  # [B, 1 + P + N, Dv]
        x = v.ln_pre(x)
        if n and plan.stage == "after_ln_pre":
            x = self._insert(x, _expand(prompts[0], batch, x.dtype), plan.position)  # [B, 1 + P + N, Dv]
        slots = slice(1, 1 + n) if plan.position == "after_cls" else slice(x.shape[1] - n, x.shape[1])
        transformer = v.transformer
        last = self.num_blocks - 1
        options = self._options
        cls_only = options.pooled_only and options.fused_attention and v.pool_type == "tok"
        for i, block in enumerate(transformer.resblocks):
            if 0 < i < len(prompts):
                fresh = _expand(prompts[i], batch, x.dtype)
                if plan.mix == "progressive":
                    fresh = plan.alpha * x[:, slots] + (1.0 - plan.alpha) * fresh
                x = self._replace(x, fresh, slots)
            if self.block_input_hook is not None:
                self.block_input_hook(i, x, slots)
            rows = (
                x.new_zeros(batch, 1, dtype=torch.long) if cls_only and i == last else None
            )  # the class token
            x = _run_block(transformer, block, x, None, options, rows=rows)
        if n and not cls_only:  # drop the prompt slots: pooling sees CLIP's own token layout
            x = torch.cat([x[:, : slots.start], x[:, slots.stop :]], dim=1)  # [B, 1 + P, Dv]
        pooled, _ = v._pool(x)  # [B, 1, Dv] (class token only) or [B, 1 + P, Dv]
        return pooled @ v.proj if v.proj is not None else pooled

    @staticmethod
    def _insert(x: Tensor, p: Tensor, position: Position) -> Tensor:
        if position == "after_cls":
            return torch.cat([x[:, :1], p, x[:, 1:]], dim=1)  # [B, 1 + N + P, Dv]
        return torch.cat([x, p], dim=1)  # [B, 1 + P + N, Dv]

    @staticmethod
    def _replace(x: Tensor, p: Tensor, slots: slice) -> Tensor:
        return torch.cat([x[:, : slots.start], p, x[:, slots.stop :]], dim=1)  # same shape as x


class PromptedTextEncoder(nn.Module):
    """CLIP's text tower with prompt insertion. Owns no parameters.

    ``clip``: the frozen open_clip model; ``tokenizer``: the backbone's (``Backbone.tokenizer``), None = CLIP's BPE
    tokenizer; ``options``: how it computes (:class:`EncoderOptions`; None: the defaults)."""

    def __init__(
        self, clip: nn.Module, tokenizer: Tokenizer | None = None, options: EncoderOptions | None = None
    ) -> None:
        super().__init__()
        self._clip: tuple[OpenClipModule] = (clip,)
        self._options = options or EncoderOptions()
        _check_batch_first(text_tower(clip).transformer)
        self.tokenizer = tokenizer if tokenizer is not None else import_open_clip().SimpleTokenizer()
        self._causal: bool | None = None  # (see _causal_mask)
        self._pooled_cache: tuple[weakref.ref[Tensor], int, int] | None = None  # (see _last_pooled)

    @property
    def options(self) -> EncoderOptions:
        """How this encoder computes (fixed when it is built)."""
        return self._options

    @property
    def tower(self) -> OpenClipModule:
        """The frozen CLIP's text tower (:func:`~scaleprompt.backbone.text_tower`)."""
        return text_tower(self._clip[0])

    @property
    def num_blocks(self) -> int:
        return len(self.tower.transformer.resblocks)

    @property
    def width(self) -> int:
        return self.tower.token_embedding.weight.shape[-1]

    @property
    def context_length(self) -> int:
        return self.tower.positional_embedding.shape[0]

    @property
    def dtype(self) -> torch.dtype:
        return self.tower.token_embedding.weight.dtype

    def tokenize(
        self,
        texts: Sequence[str],
        context_length: int | None = None,
        device: torch.device | str | None = None,
    ) -> Tensor:
        """Token ids ``[S, T]`` with the backbone's tokenizer and (by default) its context length, on ``device``
        (default: the token embedding's; ``"cpu"`` for ids whose values are read on the host: no device sync)."""
        ids = self.tokenizer(list(texts), context_length=context_length or self.context_length)
        return ids.to(self.tower.token_embedding.weight.device if device is None else device)

    @torch.no_grad()
    def embed(self, ids: Tensor) -> Tensor:
        """Frozen token embeddings ``[S, T, Dt]``."""
        return self.tower.token_embedding(ids).to(self.dtype)

    def forward(
        self, embeds: Tensor, ids: Tensor, deep: Sequence[Tensor] | None = None, start: int = 1
    ) -> Tensor:
        """Text features ``[S, E]``. ``embeds`` ``[S, T, Dt]``; ``deep[k]`` (``[N, Dt]`` or ``[S, N, Dt]``)
        replaces positions ``start .. start+N`` in the input of block ``k + 1``. With :attr:`chunk`, the sequences
        go through in chunks (recomputed in backward when gradients are on)."""
        chunk = self._options.text_chunk
        deep = [] if deep is None else list(deep)
        if len(deep) >= self.num_blocks:
            raise ValueError(f"{len(deep)} deep text prompts for a text tower of {self.num_blocks} blocks")
        pooled = self.pooled_positions(ids)  # [S] or None
        length = self.kept_length(ids, start + max((p.shape[-2] for p in deep), default=0), pooled=pooled)
        size = embeds.shape[0]
        if not chunk or size <= chunk:
            return self._encode(embeds, ids, pooled, length, start, *deep)
        parts = []
        for lo in range(0, size, chunk):
            rows = slice(lo, lo + chunk)
            part = (embeds[rows], ids[rows], None if pooled is None else pooled[rows])
            part_deep = [p[rows] if p.dim() == 3 else p for p in deep]
            if torch.is_grad_enabled():  # (the chunk's inputs are checkpoint's: kept, the rest recomputed)
                parts.append(checkpoint(self._encode, *part, length, start, *part_deep, use_reentrant=False))
            else:
                parts.append(self._encode(*part, length, start, *part_deep))
        return torch.cat(parts)  # [S, E]

    def _encode(
        self, embeds: Tensor, ids: Tensor, pooled: Tensor | None, length: int, start: int, *deep: Tensor
    ) -> Tensor:
        """:meth:`forward` of ``S`` sequences, their positions cut to ``length``."""
        t = self.tower
        x = embeds[:, :length].to(self.dtype) + t.positional_embedding[:length].to(self.dtype)  # [S, L, Dt]
        mask = t.attn_mask if t.attn_mask is None else t.attn_mask[:length, :length]
        options = self._options
        causal = mask is not None and options.fused_attention and self._causal_mask()
        last, rows = self.num_blocks - 1, None
        for i, block in enumerate(t.transformer.resblocks):
            if 0 < i <= len(deep):
                p = _expand(deep[i - 1], x.shape[0], x.dtype)
                x = torch.cat([x[:, :start], p, x[:, start + p.shape[1] :]], dim=1)  # [S, L, Dt]
            rows = None
            if i == last and causal and options.pooled_only and pooled is not None:
                rows = pooled.unsqueeze(1)  # [S, 1]: the pooled position of each sequence
            x = _run_block(t.transformer, block, x, mask, options, causal=causal, rows=rows)
        x = t.ln_final(x)
        x = (
            x[:, 0] if rows is not None else self.pool(x, ids)
        )  # [S, Dt] (rows: the pooled ones, computed alone)
        proj = t.text_projection
        if proj is None:
            return x
        return proj(x) if isinstance(proj, nn.Linear) else x @ proj

    @property
    def pool_type(self) -> str:
        return getattr(self.tower, "text_pool_type", getattr(self.tower, "pool_type", "argmax"))

    def pooled_positions(self, ids: Tensor) -> Tensor | None:
        """The position pooling reads in each sequence of ``ids`` ``[S, T]`` (``[S]``: the end-of-text token for
        ``argmax`` / ``eos`` pooling, 0 for ``first``), or None when it is not one known position (``last``)."""
        if self.pool_type == "argmax":
            return ids.argmax(dim=-1)
        if self.pool_type == "eos" and getattr(self.tower, "text_eos_id", None) is not None:
            return torch.eq(ids, self.tower.text_eos_id).to(torch.int64).argmax(dim=-1)
        if self.pool_type == "first":
            return ids.new_zeros(ids.shape[0], dtype=torch.int64)
        return None

    def kept_length(self, ids: Tensor, at_least: int = 0, pooled: Tensor | None = None) -> int:
        """How many leading positions of ``ids`` ``[S, T]`` the features depend on. Under the causal mask a position
        only sees the ones before it, so everything after the pooled token (the end-of-text token: ``argmax`` /
        ``eos`` pooling) cannot change the features and is not computed: 15 of 77 positions for a 4-token context
        and short class names. Without a causal mask or with ``last`` pooling every position counts (T).
        ``pooled``: :meth:`pooled_positions` of ``ids`` when the caller has them already."""
        pooled = self.pooled_positions(ids) if pooled is None else pooled
        if not self._options.truncate or self.tower.attn_mask is None or pooled is None:
            return ids.shape[1]
        return min(ids.shape[1], max(self._last_pooled(ids, pooled) + 1, at_least))

    def _last_pooled(self, ids: Tensor, pooled: Tensor) -> int:
        """``int(pooled.max())`` for ``ids`` (a host sync on an accelerator), read once per ids tensor: the class
        prompts' ids are a buffer that stays as it is until the classes change (a new tensor), so every forward
        of a run asks the same; the cache holds the tensor itself (a weak reference: never another tensor at the
        same address) and its version (an in-place change is read again)."""
        cached = self._pooled_cache
        if cached is not None and cached[0]() is ids and cached[1] == ids._version:
            return cached[2]
        value = int(pooled.max())
        self._pooled_cache = (weakref.ref(ids), ids._version, value)
        return value

    def _causal_mask(self) -> bool:
        """The tower's ``attn_mask`` is the causal mask (checked once: it is a fixed buffer; so is any leading
        square slice of it)."""
        if self._causal is None:
            self._causal = self.tower.attn_mask is not None and _is_causal(self.tower.attn_mask)
        return self._causal

    def pool(self, x: Tensor, ids: Tensor) -> Tensor:
        from open_clip.transformer import text_global_pool  # (imported already: this runs an open_clip model)

        return text_global_pool(x, ids, self.pool_type, eos_token_id=getattr(self.tower, "text_eos_id", None))

    @torch.no_grad()
    def encode_texts(self, texts: Sequence[str]) -> Tensor:
        """Frozen features ``[S, E]`` of plain strings (no prompts)."""
        ids = self.tokenize(texts)
        return self(self.embed(ids), ids)


def splice(embeds: Tensor, ctx: Tensor, start: int = 1) -> Tensor:
    """Replace positions ``start .. start+N`` of ``embeds`` ``[S, T, D]`` with ``ctx`` ``[N, D]`` or ``[S, N, D]``."""
    ctx = _expand(ctx, embeds.shape[0], embeds.dtype)
    if start + ctx.shape[1] > embeds.shape[1]:
        raise ValueError(
            f"{ctx.shape[1]} context tokens at position {start} overflow a sequence of {embeds.shape[1]}"
        )
    return torch.cat([embeds[:, :start], ctx, embeds[:, start + ctx.shape[1] :]], dim=1)  # [S, T, D]
