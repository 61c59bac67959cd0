"""The papers' published averages, as data with their sources (compared with scaleprompt's measured averages
in :mod:`scaleprompt.report.compare`).

The table is package data, ``scaleprompt/report/published.json`` (format ``scaleprompt.published/1``)::

    {"format": "scaleprompt.published/1", "about": "...",
     "dataset_sets": {"coop11": ["ImageNet", "Caltech101", ...]},
     "entries": [{"method": "IVLP", "scaleprompt_method": "ivlp", "variant": "5 epochs",
                  "source_label": "Independent V-L Prompting", "setting": "base2new", "backbone": "ViT-B-16",
                  "pretrained": "openai", "shots": 16, "datasets": "coop11", "metric": "top1", "epochs": 5,
                  "base": 82.15, "novel": 74.07, "hm": 77.90, "source": "MaPLe README, Model Zoo ...",
                  "url": "https://github.com/...", "verified": true, "note": ""}, ...]}

One entry = one published average: ``base2new`` has ``base`` / ``novel`` / ``hm``, ``fewshot`` has ``accuracy`` (%).
``scaleprompt_method`` is the scaleprompt method it is compared with (``null``: a method scaleprompt does not have,
e.g. KgCoOp: a reference line that matches no measured cell). ``verified``: the number was checked digit for digit
against the text of ``source``; ``false`` (a secondary quote) needs a ``note`` saying so. :func:`load_published`
validates the file and raises :class:`PublishedError` (one line naming the file, the entry and the field): every
number finite and in [0, 100], ``hm`` = 2·B·N/(B+N) of ``base`` / ``novel`` to :data:`HM_TOLERANCE` (the papers
round to 2 decimals), a non-empty source on every entry, no two entries with the same (method, variant, setting,
backbone, pretrained, shots, source), no unknown field.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, TypeGuard

from scaleprompt.data.datasets import BENCHMARKS, DG_TARGETS
from scaleprompt.data.protocols import harmonic_mean
from scaleprompt.report.aggregate import METHOD_ORDER
from scaleprompt.report.schema import METRICS, ResultsError

FORMAT = "scaleprompt.published/1"
PACKAGED = "published.json"  # in this package (scaleprompt/report/)
HM_TOLERANCE = 0.02  # published hm vs 2BN/(B+N) of the published (2-decimal) base / novel
VALUES: dict[str, tuple[str, ...]] = {"base2new": ("base", "novel", "hm"), "fewshot": ("accuracy",)}
VALUE_LABELS = {"base": "Base", "novel": "Novel", "hm": "HM", "accuracy": "Accuracy"}
KNOWN_DATASETS = (*BENCHMARKS, *DG_TARGETS)
# scaleprompt methods a published entry may name (aggregate.METHOD_ORDER: the registered methods, papers' order)
KNOWN_METHODS: tuple[str, ...] = METHOD_ORDER
_REQUIRED: dict[str, tuple[type, ...]] = {
    "method": (str,),
    "scaleprompt_method": (str, type(None)),
    "variant": (str,),
    "setting": (str,),
    "backbone": (str,),
    "pretrained": (str,),
    "shots": (int,),
    "datasets": (str, list),
    "metric": (str,),
    "source": (str,),
    "verified": (bool,),
}
_OPTIONAL: dict[str, tuple[type, ...]] = {
    "source_label": (str,),
    "epochs": (int, type(None)),
    "url": (str,),
    "note": (str,),
}


class PublishedError(ResultsError):
    """The published table is not valid. The message names the file, the entry and the field."""


@dataclass(frozen=True)
class Published:
    """One published average: ``values`` = ``{"base", "novel", "hm"}`` (base2new) or ``{"accuracy"}`` (fewshot),
    in %, over ``datasets`` (the set named ``dataset_set``), as ``source`` printed it."""

    method: str
    scaleprompt_method: str | None
    variant: str
    setting: str
    backbone: str
    pretrained: str
    shots: int
    dataset_set: str
    datasets: tuple[str, ...]
    metric: str
    values: Mapping[str, float]
    source: str
    verified: bool
    source_label: str = ""
    epochs: int | None = None
    url: str = ""
    note: str = ""

    @property
    def label(self) -> str:
        """``"IVLP (5 epochs)"``; ``"MaPLe"`` without a variant."""
        return f"{self.method} ({self.variant})" if self.variant else self.method

    @property
    def key(self) -> tuple[str, str, str, str, str, int, str]:
        """What must be unique in a table: (method, variant, setting, backbone, pretrained, shots, source)."""
        return (
            self.method,
            self.variant,
            self.setting,
            self.backbone,
            self.pretrained,
            self.shots,
            self.source,
        )


@dataclass(frozen=True)
class PublishedTable:
    """The validated published table: ``path`` = the file read, ``about`` = its description."""

    path: str
    about: str
    entries: tuple[Published, ...]

    def for_method(self, method: str) -> list[Published]:
        """The entries compared with scaleprompt method ``method``."""
        return [e for e in self.entries if e.scaleprompt_method == method]


# ----------------------------------------------------------------------------------------------- loading


def packaged_path() -> Path:
    """The packaged table (``scaleprompt/report/published.json``)."""
    return Path(str(resources.files("scaleprompt.report").joinpath(PACKAGED)))


def _is_number(x: Any) -> TypeGuard[float]:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)


def _type_names(types: tuple[type, ...]) -> str:
    names = {str: "a string", int: "an integer", bool: "true or false", list: "a list", type(None): "null"}
    return " or ".join(names.get(t, t.__name__) for t in types)


def _dataset_sets(data: Mapping[str, Any], where: str) -> dict[str, tuple[str, ...]]:
    sets = data.get("dataset_sets", {})
    if not isinstance(sets, Mapping):
        raise PublishedError(f"{where}: 'dataset_sets' must be an object {{name: [datasets]}}, got {sets!r}")
    out = {}
    for name, datasets in sets.items():
        out[name] = _datasets(datasets, f"{where}: dataset_sets.{name}")
    return out


def _datasets(value: Any, where: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not value or not all(isinstance(d, str) for d in value):
        raise PublishedError(f"{where} must be a non-empty list of dataset names, got {value!r}")
    unknown = [d for d in value if d not in KNOWN_DATASETS]
    if unknown:
        raise PublishedError(
            f"{where}: unknown dataset {unknown[0]!r} (the published averages are over the benchmark datasets: "
            f"{', '.join(KNOWN_DATASETS)})"
        )
    repeated = sorted({d for d in value if value.count(d) > 1})
    if repeated:
        raise PublishedError(f"{where}: {repeated[0]!r} is listed twice")
    return tuple(value)


def _entry(item: Any, index: int, sets: Mapping[str, tuple[str, ...]], where: str) -> Published:
    if not isinstance(item, Mapping):
        raise PublishedError(f"{where}: entry {index} must be an object, got {item!r}")
    name = item.get("method")
    at = f"{where}: entry {index}" + (f" ({name})" if isinstance(name, str) and name else "")
    setting = item.get("setting")
    if setting not in VALUES:
        raise PublishedError(f"{at}: 'setting' must be one of {list(VALUES)}, got {setting!r}")
    allowed = {**_REQUIRED, **_OPTIONAL, **dict.fromkeys(VALUES[setting], (float,))}
    unknown = [k for k in item if k not in allowed]
    if unknown:
        raise PublishedError(
            f"{at}: unknown field {unknown[0]!r} (a {setting} entry has: {', '.join(allowed)})"
        )
    for key, types in {**_REQUIRED, **_OPTIONAL}.items():
        if key not in item:
            if key in _REQUIRED:
                raise PublishedError(f"{at}: missing {key!r}")
            continue
        value = item[key]
        # bool is an int in Python: an integer field must not take true / false
        if not isinstance(value, types) or (bool not in types and isinstance(value, bool)):
            raise PublishedError(f"{at}: {key!r} must be {_type_names(types)}, got {value!r}")
    for key in ("method", "source", "backbone", "pretrained"):
        if not item[key].strip():
            raise PublishedError(f"{at}: {key!r} is empty (every published number needs its {key})")
    if item["scaleprompt_method"] is not None and item["scaleprompt_method"] not in KNOWN_METHODS:
        raise PublishedError(
            f"{at}: 'scaleprompt_method' {item['scaleprompt_method']!r} is not a scaleprompt method "
            f"({', '.join(KNOWN_METHODS)}; null for a method scaleprompt does not have)"
        )
    if item["shots"] <= 0:
        raise PublishedError(f"{at}: 'shots' must be a positive integer, got {item['shots']!r}")
    if item["metric"] not in METRICS:
        raise PublishedError(f"{at}: 'metric' must be one of {list(METRICS)}, got {item['metric']!r}")
    if not item["verified"] and not str(item.get("note", "")).strip():
        raise PublishedError(
            f"{at}: 'verified' is false: the 'note' must say what the number was not checked against"
        )
    datasets = item["datasets"]
    if isinstance(datasets, str):
        if datasets not in sets:
            raise PublishedError(
                f"{at}: 'datasets' names {datasets!r}, which is not in 'dataset_sets' ({', '.join(sets) or 'none'})"
            )
        dataset_set, names = datasets, sets[datasets]
    else:
        names = _datasets(datasets, f"{at}: 'datasets'")
        dataset_set = f"{len(names)} datasets"
    values = {}
    for key in VALUES[setting]:
        x = item.get(key)
        if not _is_number(x) or not 0 <= x <= 100:
            raise PublishedError(f"{at}: {key!r} must be a percentage in [0, 100], got {x!r}")
        values[key] = float(x)
    if setting == "base2new":
        expected = harmonic_mean(values["base"], values["novel"])
        if abs(values["hm"] - expected) > HM_TOLERANCE:
            raise PublishedError(
                f"{at}: 'hm' {values['hm']:.2f} is not 2·B·N/(B+N) = {expected:.2f} of its base "
                f"{values['base']:.2f} and novel {values['novel']:.2f} (tolerance {HM_TOLERANCE})"
            )
    return Published(
        method=item["method"],
        scaleprompt_method=item["scaleprompt_method"],
        variant=item["variant"],
        setting=setting,
        backbone=item["backbone"],
        pretrained=item["pretrained"],
        shots=item["shots"],
        dataset_set=dataset_set,
        datasets=names,
        metric=item["metric"],
        values=values,
        source=item["source"],
        verified=item["verified"],
        source_label=item.get("source_label", ""),
        epochs=item.get("epochs"),
        url=item.get("url", ""),
        note=item.get("note", ""),
    )


def parse_published(data: Any, source: str | Path) -> PublishedTable:
    """Validate a published table already read from JSON (``source``: the file, for the messages)."""
    where = str(source)
    if not isinstance(data, Mapping):
        raise PublishedError(f"{where}: the published table must be a JSON object, got {type(data).__name__}")
    if data.get("format") != FORMAT:
        raise PublishedError(f"{where}: 'format' must be {FORMAT!r}, got {data.get('format')!r}")
    unknown = [k for k in data if k not in ("format", "about", "dataset_sets", "entries")]
    if unknown:
        raise PublishedError(f"{where}: unknown field {unknown[0]!r} (format, about, dataset_sets, entries)")
    sets = _dataset_sets(data, where)
    items = data.get("entries")
    if not isinstance(items, list) or not items:
        raise PublishedError(f"{where}: 'entries' must be a non-empty list, got {items!r}")
    entries: list[Published] = []
    seen: dict[tuple[Any, ...], int] = {}
    for i, item in enumerate(items):
        entry = _entry(item, i, sets, where)
        if entry.key in seen:
            raise PublishedError(
                f"{where}: entry {i} ({entry.label}) repeats entry {seen[entry.key]}: the same method, variant, "
                f"setting, backbone, shots and source ({entry.source!r})"
            )
        seen[entry.key] = i
        entries.append(entry)
    about = data.get("about", "")
    return PublishedTable(where, about if isinstance(about, str) else "", tuple(entries))


def load_published(path: str | Path | None = None) -> PublishedTable:
    """Read and validate a published table (default: the packaged one). A file that cannot be read, is not JSON or
    breaks a rule raises :class:`PublishedError` naming the file."""
    file = packaged_path() if path is None else Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise PublishedError(f"{file}: cannot read the published table ({exc})") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise PublishedError(f"{file}: not valid JSON ({exc})") from None
    return parse_published(data, file)
