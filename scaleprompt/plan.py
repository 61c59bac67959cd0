"""``scaleprompt plan``: per-GPU memory of a training run, with the activations counted on the real model's steps.

Weights, buffers and prompts are counted on the method built over the FULL-depth backbone on PyTorch's meta device
(shapes only: nothing allocated, nothing downloaded; the token embedding is a fake CPU tensor, which embeds the real
token ids of the class prompts). Activations are counted, not modelled: the same architecture at reduced depth (1-2
blocks per tower) is built as training builds it (fp32), its parameters cast as DeepSpeed casts them, and runs
training steps of the real method (``method.loss``) under ``saved_tensors_hooks``, which add up the bytes of every
unique storage autograd keeps (views of one storage count once; parameters and buffers do not count), split by who
saved it (vision encoder, text encoder, the rest). The steps run on fake tensors (PyTorch's ``FakeTensorMode``):
every weight, image and activation has the shape, strides, dtype and storage sharing it has in a real CPU step, and
no values, so nothing is computed (a few seconds for ViT-bigG, whose real CPU steps took minutes:
``bench/plan_speed.py``). The code is the real step's, down the same CPU paths: a fake tensor is a CPU tensor to the
code and the dispatcher (the SDPA backend chosen, oneDNN's linear, dropout's CPU kernel), and a storage is told by
its storage object (:func:`_storage_key`). What the encoders read the values of stays real: token ids, labels,
index and mask tables, the causal mask (open_clip's buffers); a value read off a fake tensor raises rather than
guessing a path. Only the forward runs: autograd saves in the forward, where the count looks. ``measure(...,
fake=False)`` runs the same steps on real random weights (the reference: the tests compare the two for every
method). Five steps over (micro-batch B, vision blocks, text blocks, classes C) fit exact formulas per part --
vision: bilinear in (B, blocks); text: in (text sequences, blocks); the rest: in (B, C), with B^2 -- evaluated at
full depth. Under ZeRO-3 the steps run the code DeepSpeed makes the model run, asked of the encoders through their
options (:class:`~scaleprompt.encoders.EncoderOptions`), nothing patched: the blocks whose weights ZeRO-3
partitions (a parameter above the persistence threshold) take open_clip's own steps instead of the fused
attention, and with ``memory_efficient_linear`` (DeepSpeed's default) their projections are
:class:`_DeepSpeedLinear`, which saves its input as DeepSpeed's linear does. The tests check the formulas against
real full-depth steps, to the byte, also against a real DeepSpeed ZeRO-3 bf16 engine. What the numbers assume:
:data:`ASSUMPTIONS`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import re
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn
from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode

from scaleprompt.config import ConfigError
from scaleprompt.encoders import EncoderOptions
from scaleprompt.logs import silenced

logger = logging.getLogger(__name__)

GiB = 2**30
OVERHEAD = GiB  # CUDA context + caching-allocator slack (an assumption, printed with the plan)
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
# fp16 is measured as bf16: the same ops save the same tensors at 2 bytes, and CPU fp16 matmuls are ~10x slower
MEASURED_AS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.bfloat16}
OPTIMIZER_STATES = {"sgd": 1, "adamw": 2}  # fp32 tensors per prompt value (SGD momentum; Adam's two moments)
ZERO3_DEFAULTS = {  # DeepSpeed's defaults, used when the DS JSON leaves a knob out
    "stage3_param_persistence_threshold": 100_000,
    "stage3_max_reuse_distance": 1_000_000_000,
    "stage3_prefetch_bucket_size": 50_000_000,
    "stage3_max_live_parameters": 1_000_000_000,
    "memory_efficient_linear": True,
}
DEPTH_FIELDS = {"vision_depth": "v", "text_depth": "t", "depth": "vt", "prompt_depth": "vt"}
RUNS = ((1, 1, 1, 2), (2, 2, 1, 4), (1, 2, 2, 4), (2, 1, 2, 2), (3, 1, 2, 2))  # (B, vision, text blocks, C)
ASSUMPTIONS = (
    "weights: DeepSpeed's bf16 / fp16 engine casts every parameter (frozen ones too); buffers keep their dtype "
    "(the class-prompt token embeddings stay fp32)",
    "activations: the unique storages autograd saves for backward in one step, counted on (fake) CPU tensors in "
    "the run's dtype (fp16 measured as bf16: the same tensors at 2 bytes); GPU flash / memory-efficient attention "
    "saves the same tensors as CPU's (q, k, v, output, logsumexp)",
    "peak = everything saved for backward + the working set of the largest unit in flight: one block's saved "
    "activations (the block being computed, with or without gradient, or recomputed under checkpointing) or one "
    "text chunk's recomputation; activation gradients and kernel workspaces beyond that are in the allowance",
    "class names of --name-tokens tokens each (the text tower computes up to the longest prompt); blocks with and "
    "without prompts save the same (prompt-sized tensors aside): depth fields are clipped to the measured blocks",
    "ZeRO-3 working set: a parameter used again within stage3_max_reuse_distance elements stays gathered (the "
    "forward's blocks return in backward): external parameters + min(parameters used per step, min(those used "
    "twice, reuse distance) + prefetch bucket + largest block); an upper bound of DeepSpeed's trace-based choice",
    "ZeRO-3 with memory_efficient_linear (DeepSpeed's default): every linear saves its input, also with a frozen "
    "weight ('memory_efficient_linear': false in the DS JSON keeps torch's linear, which does not)",
    "prompts: the model copy (held whole), gradients (partitioned from ZeRO-2), fp32 master (with ZeRO or 16-bit) "
    "and optimizer states (partitioned from ZeRO-1)",
)


def parse_size(text: str) -> int:
    """The bytes of the size ``text``: ``"80GB"`` (10^9), ``"40GiB"`` (2^30), ``"512MiB"``, ``"1.5TB"``, ``"123"``
    (bytes)."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]i?B|B)?\s*", text, flags=re.IGNORECASE)
    if not match:
        raise ConfigError(f"--gpu-memory: {text!r} is not a size such as 80GB, 40GiB, 24GB or 512MiB")
    unit = (match.group(2) or "B").upper()
    power = "BKMGT".index(unit[0])
    return int(float(match.group(1)) * (1024 if "I" in unit else 1000) ** power)


@dataclass(frozen=True)
class Fit:
    """``bytes = c0 + c1 x + c2 y + c3 x y (+ c4 x^2)``, fitted exactly on measured points."""

    coef: tuple[float, ...]

    @staticmethod
    def terms(x: int, y: int, square: bool) -> list[int]:
        return [1, x, y, x * y, *([x * x] if square else [])]

    @classmethod
    def of(cls, points: list[tuple[int, int, int]], square: bool = False) -> Fit:
        a = torch.tensor([cls.terms(x, y, square) for x, y, _ in points], dtype=torch.float64)
        b = torch.tensor([[z] for _, _, z in points], dtype=torch.float64)
        return cls(tuple(torch.linalg.lstsq(a, b, driver="gelsd").solution[:, 0].tolist()))

    def __call__(self, x: int, y: int) -> int:
        terms = self.terms(x, y, len(self.coef) == 5)
        return max(0, round(sum(c * t for c, t in zip(self.coef, terms, strict=True))))


@dataclass(frozen=True)
class Measured:
    """Saved bytes of one mode (checkpointing, chunking): vision(B, blocks), text(S, blocks), other(B, C), and the
    text sequences per step S(B, C)."""

    vision: Fit
    text: Fit
    other: Fit
    seqs: Fit
    vision_block: int  # one vision block with gradient, per image (the working set of a no-grad pass)


@dataclass(frozen=True)
class Plan:
    """Per-GPU bytes of one configuration; ``rows`` are (what, bytes, note) in table order."""

    model: str
    method: str
    batch: int
    gpus: int
    zero: int
    precision: str
    grad_checkpointing: bool
    classes: int
    text_chunk: int
    optimizer: str
    gpu_memory: int
    rows: tuple[tuple[str, int, str], ...]
    total: int
    largest_batch: int
    assumptions: tuple[str, ...]

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """open_clip announces a random init (:func:`~scaleprompt.backbone.quiet_open_clip`); identical synthetic class
    prompts are warned about."""
    from scaleprompt.backbone import quiet_open_clip

    with quiet_open_clip(), silenced("scaleprompt.methods.prompts", "scaleprompt.encoders"):
        yield


def classnames(classes: int, name_tokens: int) -> list[str]:
    """Synthetic class names of ``name_tokens`` one-token words: the prompts' length is what memory sees."""
    return [" ".join(["x"] * name_tokens)] * classes


def _storage_key(t: torch.Tensor) -> int | tuple[str, int]:
    """What identifies the storage of ``t``: its data address (a real tensor), or the identity of its storage object
    (a fake tensor: its storage is a meta one, with no address; every view of it shares that object)."""
    storage = t.untyped_storage()
    return ("fake", storage._cdata) if isinstance(t, FakeTensor) else storage.data_ptr()


class SavedBytes:
    """Counts what autograd saves while active: unique storages (views of one storage count once,
    :func:`_storage_key`), by the part that was running (``part[-1]``), except the storages of ``owned`` tensors
    (parameters, buffers). Real and fake tensors alike: a fake storage knows its size."""

    def __init__(self, owned: Iterator[torch.Tensor] | list[torch.Tensor]) -> None:
        self.owned = {_storage_key(t) for t in owned}
        self.part, self.seen = ["other"], dict[int | tuple[str, int], tuple[str, int]]()
        self.alive = list[torch.Tensor]()

    def pack(self, t: torch.Tensor) -> torch.Tensor:
        key = _storage_key(t)
        if key not in self.owned and key not in self.seen:
            self.seen[key] = (self.part[-1], t.untyped_storage().nbytes())
            self.alive.append(t)  # (kept alive until the count is read: no address or storage is reused)
        return t

    def hooks(self) -> torch.autograd.graph.saved_tensors_hooks:
        return torch.autograd.graph.saved_tensors_hooks(self.pack, lambda t: t)

    def totals(self) -> dict[str, int]:
        out = {"vision": 0, "text": 0, "other": 0}
        for name, nbytes in self.seen.values():
            out[name] += nbytes
        return out


def _fake_mode(method: nn.Module) -> FakeTensorMode | None:
    """The fake-tensor mode of ``method``'s parameters (None: real tensors)."""
    return next((p.fake_mode for p in method.parameters() if isinstance(p, FakeTensor)), None)


def _images(method: Any, batch: int) -> torch.Tensor:
    """Random images of ``method``'s input size: fake ones for a method on fake tensors."""
    size = method.vision.visual.image_size
    mode = _fake_mode(method)
    with mode if mode is not None else contextlib.nullcontext():
        return torch.randn(batch, 3, *(size if isinstance(size, tuple) else (size, size)))


def count_saved(method: Any, batch: int) -> tuple[dict[str, int], int]:
    """One training step of ``method`` (``loss`` + backward) on random images: bytes of the unique storages autograd
    saves, by part (``vision`` / ``text`` encoder, ``other``), and the text sequences encoded in the step. Class
    text of fixed-text methods is encoded (once, without gradient) before the step, as in training. A method on
    fake tensors (:func:`_reduced`) runs the forward only: the count is taken in the forward (the hooks are active
    there only), and a fake backward would compute nothing."""
    images, labels = _images(method, batch), torch.arange(batch) % len(method.classnames)
    method.train()
    if getattr(method, "frozen_text", False):
        method.text_features()
    counter, seqs = SavedBytes([*method.parameters(), *method.buffers()]), [0]

    def enter(name: str) -> Callable[..., None]:
        def hook(_: nn.Module, args: tuple[Any, ...]) -> None:
            counter.part.append(name)
            seqs[0] += args[0].shape[0] if name == "text" else 0

        return hook

    def leave(*_: Any) -> None:
        counter.part.pop()

    handles = [
        method.vision.register_forward_pre_hook(enter("vision")),
        method.text.register_forward_pre_hook(enter("text")),
    ]
    handles += [method.vision.register_forward_hook(leave), method.text.register_forward_hook(leave)]
    try:
        with counter.hooks():
            out = method.loss(images, labels)
    finally:
        for handle in handles:
            handle.remove()
    if out.loss.requires_grad and _fake_mode(method) is None:
        out.loss.backward()
    return counter.totals(), seqs[0]


def vision_saved(method: Any, batch: int) -> int:
    """Bytes autograd saves in the plain vision encoder with gradients on the images: a no-grad pass of a
    method (CoOp's image tower) saves nothing, but one block at a time is computed all the same."""
    counter = SavedBytes([*method.parameters(), *method.buffers()])
    with counter.hooks():
        method.vision(_images(method, batch).requires_grad_())
    return sum(counter.totals().values())


@contextlib.contextmanager
def _depth(clip: Any, vision: int, text: int) -> Iterator[None]:
    """``clip`` with its first ``vision`` / ``text`` blocks only."""
    from scaleprompt.backbone import text_tower

    transformers: tuple[Any, Any] = (clip.visual.transformer, text_tower(clip).transformer)
    saved = [t.resblocks for t in transformers]
    for t, blocks, n in zip(transformers, saved, (vision, text), strict=True):
        t.resblocks = nn.ModuleList(list(blocks)[:n])
    try:
        yield
    finally:
        for t, blocks in zip(transformers, saved, strict=True):
            t.resblocks = blocks


def _cast(module: nn.Module, dtype: torch.dtype) -> None:
    """As DeepSpeed under bf16 / fp16: every floating parameter to ``dtype``, buffers as they are."""
    for p in module.parameters():
        if p.is_floating_point() and p.dtype != dtype:
            p.data = p.data.to(dtype)


def _clipped(method: str, method_args: Mapping[str, Any], vision: int, text: int) -> dict[str, Any]:
    """``method_args`` with the method's depth fields (set or default) at most the measured towers' blocks."""
    from scaleprompt.methods import method_class

    blocks = {"v": vision, "t": text}
    args = {**method_class(method).describe_config(), **method_args}
    clipped = {
        k: min(x, *(blocks[s] for s in DEPTH_FIELDS[k]))
        for k, x in args.items()
        if k in DEPTH_FIELDS and type(x) is int
    }
    return {**method_args, **clipped}


# Caches keyed by their inputs (listed in the package docstring, scaleprompt/__init__.py): the reduced models,
# tokenizers, measurements and meta-device architectures of this process.
_REDUCED: dict[tuple[str, bool], tuple[Any, Any, FakeTensorMode | None]] = {}
_TOKENIZERS: dict[str, Any] = {}


def _tokenizer(model: str) -> Any:
    if model not in _TOKENIZERS:
        from scaleprompt.backbone import tokenizer_for

        _TOKENIZERS[model] = tokenizer_for(model)
    return _TOKENIZERS[model]


_MEASURED: dict[tuple[Any, ...], Measured] = {}


@contextlib.contextmanager
def _parameters_on_meta() -> Iterator[list[tuple[nn.Module, str, torch.Tensor]]]:
    """While active, every parameter a module registers goes to the meta device (shape, strides and dtype kept), so
    that its initialisation, which follows, computes nothing (torch's layers register an empty tensor, freed
    unwritten; open_clip draws its class and positional embeddings and projections before: small); every buffer
    registered is listed as it was built (the list given), to be put back after a move to the meta device."""
    from torch.nn.modules.module import (
        register_module_buffer_registration_hook,
        register_module_parameter_registration_hook,
    )

    buffers: list[tuple[nn.Module, str, torch.Tensor]] = []

    # (torch's hook returns the parameter to register, or None: its documented contract; its annotation says None)
    def parameter(_: nn.Module, __: str, p: nn.Parameter | None) -> Any:
        if p is None or p.is_meta:
            return None
        meta = torch.empty_strided(p.shape, p.stride(), dtype=p.dtype, device="meta")
        return nn.Parameter(meta, requires_grad=p.requires_grad)

    def buffer(module: nn.Module, name: str, tensor: torch.Tensor | None) -> None:
        if tensor is not None:
            buffers.append((module, name, tensor))

    handles = [
        register_module_parameter_registration_hook(parameter),
        register_module_buffer_registration_hook(buffer),
    ]
    try:
        yield buffers
    finally:
        for handle in handles:
            handle.remove()


def _fakeify(module: nn.Module, mode: FakeTensorMode) -> None:
    """Every floating parameter of ``module`` (and its submodules) that is not fake yet becomes a fake CPU tensor of
    ``mode`` of the same shape, strides, dtype and ``requires_grad`` (a parameter shared by two modules stays
    shared). Buffers stay as built: computed from fake weights they are fake already (class-prompt embeddings);
    the others are small and some are read (the causal mask, token ids)."""
    fakes: dict[int, torch.Tensor] = {}

    def fake(t: torch.Tensor) -> torch.Tensor:
        if id(t) not in fakes:
            with mode:
                fakes[id(t)] = torch.empty_strided(t.shape, t.stride(), dtype=t.dtype, device="cpu")
        return fakes[id(t)]

    for m in module.modules():
        for name, p in m._parameters.items():
            if p is not None and not isinstance(p, FakeTensor) and p.is_floating_point():
                m._parameters[name] = nn.Parameter(fake(p), requires_grad=p.requires_grad)


def _reduced(model: str, fake: bool = True) -> tuple[Any, Any, FakeTensorMode | None]:
    """The 2 + 2 block model of ``model``, its tokenizer and (``fake``) its fake-tensor mode, built once per
    process. ``fake``: open_clip builds it with every parameter on the meta device (:func:`_parameters_on_meta`:
    no weight allocated or initialised), then the parameters become fake CPU tensors and the buffers are the real
    ones open_clip built (the text tower's causal mask, whose values the encoders read). Else: real random fp32
    weights, as ``load_clip`` builds them."""
    if (model, fake) not in _REDUCED:
        from scaleprompt.backbone import freeze, import_open_clip

        oc = import_open_clip()
        cfg = oc.get_model_config(model)
        vision_cfg, text_cfg = {**cfg["vision_cfg"], "layers": 2}, {**cfg["text_cfg"], "layers": 2}
        mode = None
        with _quiet(), torch.random.fork_rng():
            torch.manual_seed(0)
            if not fake:
                clip = oc.create_model(model, pretrained=None, vision_cfg=vision_cfg, text_cfg=text_cfg)
            else:
                with _parameters_on_meta() as buffers:
                    clip = oc.create_model(
                        model, pretrained=None, device="meta", vision_cfg=vision_cfg, text_cfg=text_cfg
                    )
                for module, name, tensor in buffers:  # (create_model moved them to the meta device)
                    if module._buffers.get(name) is not None:
                        module._buffers[name] = tensor
                mode = FakeTensorMode(allow_non_fake_inputs=True)  # (token ids, labels, masks: real)
                _fakeify(clip, mode)
                if any(b.is_meta for b in clip.buffers()):
                    raise RuntimeError(
                        f"{model}: a buffer was built on the meta device; the planner needs it real"
                    )
        _REDUCED[model, fake] = freeze(clip), _tokenizer(model), mode
    return _REDUCED[model, fake]


class _DeepSpeedLinear(torch.autograd.Function):
    """DeepSpeed's ZeRO-3 linear (``LinearFunctionForZeroStage3``) as far as memory goes: it saves its input, weight
    and bias. Computed by torch's linear on a contiguous copy of the input: CPU bf16 GEMMs on the transposed inputs
    of ``nn.MultiheadAttention`` run at about 1 GFLOPS (the saved input is the one given, as DeepSpeed's)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        ctx.save_for_backward(x, weight, bias)
        return torch._C._nn.linear(x.contiguous(), weight, bias)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, weight, bias = ctx.saved_tensors
        flat = grad.reshape(-1, grad.shape[-1])
        return (
            grad.matmul(weight) if ctx.needs_input_grad[0] else None,
            flat.t().matmul(x.reshape(-1, x.shape[-1])) if ctx.needs_input_grad[1] else None,
            flat.sum(0) if bias is not None and ctx.needs_input_grad[2] else None,
        )


def _torch_linear(
    input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """torch's linear; a frozen weight's (which saves nothing of its input) on a contiguous input (see above)."""
    return torch._C._nn.linear(input if weight.requires_grad else input.contiguous(), weight, bias)


def _deepspeed_linear(
    input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None
) -> torch.Tensor:
    return _DeepSpeedLinear.apply(input, weight, bias)


def _options(zero3: tuple[int, bool] | None, chunk: bool) -> EncoderOptions:
    """The encoder options of a measured step: text sequences one per chunk with ``chunk``; under ZeRO-3 (``zero3``:
    its persistence threshold and ``memory_efficient_linear``) the blocks holding a parameter above the threshold
    partitioned, and every block projection DeepSpeed's linear (which saves its input) or, without
    ``memory_efficient_linear``, torch's (:func:`_torch_linear`); oneDNN's is CPU-only, so never under ZeRO-3."""
    if zero3 is None:
        return EncoderOptions(text_chunk=1 if chunk else 0)
    linear = _deepspeed_linear if zero3[1] else _torch_linear
    return EncoderOptions(text_chunk=1 if chunk else 0, linear=linear, partitioned=zero3[0])


def measure(
    model: str,
    method: str,
    method_args: Mapping[str, Any],
    precision: str,
    zero3: tuple[int, bool] | None,
    ckpt: bool,
    chunk: bool,
    name_tokens: int,
    fake: bool = True,
) -> Measured:
    """Fit the saved bytes of one mode on five steps of the 1-2 block model of ``model`` (cached in this process):
    ``method`` built with ``method_args`` (depths clipped to the measured blocks), its parameters in ``precision``.
    ``zero3``: under ZeRO-3, its persistence threshold (larger block weights are partitioned, so blocks run
    open_clip's own steps, as under DeepSpeed) and ``memory_efficient_linear`` (:func:`_options`); ``ckpt``:
    gradient checkpointing; ``chunk``: text sequences one per chunk; ``name_tokens``: tokens per class name.
    ``fake`` (the planner's way): the steps run on fake tensors (:func:`_reduced`; the method's own floating
    parameters made fake too, :func:`_fakeify`), which count the same bytes without computing; False: real CPU
    steps (the reference, in seconds to minutes of CPU time)."""
    args = json.dumps(dict(method_args), sort_keys=True)
    key = (model, method, args, MEASURED_AS[precision], zero3, ckpt, chunk, name_tokens, fake)
    if key in _MEASURED:
        return _MEASURED[key]
    from scaleprompt.backbone import Backbone
    from scaleprompt.methods import build

    clip, tokenizer, mode = _reduced(model, fake)
    backbone, rows, options = Backbone(clip, tokenizer), [], _options(zero3, chunk)

    def built(v: int, t: int, c: int, options: EncoderOptions = options) -> Any:
        """The method built as training builds it (fp32; buffers such as the class-prompt embeddings stay fp32),
        then every parameter cast as DeepSpeed casts them (and, on fake tensors, the method's own made fake)."""
        _cast(clip, torch.float32)
        names = classnames(c, name_tokens)
        out = build(method, backbone, names, options=options, **_clipped(method, method_args, v, t))
        _cast(out, MEASURED_AS[precision])
        if mode is not None:
            _fakeify(out, mode)
        return out

    start = time.perf_counter()
    with _quiet(), torch.random.fork_rng():
        torch.manual_seed(0)
        clip.set_grad_checkpointing(ckpt)
        for b, v, t, c in RUNS:
            with _depth(clip, v, t):
                parts, seqs = count_saved(built(v, t, c), b)
            rows.append((b, v, t, c, parts, seqs))
        vision = Fit.of([(b, v, p["vision"]) for b, v, _, _, p, _ in rows])
        block = []
        if not ckpt and not chunk and vision(1, 2) == vision(1, 1):  # a no-grad image tower: measure a block
            # (with torch's linear: a no-grad pass keeps no linear's input)
            plain = options if zero3 is None else dataclasses.replace(options, linear="torch")
            for v in (1, 2):
                with _depth(clip, v, 1):
                    block.append(vision_saved(built(v, 1, 2, plain), 1))
        clip.set_grad_checkpointing(False)
        _cast(clip, torch.float32)
    logger.info(
        "measured %s / %s on 1-2 blocks (%s%s%s%s): %d %s steps in %.1f s",
        model,
        method,
        precision,
        ", ZeRO-3" if zero3 else "",
        ", checkpointing" if ckpt else "",
        ", text chunks" if chunk else "",
        len(RUNS) + len(block),
        "fake" if fake else "real",
        time.perf_counter() - start,
    )
    _MEASURED[key] = Measured(
        vision=vision,
        text=Fit.of([(s, t, p["text"]) for _, _, t, _, p, s in rows]),
        other=Fit.of([(b, c, p["other"]) for b, _, _, c, p, _ in rows], square=True),  # (B x B: ProVP-Ref)
        seqs=Fit.of([(b, c, s) for b, _, _, c, _, s in rows]),
        vision_block=block[1] - block[0] if block else 0,
    )
    return _MEASURED[key]


@dataclass(frozen=True)
class Architecture:
    """The full-depth method on the meta device: what is stored, per tensor."""

    frozen: dict[str, int]  # backbone parameter -> values
    trainable: int
    buffers: int  # bytes (class-prompt token embeddings and ids, masks; kept in their own dtype)
    vision_blocks: int
    text_blocks: int
    text_cache: int  # values of the cached class text features of a fixed-text method (0: learned text)
    image_values: int  # 3 H W


_ARCHITECTURES: dict[tuple[Any, ...], Architecture] = {}


def architecture(
    model: str, method: str, method_args: Mapping[str, Any], classes: int, name_tokens: int
) -> Architecture:
    """What ``method`` (config fields ``method_args``) over the full-depth ``model`` stores, built on the meta device
    (the token embedding: fake CPU tensors, which embed the real token ids) for ``classes`` class names of
    ``name_tokens`` tokens (cached in this process)."""
    key = (model, method, json.dumps(dict(method_args), sort_keys=True), classes, name_tokens)
    if key not in _ARCHITECTURES:
        from scaleprompt.backbone import Backbone, import_open_clip, text_tower
        from scaleprompt.methods import build, method_class

        oc = import_open_clip()
        method_class(method)  # (an unknown method is named before the model is built)
        if model not in oc.list_models():
            raise ConfigError(
                f"unknown model {model!r}; see open_clip.list_models() or scaleprompt's model_configs"
            )
        with _quiet(), torch.device("meta"):
            clip: Any = oc.create_model(model, pretrained=None, device="meta").requires_grad_(False)
            tower: Any = text_tower(clip)
            embedding = nn.Embedding(
                tower.token_embedding.num_embeddings, tower.token_embedding.embedding_dim
            )
        frozen = {n: p.numel() for n, p in clip.named_parameters()}
        # the class prompts' embeddings: fake, as large as real ones (a fake CPU weight takes the real token ids)
        _fakeify(embedding, FakeTensorMode(allow_non_fake_inputs=True))
        tower.token_embedding = embedding
        with _quiet():
            built = build(
                method, Backbone(clip, _tokenizer(model)), classnames(classes, name_tokens), **method_args
            )
        size = clip.visual.image_size
        _ARCHITECTURES[key] = Architecture(
            frozen=frozen,
            trainable=sum(p.numel() for p in built.trainable_parameters()),
            buffers=sum(b.numel() * b.element_size() for b in built.buffers()),
            vision_blocks=len(clip.visual.transformer.resblocks),
            text_blocks=len(tower.transformer.resblocks),
            text_cache=classes * clip.visual.output_dim if getattr(built, "frozen_text", False) else 0,
            image_values=3 * math.prod(size if isinstance(size, tuple) else (size, size)),
        )
    return _ARCHITECTURES[key]


def weight_bytes(values: Mapping[str, int], element: int, zero: int, gpus: int, persist: int) -> int:
    """Frozen weights held per GPU: whole below ZeRO-3; under ZeRO-3 a parameter of at most ``persist`` values
    stays whole on every GPU and the others are split in ``ceil(n / gpus)`` (DeepSpeed pads to the GPU count)."""
    if zero < 3:
        return element * sum(values.values())
    return element * sum(n if n <= persist else -(-n // gpus) for n in values.values())


def prompt_bytes(values: int, element: int, zero: int, gpus: int, precision: str, optimizer: str) -> int:
    """Per-GPU bytes of ``values`` trainable prompt values of ``element`` bytes each: the model copy, gradients, the
    fp32 master (with ZeRO or a 16-bit ``precision``) and the ``optimizer``'s states, split over ``gpus`` as ZeRO
    stage ``zero`` splits them."""
    part = -(-values // gpus)
    grads = element * (part if zero >= 2 else values)
    master = 4 * (part if zero >= 1 else values) if zero >= 1 or precision != "fp32" else 0
    states = 4 * OPTIMIZER_STATES[optimizer] * (part if zero >= 1 else values)
    return element * values + grads + master + states


EXTERNAL = (
    "visual.class_embedding",
    "visual.positional_embedding",
    "visual.proj",
    "positional_embedding",
    "text_projection",
    "text.positional_embedding",
    "text.text_projection",
    "logit_scale",
)


def gathered_values(
    arch: Architecture, ds: Mapping[str, int], vision_twice: bool, text_used: bool, text_twice: bool
) -> int:
    """ZeRO-3's gathered parameters (values) of ``arch`` at the worst moment of a step, under the DeepSpeed knobs
    ``ds``; ``vision_twice`` / ``text_twice``: the tower's blocks run again in backward; ``text_used``: the text
    tower runs in the step. See :data:`ASSUMPTIONS`."""
    big = {n: v for n, v in arch.frozen.items() if v > ds["stage3_param_persistence_threshold"]}
    external = sum(v for n, v in big.items() if n in EXTERNAL)
    towers: dict[str, int] = {"vision": 0, "text": 0, "vision block": 0, "text block": 0}
    for n, v in big.items():
        if n in EXTERNAL or "token_embedding" in n or n == "logit_bias":
            continue
        tower = "vision" if n.startswith("visual.") else "text"
        towers[tower] += v
        towers[f"{tower} block"] += v if "resblocks.0." in n else 0
    used = towers["vision"] + (towers["text"] if text_used else 0)
    twice = (towers["vision"] if vision_twice else 0) + (towers["text"] if text_twice else 0)
    prefetch = min(ds["stage3_prefetch_bucket_size"], ds["stage3_max_live_parameters"])
    largest = max(towers["vision block"], towers["text block"])
    return external + min(used, min(twice, ds["stage3_max_reuse_distance"]) + prefetch + largest)


def _zero3_knobs(ds_config: Mapping[str, Any] | None) -> dict[str, int]:
    if ds_config is None:
        from scaleprompt.recipes import resolve_recipe

        ds_config = json.loads(resolve_recipe("zero3", "ds").read_text())
    section = ds_config.get("zero_optimization", {})
    return {k: int(section.get(k, v)) for k, v in ZERO3_DEFAULTS.items()}


def plan(
    model: str,
    method: str,
    *,
    batch: int,
    gpus: int = 8,
    zero: int = 2,
    precision: str = "bf16",
    grad_checkpointing: bool = False,
    classes: int = 1000,
    text_chunk: int = 0,
    gpu_memory: int = 80 * 10**9,
    method_args: Mapping[str, Any] | None = None,
    optimizer: str = "sgd",
    name_tokens: int = 8,
    ds_config: Mapping[str, Any] | None = None,
) -> Plan:
    """The per-GPU memory of training ``method`` on ``model`` with micro-batch ``batch`` per GPU (see module doc).
    ``ds_config``: the DeepSpeed JSON whose ZeRO-3 settings apply (default: the packaged ``zero3``)."""
    for name, value, low in (
        ("--batch", batch, 1),
        ("--gpus", gpus, 1),
        ("--classes", classes, 1),
        ("--text-chunk", text_chunk, 0),
        ("--name-tokens", name_tokens, 1),
    ):
        if value < low:
            raise ConfigError(f"{name} must be >= {low}, got {value}")
    if zero not in (0, 1, 2, 3):
        raise ConfigError(f"--zero must be 0, 1, 2 or 3, got {zero}")
    if precision not in DTYPES or optimizer not in OPTIMIZER_STATES:
        raise ConfigError(
            f"--precision must be one of {list(DTYPES)} and --optimizer one of "
            f"{list(OPTIMIZER_STATES)}, got {precision!r} and {optimizer!r}"
        )
    from scaleprompt.methods import make_config

    args = dict(method_args or {})
    make_config(method, args)  # an unknown method or field, a bad value: named
    ds = _zero3_knobs(ds_config) if zero == 3 else dict(ZERO3_DEFAULTS)
    try:
        arch = architecture(model, method, args, classes, name_tokens)
    except ConfigError as exc:
        hint = f" (the planner's class names are {name_tokens} tokens: --name-tokens)" * (
            "class prompt" in str(exc)
        )
        raise ConfigError(f"{exc}{hint}") from None
    element = DTYPES[precision].itemsize
    persist = ds["stage3_param_persistence_threshold"] if zero == 3 else None
    ckpt, v_blocks, t_blocks = grad_checkpointing, arch.vision_blocks, arch.text_blocks
    zero3 = None if persist is None else (persist, bool(ds["memory_efficient_linear"]))
    modes = {
        (c, k): measure(model, method, args, precision, zero3, c, k, name_tokens)
        for c, k in {(ckpt, False), (False, False), (ckpt, text_chunk > 0)}
    }
    base = modes[False, False]

    def block(fit: Fit, x: int) -> int:  # one middle block's saved bytes (without checkpointing)
        return fit(x, 2) - fit(x, 1)

    def activations(b: int) -> tuple[dict[str, int], int]:
        """Saved for backward by part, and the working set: the largest block (computed, or recomputed under
        checkpointing) or text chunk (recomputed)."""
        seqs = base.seqs(b, classes)
        chunked = 0 < text_chunk < seqs
        kept = modes[ckpt, chunked]
        parts = {
            "vision": kept.vision(b, v_blocks),
            "text": kept.text(seqs, t_blocks) if seqs else 0,
            "loss & method": kept.other(b, classes),
        }
        unit = min(seqs, text_chunk) if chunked else seqs
        text_block = block(base.text, unit) if unit else 0
        working = [max(block(base.vision, b), b * base.vision_block), text_block]
        if chunked:
            working.append(modes[ckpt, False].text(unit, t_blocks) + (text_block if ckpt else 0))
        return parts, max(working)

    def rows(b: int) -> list[tuple[str, int, str]]:
        parts, working = activations(b)
        seqs = base.seqs(b, classes)
        where = f"split over {gpus} GPUs above {persist} values a tensor" if persist else "whole on every GPU"
        saved = "saved for backward" + (", with DeepSpeed's ZeRO-3 linear" if zero3 and zero3[1] else "")
        out = [
            (
                "frozen backbone weights",
                weight_bytes(arch.frozen, element, zero, gpus, persist or 0),
                f"{sum(arch.frozen.values()) / 1e6:.1f}M values, {precision}, {where}",
            )
        ]
        if persist is not None:
            twice = (base.vision(1, v_blocks) > 0, seqs > 0 and base.text(seqs, t_blocks) > 0)
            gathered = gathered_values(arch, ds, twice[0], seqs > 0, twice[1])
            out.append(("ZeRO-3 gathered parameters", element * gathered, "upper bound, see assumptions"))
        out += [
            (
                "buffers + cached class text",
                arch.buffers + element * arch.text_cache,
                "class-prompt tokens, masks",
            ),
            (
                f"prompts, grads, master, {optimizer} state",
                prompt_bytes(arch.trainable, element, zero, gpus, precision, optimizer),
                f"{arch.trainable} trainable values",
            ),
            *((f"activations: {k}", v, saved) for k, v in parts.items()),
            ("working set in flight", working, "largest block (computed / recomputed) or text chunk"),
            ("input batch", 4 * b * arch.image_values + 8 * b, "fp32 images + labels"),
            ("CUDA context + allocator slack", OVERHEAD, "assumed"),
        ]
        return out

    def total(b: int) -> int:
        return sum(r[1] for r in rows(b))

    fits, hi = 0, 1
    while total(hi) <= gpu_memory and hi < 2**20:
        fits, hi = hi, hi * 2
    while hi - fits > 1 and fits:
        mid = (fits + hi) // 2
        fits, hi = (mid, hi) if total(mid) <= gpu_memory else (fits, mid)
    return Plan(
        model,
        method,
        batch,
        gpus,
        zero,
        precision,
        grad_checkpointing,
        classes,
        text_chunk,
        optimizer,
        gpu_memory,
        tuple(rows(batch)),
        total(batch),
        fits,
        ASSUMPTIONS,
    )


def format_plan(p: Plan) -> str:
    """The plan ``p`` as a table (GiB) with its assumptions."""
    head = (
        f"{p.model} / {p.method}: micro-batch {p.batch} per GPU x {p.gpus} GPUs, ZeRO-{p.zero}, {p.precision}, "
        f"grad checkpointing {'on' if p.grad_checkpointing else 'off'}, {p.classes} classes"
        + (f", text chunk {p.text_chunk}" if p.text_chunk else "")
    )
    lines = [head, f"{'per GPU':<40} {'GiB':>9}"]
    lines += [f"  {what:<38} {nbytes / GiB:9.3f}  {note}" for what, nbytes, note in p.rows]
    lines.append(f"  {'total':<38} {p.total / GiB:9.3f}  of {p.gpu_memory / GiB:.2f} GiB")
    lines.append(f"largest micro-batch per GPU that fits: {p.largest_batch}")
    lines += ["assumptions:", f"  - CUDA context + allocator slack: {OVERHEAD / GiB:.1f} GiB"]
    lines += [f"  - {a}" for a in p.assumptions]
    return "\n".join(lines)
