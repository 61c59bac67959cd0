"""``scaleprompt analyze attention PROMPTS IMAGES...``: where the prompt tokens (and the class token) look.

UPT's and ProVP's qualitative figures: for a method with visual prompts, the attention of each prompt token, of
their mean and of the class token to the image patches in one block of the vision tower, averaged over the heads
(``--heads mean``) or per head (``--heads all``), reshaped to the patch grid and drawn over the image as the model
sees it (the test transform: resize, center crop).

The block's input comes from the ONE prompted vision encoder (:attr:`~scaleprompt.encoders.PromptedVisionEncoder.
block_input_hook`: the prompts in place, as the method runs them) and the weights from the block's own attention
module (``nn.MultiheadAttention`` with ``need_weights``): ``softmax(Q K^T / sqrt(d))`` per head, ``Q`` and ``K``
the projections of ``ln_1(x)``. Each full row sums to one over ALL keys (class token, prompt tokens, patches); the
maps are its patch part, so a map sums to the share of attention that went to patches.

Writes ``<out>/<image stem>.attention.png`` per image (panels: image | class token | prompt tokens' mean | the
first ``--tokens`` prompt tokens; colour bars) and ``<out>/attention.safetensors``: per image ``i``, ``{i}.maps``
``[tokens, grid, grid]`` (``[heads, tokens, grid, grid]`` with ``--heads all``; tokens = class token, then the N
prompt tokens) and ``{i}.rows`` ``[tokens, T]`` (``[heads, tokens, T]``): the full rows over all T keys; the
metadata names the images, the method, the block and the key layout."""

from __future__ import annotations

import argparse
import json
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from scaleprompt.analysis.features import AnalysisError
from scaleprompt.plots import _pyplot, _save

if TYPE_CHECKING:
    from torch import Tensor, nn

    from scaleprompt.methods.base import PromptMethod

logger = logging.getLogger(__name__)

DEFAULT_TOKENS = 4  # individual prompt tokens drawn per image


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``scaleprompt analyze attention``, added to ``parser``."""
    parser.add_argument("prompts", help="a prompt file of a method with visual prompts (prompts.safetensors)")
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="image files")
    parser.add_argument(
        "--block",
        type=int,
        default=-1,
        help="vision block, 0-based; negative counts from the end (default -1: last)",
    )
    parser.add_argument(
        "--heads",
        choices=["mean", "all"],
        default="mean",
        help="average the heads (default) or keep each head",
    )
    parser.add_argument(
        "--tokens",
        type=int,
        default=DEFAULT_TOKENS,
        help=f"individual prompt tokens drawn per image (default {DEFAULT_TOKENS}; all are saved)",
    )
    parser.add_argument(
        "--out", help="output folder (default: <prompt file stem>.attention next to the file)"
    )
    parser.add_argument("--device", default="cpu", help="torch device (default: cpu)")


@dataclass(frozen=True)
class AttentionMaps:
    """The attention of one batch in one block. ``rows`` ``[B, H, 1 + N, T]``: the full rows of the class token
    then the N prompt tokens over all T keys; ``maps`` ``[B, H, 1 + N, g, g]``: their patch part on the patch
    grid. ``layout`` says where each key sits in the sequence."""

    rows: Tensor
    maps: Tensor
    prompt_positions: list[int]
    patch_positions: list[int]
    layout: str


def attention_weights(block: nn.Module, x: Tensor) -> Tensor:
    """``[B, H, T, T]``: the attention probabilities of the open_clip vision block ``block`` for its input ``x``
    ``[B, T, D]``
    (the block's own ``nn.MultiheadAttention`` on ``ln_1(x)``, per head)."""
    from torch import nn  # (import cost: torch)

    attn = getattr(block, "attn", None)
    if not isinstance(attn, nn.MultiheadAttention):
        raise AnalysisError(
            f"this vision tower's blocks use {type(attn).__name__}, not nn.MultiheadAttention: no attention weights"
        )
    ln_1: Any = block.ln_1
    h = ln_1(x)
    return attn(h, h, h, need_weights=True, average_attn_weights=False)[1]


def block_attention(method: PromptMethod, images: Tensor, block: int) -> AttentionMaps:
    """The attention maps of ``method``'s prompted vision tower in ``block`` for ``images`` ``[B, 3, H, W]``.
    A method whose image features take no visual prompts is an :class:`AnalysisError`."""
    import torch  # (import cost: torch; and the methods below)

    from scaleprompt.methods.base import FeatureMethod

    vision = method.vision
    seen: dict[str, Any] = {}

    def hook(i: int, x: Tensor, slots: slice) -> None:
        if i == block:
            seen["x"], seen["slots"] = x.detach(), slots

    vision.block_input_hook = hook
    try:
        with torch.no_grad():
            (method.image_features if isinstance(method, FeatureMethod) else method.logits)(images)
            if "x" not in seen:  # (a method that runs no prompted vision forward)
                raise AnalysisError(f"{method.name} did not run its vision tower")
            transformer: Any = vision.visual.transformer
            blocks = transformer.resblocks
            weights = attention_weights(blocks[block], seen["x"]).float()
    finally:
        vision.block_input_hook = None
    x, slots = seen["x"], seen["slots"]
    total = x.shape[1]
    prompts = list(range(total))[slots]
    if not prompts:
        raise AnalysisError(
            f"{method.name} has no visual prompts (its prompts are on the text side): there are no prompt "
            "tokens to draw the attention of"
        )
    patches = [p for p in range(1, total) if p not in set(prompts)]
    grid = math.isqrt(len(patches))
    if grid * grid != len(patches):
        raise AnalysisError(f"{len(patches)} patch tokens do not form a square grid")
    queries = [0, *prompts]
    rows = weights[:, :, queries]  # [B, H, 1 + N, T]
    maps = rows[..., patches].reshape(*rows.shape[:3], grid, grid)  # [B, H, 1 + N, g, g]
    if prompts[0] == 1:
        layout = f"[class token (0), prompt tokens ({1}..{len(prompts)}), patches ({len(prompts) + 1}..{total - 1})]"
    else:
        layout = f"[class token (0), patches (1..{len(patches)}), prompt tokens ({prompts[0]}..{total - 1})]"
    return AttentionMaps(rows, maps, prompts, patches, layout)


def _resolve_block(block: int, blocks: int) -> int:
    """``block`` (negative: from the end) as an index into ``blocks`` blocks; out of range: an error."""
    if not -blocks <= block < blocks:
        raise AnalysisError(
            f"--block {block} is out of range: the vision tower has {blocks} blocks (0..{blocks - 1}, or -1 for the last)"
        )
    return block % blocks


def _display_image(image: Tensor, mean: Sequence[float], std: Sequence[float]) -> Any:
    """The transformed ``[3, H, W]`` image back in [0, 1] (``[H, W, 3]`` numpy), as the model sees it (``mean``,
    ``std``: the normalisation it was transformed with)."""
    import torch  # (import cost: torch)

    m = torch.tensor(mean).view(3, 1, 1)
    s = torch.tensor(std).view(3, 1, 1)
    return (image.cpu() * s + m).clamp(0, 1).permute(1, 2, 0).numpy()


def draw(image: Any, maps: Tensor, out: Path, title: str, n_tokens: int) -> Path:
    """One figure, the PNG file ``out`` (returned) titled ``title``: ``image`` (``[H, W, 3]``), then the class
    token's map, the prompt tokens' mean map and the first ``n_tokens`` prompt tokens' maps (``maps``
    ``[1 + N, g, g]``, heads averaged), each over the image with its colour bar."""
    import torch  # (import cost: torch)
    from torch.nn import functional as F

    plt = _pyplot()
    n_prompts = maps.shape[0] - 1
    panels = [("class token", maps[0]), (f"prompt tokens' mean ({n_prompts})", maps[1:].mean(0))]
    panels += [(f"prompt token {k + 1}", maps[1 + k]) for k in range(min(n_tokens, n_prompts))]
    size = image.shape[:2]
    fig, axes = plt.subplots(1, 1 + len(panels), figsize=(2.9 * (1 + len(panels)), 3.3))
    axes[0].imshow(image)
    axes[0].set_title("image (as the model sees it)", fontsize=8)
    for ax, (name, grid_map) in zip(axes[1:], panels, strict=True):
        up = F.interpolate(grid_map[None, None].float(), size=size, mode="nearest")[0, 0]
        ax.imshow(image)
        shown = ax.imshow(
            up.numpy(), cmap="jet", alpha=0.5, vmin=0.0, vmax=float(torch.clamp(up.max(), min=1e-12))
        )
        ax.set_title(f"{name}\nto patches: {float(grid_map.sum()):.2f} of its attention", fontsize=8)
        cbar = fig.colorbar(shown, ax=ax, fraction=0.046, pad=0.03)
        cbar.ax.tick_params(labelsize=6)
        cbar.set_label("attention weight", fontsize=7)
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(title, fontsize=9)
    return _save(plt, fig, out)


def run(args: argparse.Namespace) -> int:
    """``scaleprompt analyze attention`` with the options ``args`` (see :func:`add_arguments`); the exit code."""
    # (import cost: torch, open_clip)
    from safetensors.torch import save_file

    from scaleprompt.predict import Predictor

    if args.tokens < 0:
        raise AnalysisError(f"--tokens must be >= 0, got {args.tokens}")
    predictor = Predictor(args.prompts, device=args.device)  # (the file verified, its backbone and method)
    method = predictor.method
    block = _resolve_block(args.block, method.vision.num_blocks)
    paths = [Path(p) for p in args.images]
    images = [predictor.load_image(p) for p in paths]  # (an unreadable image: one line naming it)
    out = Path(args.out) if args.out else Path(args.prompts).with_name(f"{Path(args.prompts).stem}.attention")
    info = predictor.info
    tensors, stems = {}, set()
    layout = ""
    for index, (path, image) in enumerate(zip(paths, images, strict=True)):
        found = block_attention(method, image[None].to(args.device), block)
        layout = found.layout
        rows, maps = found.rows[0].cpu(), found.maps[0].cpu()  # [H, 1 + N, T], [H, 1 + N, g, g]
        keep = (rows.mean(0), maps.mean(0)) if args.heads == "mean" else (rows, maps)
        tensors[f"{index}.rows"], tensors[f"{index}.maps"] = (t.contiguous() for t in keep)
        stem = path.stem if path.stem not in stems else f"{path.stem}-{index}"
        stems.add(stem)
        heads = "heads averaged" if args.heads == "mean" else f"mean of {rows.shape[0]} heads (all saved)"
        title = f"{method.name}: attention to patches in block {block} of {method.vision.num_blocks} ({heads}) - {path.name}"
        figure = draw(
            _display_image(image, info.mean, info.std),
            maps.mean(0),
            out / f"{stem}.attention.png",
            title,
            args.tokens,
        )
        logger.info("%s: %s", path, figure)
    n_prompts = len(found.prompt_positions)
    metadata = {
        "method": method.name,
        "prompts": str(Path(args.prompts).resolve()),
        "block": str(block),
        "heads": args.heads,
        "images": json.dumps([str(p) for p in paths]),
        "tokens": json.dumps(["class token", *(f"prompt token {k + 1}" for k in range(n_prompts))]),
        "key_layout": layout,
        "grid": str(found.maps.shape[-1]),
        "backbone": info.model_name,
    }
    out.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out / "attention.safetensors"), metadata=metadata)
    logger.info(
        "attention of %d prompt tokens and the class token in block %d of %s, %d image(s): %s",
        n_prompts,
        block,
        method.name,
        len(paths),
        out / "attention.safetensors",
    )
    return 0
