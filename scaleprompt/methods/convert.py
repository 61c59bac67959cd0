"""Convert checkpoints of the official releases into scaleprompt prompt files (see docs/porting.md).

The releases (CoOp / CoCoOp: KaiyangZhou/CoOp; IVLP, MaPLe and their VPT: muzairkhattak/multimodal-prompt-learning;
UPT and its VPT-deep: yuhangzang/UPT; ProVP(-Ref): MCG-NJU/ProVP) are built on Dassl: a run writes
``<output>/<model name>/model.pth.tar-<epoch>`` (and ``model-best.pth.tar``), a ``torch.save``d dict
``{"state_dict", "epoch", "optimizer", "scheduler", "val_result"}``.

* :func:`convert_official` reads such a file, maps the official parameter names and layouts onto the tensors of
  the scaleprompt method (per-layer tensors are stacked, UPT-VPT's token-major ``visual_ctx`` is reordered), infers
  the method's config from the shapes (``n_ctx``, depths, ...; explicit ``method_args`` win), checks every name
  and shape, and returns the built method holding those values.
* :func:`convert_official_file` does the same and writes the prompt file (as ``save_prompts``, plus a
  ``converted_from`` metadata entry).

Reading is weights-only: ``torch.load(weights_only=True)`` rebuilds tensors and plain containers only. A Dassl
checkpoint also pickles the optimizer / lr-scheduler objects nested in the scheduler state (the warm-up
scheduler's ``successor``); those few class names are mapped to an inert record that keeps their state as data and
runs none of their code. Any other object (a crafted ``__reduce__``, any other class) is refused with an
:class:`OfficialCheckpointError` naming the file and the global, before anything executes.

The official tensors are cast to float32 (several releases keep prompts in fp16): the values are exact, but the
releases then compute in fp16 and scaleprompt in the backbone's precision, so logits agree to fp16 rounding only.
"""

from __future__ import annotations

import json
import logging
import pickle
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from scaleprompt.backbone import Backbone
from scaleprompt.config import ConfigError
from scaleprompt.encoders import EncoderOptions, PromptedTextEncoder, PromptedVisionEncoder
from scaleprompt.errors import OutputError
from scaleprompt.methods.base import PromptMethod
from scaleprompt.methods.io import PromptFileError, save_prompts
from scaleprompt.methods.registry import build, method_class

if TYPE_CHECKING:
    from scaleprompt.data.templates import TemplateSet

logger = logging.getLogger("scaleprompt")

# Where each method's official checkpoint comes from (repository: trainer file; Dassl model name = the folder
# holding model.pth.tar-<epoch>).
RELEASES: dict[str, str] = {
    "coop": "KaiyangZhou/CoOp trainers/coop.py (folder prompt_learner/)",
    "cocoop": "KaiyangZhou/CoOp trainers/cocoop.py (folder prompt_learner/)",
    "ivlp": "muzairkhattak/multimodal-prompt-learning trainers/independentVL.py (folder VLPromptLearner/)",
    "maple": "muzairkhattak/multimodal-prompt-learning trainers/maple.py (folder MultiModalPromptLearner/)",
    "vpt_deep": "muzairkhattak/multimodal-prompt-learning trainers/vpt.py (folder prompt_learner/, layout maple) "
    "or yuhangzang/UPT trainers/vpt_deep.py (folder model/, layout upt)",
    "upt": "yuhangzang/UPT trainers/unified.py (folder prompt_learner/)",
    "provp": "MCG-NJU/ProVP trainers/provp.py (folder Prompt_learner/)",
    "provp_ref": "MCG-NJU/ProVP trainers/provp.py with OPTIM.USE_REF True (folder Prompt_learner/)",
}
SUPPORTED = tuple(RELEASES)
# The template set (scaleprompt.data.templates) of the fixed-text releases: ProVP's own; UPT's VPT-deep uses UPT's
# zsclip CUSTOM_TEMPLATES, which are CoOp's.
TEMPLATE_SETS: dict[str, TemplateSet] = {"provp": "provp", "provp_ref": "provp", "vpt_deep": "coop"}

PL = "prompt_learner."  # whole-model checkpoints (MaPLe, IVLP) prefix the prompt learner's tensors with this
# Whole-model checkpoints (MaPLe, IVLP, their VPT, UPT's VPT-deep) also hold the frozen CLIP under these names;
# such a tensor is ignored unless its name contains "VPT" (IVLP / VPT keep their prompts inside the towers).
FROZEN_PREFIXES = ("image_encoder.", "text_encoder.", "clip_model.", "zs_clip.")
FROZEN_NAMES = ("logit_scale",)
BUFFERS = ("token_prefix", "token_suffix")  # per-class frozen embeddings the releases' load code drops too


class OfficialCheckpointError(PromptFileError):
    """An official checkpoint cannot be read or converted (the message names the file, key and shapes)."""


# --- weights-only reading ----------------------------------------------------------------------------------------
class PickledRecord:
    """Stands in for an optimizer / lr-scheduler object pickled inside a Dassl checkpoint: its state is kept as
    plain data (``record_state``), none of the class's code runs and nothing is imported."""

    official_name = ""

    def __setstate__(self, state: Any) -> None:
        self.__dict__["record_state"] = state

    def __repr__(self) -> str:
        return f"<pickled {self.official_name}>"


# The classes Dassl's ``build_optimizer`` / ``build_lr_scheduler`` create: the warm-up schedulers' state dicts
# hold their ``successor`` scheduler object, which holds the optimizer object.
RECORD_CLASSES = (
    "torch.optim.sgd.SGD",
    "torch.optim.adam.Adam",
    "torch.optim.adamw.AdamW",
    "torch.optim.rmsprop.RMSprop",
    "torch.optim.lr_scheduler.CosineAnnealingLR",
    "torch.optim.lr_scheduler.StepLR",
    "torch.optim.lr_scheduler.MultiStepLR",
    "dassl.optim.radam.RAdam",
    "dassl.optim.radam.PlainRAdam",
    "dassl.optim.radam.AdamW",
    "dassl.optim.lr_scheduler.ConstantWarmupScheduler",
    "dassl.optim.lr_scheduler.LinearWarmupScheduler",
)


def _plain_dict(*_: Any) -> dict:
    """``collections.defaultdict(dict)`` (an optimizer's ``state``) rebuilt as a plain dict, factory dropped."""
    return {}


def _safe_globals() -> list[Callable[..., Any] | tuple[Callable[..., Any], str]]:
    records = [
        (type(name.rsplit(".", 1)[1], (PickledRecord,), {"official_name": name}), name)
        for name in RECORD_CLASSES
    ]
    return [*records, (_plain_dict, "collections.defaultdict"), (_plain_dict, "builtins.dict")]


@dataclass
class OfficialCheckpoint:
    path: Path
    state: dict[str, Tensor]  # the (prompt) state dict, "module." prefixes removed
    epoch: int | None = None
    val_result: float | None = None


def read_official_checkpoint(path: str | Path) -> OfficialCheckpoint:
    """Read a Dassl checkpoint (or a bare state dict of tensors) weights-only; refuse any other pickled object."""
    path = Path(path)
    if not path.is_file():
        raise OfficialCheckpointError(f"official checkpoint not found: {path}")
    try:
        with torch.serialization.safe_globals(_safe_globals()):
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        text = str(exc)
        found = re.search(r"GLOBAL (\S+)", text) or re.search(r"unrecognized function (\S+)", text)
        if found or "allowlist" in text or "Can only" in text:
            what = f"it would load {found.group(1)}" if found else text.strip().splitlines()[-1]
            raise OfficialCheckpointError(
                f"refusing to load {path}: it holds objects outside tensors, plain types and the optimizer / "
                f"scheduler records of a Dassl checkpoint ({what}); nothing was executed"
            ) from None
        raise OfficialCheckpointError(
            f"cannot read {path} as a torch checkpoint: {text.splitlines()[0]}"
        ) from None
    except (RuntimeError, OSError, EOFError, ValueError, AttributeError, TypeError) as exc:
        raise OfficialCheckpointError(f"cannot read {path} as a torch checkpoint: {exc}") from None
    epoch = val_result = None
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        state, epoch, val_result = obj["state_dict"], obj.get("epoch"), obj.get("val_result")
    elif isinstance(obj, Mapping) and obj and all(isinstance(v, Tensor) for v in obj.values()):
        state = obj  # a bare state dict (e.g. extracted from a checkpoint by hand)
    else:
        keys = sorted(map(str, obj)) if isinstance(obj, Mapping) else type(obj).__name__
        raise OfficialCheckpointError(
            f"{path} is neither a Dassl checkpoint (a dict with 'state_dict') nor a state dict of tensors "
            f"(it holds {keys})"
        )
    bad = sorted(str(k) for k, v in state.items() if not isinstance(v, Tensor))
    if bad:
        raise OfficialCheckpointError(f"{path}: state_dict entries {bad} are not tensors")
    state = {str(k): v for k, v in state.items()}
    if state and all(k.startswith("module.") for k in state):  # saved from an nn.DataParallel
        state = {k[len("module.") :]: v for k, v in state.items()}
    return OfficialCheckpoint(
        path=path,
        state=state,
        epoch=epoch if isinstance(epoch, int) else None,
        val_result=float(val_result) if isinstance(val_result, int | float) else None,
    )


# --- name lookups ------------------------------------------------------------------------------------------------
def _is_buffer(key: str) -> bool:
    return key.rsplit(".", 1)[-1] in BUFFERS


def _is_frozen_backbone(key: str) -> bool:
    return (key.startswith(FROZEN_PREFIXES) or key in FROZEN_NAMES) and "VPT" not in key


class _Source:
    """The official state dict: lookups by official name (with or without ``prompt_learner.``), keeping track of
    what was used, so that anything left over can be reported."""

    def __init__(self, ckpt: OfficialCheckpoint, method: str) -> None:
        self.path, self.state, self.method = ckpt.path, ckpt.state, method
        self.used: set[str] = set()

    def _key(self, name: str) -> str | None:
        return next((k for k in (name, PL + name) if k in self.state), None)

    def has(self, name: str) -> bool:
        return self._key(name) is not None

    def held(self) -> str:
        keys = [k for k in self.state if not _is_buffer(k) and not _is_frozen_backbone(k)]
        shown = ", ".join(f"{k} {list(self.state[k].shape)}" for k in keys[:12])
        more = f", ... ({len(keys)} in all)" if len(keys) > 12 else ""
        return shown + more if keys else "no prompt tensors"

    def error(self, message: str) -> OfficialCheckpointError:
        return OfficialCheckpointError(f"{self.path}: {message}")

    def missing(self, name: str) -> OfficialCheckpointError:
        return self.error(
            f"no official tensor {name!r} for {self.method} (a checkpoint of {RELEASES[self.method]}); "
            f"the file holds: {self.held()}"
        )

    def take(self, name: str) -> tuple[str, Tensor]:
        key = self._key(name)
        if key is None:
            raise self.missing(name)
        self.used.add(key)
        return key, self.state[key].detach()

    def take_numbered(self, pattern: str, start: int) -> list[tuple[str, Tensor]]:
        """The tensors named ``pattern.format(i)`` for i = start, start + 1, ... (a gap names the missing key)."""
        regex = re.compile(
            "(?:" + re.escape(PL) + ")?" + re.escape(pattern).replace(re.escape("{}"), r"(\d+)")
        )
        found: dict[int, str] = {}
        for key in self.state:
            match = regex.fullmatch(key)
            if match:
                found[int(match.group(1))] = key
        expected = range(start, start + len(found))
        if sorted(found) != list(expected):
            gap = next(i for i in range(start, max(found) + 1) if i not in found)
            raise self.error(
                f"official tensor {pattern.format(gap)!r} is missing (found indices {sorted(found)}, expected "
                f"{start}, {start + 1}, ... without gaps)"
            )
        self.used.update(found.values())
        return [(found[i], self.state[found[i]].detach()) for i in expected]

    def leftovers(self) -> tuple[list[str], list[str]]:
        """(unexpected keys, ignored keys: frozen buffers and backbone tensors)."""
        rest = [k for k in self.state if k not in self.used]
        ignored = [k for k in rest if _is_buffer(k) or _is_frozen_backbone(k)]
        return [k for k in rest if k not in ignored], ignored


@dataclass
class _Towers:
    vision_blocks: int
    text_blocks: int
    text: PromptedTextEncoder

    def tokens(self, phrase: str) -> int:
        return int(self.text.tokenize([phrase.replace("_", " ")]).argmax(-1)) - 1


@dataclass
class _Plan:
    """A method's conversion: config fields inferred from the file, our tensor name -> (official name, value),
    and hints for shape errors."""

    config: dict[str, Any] = field(default_factory=dict)
    tensors: dict[str, tuple[str, Tensor]] = field(default_factory=dict)
    hints: dict[str, str] = field(default_factory=dict)

    def put(self, ours: str, official: tuple[str, Tensor]) -> None:
        self.tensors[ours] = official

    def stack(self, ours: str, parts: Sequence[tuple[str, Tensor]], like: Tensor, what: str) -> None:
        """Per-layer official tensors -> one ``[L, N, D]`` tensor (``L`` may be 0)."""
        value = torch.stack([t for _, t in parts]) if parts else like.new_zeros((0, *like.shape))
        self.tensors[ours] = (what, value)


def _layers(parts: Sequence[tuple[str, Tensor]], pattern: str, first: int) -> str:
    """How stacked per-layer tensors are named in the file, e.g. ``prompt_learner.compound_prompts_text.0..7``."""
    if not parts:
        return f"{pattern.format('i')} (none in the file: depth 1)"
    prefix = parts[0][0][: len(parts[0][0]) - len(pattern.format(first))]  # "prompt_learner." or ""
    return f"{prefix}{pattern.format(f'{first}..{first + len(parts) - 1}')} (stacked)"


def _check_dims(src: _Source, name: str, value: Tensor, dims: int, layout: str) -> None:
    if value.dim() != dims:
        raise src.error(f"official tensor {name!r} has shape {list(value.shape)}; expected {layout}")


def _phrase_or_placeholders(towers: _Towers, phrase: str, n: int) -> str:
    """``phrase`` when it has exactly ``n`` tokens (then it and ``n`` placeholder words give the same prompt
    layout), else "" (placeholders)."""
    return phrase if phrase and towers.tokens(phrase) == n else ""


def _ctx_init_hint(args: Mapping[str, Any], n_official: int) -> str:
    phrase = str(args.get("ctx_init") or "").replace("_", " ")
    if not phrase:
        return ""
    words = len(phrase.split(" "))
    return (
        f" (the release counts the WORDS of CTX_INIT: {phrase!r} = {words} word(s), {n_official} vectors in the "
        "file; scaleprompt counts its TOKENS. When they differ, the release's prompt keeps the phrase's remaining "
        "tokens frozen, which scaleprompt's coop / cocoop cannot express. Leave ctx_init unset: the file's "
        "vectors then replace N placeholder words)"
    )


# --- one mapping per method ----------------------------------------------------------------------------------------
def _map_coop(src: _Source, args: Mapping[str, Any], towers: _Towers) -> _Plan:
    # KaiyangZhou/CoOp trainers/coop.py PromptLearner: ctx [N, Dt] (generic) or [C, N, Dt] (CSC)
    plan = _Plan()
    name, ctx = src.take("ctx")
    if ctx.dim() not in (2, 3):
        raise src.error(f"official tensor 'ctx' has shape {list(ctx.shape)}; expected [N, Dt] or [C, N, Dt]")
    plan.config = {"n_ctx": ctx.shape[-2], "class_specific": ctx.dim() == 3, "ctx_init": ""}
    plan.put("ctx", (name, ctx))
    plan.hints["ctx"] = _ctx_init_hint(args, ctx.shape[-2])
    if ctx.dim() == 3:
        plan.hints["ctx"] += (
            f" (a class-specific context has one row per training class: pass the {ctx.shape[0]} training class "
            "names in label order)"
        )
    return plan


def _map_cocoop(src: _Source, args: Mapping[str, Any], towers: _Towers) -> _Plan:
    # KaiyangZhou/CoOp trainers/cocoop.py PromptLearner: ctx [N, Dt]; meta_net = Sequential(OrderedDict(
    # linear1 = Linear(E, E // 16), relu, linear2 = Linear(E // 16, Dt))) -> our meta_net.0 / meta_net.2
    plan = _Plan()
    name, ctx = src.take("ctx")
    _check_dims(src, name, ctx, 2, "[N, Dt]")
    plan.put("ctx", (name, ctx))
    plan.hints["ctx"] = _ctx_init_hint(args, ctx.shape[0])
    for official, ours in (("meta_net.linear1", "meta_net.0"), ("meta_net.linear2", "meta_net.2")):
        for part in ("weight", "bias"):
            plan.put(f"{ours}.{part}", src.take(f"{official}.{part}"))
    hidden, embed = plan.tensors["meta_net.0.weight"][1].shape
    plan.config = {
        "n_ctx": ctx.shape[0],
        "ctx_init": _phrase_or_placeholders(towers, "a photo of a", ctx.shape[0]),
    }
    if 0 < hidden <= embed and embed // (embed // hidden) == hidden:
        plan.config["meta_reduction"] = embed // hidden
    return plan


def _release_ctx_init(n_ctx: int) -> str:
    # MaPLe / IVLP releases: `if ctx_init and n_ctx <= 4` use the phrase, else N placeholder words.
    # ASSUMPTION: the file does not record CTX_INIT; the released configs' "a photo of a" is assumed (pass
    # ctx_init=... if the run used another).
    return "a photo of a" if n_ctx <= 4 else ""


def _map_ivlp(src: _Source, args: Mapping[str, Any], towers: _Towers) -> _Plan:
    # multimodal-prompt-learning trainers/independentVL.py + clip/model.py (ResidualAttentionBlock_IVLP), whole
    # CustomCLIP state dict: text input prompt_learner.ctx [Nt, Dt]; text block i >= 1:
    # text_encoder.transformer.resblocks.{i}.VPT_shallow [Nt, Dt]; vision input image_encoder.VPT [Nv, Dv] (appended,
    # before ln_pre); vision block i >= 1: image_encoder.transformer.resblocks.{i}.VPT_shallow [Nv, Dv]
    plan = _Plan()
    ctx = src.take("ctx")
    _check_dims(src, ctx[0], ctx[1], 2, "[N, Dt]")
    text_pattern = "text_encoder.transformer.resblocks.{}.VPT_shallow"
    vis_pattern = "image_encoder.transformer.resblocks.{}.VPT_shallow"
    text_deep = src.take_numbered(text_pattern, 1)
    if not src.has("image_encoder.VPT"):
        raise src.error(
            "no official tensor 'image_encoder.VPT': scaleprompt's ivlp always prompts the vision tower (the "
            "release's language-only setting, PROMPT_DEPTH_VISION 0, has no equivalent); the file holds: "
            + src.held()
        )
    vis0 = src.take("image_encoder.VPT")
    _check_dims(src, vis0[0], vis0[1], 2, "[N, Dv]")
    vis_deep = src.take_numbered(vis_pattern, 1)
    text_depth, vision_depth = 1 + len(text_deep), 1 + len(vis_deep)
    plan.config = {
        "text_n_ctx": ctx[1].shape[0],
        "vision_n_ctx": vis0[1].shape[0],
        "text_depth": None if text_depth == towers.text_blocks else text_depth,
        "vision_depth": None if vision_depth == towers.vision_blocks else vision_depth,
        "ctx_init": _release_ctx_init(ctx[1].shape[0]),
    }
    plan.put("ctx", ctx)
    plan.stack("deep_text", text_deep, ctx[1], _layers(text_deep, text_pattern, 1))
    plan.stack(
        "visual_prompts",
        [vis0, *vis_deep],
        vis0[1],
        f"image_encoder.VPT + {_layers(vis_deep, vis_pattern, 1)}",
    )
    return plan


def _map_maple(src: _Source, args: Mapping[str, Any], towers: _Towers) -> _Plan:
    # multimodal-prompt-learning trainers/maple.py MultiModalPromptLearner: ctx [N, Dt], proj = Linear(Dt, Dv) (input
    # layer coupling), compound_prompts_text.{i} [N, Dt] and compound_prompt_projections.{i} = Linear(Dt, Dv) for
    # blocks i + 1 = 1 .. J-1
    plan = _Plan()
    ctx = src.take("ctx")
    _check_dims(src, ctx[0], ctx[1], 2, "[N, Dt]")
    plan.put("ctx", ctx)
    plan.put("proj.weight", src.take("proj.weight"))
    plan.put("proj.bias", src.take("proj.bias"))
    text_pattern = "compound_prompts_text.{}"
    deep = src.take_numbered(text_pattern, 0)
    weights = src.take_numbered("compound_prompt_projections.{}.weight", 0)
    biases = src.take_numbered("compound_prompt_projections.{}.bias", 0)
    if not len(deep) == len(weights) == len(biases):
        raise src.error(
            f"{len(deep)} compound_prompts_text but {len(weights)} compound_prompt_projections weights and "
            f"{len(biases)} biases: a MaPLe checkpoint has one of each per deep block"
        )
    plan.stack("deep_text", deep, ctx[1], _layers(deep, text_pattern, 0))
    for i, (weight, bias) in enumerate(zip(weights, biases, strict=True)):
        plan.put(f"deep_proj.{i}.weight", weight)
        plan.put(f"deep_proj.{i}.bias", bias)
    plan.config = {
        "n_ctx": ctx[1].shape[0],
        "prompt_depth": 1 + len(deep),
        "ctx_init": _release_ctx_init(ctx[1].shape[0]),
    }
    return plan


def _map_vpt_deep(src: _Source, args: Mapping[str, Any], towers: _Towers) -> _Plan:
    plan = _Plan()
    if src.has("visual_ctx"):
        # yuhangzang/UPT trainers/vpt_deep.py: visual_ctx [N * L, Dv] over ALL L vision blocks; clip/model.py
        # Transformer.forward_prompt reads it TOKEN-major: prompt.reshape(N, L, D).permute(1, 0, 2), so row t * L + l
        # is token t of block l. Inserted after the class token, after ln_pre.
        # ASSUMPTION: read in a public fork of the release (pedramyamini2023/UPT; the original repository's code was
        # not available to check); the names and the reshape are assumed to be the release's.
        name, ctx = src.take("visual_ctx")
        _check_dims(src, name, ctx, 2, "[N * L, Dv]")
        blocks = towers.vision_blocks
        if ctx.shape[0] % blocks:
            raise src.error(
                f"official tensor 'visual_ctx' has {ctx.shape[0]} rows, not a multiple of this backbone's "
                f"{blocks} vision blocks (UPT's VPT-deep holds N tokens for every block, token-major)"
            )
        n = ctx.shape[0] // blocks
        plan.put(
            "prompts",
            (
                f"{name} [{ctx.shape[0]}, D] token-major -> [{blocks}, {n}, D]",
                ctx.reshape(n, blocks, ctx.shape[1]).transpose(0, 1),
            ),
        )
        plan.config = {"layout": "upt", "n_ctx": n, "depth": None}
    elif src.has("image_encoder.VPT"):
        # multimodal-prompt-learning trainers/vpt.py (IVLP blocks, vision only): image_encoder.VPT [N, Dv] appended
        # before ln_pre, image_encoder.transformer.resblocks.{i}.VPT_shallow [N, Dv] for blocks i = 1 .. depth-1
        first = src.take("image_encoder.VPT")
        _check_dims(src, first[0], first[1], 2, "[N, Dv]")
        pattern = "image_encoder.transformer.resblocks.{}.VPT_shallow"
        deep = src.take_numbered(pattern, 1)
        plan.stack("prompts", [first, *deep], first[1], f"image_encoder.VPT + {_layers(deep, pattern, 1)}")
        depth = 1 + len(deep)
        plan.config = {
            "layout": "maple",
            "n_ctx": first[1].shape[0],
            "depth": None if depth == towers.vision_blocks else depth,
        }
    else:
        raise src.error(
            "neither 'visual_ctx' (UPT's VPT-deep) nor 'image_encoder.VPT' (MaPLe's VPT) is in the file; it holds: "
            + src.held()
        )
    layout = args.get("layout")
    if layout is not None and layout != plan.config["layout"]:
        raise ConfigError(
            f"layout={layout!r}, but {src.path} is a checkpoint of the {plan.config['layout']!r} layout "
            f"({RELEASES['vpt_deep']})"
        )
    return plan


def _map_upt(src: _Source, args: Mapping[str, Any], towers: _Towers) -> _Plan:
    # yuhangzang/UPT trainers/unified.py PromptLearner: uni_ctx [1, 2n, Dt]; self_attn = MultiheadAttention(Dt, 1,
    # dropout 0.1), SEQUENCE-first over a [1, 2n, Dt] input, so each token attends only to itself (our
    # variant="per_token"); norm1 / norm2 LayerNorm(Dt); linear1 / linear2 Linear(Dt, Dt); mlp = Linear(Dt, Dv) for
    # the visual half (inserted after the class token, before ln_pre).
    # ASSUMPTION: read in a public fork of the release (pedramyamini2023/UPT, trainers/unified.py; the original
    # repository's code was not available to check). The release builds its text prompt from CTX_INIT ("a photo of a"
    # in its configs, 4 tokens = N_CTX) or N placeholder words: the same token layout as scaleprompt's placeholders
    # whenever CTX_INIT has N tokens, which the file cannot tell.
    plan = _Plan()
    name, uni = src.take("uni_ctx")
    _check_dims(src, name, uni, 3, "[1, 2n, Dt]")
    if uni.shape[0] != 1:
        raise src.error(
            f"official tensor 'uni_ctx' has shape {list(uni.shape)}: a class-specific unified prompt (the release's "
            "TRAINER.UNI_CSC / CSC settings) has no scaleprompt equivalent; only the shared [1, 2n, Dt] one converts"
        )
    if uni.shape[1] % 2:
        raise src.error(f"official tensor 'uni_ctx' has {uni.shape[1]} tokens: UPT splits an even 2n")
    plan.put("unified", (name, uni))
    for part in ("in_proj_weight", "in_proj_bias", "out_proj.weight", "out_proj.bias"):
        plan.put(f"transform.0.mix.{part}", src.take(f"self_attn.{part}"))
    for module in ("norm1", "norm2", "linear1", "linear2"):
        for part in ("weight", "bias"):
            plan.put(f"transform.0.{module}.{part}", src.take(f"{module}.{part}"))
    plan.put("visual_proj.weight", src.take("mlp.weight"))
    plan.put("visual_proj.bias", src.take("mlp.bias"))
    ff = plan.tensors["transform.0.linear1.weight"][1].shape[0]
    plan.config = {
        "n_ctx": uni.shape[1] // 2,
        "variant": "per_token",  # the release's math; variant=attention (the paper) would compute something else
        "num_layers": 1,
        "num_heads": 1,
        "ff_dim": None if ff == towers.text.width else ff,
        "layerwise": False,
        "depth": None,
    }
    return plan


def _map_provp(src: _Source, args: Mapping[str, Any], towers: _Towers) -> _Plan:
    # MCG-NJU/ProVP trainers/provp.py PromptLearner: prompt_embeddings [L, N, Dv] (12 blocks in the release)
    plan = _Plan()
    name, prompts = src.take("prompt_embeddings")
    _check_dims(src, name, prompts, 3, "[L, N, Dv]")
    plan.put("prompts", (name, prompts))
    depth, n = prompts.shape[0], prompts.shape[1]
    plan.config = {"n_ctx": n, "depth": None if depth == towers.vision_blocks else depth}
    if n <= 4:
        logger.warning(
            "%s: N=%d <= 4: the ProVP release inserts nothing at block 0 for N <= 4 and mixes its prompts into "
            "patch tokens 1..N later; scaleprompt's %s always inserts the prompts, so these prompts will not "
            "compute the release's features (docs/porting.md)",
            src.path,
            n,
            src.method,
        )
    return plan


MAPPERS: dict[str, Callable[[_Source, Mapping[str, Any], _Towers], _Plan]] = {
    "coop": _map_coop,
    "cocoop": _map_cocoop,
    "ivlp": _map_ivlp,
    "maple": _map_maple,
    "vpt_deep": _map_vpt_deep,
    "upt": _map_upt,
    "provp": _map_provp,
    "provp_ref": _map_provp,
}


# --- the conversion ----------------------------------------------------------------------------------------------
@dataclass
class Conversion:
    method: PromptMethod
    mapping: dict[str, str]  # our tensor name -> the official tensor(s) it came from
    ignored: list[str]  # official tensors not converted: frozen buffers and backbone weights
    checkpoint: OfficialCheckpoint

    def provenance(self) -> dict[str, Any]:
        return {
            "file": str(self.checkpoint.path),
            "release": RELEASES[self.method.name],
            "epoch": self.checkpoint.epoch,
            "val_result": self.checkpoint.val_result,
        }


def release_templates(method: str, config: Mapping[str, Any], dataset: str) -> tuple[str, ...] | None:
    """The hand-crafted template the release of a fixed-text ``method`` used on ``dataset`` (None: learned text, or
    a release with a fixed template: MaPLe's VPT always uses "a photo of a {}.")."""
    from scaleprompt.data.datasets import dataset_display_name
    from scaleprompt.data.templates import dataset_template

    if method not in TEMPLATE_SETS or (method == "vpt_deep" and config.get("layout") == "maple"):
        return None
    return (dataset_template(dataset_display_name(dataset), TEMPLATE_SETS[method]),)


def convert_official_checkpoint(
    path: str | Path,
    method: str,
    backbone: Backbone | nn.Module,
    classnames: Sequence[str],
    *,
    dataset: str | None = None,
    options: EncoderOptions | None = None,
    **method_args: Any,
) -> Conversion:
    """Convert an official checkpoint into ``method`` on ``backbone`` for ``classnames`` (see the module docstring).

    ``method_args`` set config fields; fields the file determines (``n_ctx``, depths, layout, ...) are inferred
    from it unless given, and a given value that does not fit the file is an error naming the tensor.
    ``dataset`` (the run's dataset): fixed-text methods (ProVP(-Ref), UPT's VPT-deep) get the template their release
    used on it, unless ``templates`` is given; the prompt file records the templates in use. ``path``: the
    official checkpoint file; ``options``: how the built method's encoders compute
    (:class:`~scaleprompt.encoders.EncoderOptions`; None: the defaults)."""
    method_class(method)  # an unknown method: ConfigError listing the registered ones
    if method not in MAPPERS:
        raise OfficialCheckpointError(
            f"no converter for method {method!r} (nothing to convert for zsclip); supported: {', '.join(SUPPORTED)}"
        )
    checkpoint = read_official_checkpoint(path)
    src = _Source(checkpoint, method)
    backbone = Backbone.of(backbone)
    text = PromptedTextEncoder(backbone.model, backbone.tokenizer)
    towers = _Towers(PromptedVisionEncoder(backbone.model).num_blocks, text.num_blocks, text)
    plan = MAPPERS[method](src, method_args, towers)
    unexpected, ignored = src.leftovers()
    if unexpected:
        more = f", ... ({len(unexpected)} in all)" if len(unexpected) > 8 else ""
        raise src.error(
            f"unexpected official tensors for {method}: "
            + ", ".join(f"{k} {list(src.state[k].shape)}" for k in unexpected[:8])
            + more
            + f" (a {method} checkpoint of {RELEASES[method]} has no such tensors: another method's file?)"
        )
    config = {**plan.config, **method_args}
    if dataset is not None and "templates" not in method_args:
        templates = release_templates(method, config, dataset)
        if templates is not None:
            config["templates"] = templates
    model = build(method, backbone, classnames, options=options, **config)
    _load(model, plan, src)
    model.eval()
    return Conversion(
        method=model,
        mapping={ours: official for ours, (official, _) in plan.tensors.items()},
        ignored=ignored,
        checkpoint=checkpoint,
    )


def _load(model: PromptMethod, plan: _Plan, src: _Source) -> None:
    own = dict(model.named_parameters())
    expected = set(model.prompt_state_dict())
    missing = sorted(expected - set(plan.tensors))
    extra = sorted(set(plan.tensors) - expected)
    if missing or extra:
        raise src.error(
            f"the {model.name} built from these settings ({model.config}) does not match the file: "
            + (f"it needs {missing}, which the file does not provide" if missing else "")
            + ("; " if missing and extra else "")
            + (f"official {[plan.tensors[k][0] for k in extra]} have no place in it" if extra else "")
        )
    for name in sorted(plan.tensors):
        official, value = plan.tensors[name]
        if not value.is_floating_point():
            raise src.error(f"official tensor {official} has dtype {value.dtype}, not a floating point type")
        bad = int((~torch.isfinite(value)).sum())
        if bad:
            raise src.error(
                f"official tensor {official} has {bad} of {value.numel()} values that are not finite"
            )
        if tuple(value.shape) != tuple(own[name].shape):
            raise src.error(
                f"official tensor {official} has shape {list(value.shape)}, {model.name}'s {name} needs "
                f"{list(own[name].shape)} on this backbone with {model.config}" + plan.hints.get(name, "")
            )
    with torch.no_grad():
        for name, (_, value) in plan.tensors.items():
            own[name].copy_(value.to(own[name].dtype))


def convert_official(
    path: str | Path,
    method: str,
    backbone: Backbone | nn.Module,
    classnames: Sequence[str],
    *,
    dataset: str | None = None,
    options: EncoderOptions | None = None,
    **method_args: Any,
) -> PromptMethod:
    """The scaleprompt ``method`` (eval mode) holding the prompts of the official checkpoint ``path``, on
    ``backbone`` for ``classnames`` (the arguments of :func:`convert_official_checkpoint`)."""
    return convert_official_checkpoint(
        path, method, backbone, classnames, dataset=dataset, options=options, **method_args
    ).method


def convert_official_file(
    path: str | Path,
    out: str | Path,
    method: str,
    backbone: Backbone | nn.Module,
    classnames: Sequence[str],
    *,
    dataset: str | None = None,
    options: EncoderOptions | None = None,
    **method_args: Any,
) -> Conversion:
    """Convert the official checkpoint ``path`` (the arguments of :func:`convert_official_checkpoint`) and write
    the prompt file ``out`` (loadable with ``load_prompts``)."""
    done = convert_official_checkpoint(
        path, method, backbone, classnames, dataset=dataset, options=options, **method_args
    )
    out = Path(out)
    try:
        save_prompts(done.method, out, {"converted_from": json.dumps(done.provenance())})
    except OSError as exc:
        raise OutputError(f"cannot write the prompt file {out}: {exc}") from None
    return done


# --- command-line helpers ----------------------------------------------------------------------------------------
def parse_method_args(items: Sequence[str]) -> dict[str, Any]:
    """``key=value`` strings -> config overrides; values are read as YAML (``true``, ``14``, ``null``, ``[a, b]``),
    an empty value is the empty string."""
    import yaml

    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"method argument {item!r} is not key=value")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        out[key.strip()] = value
    return out


def read_classnames(names: str | None = None, names_file: str | Path | None = None) -> list[str]:
    """Class names from ``"a,b,c"`` or a file with one name per line (in the training label order)."""
    if names_file is not None:
        path = Path(names_file)
        if not path.is_file():
            raise ConfigError(f"classnames file not found: {path}")
        found = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    else:
        found = [n.strip() for n in (names or "").split(",") if n.strip()]
    if not found:
        raise ConfigError("no class names given (--classnames a,b,c or --classnames-file FILE)")
    return found
