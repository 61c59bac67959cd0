"""UPT's two statistics of a dataset (:func:`intra_class_variance`, :func:`inter_class_variance`: see
:mod:`scaleprompt.analysis.variance`), computed on the frozen features of every image of a split
(:func:`dataset_statistics`), and the least-squares line the gains are fitted with (:func:`fit_line`)."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from scaleprompt.analysis.features import (
    BARE_TEMPLATE,
    AnalysisError,
    class_text_embeddings,
    frozen_image_features,
)
from scaleprompt.data.datasets import dataset_display_name
from scaleprompt.data.templates import TemplateSet, dataset_template

if TYPE_CHECKING:
    from scaleprompt.backbone import Backbone

STATISTICS = ("intra_visual_variance", "inter_text_variance")


def _array(values: Any) -> np.ndarray:
    """``values`` (a tensor or an array-like) as a float64 array."""
    if hasattr(values, "detach"):
        values = values.detach().cpu().double().numpy()
    return np.asarray(values, dtype=np.float64)


def intra_class_variance(features: Any, labels: Any) -> float:
    """Mean over the classes present in ``labels`` of the mean squared distance of the class's features to their
    class mean, ``mean_c (1/n_c) sum_i ||x_i - mu_c||^2`` (population convention: 1/n_c, so a class of one image
    contributes 0). ``features`` ``[N, D]`` are assumed unit rows (then each class term is ``1 - ||mu_c||^2``);
    they are not renormalised here. Tensors or arrays."""
    x = _array(features)
    y = np.asarray(labels.detach().cpu().numpy() if hasattr(labels, "detach") else labels)
    if x.ndim != 2 or y.shape != (x.shape[0],) or x.shape[0] == 0:
        raise AnalysisError(
            f"intra_class_variance needs features [N, D] and labels [N], got {x.shape} and {y.shape}"
        )
    per_class = []
    for c in np.unique(y):
        xc = x[y == c]
        per_class.append(float(((xc - xc.mean(axis=0)) ** 2).sum(axis=1).mean()))
    return float(np.mean(per_class))


def inter_class_variance(embeddings: Any) -> float:
    """Mean over classes of the squared distance of each class embedding (the rows of ``embeddings`` ``[C, D]``,
    a tensor or an array) to their mean,
    ``(1/C) sum_c ||w_c - w_bar||^2`` (population convention; ``1 - ||w_bar||^2`` for unit rows)."""
    w = _array(embeddings)
    if w.ndim != 2 or w.shape[0] == 0:
        raise AnalysisError(f"inter_class_variance needs embeddings [C, D], got {w.shape}")
    return float(((w - w.mean(axis=0)) ** 2).sum(axis=1).mean())


def fit_line(x: Sequence[float], y: Sequence[float]) -> tuple[float, float, float]:
    """Least-squares line ``y = slope * x + intercept`` and Pearson's r (nan when ``y`` is constant). Needs at
    least 2 points and ``x`` not constant."""
    if len(x) != len(y):
        raise AnalysisError(f"fit_line: {len(x)} x values for {len(y)} y values")
    if len(x) < 2:
        raise AnalysisError(f"fit_line needs at least 2 points, got {len(x)}")
    mx, my = statistics.fmean(x), statistics.fmean(y)
    sxx = sum((a - mx) ** 2 for a in x)
    syy = sum((b - my) ** 2 for b in y)
    sxy = sum((a - mx) * (b - my) for a, b in zip(x, y, strict=True))
    if sxx == 0:
        raise AnalysisError(f"fit_line: every x is {x[0]}: no slope can be fitted")
    slope = sxy / sxx
    r = sxy / math.sqrt(sxx * syy) if syy > 0 else math.nan
    return slope, my - slope * mx, r


@dataclass(frozen=True)
class DatasetStatistics:
    """UPT's two statistics (and the bare-name text statistic) of one dataset split under one backbone."""

    dataset: str
    split: str
    n_images: int
    n_classes: int
    model: str
    pretrained: str | None
    intra_visual_variance: float
    inter_text_variance: float
    inter_text_variance_bare: float
    template: str
    cache_key: str
    spec: str = field(default="", compare=False)

    def row(self) -> dict[str, Any]:
        """Its row of ``variance.csv`` (the statistics written with 8 significant digits)."""
        out = asdict(self)
        out.pop("spec")
        out["pretrained"] = self.pretrained or ""
        for k in ("intra_visual_variance", "inter_text_variance", "inter_text_variance_bare"):
            out[k] = f"{out[k]:.8g}"
        return out


def dataset_statistics(
    dataset: str,
    backbone: Backbone,
    *,
    split: str = "test",
    root: str | Path | None = None,
    cache_dir: str | Path = "runs/shards",
    template_set: TemplateSet = "coop",
    batch_size: int = 64,
    num_workers: int = 0,
    device: str | None = None,
) -> DatasetStatistics:
    """Both statistics of ``dataset`` (a registry name with ``root``, ``folder:<path>``, a split file) on every
    image of ``split`` under ``backbone``; the text statistic with the dataset's hand-crafted template of
    ``template_set`` (the engine's zero-shot classifier) and with bare class names. ``cache_dir``: the shard cache
    (the features are cached under ``<cache_dir>/features``); ``batch_size``, ``num_workers``: the loader's;
    ``device``: where to encode (None: where the backbone is)."""
    feats = frozen_image_features(
        dataset,
        backbone,
        split=split,
        root=root,
        cache_dir=cache_dir,
        batch_size=batch_size,
        num_workers=num_workers,
        device=device,
    )
    template = dataset_template(dataset_display_name(dataset), template_set)
    text = class_text_embeddings(backbone, feats.classnames, [template])
    bare = class_text_embeddings(backbone, feats.classnames, [BARE_TEMPLATE])
    return DatasetStatistics(
        dataset=feats.dataset,
        split=split,
        n_images=feats.n_images,
        n_classes=feats.n_classes,
        model=feats.model,
        pretrained=feats.pretrained,
        intra_visual_variance=intra_class_variance(feats.features, feats.labels),
        inter_text_variance=inter_class_variance(text),
        inter_text_variance_bare=inter_class_variance(bare),
        template=template,
        cache_key=feats.cache_key,
        spec=dataset,
    )
