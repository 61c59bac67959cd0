"""CLIP image transforms."""

from __future__ import annotations

from collections.abc import Sequence

from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
from torchvision import transforms as T
from torchvision.transforms import InterpolationMode


def clip_transform(
    size: int,
    *,
    train: bool,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    crop_min_scale: float = 0.08,
) -> T.Compose:
    """CLIP's image transform at ``size``. ``train``: RandomResizedCrop(size, scale=(``crop_min_scale``, 1),
    bicubic) -> RandomHorizontalFlip -> normalize (0.08: the papers'); else: Resize(size, bicubic, short side) ->
    CenterCrop(size) -> normalize. ``mean`` / ``std`` default to CLIP's."""
    normalize = T.Normalize(mean or OPENAI_DATASET_MEAN, std or OPENAI_DATASET_STD)
    if train:
        steps = [
            T.RandomResizedCrop(size, scale=(crop_min_scale, 1.0), interpolation=InterpolationMode.BICUBIC),
            T.RandomHorizontalFlip(),
        ]
    else:
        steps = [T.Resize(size, interpolation=InterpolationMode.BICUBIC), T.CenterCrop(size)]
    return T.Compose([*steps, T.ToTensor(), normalize])
