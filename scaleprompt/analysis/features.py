"""Frozen CLIP features for the analyses, computed once through the shard cache and cached on disk.

:func:`frozen_image_features` gives the L2-normalised image features of every image of one split of a dataset
(all classes, no few-shot sampling) under a frozen backbone:

1. the dataset's shards come from THE shard cache (:func:`~scaleprompt.data.cache.ensure_shards`) with the
   protocol of a transfer target (``shots=0``: every image, ``subset="all"``, seed 1) and the split alone, so a
   transfer run's test folder of the same dataset is the same folder;
2. they are read by the engine's evaluation loader (:class:`~scaleprompt.data.loader.ShardLoader`, ``train=False``:
   one exact pass, the test transform at the backbone's image size, mean and std) and encoded by the ONE prompted
   vision encoder with no prompts (:func:`encode_images`: ``clip.encode_image`` to float rounding);
3. the result is cached as ``<cache_dir>/features/<dataset>-<split>-<model>-<key>.safetensors`` (safetensors, no
   pickle). The key (:func:`feature_key`) is a sha256 over everything the numbers depend on: the shard folder
   (its name holds the shard cache's key of the source, listing and protocol) and the split's shard hashes and
   class names from its manifest, the backbone (model name, pretrained tag, the identity of the weights file:
   path, size, mtime, ctime, inode; its :class:`~scaleprompt.backbone.BackboneInfo`: image size, mean / std,
   widths, depths, the seed of a random initialisation), the image size used, the split, and
   :data:`FEATURES_VERSION` (the version of this computation). A second call is a cache hit (logged); any changed
   input is another key, another file (old files are left alone).

Counts are checked against the manifest: as many features as the split's images, and per class as its
``class_counts``. :func:`class_text_embeddings` gives the unit class-name embeddings of the frozen text encoder
(templates averaged, then renormalised, as zero-shot CLIP's ensemble does; bare names: the template ``"{}"``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import tempfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from safetensors import safe_open

from scaleprompt.data.cache import ensure_shards
from scaleprompt.data.datasets import dataset_display_name
from scaleprompt.data.protocols import Protocol
from scaleprompt.data.shards import file_identity, read_manifest
from scaleprompt.engine.config import DataConfig
from scaleprompt.errors import ScalepromptError

if TYPE_CHECKING:
    from torch import Tensor

    from scaleprompt.backbone import Backbone

logger = logging.getLogger(__name__)

FEATURES_VERSION = 1  # bump when the computation of the cached features changes
FEATURES_DIR = "features"
FEATURE_PROTOCOL_SEED = 1  # the seed of a transfer target's protocol at the default train.seed (no sampling)
BARE_TEMPLATE = "{}"
_TEXT_CHUNK = 256  # class prompts encoded this many at a time (ImageNet's 1000 classes)


class AnalysisError(ScalepromptError, ValueError):
    """An analysis cannot run as asked (the message names the dataset, run, method or option at fault)."""


@dataclass(frozen=True)
class FrozenFeatures:
    """The frozen image features of one split of a dataset: ``features`` ``[N, D]`` float32 unit rows, ``labels``
    ``[N]`` int64 (indices into ``classnames``), and what they were computed on (:meth:`describe`)."""

    features: Tensor
    labels: Tensor
    classnames: tuple[str, ...]
    dataset: str  # the display name (as results.json records it)
    spec: str  # the dataset spec as given (registry name, folder:<path>, split file)
    split: str
    model: str
    pretrained: str | None
    cache_key: str
    shards: str  # the shard folder the images were read from
    cache_file: str
    cache_hit: bool = field(default=False, compare=False)

    @property
    def n_images(self) -> int:
        """Images (feature rows)."""
        return int(self.features.shape[0])

    @property
    def n_classes(self) -> int:
        """Classes of the split (the manifest's, with or without images here)."""
        return len(self.classnames)

    def describe(self) -> dict[str, Any]:
        """What the features were computed on (for logs, CSVs and figure titles)."""
        return {
            "dataset": self.dataset,
            "spec": self.spec,
            "split": self.split,
            "n_images": self.n_images,
            "n_classes": self.n_classes,
            "dim": int(self.features.shape[1]),
            "model": self.model,
            "pretrained": self.pretrained,
            "cache_key": self.cache_key,
            "shards": self.shards,
            "cache_file": self.cache_file,
        }


# ----------------------------------------------------------------------------------------------- encoding


def encode_images(encode_fn: Callable[[Tensor], Tensor], loader: Iterable) -> tuple[Tensor, Tensor]:
    """``encode_fn`` over every batch of ``loader`` (batches of ``(images, labels, ...)``) under no_grad:
    ``(features [N, D] float32 unit rows, labels [N] int64)``, on the CPU, in the loader's order. A prompted
    encoder can be passed as well as the frozen one. A loader with ``expected_images`` (an evaluation
    :class:`~scaleprompt.data.loader.ShardLoader`: the manifest's count) must yield exactly that many."""
    import torch  # (import cost: torch; `scaleprompt analyze --help` imports this module: see the package)
    from torch.nn import functional as F

    feats, labels = [], []
    with torch.no_grad():
        for batch in loader:
            images, y = batch[0], batch[1]
            out = encode_fn(images)
            feats.append(F.normalize(out.float(), dim=-1).cpu())
            labels.append(torch.as_tensor(y, dtype=torch.int64).cpu())
    if not feats:
        raise AnalysisError("the loader yielded no images to encode")
    features, all_labels = torch.cat(feats), torch.cat(labels)
    expected = getattr(loader, "expected_images", None)
    if expected is not None and features.shape[0] != expected:
        raise AnalysisError(f"encoded {features.shape[0]} images, the split holds {expected} (its manifest)")
    return features, all_labels


def class_text_embeddings(backbone: Backbone, classnames: Sequence[str], templates: Sequence[str]) -> Tensor:
    """Unit class embeddings ``[C, D]`` (float32, CPU) of the frozen text encoder: each of ``templates`` filled
    with each of ``classnames`` (underscores read as spaces, as the methods do), normalised, averaged over the templates and
    renormalised (zero-shot CLIP's ensemble; one template: its normalised features). Bare names:
    ``templates=["{}"]``. ``backbone``: the frozen CLIP (from ``load_clip``)."""
    import torch  # (import cost: torch, open_clip)
    from torch.nn import functional as F

    from scaleprompt.encoders import PromptedTextEncoder
    from scaleprompt.methods.base import clean_classnames

    if not templates:
        raise AnalysisError("class_text_embeddings needs at least one template")
    bad = [t for t in templates if t.count("{}") != 1]
    if bad:
        raise AnalysisError(f"template {bad[0]!r} must contain exactly one '{{}}' for the class name")
    names = clean_classnames(classnames)
    encoder = PromptedTextEncoder(backbone.model, backbone.tokenizer)
    total = None
    with torch.no_grad():
        for template in templates:
            texts = [template.format(c) for c in names]
            parts = [
                encoder.encode_texts(texts[i : i + _TEXT_CHUNK]) for i in range(0, len(texts), _TEXT_CHUNK)
            ]
            feats = F.normalize(torch.cat(parts).float(), dim=-1)
            total = feats if total is None else total + feats
    assert total is not None
    return F.normalize(total / len(templates), dim=-1).cpu()


# ----------------------------------------------------------------------------------------------- the cache


def weights_identity(model: str, pretrained: str | None) -> dict[str, Any]:
    """What identifies the weights of ``load_clip(model, pretrained)`` (``model``: a model name; ``pretrained``: its
    weights' tag or file, None for a random initialisation) without reading them: a local file (a tag
    registered with the model, or a path) by its resolved path, size, mtime, ctime and inode; an open_clip tag or a
    hub model by its name; a random initialisation by None (its seed is in the backbone info)."""
    from scaleprompt.backbone import model_spec, registered_models  # (import cost: torch, open_clip)

    if pretrained in (None, "", "none"):
        return {"kind": "random"}
    assert pretrained is not None
    path: Path | None = None
    if model in registered_models() and pretrained in model_spec(model).weights:
        path = Path(model_spec(model).weights[pretrained])
    elif Path(pretrained).exists():
        path = Path(pretrained)
    if path is None:
        return {"kind": "tag", "tag": pretrained}
    try:
        identity = list(file_identity(path))
    except OSError:
        identity = None
    return {"kind": "file", "path": str(path.resolve()), "identity": identity}


def feature_key(shards: str | Path, split: str, backbone: Backbone, image_size: int) -> dict[str, Any]:
    """The inputs the cached features of ``split`` of the shard folder ``shards`` under ``backbone`` at
    ``image_size`` depend on, and their sha256 (``["key"]``): see the module docstring."""
    info = backbone.info
    if info is None:
        raise AnalysisError(
            "the backbone has no info (not built by load_clip): its features cannot be cached"
        )
    manifest = read_manifest(shards)
    part = manifest["splits"][split]
    inputs = {
        "version": FEATURES_VERSION,
        "shard_folder": Path(shards).resolve().name,
        "classnames": list(manifest["classnames"]),
        "split": split,
        "split_shards": [f"{s['name']}:{s['count']}:{s['sha256']}" for s in part["shards"]],
        "backbone": asdict(info),
        "weights": weights_identity(info.model_name, info.pretrained),
        "image_size": image_size,
        "transform": "test: resize short side (bicubic), center crop, normalize",
        "dtype": "fp32",
    }
    digest = hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()
    return {**inputs, "key": digest}


def _file_name(dataset: str, split: str, model: str, key: str) -> str:
    def clean(text: str) -> str:
        return re.sub(r"[^A-Za-z0-9._+-]+", "_", text).strip("._")[:48] or "x"

    return f"{clean(dataset)}-{clean(split)}-{clean(model)}-{key[:16]}.safetensors"


def _read_cached(path: Path, key: str) -> tuple[Tensor, Tensor] | None:
    """The cached (features, labels) of ``key`` at ``path``; None (logged) when missing or unreadable."""
    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata() or {}
            features, labels = fh.get_tensor("features"), fh.get_tensor("labels")
    except Exception as exc:  # noqa: BLE001 - any unreadable file is recomputed
        logger.warning(
            "feature cache: %s is unreadable (%s: %s); computing again", path, type(exc).__name__, exc
        )
        return None
    if meta.get("key") != key or features.dim() != 2 or labels.shape != (features.shape[0],):
        logger.warning(
            "feature cache: %s does not hold the features of key %s...; computing again", path, key[:16]
        )
        return None
    return features, labels


def _write_cached(path: Path, features: Tensor, labels: Tensor, key: dict[str, Any]) -> None:
    """Atomically (a temporary file in the same folder, then a rename): a reader never sees half a file."""
    from safetensors.torch import save_file  # (import cost: torch)

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        meta = {
            "key": key["key"],
            "inputs": json.dumps({k: v for k, v in key.items() if k != "key"}, sort_keys=True),
        }
        save_file({"features": features.contiguous(), "labels": labels.contiguous()}, tmp, metadata=meta)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _check_counts(
    features: Tensor, labels: Tensor, part: dict[str, Any], classnames: Sequence[str], where: str
) -> None:
    """As many features as the split's manifest count, labels in range, per class as its ``class_counts``."""
    import torch  # (import cost: torch)

    if features.shape[0] != part["count"]:
        raise AnalysisError(
            f"{where}: {features.shape[0]} features, the manifest's split holds {part['count']} images"
        )
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= len(classnames)):
        raise AnalysisError(f"{where}: labels outside [0, {len(classnames)}) (the manifest's classes)")
    counts = part.get("class_counts")
    if counts is not None and torch.bincount(labels, minlength=len(classnames)).tolist() != list(counts):
        raise AnalysisError(f"{where}: the images per class differ from the manifest's class_counts")


def dataset_shards(
    dataset: str,
    split: str,
    *,
    root: str | Path | None,
    cache_dir: str | Path,
    shard_size: int | None = None,
    min_shards: int | None = None,
) -> Path:
    """The shard-cache folder holding every image of ``split`` of ``dataset`` (all classes, no sampling), written
    if the cache has none (``root``: the datasets' folder; ``cache_dir``: the shard cache); ``shard_size`` /
    ``min_shards`` default to the recipes' (``data.*``)."""
    defaults = DataConfig()
    protocol = Protocol(shots=0, seed=FEATURE_PROTOCOL_SEED, subset="all")
    return ensure_shards(
        dataset,
        root,
        protocol,
        (split,),
        cache_dir,
        shard_size=shard_size or defaults.shard_size,
        min_shards=min_shards or defaults.min_shards,
    )


def frozen_image_features(
    dataset: str,
    backbone: Backbone,
    *,
    split: str = "test",
    root: str | Path | None = None,
    cache_dir: str | Path = "runs/shards",
    image_size: int | None = None,
    batch_size: int = 64,
    num_workers: int = 0,
    device: str | None = None,
    shard_size: int | None = None,
    min_shards: int | None = None,
) -> FrozenFeatures:
    """The frozen, L2-normalised image features of every image of ``split`` of ``dataset`` (a registry name with
    ``root``, ``folder:<path>``, a split file) under ``backbone`` (from ``load_clip``): from the feature cache under
    ``<cache_dir>/features`` when it holds them for exactly these inputs, else computed through the shard cache
    (``cache_dir``) and written there. See the module docstring. ``image_size``: None = the backbone's;
    ``device``: where to encode (None: where the backbone is); ``batch_size``, ``num_workers``: the loader's;
    ``shard_size``, ``min_shards``: the shard cache's (:func:`dataset_shards`)."""
    import torch  # (import cost: torch, open_clip)

    from scaleprompt.data.loader import ShardLoader
    from scaleprompt.encoders import PromptedVisionEncoder

    if split not in ("train", "val", "test"):
        raise AnalysisError(f"split must be train, val or test, got {split!r}")
    info = backbone.info
    if info is None:
        raise AnalysisError("the backbone has no info (not built by load_clip)")
    name = dataset_display_name(dataset)
    shards = dataset_shards(
        dataset, split, root=root, cache_dir=cache_dir, shard_size=shard_size, min_shards=min_shards
    )
    manifest = read_manifest(shards)
    part = manifest["splits"].get(split, {"count": 0})
    if part["count"] == 0:
        raise AnalysisError(f"{name} has no images in its {split!r} split")
    classnames = tuple(manifest["classnames"])
    size = image_size or info.image_size
    key = feature_key(shards, split, backbone, size)
    path = Path(cache_dir) / FEATURES_DIR / _file_name(name, split, info.model_name, key["key"])
    where = f"{name} {split} features ({path})"
    common = dict(
        classnames=classnames,
        dataset=name,
        spec=dataset,
        split=split,
        model=info.model_name,
        pretrained=info.pretrained,
        cache_key=key["key"],
        shards=str(shards),
        cache_file=str(path),
    )
    cached = _read_cached(path, key["key"])
    if cached is not None:
        try:
            _check_counts(*cached, part, classnames, where)
        except AnalysisError as exc:
            logger.warning("feature cache: %s; computing again", exc)
        else:
            logger.info("feature cache: hit %s (%d images of %s/%s)", path, part["count"], name, split)
            return FrozenFeatures(cached[0], cached[1], **common, cache_hit=True)
    logger.info(
        "feature cache: computing %s/%s under %s/%s -> %s",
        name,
        split,
        info.model_name,
        info.pretrained,
        path,
    )
    loader = ShardLoader(
        shards,
        split,
        batch_size=batch_size,
        train=False,
        image_size=size,
        mean=info.mean,
        std=info.std,
        num_workers=num_workers,
        rank=0,
        world_size=1,
    )
    vision = PromptedVisionEncoder(backbone.model)
    target = torch.device(device) if device else next(backbone.model.parameters()).device
    if target != next(backbone.model.parameters()).device:
        backbone.model.to(target)
    features, labels = encode_images(lambda images: vision(images.to(target)), loader)
    _check_counts(features, labels, part, classnames, where)
    _write_cached(path, features, labels, key)
    return FrozenFeatures(features, labels, **common)
