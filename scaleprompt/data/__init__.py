"""Datasets, protocols, WebDataset shards and the streaming loader."""

from scaleprompt.data.datasets import (
    BENCHMARKS,
    CROSS_DATASET_TARGETS,
    DG_TARGETS,
    DatasetError,
    DatasetSplits,
    Datum,
    get_dataset,
    list_datasets,
    load_dataset,
)
from scaleprompt.data.loader import Batch, DataError, ShardLoader
from scaleprompt.data.protocols import Protocol, apply_protocol, fewshot, harmonic_mean, subsample_classes
from scaleprompt.data.shards import read_manifest, verify_shards, write_shards
from scaleprompt.data.templates import dataset_template

__all__ = [
    "BENCHMARKS",
    "CROSS_DATASET_TARGETS",
    "DG_TARGETS",
    "Batch",
    "DataError",
    "DatasetError",
    "DatasetSplits",
    "Datum",
    "Protocol",
    "ShardLoader",
    "apply_protocol",
    "dataset_template",
    "fewshot",
    "get_dataset",
    "harmonic_mean",
    "list_datasets",
    "load_dataset",
    "read_manifest",
    "subsample_classes",
    "verify_shards",
    "write_shards",
]
