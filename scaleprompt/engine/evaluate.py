"""Evaluation: top-1 and mean per-class accuracy, reduced across ranks; base / novel / HM."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import Tensor

from scaleprompt.data.shards import DataError
from scaleprompt.engine.distributed import all_reduce_sum


def class_counts(logits: Tensor, labels: Tensor, num_classes: int) -> tuple[Tensor, Tensor]:
    """Per-class (correct, total) counts of one batch: ``[C]`` each (int64)."""
    hit = (logits.argmax(dim=-1) == labels).long()
    correct = torch.zeros(num_classes, dtype=torch.long).index_add_(0, labels.cpu(), hit.cpu())
    total = torch.bincount(labels.cpu(), minlength=num_classes)
    return correct, total


def accuracy_from_counts(correct: Tensor, total: Tensor) -> dict[str, float]:
    """Top-1 over all images and the mean of per-class accuracies (classes with images), in percent."""
    seen = total > 0
    top1 = 100.0 * correct.sum().item() / max(1, total.sum().item())
    per_class = 100.0 * (correct[seen].double() / total[seen].double()).mean().item() if seen.any() else 0.0
    return {"top1": top1, "mean_per_class": per_class, "images": int(total.sum().item())}


@torch.no_grad()
def evaluate(
    logits_fn: Callable[[Tensor], Tensor],
    batches: Iterable,
    num_classes: int,
    device,
    expected_images: int | None = None,
) -> dict[str, float]:
    """Accuracy of ``logits_fn`` over ``batches`` of (images, labels, ...); counts are summed over ranks, so
    every rank returns the accuracy over the whole (rank-split) evaluation set. The result's ``images`` is the
    number of images evaluated over all ranks; it must equal ``expected_images`` (default: the loader's
    ``expected_images``, i.e. the manifest count of an eval :class:`~scaleprompt.data.loader.ShardLoader`), else
    :class:`~scaleprompt.data.shards.DataError` (on every rank: the check follows the all-reduce)."""
    if expected_images is None:
        expected_images = getattr(batches, "expected_images", None)
    correct = torch.zeros(num_classes, dtype=torch.long)
    total = torch.zeros(num_classes, dtype=torch.long)
    for batch in batches:
        images, labels = batch[0].to(device), batch[1]
        c, t = class_counts(logits_fn(images).float(), labels, num_classes)
        correct += c
        total += t
    counts = all_reduce_sum(torch.stack([correct, total]).to(device)).cpu()
    result = accuracy_from_counts(counts[0], counts[1])
    if expected_images is not None and result["images"] != expected_images:
        source = getattr(getattr(batches, "src", None), "shard_dir", None)
        raise DataError(
            f"evaluation read {result['images']} images over all ranks, the split holds {expected_images}"
            + (f" (manifest of {source})" if source else "")
            + ": shards are missing samples or were changed"
        )
    return result
