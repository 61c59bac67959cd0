"""Ablation search: Ray Tune trials of the training engine, sampled by Optuna, stopped early by ASHA.

* :mod:`~scaleprompt.search.space`: space files, backbone bounds, the pre-flight check.
* :mod:`~scaleprompt.search.trial`: one trial (the train.py engine in ``<trial>/run``), failure handling.
* :mod:`~scaleprompt.search.options`: :class:`SearchOptions` (the flags), :class:`SearchFailed`.
* :mod:`~scaleprompt.search.driver`: :func:`run_search`, progress, the Optuna searcher.
* :mod:`~scaleprompt.search.report`: trials.csv, best recipe, report.md, Optuna's plots.
* the command ``scaleprompt tune`` / ``tune/ablation.py``: :mod:`scaleprompt.commands.tune`.

Importing this package (and ``options``) imports neither torch nor Ray: ``--help`` answers at once;
the space, trial, driver and report modules import what they use.
"""
