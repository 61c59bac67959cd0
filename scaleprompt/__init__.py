"""scaleprompt: prompt learning for large frozen CLIP models at scale.

Process-wide state
------------------

Everything the package keeps or changes for the whole process is listed here (one place; add yours when you add
one). How the encoders compute is not among it: :class:`~scaleprompt.encoders.EncoderOptions`, given when a method
is built (``methods.build(..., options=...)``), nothing is switched on classes or patched in other modules.

Registries (filled at import or by an extension's call, read everywhere):

* ``scaleprompt.backbone._MODELS``: the models :func:`~scaleprompt.backbone.register_model` registered (scaleprompt's
  own at import); their configs are also added to open_clip's model-config registry when open_clip is first imported
  (``import_open_clip``, which keeps the module in ``_open_clip_module``).
* ``scaleprompt.data.datasets.DATASETS``: the registered datasets.

Once-per-process flags:

* ``scaleprompt.encoders._say_partitioned`` (``functools.cache``): the warning that ZeRO-3 partitioned blocks run
  open_clip's own forward.
* ``scaleprompt.methods.prompts._REPORTED``: class-prompt problems already logged (each is logged once).

Caches keyed by their inputs:

* ``scaleprompt.encoders._TRANSPOSED`` (weak, per weight tensor and its version): the transposed frozen weights of
  oneDNN's backward; ``scaleprompt.encoders._onednn_available`` (``functools.cache``): whether oneDNN's linear
  works in this PyTorch build.
* ``scaleprompt.plan``: ``_REDUCED`` ((model, fake) -> the 2 + 2 block model, its tokenizer and fake-tensor mode), ``_TOKENIZERS``, ``_MEASURED`` (one
  measured mode), ``_ARCHITECTURES`` (one meta-device build).
* ``scaleprompt.data.remote._MANIFESTS``: a remote folder's checked manifest, fetched once.
* ``scaleprompt.data.shards._SHA_CACHE``: a file's SHA-256 until its identity changes.
* ``scaleprompt.locks._HELD``: the lock descriptors this process holds.
* ``scaleprompt.engine.distributed._rendezvous_file``: the file rendezvous of the process group.

A run's process (``engine/``). A launched run has a process of its own; a sweep's one-worker trials run one after
another in a Ray actor they take over (``reuse_actors``), so the engine keeps nothing that a later run of the
process reads: a run builds its own backbone, data, DeepSpeed engine and trackers, seeds its own RNGs, and
releases its folder and loaders when it ends or is stopped. What stays for the process:

* ``scaleprompt.engine.signals._state``: the stop-signal handlers :func:`~scaleprompt.engine.signals.install` set
  (a ``train`` command only) and the stop request they received.
* ``scaleprompt.engine.distributed``: ``DS_ACCELERATOR=cpu`` (a default, without CUDA, at import), ``LOCAL_RANK``,
  ``GLOO_SOCKET_IFNAME=lo`` (CPU, every rank local) and torch's thread count (CPU ranks share the cores), set by
  ``init_distributed``; the process group it creates (the next run of the process joins it: the same ranks).
* ``tqdm.tqdm.monitor_interval = 0`` (set when :mod:`scaleprompt.engine.trainer` is imported): no tqdm monitor
  thread, whose start and end could meet a DataLoader's fork (gh-112275).
* The once-per-process flags above: a trial in a taken-over actor does not repeat a warning an earlier trial of
  that actor logged (the actor's log holds it once).

Switches changed for a block only, restored after it:

* ``huggingface_hub.constants.HF_HUB_OFFLINE`` (``backbone._hub_access``, only without network): open_clip's
  download takes no offline argument, and the hub reads this constant at call time.
* A filter on the root logger (``backbone.quiet_open_clip``) dropping open_clip's own records while a model is
  created (open_clip logs with ``logging.info``, i.e. on the root logger; the root logger's level is left alone).
* The levels of named loggers (``logs.silenced``, e.g. the planner's ``scaleprompt.methods.prompts``).
"""

from __future__ import annotations

import importlib
from typing import Any

API = {
    "evaluate": "scaleprompt.api",
    "Predictor": "scaleprompt.predict",
    "RunResult": "scaleprompt.report.schema",
}
# (and ``train``: the module scaleprompt/train.py, callable as scaleprompt.api.train; imported when first asked for)
__all__ = ["train", "evaluate", "Predictor", "RunResult", "__version__"]


def __getattr__(name: str) -> Any:
    """The Python API, imported when first used (``import scaleprompt`` stays light for every rank and worker):
    ``scaleprompt.train`` / ``evaluate`` / ``Predictor`` / ``RunResult`` (:mod:`scaleprompt.api`), and
    ``scaleprompt.__version__``: the one version source, pyproject.toml's ``[project] version`` as installed
    (``scaleprompt --version``), read when asked for: importlib.metadata costs ~25 ms, which every process that
    imports the package (ranks, trials, workers) would pay otherwise. A source tree without an install:
    ``0+unknown``."""
    if name == "train":
        return importlib.import_module("scaleprompt.train")
    if name in API:
        return getattr(importlib.import_module(API[name]), name)
    if name != "__version__":
        raise AttributeError(f"module 'scaleprompt' has no attribute {name!r}")
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("scaleprompt")
    except PackageNotFoundError:
        return "0+unknown"
