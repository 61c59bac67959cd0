"""The Swatches dataset: class folders of colour swatches under ``<data.root>/swatches`` (``train/``, ``val/``,
``test/`` of ``<class>/*.png``, or the class folders alone: split 50 / 20 / 30 per class).

A plug-in dataset is a :class:`~scaleprompt.data.datasets.DatasetSpec`: a name, a reader ``root -> splits`` and
optionally aliases; scaleprompt registers it (``data.dataset=Swatches``, or ``swatches``).
"""

from __future__ import annotations

from pathlib import Path

from scaleprompt.data.datasets import DatasetSpec, read_image_folder
from scaleprompt.data.layout import DatasetSplits


def read_swatches(root: Path) -> DatasetSplits:
    return read_image_folder(Path(root) / "swatches")


SWATCHES = DatasetSpec("Swatches", read_swatches, aliases=("swatches",))
