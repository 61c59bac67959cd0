"""Grouping runs and telling a group's variants apart: which runs are seeds of one configuration.

Runs are grouped by :class:`GroupKey` (setting, method, dataset, shots, backbone, pretrained), and within a group
only runs of the same configuration are averaged over seeds. The run configs (``results.json`` ``config``,
flattened) are compared, ignoring :data:`VARIANT_IGNORED` (the seed, paths, logging, checkpointing, ...); the
fields whose values differ define the variants, each its own row labelled ``provp_ref (depth=2, lr=0.05)``. A run
stopped early by a search scheduler (``stopped_early``) or trained on fewer shots per class than its label says is
its own variant (``...; stopped at epoch 1``), never averaged with finished runs. A group whose runs share one
configuration keeps the plain method label.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from scaleprompt.identity import MAY_CHANGE, flatten
from scaleprompt.report.load import LoadedRun
from scaleprompt.report.schema import RunResult, SelectionResult

logger = logging.getLogger(__name__)

# Run-config fields (flattened ``RunConfig.to_dict()`` keys) that do NOT define the experiment: runs of one group
# that differ only in these are seeds of one configuration and are averaged together. It is
# identity.MAY_CHANGE — output / cache / data paths, logging and TensorBoard, checkpoint frequency and retention,
# evaluation frequency and batch size, extra transfer targets and their root, gradient checkpointing — plus
# ``train.seed`` (what is averaged over), minus :data:`VARIANT_DEFINING_MAY_CHANGE`.
VARIANT_DEFINING_MAY_CHANGE = frozenset(
    {
        "optim.epochs",  # a resume may extend it, but the results.json config holds the final value: what was trained
        "train.max_steps",  # > 0 stops training after that many steps: different numbers
    }
)
VARIANT_IGNORED: frozenset[str] = (MAY_CHANGE - VARIANT_DEFINING_MAY_CHANGE) | {"train.seed"}
# ... except, per selection, the fields that change which epoch it picks (validating every 2 epochs instead of
# every epoch can choose another best_val epoch; it cannot change the last epoch)
SELECTION_DEFINING: dict[str, frozenset[str]] = {
    "last": frozenset(),
    "best_val": frozenset({"eval.every_epochs"}),
}
_ABSENT = "<absent>"  # the comparison key of a field a run's config does not have
_NUMBER = re.compile(r"(-?\d+(?:\.\d+)?(?:e[-+]?\d+)?)")


class GroupKey(NamedTuple):
    """What a table cell is about; the runs of one key are one method's seeds (of each of its variants)."""

    setting: str
    method: str
    dataset: str
    shots: int
    backbone: str
    pretrained: str | None

    @classmethod
    def of(cls, run: RunResult) -> GroupKey:
        """The group of ``run``."""
        return cls(run.setting, run.method, run.dataset, run.shots, run.backbone, run.pretrained)

    def describe(self, variant: str = "") -> str:
        """``"base2new coop (lr=0.05) on OxfordPets (16 shots, ViT-B-16/openai)"`` (``variant``: the row's)."""
        return (
            f"{self.setting} {variant_label(self.method, variant)} on {self.dataset} ({self.shots} shots, "
            f"{self.backbone}/{self.pretrained})"
        )


@dataclass(frozen=True)
class Member:
    """One run of a group: the run, its results in the selection being tabulated, and where it came from."""

    run: RunResult
    result: SelectionResult
    source: str

    @classmethod
    def of(cls, loaded: LoadedRun, selection: str) -> Member | None:
        """``loaded`` in ``selection``; None when the run has no such results (``best_val`` without validation)."""
        result = loaded.result.results.get(selection)
        return None if result is None else cls(loaded.result, result, loaded.source)


def variant_label(method: str, variant: str) -> str:
    """The Method column: ``"provp_ref"``, or ``"provp_ref (depth=2, lr=0.05)"`` for the ``variant``."""
    return f"{method} ({variant})" if variant else method


def natural(label: str) -> tuple[tuple[int, float, str], ...]:
    """Sort key of ``label``: numbers in it compare as numbers (``depth=2`` before ``depth=10``); ``""`` first."""
    return tuple(
        (0, float(part), "") if i % 2 else (1, 0.0, part)
        for i, part in enumerate(_NUMBER.split(label))
        if part
    )


def ignored_fields(selection: str) -> frozenset[str]:
    """The config fields that do not tell variants apart when tabulating ``selection``."""
    return VARIANT_IGNORED - SELECTION_DEFINING.get(selection, frozenset())


def _canon(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def _experiment_config(run: RunResult, ignored: frozenset[str]) -> dict[str, Any]:
    """The run's flattened config without the ignored fields (and without empty sections: ``method.args: {}``)."""
    flat = flatten(dict(run.config)) if isinstance(run.config, Mapping) else {}
    return {k: v for k, v in flat.items() if k not in ignored and v != {}}


def _resolved_args(run: RunResult) -> dict[str, Any] | None:
    """``method.args.*`` with the method's defaults filled in (so ``depth`` given as its default and ``depth`` left
    out are one configuration), or None when the method or its args cannot be resolved here."""
    try:
        # (imported here: the method registry imports torch, which tabulating runs otherwise never needs)
        from scaleprompt.config import to_dict
        from scaleprompt.methods import make_config

        args = run.config["method"].get("args") or {}
        return flatten(to_dict(make_config(run.method, args)), "method.args.")
    except (ImportError, KeyError, TypeError, AttributeError, ValueError):  # ConfigError is a ValueError
        return None


def _with_args(flat: Mapping[str, Any], args: Mapping[str, Any]) -> dict[str, Any]:
    """``flat`` with its ``method.args.*`` replaced by ``args``, in their place (after ``method.name``)."""
    out: dict[str, Any] = {}
    for k, v in flat.items():
        if not k.startswith("method.args."):
            out[k] = v
        if k == "method.name":
            out.update(args)
    return out if "method.name" in flat else {**out, **args}


def _differing(flats: Sequence[Mapping[str, Any]]) -> list[str]:
    """The keys (in config order) whose value — or presence — is not the same in all ``flats``."""
    keys = list(dict.fromkeys(k for flat in flats for k in flat))
    return [k for k in keys if len({_canon(flat[k]) if k in flat else _ABSENT for flat in flats}) > 1]


def _format_value(value: Any, precise: bool) -> str:
    """Compact (floats to 4 significant digits); ``precise``: the JSON text (every digit, strings quoted)."""
    if precise:
        return _canon(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, int | str):
        return str(value)
    if value is None:
        return "null"
    return json.dumps(value, separators=(",", ":"), default=str)


def _stopped_at(run: RunResult) -> str:
    """``"stopped at epoch k"`` for a search trial stopped early by its scheduler, ``""`` for a finished run.
    (``stopped_early`` is optional in results.json: absent or null = finished.)"""
    stopped = run.stopped_early
    if not stopped:
        return ""
    epoch = stopped.get("epoch") if isinstance(stopped, Mapping) else None
    return f"stopped at epoch {epoch}" if epoch is not None else "stopped early"


def _fewer_shots(run: RunResult) -> str:
    """``"10-12 of 16 shots per class"`` for a run that trained on fewer images per class than its ``shots`` say
    (``data.allow_fewer_shots``: results.json's ``data.train_shots_per_class``), ``""`` otherwise."""
    per = run.data.get("train_shots_per_class") if isinstance(run.data, Mapping) else None
    shots = run.shots
    if not isinstance(per, Mapping) or shots <= 0:
        return ""
    low, high = per.get("min"), per.get("max")
    if not isinstance(low, int) or low >= shots:
        return ""
    return f"{low}{f'-{high}' if isinstance(high, int) and high != low else ''} of {shots} shots per class"


def _variant_labels(
    keys: Sequence[str], values: Sequence[Mapping[str, Any]], stops: Sequence[str], precise: bool
) -> list[str]:
    names = {}
    for k in keys:  # the last component, or the whole key when two differing keys share their last component
        last = k.rsplit(".", 1)[-1]
        names[k] = last if sum(1 for o in keys if o.rsplit(".", 1)[-1] == last) == 1 else k
    labels = []
    for flat, stop in zip(values, stops, strict=True):
        shown = ", ".join(
            f"{names[k]}={_format_value(flat[k], precise) if k in flat else 'unset'}" for k in keys
        )
        labels.append("; ".join(part for part in (shown, stop) if part))
    return labels


def split_variants(
    members: Sequence[Member], selection: str, key: GroupKey | None = None
) -> dict[str, list[Member]]:
    """The ``members`` (the runs of one group) by variant label (``""``: all runs share one configuration).

    The runs' flattened configs are compared without the :func:`ignored_fields` of ``selection``; the fields whose
    values (or presence) differ define the variants (``method.args`` compared with the method's defaults filled in
    when it can be resolved). ``stopped_early`` is part of the variant. Labels: ``key=value`` per differing field
    (the key's last component, the whole key when two differing keys share it), then ``stopped at epoch k``.
    ``key``: the group, named in the log line that lists its variants (None: not logged)."""
    ignored = ignored_fields(selection)
    flats = [_experiment_config(m.run, ignored) for m in members]
    differing = _differing(flats)
    if any(k.startswith("method.args.") for k in differing):
        for i, m in enumerate(members):
            resolved = _resolved_args(m.run)
            if resolved is not None:
                flats[i] = _with_args(flats[i], resolved)
        differing = _differing(flats)
    # a run stopped early, or trained on fewer shots than its label, is a variant of its own
    stops = ["; ".join(p for p in (_stopped_at(m.run), _fewer_shots(m.run)) if p) for m in members]
    labels = _variant_labels(differing, flats, stops, precise=False)
    distinct = {
        (tuple(_canon(f.get(k)) if k in f else _ABSENT for k in differing), s)
        for f, s in zip(flats, stops, strict=True)
    }
    if len(set(labels)) < len(distinct):  # e.g. values that differ only past 4 significant digits
        labels = _variant_labels(differing, flats, stops, precise=True)
    out: dict[str, list[Member]] = {}
    for label, m in zip(labels, members, strict=True):
        out.setdefault(label, []).append(m)
    if len(out) > 1 and key is not None:
        differ = ", ".join([*differing, *(["stopped_early"] if any(stops) else [])])
        logger.info("%s: %d variants (differing in %s)", key.describe(), len(out), differ)
    return out
