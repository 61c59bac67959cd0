"""The setting and the method of a run: from a :class:`RunConfig` to its data and its method, with no training
logic (:func:`~scaleprompt.engine.assembly.assemble` puts a run together from these).

* :func:`cached_shards` is THE shard-cache function (training data, novel classes, transfer targets, the search):
  rank 0 finds or writes the folder (keyed by source + listing + protocol, see :mod:`scaleprompt.data.cache`) and
  every rank gets its path.
* :func:`build_setting` turns ``eval.setting`` into an evaluation setting: the training shards plus the test sets
  the prompts are judged on, each with its own class names and the dataset's hand-crafted template(s), and how the
  per-set accuracies combine (:class:`FewShot`: test; :class:`BaseToNovel`: base, novel, HM; :class:`Transfer`:
  source test + every target).
* :func:`new_method` builds the method for the setting's training classes (:func:`build_method` also checks its
  class prompts). The template rule is the method's
  (:class:`~scaleprompt.methods.base.FixedTextMethod`): a fixed-text method whose config leaves ``templates``
  unset takes each dataset's template (the training dataset's, then each transfer target's); a recipe's
  ``templates`` or a method that fixes its own (VPT-deep's MaPLe layout) is used on every dataset.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

from scaleprompt.backbone import Backbone, BackboneInfo
from scaleprompt.config import ConfigError
from scaleprompt.data.cache import ensure_shards
from scaleprompt.data.datasets import dataset_display_name
from scaleprompt.data.loader import ShardLoader
from scaleprompt.data.protocols import Protocol, harmonic_mean
from scaleprompt.data.remote import is_remote_folder
from scaleprompt.data.shards import check_shards, read_manifest
from scaleprompt.data.templates import dataset_template
from scaleprompt.encoders import EncoderOptions
from scaleprompt.engine.config import RunConfig
from scaleprompt.engine.distributed import DistInfo, run_on_main
from scaleprompt.methods import build
from scaleprompt.methods.base import PromptMethod
from scaleprompt.methods.prompts import report_class_prompt_problems

Metrics = dict[str, float]

logger = logging.getLogger(__name__)


def cached_shards(
    cfg: RunConfig, dataset: str, root: str | None, protocol: Protocol, splits: tuple[str, ...]
) -> str:
    """The shard folder of ``dataset`` (its source under ``root``; None: the dataset's default) after
    ``protocol``, with ``splits`` (written by rank 0 into the cache of the run ``cfg`` if it has none)."""

    def build_folder() -> str:
        folder = ensure_shards(
            dataset,
            root,
            protocol,
            splits,
            cfg.data.cache_dir,
            shard_size=cfg.data.shard_size,
            min_shards=cfg.data.min_shards,
            allow_fewer_shots=cfg.data.allow_fewer_shots,
        )
        return str(folder)

    return run_on_main(build_folder)


def dataset_templates(cfg: RunConfig, dataset: str) -> tuple[str, ...]:
    """The hand-crafted template of ``dataset`` in the template set of the recipe ``cfg``."""
    return (dataset_template(dataset_display_name(dataset), cfg.data.template_set),)


@dataclass(frozen=True)
class EvalSet:
    """One set the prompts are tested on: a shard folder's test split, its classes and its template(s)."""

    name: str  # "test", "base", "novel", or a transfer target's display name
    shards: str
    classnames: tuple[str, ...]
    templates: tuple[str, ...]


@dataclass(frozen=True)
class EvalSetting:
    """The shards a run trains and validates on, the sets it is tested on, and how their metrics combine."""

    kind: ClassVar[str]
    train: str  # shard folder with the train / val / test splits of the training classes
    classnames: tuple[str, ...]
    templates: tuple[str, ...]  # the training dataset's template(s)
    test_sets: tuple[EvalSet, ...]

    def combine(self, metrics: Mapping[str, Metrics]) -> dict[str, Any]:
        """The setting's metrics from ``metrics``, each test set's by its name."""
        raise NotImplementedError

    @property
    def folders(self) -> dict[str, str]:
        """Every shard folder of the setting by role (for the data fingerprint and results.json)."""
        out = {"train": self.train}
        out.update({t.name: t.shards for t in self.test_sets if t.shards != self.train})
        return out


class FewShot(EvalSetting):
    """Train and test on the same classes."""

    kind = "fewshot"

    def combine(self, metrics: Mapping[str, Metrics]) -> dict[str, Any]:
        """The test set's ``metrics``."""
        return {"test": metrics["test"]}


class BaseToNovel(EvalSetting):
    """Train on the base half of the classes; test the same prompts on base and on novel classes."""

    kind = "base2new"

    def combine(self, metrics: Mapping[str, Metrics]) -> dict[str, Any]:
        """Base and novel ``metrics`` and the harmonic mean of their top-1."""
        base, novel = metrics["base"], metrics["novel"]
        return {"base": base, "novel": novel, "hm": harmonic_mean(base["top1"], novel["top1"])}


class Transfer(EvalSetting):
    """Cross-dataset / domain generalization: the source's test set, then every target with its own classes."""

    kind = "transfer"

    def combine(self, metrics: Mapping[str, Metrics]) -> dict[str, Any]:
        """The source's test ``metrics``, then every target's by name."""
        return {"test": metrics["test"], "targets": {t.name: metrics[t.name] for t in self.test_sets[1:]}}


def _test_set(name: str, folder: str, templates: tuple[str, ...]) -> EvalSet:
    return EvalSet(name, folder, tuple(read_manifest(folder)["classnames"]), templates)


def build_setting(cfg: RunConfig) -> EvalSetting:
    """Find or write every shard folder of the setting of the run ``cfg`` (rank 0) and describe its test sets."""
    setting = cfg.eval.setting
    templates = dataset_templates(cfg, cfg.data.dataset)
    if cfg.data.shards and setting == "base2new":
        raise ConfigError("data.shards: base-to-novel builds its base and novel shards itself; unset it")
    subset: Literal["all", "base"] = "base" if setting == "base2new" else "all"
    protocol = Protocol(shots=cfg.data.shots, seed=cfg.train.seed, subset=subset)
    train = cfg.data.shards or cached_shards(
        cfg, cfg.data.dataset, cfg.data.root, protocol, ("train", "val", "test")
    )
    classnames = tuple(read_manifest(train)["classnames"])
    if setting == "base2new":
        novel_protocol = Protocol(shots=cfg.data.shots, seed=cfg.train.seed, subset="new")
        novel = cached_shards(cfg, cfg.data.dataset, cfg.data.root, novel_protocol, ("test",))
        tests = (_test_set("base", train, templates), _test_set("novel", novel, templates))
        return BaseToNovel(train, classnames, templates, tests)
    source = _test_set("test", train, templates)
    if setting == "fewshot":
        return FewShot(train, classnames, templates, (source,))
    targets = []
    for target in cfg.eval.targets:  # every target's classes and template, all shards written before training
        protocol = Protocol(shots=0, seed=cfg.train.seed, subset="all")
        folder = cached_shards(cfg, target, cfg.eval.targets_root or cfg.data.root, protocol, ("test",))
        targets.append(_test_set(dataset_display_name(target), folder, dataset_templates(cfg, target)))
    return Transfer(train, classnames, templates, (source, *targets))


def check_eval_shards(setting: EvalSetting) -> None:
    """The val / test shards' sha256 of every folder of ``setting`` before any training or evaluation (a corrupt test shard found after hours of
    training would waste them); train shards are checked by the loader at first use, each rank its own share.

    A remote folder (``pipe:`` template) is not hashed here: that would download its val / test shards one extra
    time per run. Its manifest is fetched and checked now; its shards are hashed as they stream in every eval pass
    (each rank the shards it reads), so a corrupt remote val shard stops the run at the first validation and a
    corrupt test shard at the first test (after training: its checkpoints are on disk by then).
    ``scaleprompt.data.verify_shards(template)`` checks a whole remote folder explicitly (one download)."""
    for folder in setting.folders.values():
        manifest = read_manifest(folder)
        if is_remote_folder(folder):
            logger.info("remote shard folder %s: val / test shards are hashed as they stream", folder)
            continue
        for split in ("val", "test"):
            check_shards(folder, manifest["splits"].get(split, {}).get("shards", []))


def eval_loader(cfg: RunConfig, info: BackboneInfo, dist: DistInfo, shards: str, split: str) -> ShardLoader:
    """The evaluation loader of ``split`` of the shard folder ``shards`` for the run ``cfg`` on the backbone
    ``info`` describes: every image once (split over the ranks of ``dist``), the test transform."""
    return ShardLoader(
        shards,
        split,
        batch_size=cfg.eval.batch_size,
        train=False,
        image_size=cfg.data.image_size or info.image_size,
        mean=info.mean,
        std=info.std,
        num_workers=cfg.data.num_workers,
        max_bad_samples=cfg.data.max_bad_samples,
        seed=cfg.train.seed,
        rank=dist.rank,
        world_size=dist.world_size,
    )


def encoder_options(cfg: RunConfig) -> EncoderOptions:
    """How the encoders of the run ``cfg``'s method run (``model.text_chunk``: memory only, the same math)."""
    return EncoderOptions(text_chunk=cfg.model.text_chunk)


def new_method(
    cfg: RunConfig, backbone: Backbone, setting: EvalSetting, options: EncoderOptions
) -> PromptMethod:
    """The method of the recipe ``cfg`` over the frozen ``backbone``, its encoders run with ``options``, for the
    training classes and template(s) of ``setting`` (its class prompts unchecked: :func:`build_method`)."""
    return build(
        cfg.method.name,
        backbone,
        list(setting.classnames),
        dataset_templates=setting.templates,
        options=options,
        **cfg.method.args,
    )


def build_method(cfg: RunConfig, backbone: Backbone, setting: EvalSetting) -> PromptMethod:
    """:func:`new_method` (the method of ``cfg`` over ``backbone``) with the run's :func:`encoder_options`, then the
    class prompts of every class set
    ``setting`` tests (novel classes, transfer targets) are checked before training (:func:`check_class_sets`)."""
    method = new_method(cfg, backbone, setting, encoder_options(cfg))
    check_class_sets(cfg, method, setting)
    return method


def check_class_sets(cfg: RunConfig, method: PromptMethod, setting: EvalSetting) -> None:
    """The class prompts of ``method`` for every class set of ``setting`` (training classes, novel classes,
    transfer targets) (:meth:`~scaleprompt.methods.base.PromptMethod.classname_problems`): warnings, or with
    ``data.strict_classnames`` of ``cfg`` a :class:`ConfigError` naming the classes."""
    class_sets = [
        (setting.classnames, setting.templates),
        *((t.classnames, t.templates) for t in setting.test_sets),
    ]
    problems: list[str] = []
    for classnames, templates in dict.fromkeys(class_sets):
        problems += [p for p in method.classname_problems(classnames, templates) if p not in problems]
    if problems and cfg.data.strict_classnames:
        raise ConfigError(f"data.strict_classnames: {'; '.join(problems)}")
    report_class_prompt_problems(problems)


def shard_fingerprint(folders: Mapping[str, str]) -> str:
    """sha256 over the class names and shard hashes of the manifests of ``folders`` (by role): the exact data a run
    trains and tests on."""
    digest = hashlib.sha256()
    for role, folder in sorted(folders.items()):
        manifest = read_manifest(folder)
        digest.update(role.encode() + json.dumps(manifest["classnames"]).encode())
        for split, info in sorted(manifest["splits"].items()):
            digest.update(split.encode())
            for shard in info["shards"]:
                digest.update(f"{shard['name']}:{shard['count']}:{shard['sha256']}".encode())
    return digest.hexdigest()


def training_fingerprint(setting: EvalSetting) -> str:
    """The fingerprint of the data the prompts are TRAINED on in ``setting`` (part of a run's identity for ``--resume``; test
    sets such as transfer targets may change on a resume)."""
    return shard_fingerprint({"train": setting.train})


def describe_data(setting: EvalSetting) -> dict[str, Any]:
    """What the results of ``setting`` were computed on: shard folder names (named by their cache key; a remote folder by its
    ``pipe:`` template), the data fingerprint (the same for a folder and its remote copy) and the training images
    per class (``train_shots_per_class``: min / max, from the train split's manifest; below ``data.shots`` only with
    ``data.allow_fewer_shots``)."""
    out: dict[str, Any] = {
        "shards": {
            k: v if is_remote_folder(v) else Path(v).resolve().name for k, v in setting.folders.items()
        },
        "fingerprint": shard_fingerprint(setting.folders),
    }
    manifests = {role: read_manifest(folder) for role, folder in setting.folders.items()}
    counts = manifests["train"]["splits"].get("train", {}).get("class_counts")
    if counts:
        out["train_shots_per_class"] = {"min": min(counts), "max": max(counts)}
    # the images of every split and the classes of every folder, as their manifests count them
    out["splits"] = {
        role: {split: info["count"] for split, info in manifest["splits"].items()}
        for role, manifest in manifests.items()
    }
    out["classes"] = {role: list(manifest["classnames"]) for role, manifest in manifests.items()}
    return out


def protocol_lines(cfg: RunConfig, data: Mapping[str, Any]) -> list[str]:
    """What the run trains and tests on, in words (logged at its start; ``data``: :func:`describe_data`'s): the
    dataset, setting and shots asked for, the images of every split as their manifests count them, the training
    images per class actually there, and the classes of each set (the first ten of each)."""
    splits, classes = data["splits"], data["classes"]
    train = splits["train"]
    asked = f"{cfg.data.shots}-shot" if cfg.data.shots > 0 else "all training images"
    per = data.get("train_shots_per_class") or {}
    low, high = per.get("min"), per.get("max")
    used = f"{low}" if low == high else f"{low}-{high}"
    fewer = (
        f": fewer than the {cfg.data.shots} asked in some"
        if low is not None and cfg.data.shots > 0 and low < cfg.data.shots
        else ""
    )
    per_class = f" ({used} per class{fewer})" if low is not None else ""
    first = (
        f"data: {dataset_display_name(cfg.data.dataset)}, {cfg.eval.setting}, {asked} (seed {cfg.train.seed}): "
        f"train {train.get('train', 0)} images{per_class}, val {train.get('val', 0)}, "
        + ", ".join(
            f"{_label(cfg, role, 'test')} {counts['test']}"
            for role, counts in splits.items()
            if "test" in counts
        )
    )
    lines = [first]
    for role, names in classes.items():
        label = _label(cfg, role, "classes")
        shown = ", ".join(names[:10]) + (f", ... ({len(names) - 10} more)" if len(names) > 10 else "")
        lines.append(f"{label} ({len(names)}): {shown}")
    return lines


def _label(cfg: RunConfig, role: str, what: str) -> str:
    """``"base test"``, ``"novel classes"``, ``"test"``, ``"DTD test"``: a folder's role in words."""
    if role == "train":
        return {"base2new": f"base {what}", "transfer": f"source {what}"}.get(cfg.eval.setting, what)
    return f"{role} {what}"
