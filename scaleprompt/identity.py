"""What a run IS, for ``--resume``: the settings that change its math or its data, as pure functions.

A resume continues a run only if nothing that changes results differs: the method and its resolved config, the
backbone, the optimizer and schedule, the seed, the dataset / shots / protocol and the content of its shards,
precision, the batch geometry, the world size and the ZeRO stage. Settings that cannot change the numbers
(:data:`MAY_CHANGE`: output and cache paths, logging and experiment trackers, checkpoint frequency, evaluation
frequency and batch size, extra transfer targets, ``optim.epochs`` when it grows) may differ; each such change is
recorded with the epoch and step it took effect.
"""

from __future__ import annotations

from typing import Any

# run-config fields a resume may change (they do not change the trained prompts' math or data)
MAY_CHANGE = frozenset(
    {
        # where the run writes, how it logs and checkpoints
        "train.output_dir",
        "train.log_every_steps",
        "train.report_to",
        "train.tensorboard",  # (removed, replaced by train.report_to: in the identity of older checkpoints)
        "train.checkpoint_every_epochs",
        "train.checkpoint_every_steps",
        "train.keep_checkpoints",
        "train.max_steps",
        "train.checkpoint_on_signal",
        # what to do on a non-finite step (a skipped step is recorded in the run's results)
        "train.nonfinite",
        "train.max_nonfinite_skips",
        # how often and on what the run is evaluated besides its own test split
        "eval.every_epochs",
        "eval.batch_size",
        "eval.zero_shot_baseline",
        "eval.targets",
        "eval.targets_root",
        # where the data and weights are read from (what was trained on is in the shard content, compared)
        "data.allow_fewer_shots",  # (refuses or allows)
        "data.cache_dir",
        "data.root",
        "data.shards",
        "data.max_bad_samples",
        "data.strict_classnames",
        "model.cache_dir",
        # memory savers that compute the same numbers
        "model.grad_checkpointing",
        "model.text_chunk",
        # a resume may extend the run (never shorten it: see compare)
        "optim.epochs",
    }
)


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}`` (lists stay values)."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def run_identity(
    config: dict[str, Any], method_config: dict[str, Any], extra: dict[str, Any]
) -> dict[str, Any]:
    """The identity of a run: its config (``RunConfig.to_dict()``) with ``method.args`` replaced by the method's
    RESOLVED config (defaults filled in, so ``n_ctx=4`` given or defaulted is the same run), flattened, plus
    ``extra`` facts decided at run time (world size, ZeRO stage, micro batch, class names, shard content)."""
    tree = {k: dict(v) for k, v in config.items()}
    tree["method"] = {"name": config["method"]["name"], "config": method_config}
    flat = flatten(tree)
    flat.update({f"run.{k}": v for k, v in extra.items()})
    return flat


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def compare(saved: dict[str, Any], current: dict[str, Any], done_epochs: int) -> tuple[list[str], list[dict]]:
    """(refusals, allowed changes) between a checkpoint's identity and this invocation's.

    A refusal names the field and both values; ``optim.epochs`` may only grow past the epochs already done."""
    refusals, changes = [], []
    for key in sorted(set(saved) | set(current)):
        old, new = saved.get(key, "<absent>"), current.get(key, "<absent>")
        if old == new:
            continue
        if key == "optim.epochs" and isinstance(new, int) and new < max(done_epochs, 1):
            refusals.append(f"optim.epochs: {old} -> {new} (already trained {done_epochs} epochs)")
        elif key == "optim.epochs" and isinstance(new, int) and isinstance(old, int) and new < old:
            refusals.append(f"optim.epochs: {old} -> {new} (a resume may extend a run, not shorten it)")
        elif key in MAY_CHANGE:
            changes.append({"field": key, "from": old, "to": new})
        else:
            refusals.append(f"{key}: {_show(old)} -> {_show(new)}")
    return refusals, changes
