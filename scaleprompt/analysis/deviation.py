"""``scaleprompt analyze deviation PROMPTS``: how far a prompt file's image features drift from frozen CLIP's.

ProVP's deviation analysis: prompted image features drift away from the frozen CLIP distribution, and ProVP-Ref's
re-formation loss keeps them close. For the test images of the file's dataset (base and novel classes separately in
base-to-novel), per set:

* ``cosine_mean`` ± ``cosine_std`` (and min): the cosine between the prompted and the frozen feature of the SAME
  image (1.0 exactly when the two are the same vector);
* ``reformation_loss``: ProVP-Ref's ``CE((f_p @ f_c^T) / tau, arange(B))`` (:func:`scaleprompt.losses.
  reformation_loss`, ``tau`` the file's, else 1.0) over batches of ``eval.batch_size`` images taken in the order
  of the split's shards, averaged over the images; ``reformation_loss_no_drift`` is its value for the frozen
  features themselves (the floor: the loss is not 0 when nothing drifts);
* ``class_mean_shift``: the mean over classes of ``||mean_c(f_p) - mean_c(f_c)||`` of the unit features, and
  ``class_mean_cosine`` the mean cosine between the two class means.

The frozen features come from the feature cache (:func:`~scaleprompt.analysis.features.frozen_image_features`:
every image of the split, all classes, through the shard cache); the prompted ones from the same shard folder, in
the same order, through the same encode loop. Base / novel are Dassl's split of that set: the first ``ceil(C/2)``
labels, then the rest (the images of ``eval.setting=base2new``'s base and novel test sets).

The t-SNE figure (``deviation_tsne.png``; ProVP's script): per panel (base, novel; or the test set), the joint
set of prompted and frozen L2-normalised features embedded by ``sklearn.manifold.TSNE(n_components=2,
perplexity=min(--perplexity, points - 1), random_state=10)`` (sklearn's default init); ``--max-points`` keeps that
many images per panel, drawn with a seeded generator (the same images for both feature kinds).

A method whose image tower takes no prompts (CoOp, CoCoOp, zero-shot CLIP) does not move the image features:
the prompted features ARE the frozen ones (cosine 1.0, said in the log and ``text_only`` in the JSON). Visual
prompts are inserted as extra tokens (every visual method here), so even zero prompts change the features: they are
keys of every attention and take a share of its softmax.
"""

from __future__ import annotations

import argparse
import logging
import math
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from scaleprompt.analysis.features import AnalysisError, encode_images, frozen_image_features
from scaleprompt.data.datasets import dataset_display_name
from scaleprompt.plots import _pyplot, _save

if TYPE_CHECKING:
    from torch import Tensor

    from scaleprompt.methods.base import PromptMethod

logger = logging.getLogger(__name__)

TSNE_SEED = 10  # ProVP's script: TSNE(random_state=10)
DEFAULT_PERPLEXITY = 200.0  # ProVP's script


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``scaleprompt analyze deviation``, added to ``parser``."""
    parser.add_argument("prompts", help="a prompt file (prompts.safetensors)")
    parser.add_argument(
        "--dataset", help="registered name, folder:<path> or split file (default: the file's run config's)"
    )
    parser.add_argument("--root", help="folder holding the datasets (default: the run config's data.root)")
    parser.add_argument(
        "--setting",
        choices=["base2new", "fewshot"],
        help="base and novel panels, or one test set (default: the run's)",
    )
    parser.add_argument(
        "--split", default="test", choices=["train", "val", "test"], help="split (default: test)"
    )
    parser.add_argument(
        "--tsne", action=argparse.BooleanOptionalAction, default=True, help="draw the t-SNE figure"
    )
    parser.add_argument(
        "--perplexity",
        type=float,
        default=DEFAULT_PERPLEXITY,
        help=f"t-SNE perplexity, capped at points - 1 (default {DEFAULT_PERPLEXITY:g}, ProVP's)",
    )
    parser.add_argument(
        "--max-points", type=int, help="t-SNE: at most this many images per panel (seeded draw; default: all)"
    )
    parser.add_argument(
        "--out", help="output folder (default: <prompt file stem>.deviation next to the file)"
    )
    parser.add_argument(
        "--cache-dir", help="shard and feature cache (default: the run config's data.cache_dir)"
    )


# ------------------------------------------------------------------------------------------------ the numbers


def same_image_cosine(prompted: Tensor, frozen: Tensor) -> Tensor:
    """``[N]`` cosine of each row pair of ``prompted`` and ``frozen`` (unit rows); exactly 1.0 where the two rows
    are the same vector."""
    import torch  # (import cost: torch)

    cos = (prompted.double() * frozen.double()).sum(-1).clamp(-1.0, 1.0)
    return torch.where((prompted == frozen).all(-1), torch.ones_like(cos), cos)


def batched_reformation_loss(prompted: Tensor, frozen: Tensor, tau: float, batch_size: int) -> float:
    """ProVP-Ref's re-formation loss (temperature ``tau``) of ``prompted`` against ``frozen`` over consecutive
    batches of ``batch_size`` rows, averaged over the rows."""
    from scaleprompt.losses import reformation_loss  # (import cost: torch)

    total = 0.0
    for lo in range(0, prompted.shape[0], batch_size):
        p, f = prompted[lo : lo + batch_size], frozen[lo : lo + batch_size]
        total += float(reformation_loss(p, f, tau)) * p.shape[0]
    return total / max(1, prompted.shape[0])


def deviation_stats(
    prompted: Tensor, frozen: Tensor, labels: Tensor, tau: float, batch_size: int
) -> dict[str, Any]:
    """The numbers of one set (see the module docstring); ``prompted`` / ``frozen`` ``[N, E]`` unit rows,
    ``labels`` ``[N]``; ``tau``, ``batch_size``: the re-formation loss's (:func:`batched_reformation_loss`)."""
    import torch  # (import cost: torch)
    from torch.nn import functional as F

    cos = same_image_cosine(prompted, frozen)
    shifts, cosines = [], []
    for c in torch.unique(labels).tolist():
        mp, mf = prompted[labels == c].double().mean(0), frozen[labels == c].double().mean(0)
        shifts.append(float((mp - mf).norm()))
        cosines.append(1.0 if torch.equal(mp, mf) else float(F.cosine_similarity(mp, mf, dim=0)))
    return {
        "n_images": int(prompted.shape[0]),
        "n_classes": len(shifts),
        "cosine_mean": float(cos.mean()),
        "cosine_std": float(cos.std(unbiased=False)),
        "cosine_min": float(cos.min()),
        "reformation_loss": batched_reformation_loss(prompted, frozen, tau, batch_size),
        "reformation_loss_no_drift": batched_reformation_loss(frozen, frozen, tau, batch_size),
        "class_mean_shift": sum(shifts) / len(shifts),
        "class_mean_cosine": sum(cosines) / len(cosines),
    }


def uses_visual_prompts(method: PromptMethod, image: Tensor) -> bool:
    """Whether ``method``'s image path inserts prompt tokens into the vision tower (one forward of ``image``)."""
    import torch  # (import cost: torch)

    seen = []
    method.vision.block_input_hook = lambda i, x, slots: seen.append(slots.stop > slots.start)
    try:
        with torch.no_grad():
            image_encoder(method)(image)
    finally:
        method.vision.block_input_hook = None
    return any(seen)


def image_encoder(method: PromptMethod) -> Callable[[Tensor], Tensor]:
    """The function giving ``method``'s image features ``[B, E]`` (CoCoOp's: frozen CLIP's, which its meta-net
    reads)."""
    from scaleprompt.methods.base import FeatureMethod  # (import cost: torch, open_clip)

    return method.image_features if isinstance(method, FeatureMethod) else method.frozen_image_features


# ------------------------------------------------------------------------------------------------ the figure


def tsne_2d(prompted: Tensor, frozen: Tensor, perplexity: float) -> tuple[Any, float]:
    """The 2-D t-SNE of the joint set ``[prompted; frozen]`` (``[N, E]`` each, unit rows) at ``perplexity`` (at most 2N - 1):
    ``([2N, 2] array, perplexity used)``."""
    from sklearn.manifold import TSNE  # (import cost: sklearn, 4 s)

    points = np.concatenate([prompted.numpy(), frozen.numpy()]).astype(np.float64)
    used = float(min(perplexity, points.shape[0] - 1))
    return TSNE(n_components=2, perplexity=used, random_state=TSNE_SEED).fit_transform(points), used


def draw_tsne(panels: list[dict[str, Any]], out: Path, title: str) -> Path:
    """The PNG file ``out`` (returned), titled ``title``: one panel per set of ``panels`` (``xy``: its t-SNE
    points, the ``n`` prompted ones first; ``title``), its prompted and frozen points."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 5.0), squeeze=False)
    for ax, panel in zip(axes[0], panels, strict=True):
        xy, n = panel["xy"], panel["n"]
        ax.scatter(xy[n:, 0], xy[n:, 1], s=9, marker="o", c="tab:blue", alpha=0.55, label="frozen CLIP")
        ax.scatter(xy[:n, 0], xy[:n, 1], s=11, marker="^", c="tab:orange", alpha=0.65, label="prompted")
        ax.set_title(panel["title"], fontsize=9)
        ax.set_xlabel("t-SNE 1")
        ax.set_ylabel("t-SNE 2")
        ax.legend(fontsize=8, loc="best")
    fig.suptitle(title, fontsize=10)
    return _save(plt, fig, out)


# ------------------------------------------------------------------------------------------------ the command


def _config(file: Any, args: argparse.Namespace) -> Any:
    """The run config of the analysis: :func:`~scaleprompt.engine.eval_only.evaluation_config` of the file (its run's
    config.json when it sits in one, else the defaults) with the flags."""
    from scaleprompt.engine.eval_only import evaluation_config  # (import cost: the engine, 10 s)

    overrides = [
        f"{key}={value}"
        for key, value in (
            ("data.dataset", args.dataset),
            ("data.root", args.root),
            ("eval.setting", args.setting),
            ("data.cache_dir", args.cache_dir),
        )
        if value is not None
    ]
    return evaluation_config(file, None, overrides)


def run(args: argparse.Namespace) -> int:
    """``scaleprompt analyze deviation`` with the options ``args`` (see :func:`add_arguments`); the exit code."""
    # (import cost: torch, open_clip, the engine)
    import torch

    from scaleprompt.backbone import load_clip
    from scaleprompt.data.loader import ShardLoader
    from scaleprompt.engine.checkpoint import atomic_json
    from scaleprompt.engine.eval_only import RUN_CONFIG
    from scaleprompt.methods.io import load_prompts, open_prompt_file

    if args.perplexity <= 0:
        raise AnalysisError(f"--perplexity must be > 0, got {args.perplexity:g}")
    if args.max_points is not None and args.max_points < 2:
        raise AnalysisError(f"--max-points must be >= 2, got {args.max_points}")
    file = open_prompt_file(args.prompts)  # (verified: checksum, finite values)
    cfg = _config(file, args)
    setting = "base2new" if cfg.eval.setting == "base2new" else "fewshot"
    saved = file.header["backbone"]
    backbone = load_clip(
        cfg.model.name,
        cfg.model.pretrained,
        cache_dir=cfg.model.cache_dir,
        init_seed=saved.get("init_seed") or 0,
    )
    info = backbone.info
    assert info is not None  # (load_clip's backbones have it)
    method = load_prompts(file, backbone).eval()
    image_size = cfg.data.image_size or info.image_size
    frozen = frozen_image_features(
        cfg.data.dataset,
        backbone,
        split=args.split,
        root=cfg.data.root,
        cache_dir=cfg.data.cache_dir,
        image_size=image_size,
        batch_size=cfg.eval.batch_size,
        shard_size=cfg.data.shard_size,
        min_shards=cfg.data.min_shards,
    )

    def loader() -> ShardLoader:  # (the frozen features' folder, order and transform)
        return ShardLoader(
            frozen.shards,
            args.split,
            batch_size=cfg.eval.batch_size,
            train=False,
            image_size=image_size,
            mean=info.mean,
            std=info.std,
            num_workers=0,
            rank=0,
            world_size=1,
        )

    first = next(iter(loader()))[0]
    text_only = not uses_visual_prompts(method, first[:1])
    tau = float(getattr(method.config, "tau", 1.0))
    if text_only:
        logger.info(
            "%s puts no prompts into the image tower: its image features are frozen CLIP's (cosine 1.0)",
            method.name,
        )
        prompted = frozen.features
    else:
        with torch.no_grad():
            check = torch.nn.functional.normalize(method.vision(first).float(), dim=-1)
        if not torch.allclose(check, frozen.features[: check.shape[0]], atol=1e-4):
            raise AnalysisError(
                f"the cached frozen features {frozen.cache_file} are not in the shard folder's "
                "order (computed with DataLoader workers?): delete the file and run again"
            )
        prompted, labels = encode_images(image_encoder(method), loader())
        if not torch.equal(labels, frozen.labels):
            raise AnalysisError(f"{frozen.shards}: the prompted pass read the images in another order")

    sets: dict[str, Tensor] = {"test": torch.ones_like(frozen.labels, dtype=torch.bool)}
    if setting == "base2new":
        m = math.ceil(len(frozen.classnames) / 2)
        sets = {"base": frozen.labels < m, "novel": frozen.labels >= m}
    run_cfg = file.path.parent / RUN_CONFIG
    seed = cfg.train.seed if run_cfg.is_file() else None
    name = dataset_display_name(cfg.data.dataset)
    stats: dict[str, Any] = {}
    for key, rows in sets.items():
        stats[key] = deviation_stats(
            prompted[rows], frozen.features[rows], frozen.labels[rows], tau, cfg.eval.batch_size
        )
    out = Path(args.out) if args.out else file.path.with_name(f"{file.path.stem}.deviation")
    result: dict[str, Any] = {
        "prompts": str(file.path.resolve()),
        "sha256": file.sha256,
        "method": method.name,
        "seed": seed,
        "dataset": name,
        "split": args.split,
        "setting": setting,
        "backbone": info.model_name,
        "pretrained": info.pretrained,
        "text_only": text_only,
        "tau": tau,
        "batch_size": cfg.eval.batch_size,
        "batches": f"consecutive batches of {cfg.eval.batch_size} images in the order of the split's shards",
        "frozen_features": frozen.describe(),
        "sets": stats,
    }
    header = f"{'set':<8}{'images':>8}{'cos mean':>10}{'cos std':>9}{'ref loss':>10}{'(no drift)':>11}{'class shift':>12}"
    lines = [header] + [
        f"{k:<8}{s['n_images']:>8}{s['cosine_mean']:>10.4f}{s['cosine_std']:>9.4f}{s['reformation_loss']:>10.4f}"
        f"{s['reformation_loss_no_drift']:>11.4f}{s['class_mean_shift']:>12.4f}"
        for k, s in stats.items()
    ]
    logger.info(
        "deviation of %s (%s) from frozen %s on %s/%s, tau %g:\n%s",
        file.path,
        method.name,
        info.model_name,
        name,
        args.split,
        tau,
        "\n".join(lines),
    )
    if args.tsne:
        gen = torch.Generator().manual_seed(TSNE_SEED)
        panels: list[dict[str, Any]] = []
        tsne: dict[str, Any] = {}
        for key, rows in sets.items():
            index = torch.nonzero(rows).flatten()
            if args.max_points is not None and index.numel() > args.max_points:
                index = index[torch.randperm(index.numel(), generator=gen)[: args.max_points]].sort().values
                logger.info(
                    "t-SNE %s: %d of %d images (seeded draw, --max-points)",
                    key,
                    args.max_points,
                    int(rows.sum()),
                )
            xy, used = tsne_2d(prompted[index], frozen.features[index], args.perplexity)
            n = int(index.numel())
            label = {"base": "base classes", "novel": "novel classes"}.get(key, "all classes")
            panels.append(
                {"xy": xy, "n": n, "title": f"{label}: {n} images, cosine {stats[key]['cosine_mean']:.3f}"}
            )
            tsne[key] = {"images": n, "of": int(rows.sum()), "perplexity": used}
        seed_text = f", seed {seed}" if seed is not None else ""
        title = (
            f"{method.name}{seed_text}: prompted vs frozen image features (t-SNE) - {name} {args.split} - "
            f"{info.model_name} ({info.pretrained or 'random init'})"
        )
        figure = draw_tsne(panels, out / "deviation_tsne.png", title)
        result["tsne"] = {
            "file": str(figure),
            "random_state": TSNE_SEED,
            "init": "sklearn default",
            "features": "L2-normalised, prompted and frozen embedded jointly per panel",
            "panels": tsne,
        }
        logger.info("t-SNE figure: %s", figure)
    out.mkdir(parents=True, exist_ok=True)
    atomic_json(out / "deviation.json", result)
    logger.info("deviation: %s", out / "deviation.json")
    return 0
