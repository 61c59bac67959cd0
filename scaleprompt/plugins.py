"""Plug-ins: methods and datasets from other installed packages, found through Python entry points.

A package adds a method or a dataset without forking scaleprompt by naming it in its own metadata::

    # the plug-in's pyproject.toml
    [project.entry-points."scaleprompt.methods"]
    feature_shift = "my_package.methods:FeatureShift"   # a PromptMethod subclass (registered under its .name)

    [project.entry-points."scaleprompt.datasets"]
    my_photos = "my_package.data:MY_PHOTOS"             # a scaleprompt.data.datasets.DatasetSpec

Once installed (``pip install``), every process that looks a method or a dataset up sees it: the command line,
every rank of a deepspeed / torchrun launch, every Ray trial, the Python API. The registries
(:mod:`scaleprompt.methods.registry`, :mod:`scaleprompt.data.datasets`) load their group at their first lookup,
once per process, and register what they find exactly as an extension's own ``register_method`` /
``register_dataset`` call would. A plug-in that cannot be loaded is reported in one warning naming the entry point
and its package, and again in the error of a lookup that does not find a name; the other plug-ins and the
built-in methods and datasets work on.

This module only finds and loads entry points; it registers nothing itself (and imports no registry).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points
from typing import Any

logger = logging.getLogger(__name__)

METHODS_GROUP = "scaleprompt.methods"
DATASETS_GROUP = "scaleprompt.datasets"


@dataclass(frozen=True)
class Plugin:
    """One entry point of a group: its name, ``module:object`` value, the distribution that declares it, and the
    object it names (None when loading failed: ``error`` says why)."""

    name: str
    value: str
    package: str
    obj: Any = None
    error: str | None = None

    def where(self) -> str:
        """``name = value (package)``, for messages."""
        return f"{self.name} = {self.value} ({self.package})"


def load_group(group: str) -> list[Plugin]:
    """Every entry point of ``group`` in the installed distributions, each loaded (an import error, a missing
    object: recorded in the plug-in's ``error`` and logged as a warning, not raised)."""
    plugins = []
    for point in sorted(entry_points(group=group), key=lambda p: (p.name, p.value)):
        package = _package(point)
        try:
            obj = point.load()
        except Exception as exc:  # noqa: BLE001 - a broken plug-in is reported, the others load
            plugin = Plugin(point.name, point.value, package, error=f"{type(exc).__name__}: {exc}")
            logger.warning("plug-in %s could not be loaded: %s", plugin.where(), plugin.error)
        else:
            plugin = Plugin(point.name, point.value, package, obj)
        plugins.append(plugin)
    return plugins


def failed(plugin: Plugin, why: str) -> Plugin:
    """``plugin`` marked as failed for ``why`` (logged as a warning)."""
    logger.warning("plug-in %s not registered: %s", plugin.where(), why)
    return Plugin(plugin.name, plugin.value, plugin.package, error=why)


def _package(point: EntryPoint) -> str:
    dist = getattr(point, "dist", None)
    return f"{dist.name} {dist.version}" if dist is not None else "an unnamed distribution"
