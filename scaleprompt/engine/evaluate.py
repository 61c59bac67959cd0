"""Evaluation: top-1 and mean per-class accuracy reduced across ranks, and the :class:`Evaluator` of a setting's test
sets (base / novel / HM, transfer targets)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from scaleprompt.data.shards import DataError, read_manifest
from scaleprompt.engine.distributed import all_reduce_max, all_reduce_sum

if TYPE_CHECKING:
    from scaleprompt.engine.model import PromptedModel
    from scaleprompt.engine.run import EvalSet, EvalSetting


def class_counts(logits: Tensor, labels: Tensor, num_classes: int) -> tuple[Tensor, Tensor]:
    """Per-class (correct, total) counts of one batch (``logits`` against ``labels``): ``[num_classes]`` each
    (int64), where ``logits`` are (``labels`` are moved there from wherever the loader left them: on a GPU the
    counts stay on it, no host sync per batch; integer sums, so the order of the adds changes nothing)."""
    labels = labels.to(logits.device, non_blocking=True)
    hit = (logits.argmax(dim=-1) == labels).long()
    correct = torch.zeros(num_classes, dtype=torch.long, device=logits.device).index_add_(0, labels, hit)
    total = torch.bincount(labels, minlength=num_classes)
    return correct, total


def accuracy_from_counts(correct: Tensor, total: Tensor) -> dict[str, float]:
    """Top-1 over all images and the mean of per-class accuracies (classes with images), in percent, from the
    per-class ``correct`` and ``total`` counts."""
    seen = total > 0
    top1 = 100.0 * correct.sum().item() / max(1, total.sum().item())
    per_class = 100.0 * (correct[seen].double() / total[seen].double()).mean().item() if seen.any() else 0.0
    return {"top1": top1, "mean_per_class": per_class, "images": int(total.sum().item())}


def in_lockstep(batches: Iterable, device) -> Iterator[tuple[Tensor, Tensor] | Tensor]:
    """``batches`` with every rank taking the same number of turns: a rank whose share of the evaluation set is
    exhausted while another rank still has batches gets a discarded stand-in (zeros of the others' image shape,
    one image, on ``device``). Under ZeRO-3 each forward gathers partitioned weights collectively, so ranks with different batch
    counts (shards split per rank: 50 test shards over 8 ranks) would wait for each other forever. One small
    all-reduce per turn; yields a real batch, or a stand-in image tensor to run and discard."""
    iterator = iter(batches)
    while True:
        batch = next(iterator, None)
        shape = batch[0].shape[1:] if batch is not None else ()
        mine = torch.tensor([batch is not None, *shape, *[0] * (3 - len(shape))], dtype=torch.long)
        anyone = all_reduce_max(mine.to(device)).cpu()
        if batch is not None:
            yield batch
        elif anyone[0]:
            yield torch.zeros(1, *anyone[1:].tolist())
        else:
            return


@torch.no_grad()
def evaluate(
    logits_fn: Callable[[Tensor], Tensor],
    batches: Iterable,
    num_classes: int,
    device,
    expected_images: int | None = None,
    lockstep: bool = False,
) -> dict[str, float]:
    """Accuracy of ``logits_fn`` over ``batches`` of (images, labels, ...) of ``num_classes`` classes (images moved
    to ``device``); counts are summed over ranks, so
    every rank returns the accuracy over the whole (rank-split) evaluation set. The result's ``images`` is the
    number of images evaluated over all ranks; it must equal ``expected_images`` (default: the loader's
    ``expected_images``, i.e. the manifest count of an eval :class:`~scaleprompt.data.loader.ShardLoader`), else
    :class:`~scaleprompt.data.manifest.DataError` (on every rank: the check follows the all-reduce).
    ``lockstep``: every rank runs the same number of forwards (:func:`in_lockstep`; needed under ZeRO-3)."""
    if expected_images is None:
        expected_images = getattr(batches, "expected_images", None)
    correct = torch.zeros(num_classes, dtype=torch.long, device=device)
    total = torch.zeros(num_classes, dtype=torch.long, device=device)
    for batch in in_lockstep(batches, device) if lockstep else batches:
        if isinstance(batch, Tensor):  # a stand-in: this rank's share is done, the others' is not
            logits_fn(batch.to(device))
            continue
        images, labels = batch[0].to(device, non_blocking=True), batch[1]  # (pinned on a GPU machine)
        c, t = class_counts(logits_fn(images).float(), labels, num_classes)  # (where the logits are)
        correct += c.to(device)
        total += t.to(device)
    counts = all_reduce_sum(torch.stack([correct, total])).cpu()  # (the one host read of the pass)
    result = accuracy_from_counts(counts[0], counts[1])
    if expected_images is not None and result["images"] != expected_images:
        source = getattr(getattr(batches, "src", None), "shard_dir", None)
        raise DataError(
            f"evaluation read {result['images']} images over all ranks, the split holds {expected_images}"
            + (f" (manifest of {source})" if source else "")
            + ": shards are missing samples or were changed"
        )
    return result


class Evaluator:
    """Tests prompts on an evaluation setting: each of its sets with its own classes and templates (for the
    methods that take them), then the training classes again; metrics combined as the setting says.

    ``setting``: the sets; ``loader(shards, split)`` makes the evaluation loader of one split (exact pass, test
    transform); ``device``: where the images go."""

    def __init__(self, setting: EvalSetting, loader: Callable[[str, str], Iterable], device) -> None:
        self.setting, self.loader, self.device = setting, loader, device

    def split(self, model: PromptedModel, shards: str, split: str) -> dict[str, float]:
        """Accuracy of ``model`` on ``split`` of the shard folder ``shards`` ({} if the folder has no such split)."""
        manifest = read_manifest(shards)
        if split not in manifest["splits"] or manifest["splits"][split]["count"] == 0:
            return {}
        module = model.module
        module.eval()
        return evaluate(
            module,
            self.loader(shards, split),
            len(manifest["classnames"]),
            self.device,
            lockstep=model.zero_stage == 3 and model.dist.world_size > 1,
        )

    @contextlib.contextmanager
    def on_classes(self, model: PromptedModel, test_set: EvalSet) -> Iterator[None]:
        """``model`` classifies ``test_set``'s classes, then the training classes again (under ZeRO-3 the token
        embedding is gathered for the class prompts' rebuild, not the whole backbone)."""
        setting, method = self.setting, model.method
        if test_set.classnames == setting.classnames and test_set.templates == setting.templates:
            yield
            return
        with model.gathered(class_prompts=True):
            method.set_classnames(test_set.classnames, test_set.templates)
        try:
            yield
        finally:
            with model.gathered(class_prompts=True):
                method.set_classnames(setting.classnames, setting.templates)

    def test_all(self, model: PromptedModel) -> dict[str, Any]:
        """The setting's test metrics of ``model`` as it is now."""
        metrics = {}
        for test_set in self.setting.test_sets:
            with self.on_classes(model, test_set):
                metrics[test_set.name] = self.split(model, test_set.shards, "test")
        return self.setting.combine(metrics)
