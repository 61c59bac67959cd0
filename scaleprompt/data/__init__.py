"""Datasets, protocols, WebDataset shards and the streaming loader.

Names are imported lazily, so that shard-writer worker processes (which only need PIL) do not import torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "scaleprompt.data.datasets": [
        "BENCHMARKS",
        "CROSS_DATASET_TARGETS",
        "DG_TARGETS",
        "dataset_display_name",
        "get_dataset",
        "list_datasets",
        "load_dataset",
        "register_dataset",
    ],
    "scaleprompt.data.layout": ["DatasetError", "DatasetSplits", "Datum"],
    "scaleprompt.data.cache": ["ensure_shards"],
    "scaleprompt.data.loader": ["Batch", "DataError", "ShardLoader"],
    "scaleprompt.data.protocols": [
        "Protocol",
        "apply_protocol",
        "fewshot",
        "harmonic_mean",
        "subsample_classes",
    ],
    "scaleprompt.data.shards": ["read_manifest", "verify_shards", "write_shards"],
    "scaleprompt.data.templates": ["dataset_template"],
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'scaleprompt.data' has no attribute {name!r}")
    return getattr(importlib.import_module(_WHERE[name]), name)
