"""What a sweep leaves behind, from its trials: ``trials.csv``, ``summary.json``, ``best_recipe.yaml``,
``report.md`` (the papers' ablation tables) and ``plots/`` (Optuna's own figures of the searcher's study).

Statuses: ``finished`` (the trial trained its whole schedule and wrote its results), ``stopped early at epoch k``
(the scheduler stopped it; its results are the prompts of epoch k, never comparable with finished trials),
``failed: <error>`` (a configuration / data error, not retried, or an infrastructure fault after its retries),
``finished without results: <why>`` / ``stopped early at epoch k without results: <why>`` (Tune recorded the trial
as done, but its ``run/results.json`` is missing or not a valid run file: counted with the failed trials, never
ranked, never the best; :func:`read_results` checks the file).

The best trial (:func:`choose_best`): among the FINISHED trials only, the best value of the space's metric
(validation split) at the trial's last epoch -- the prompts a run of the recipe ends with, and the number the
searcher optimised; ties go to the earlier trial. Test numbers are reported, never used for selection.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import statistics
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib
import optuna
import yaml
from matplotlib.ticker import MaxNLocator
from optuna.visualization import matplotlib as ovm

from scaleprompt.engine.checkpoint import atomic_json
from scaleprompt.engine.config import derive_run_config, load_run_config
from scaleprompt.report.schema import ResultsError, RunResult
from scaleprompt.search.options import SearchFailed, SearchOptions
from scaleprompt.search.space import SearchSpace, trial_values

logger = logging.getLogger(__name__)

# the sweep-command overrides a best recipe drops (the sweep's shortened schedule), unless asked to keep them
SCHEDULE_KEYS = ("optim.epochs", "train.max_steps")


@dataclass
class TrialRecord:
    """One trial as the sweep ended: its sampled parameters, last result, status and run folder."""

    trial_id: str
    params: dict[str, Any]
    metrics: dict[str, Any]
    path: Path
    error: str | None = None  # a Tune error: an infrastructure fault whose retries ran out
    results: dict[str, Any] | None = None  # <path>/run/results.json, a valid run file (read_results)
    results_error: str | None = None  # why there are no results (read_results): missing, not JSON, not a run
    extra: dict[str, Any] = field(default_factory=dict)  # Tune's own columns (time, iterations)
    checkpoint: Any = (
        None  # Tune's last checkpoint of the trial (a stopped trial's results are written from it)
    )

    @property
    def tune_kind(self) -> str:
        """What Tune recorded: ``finished``, ``stopped`` (by the scheduler) or ``failed``."""
        if self.error or self.metrics.get("failed") or not self.metrics:
            return "failed"
        return (
            "finished" if self.metrics.get("final") and not self.metrics.get("stopped_early") else "stopped"
        )

    @property
    def missing_results(self) -> str | None:
        """Why a trial Tune recorded as finished / stopped has no valid results.json (None: it has one)."""
        if self.tune_kind == "failed" or self.results is not None:
            return None
        return self.results_error or f"no results read from {self.path / 'run' / 'results.json'}"

    @property
    def kind(self) -> str:
        """``finished``, ``stopped`` or ``failed``; a trial without a valid results.json is ``failed``."""
        return "failed" if self.missing_results else self.tune_kind

    @property
    def status(self) -> str:
        missing = self.missing_results
        if missing:
            done = "finished" if self.tune_kind == "finished" else f"stopped early at epoch {self.epoch}"
            return f"{done} without results: {missing}"
        if self.kind == "failed":
            return f"failed: {self.failure}"
        if self.kind == "stopped":
            return f"stopped early at epoch {self.epoch}"
        return "finished"

    @property
    def failure(self) -> str:
        missing = self.missing_results
        if missing:
            done = "finished" if self.tune_kind == "finished" else "stopped early"
            return f"{done} without results: {missing}"
        return self.error or self.metrics.get("failed") or "no result reported"

    @property
    def epoch(self) -> int:
        return int(self.metrics.get("stopped_early") or self.metrics.get("epoch") or 0)

    def value(self, metric: str) -> float | None:
        """The trial's last reported ``metric`` (None: not reported, or not a finite number)."""
        x = self.metrics.get(metric)
        return float(x) if isinstance(x, int | float) and math.isfinite(x) else None

    def test_numbers(self) -> dict[str, float]:
        """Test accuracy (top-1) of the prompts the trial ended with (results.last), by split."""
        if not self.results:
            return {}
        last = self.results["results"]["last"]
        out = {f"test_{split}": last[split]["top1"] for split in ("test", "base", "novel") if split in last}
        if "hm" in last:
            out["test_hm"] = last["hm"]
        for name, acc in (last.get("targets") or {}).items():
            out[f"test_{name}"] = acc["top1"]
        return out


def read_results(trial: TrialRecord) -> None:
    """Read the ``trial``'s ``<trial>/run/results.json`` into ``trial.results`` if it is a valid run file
    (:meth:`~scaleprompt.report.schema.RunResult.from_dict`); else ``trial.results`` is None and
    ``trial.results_error`` says why (missing, not JSON, not a run)."""
    path = trial.path / "run" / "results.json"
    trial.results, trial.results_error = None, None
    if not path.is_file():
        trial.results_error = f"{path} is missing"
        return
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        RunResult.from_dict(data, path)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        trial.results_error = f"{path} is not readable JSON ({' '.join(str(exc).split())})"
    except ResultsError as exc:
        trial.results_error = " ".join(str(exc).split())
    else:
        trial.results = data


def choose_best(trials: Sequence[TrialRecord], metric: str, mode: str) -> TrialRecord | None:
    """The best of ``trials`` by the module docstring's rule: finished trials only, the best value of ``metric``
    (``mode``: ``"max"`` or ``"min"``) at their last epoch, the earliest on ties; None when none finished."""
    sign = 1.0 if mode == "max" else -1.0
    best: tuple[float, TrialRecord] | None = None
    for trial in trials:
        value = trial.value(metric)
        if trial.kind == "finished" and value is not None and (best is None or sign * value > sign * best[0]):
            best = (value, trial)  # (only a strictly better one: the earlier trial keeps a tie)
    return best[1] if best else None


def distinct_errors(trials: Iterable[TrialRecord]) -> dict[str, list[str]]:
    """The failures of the failed ``trials``: each distinct message with the ids of the trials it ended."""
    errors: dict[str, list[str]] = {}
    for t in trials:
        if t.kind == "failed":
            errors.setdefault(t.failure, []).append(t.trial_id)
    return errors


def write_trials_csv(trials: Sequence[TrialRecord], space: SearchSpace, out: Path) -> Path:
    """Write ``out`` (trials.csv) and return it: one row per trial of ``trials``: trial id, status, the parameters
    of ``space`` it sampled, the last result, test numbers, Tune's columns and the trial folder."""
    rows = []
    for t in trials:
        row: dict[str, Any] = {"trial_id": t.trial_id, "status": t.status}
        row.update({f"param.{k}": t.params.get(k) for k in space.params})
        row.update({k: t.metrics.get(k) for k in ("epoch", "epochs", "train_loss") if k in t.metrics})
        row.update({k: v for k, v in t.metrics.items() if k.startswith("val_")})
        row.update(t.test_numbers())
        row.update(t.extra)
        row["trial_dir"] = str(t.path)
        rows.append(row)
    keys: list[str] = []
    for row in rows:
        keys += [k for k in row if k not in keys]
    with out.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=keys)
        writer.writeheader()
        writer.writerows(rows)
    return out


def write_best_recipe(
    recipe: str | None,
    overrides: Sequence[str],
    space: SearchSpace,
    best: TrialRecord,
    sweep: Path,
    keep_schedule: bool = False,
) -> Path:
    """Write ``best_recipe.yaml`` in the sweep folder ``sweep`` and return its path: the sweep's base ``recipe`` (None: the defaults) and
    ``key=value`` ``overrides`` with the parameters of the ``best`` trial of ``space``, and the BASE recipe's
    schedule (the sweep's ``optim.epochs`` / ``train.max_steps`` overrides are dropped unless
    ``keep_schedule``)."""
    dropped = [] if keep_schedule else [o for o in overrides if o.split("=", 1)[0].strip() in SCHEDULE_KEYS]
    kept = [o for o in overrides if o not in dropped]
    base = load_run_config(recipe, kept)
    values = trial_values(base, best.params)
    cfg = derive_run_config(base, values)
    method = [f"method.name={values['method.name']}"] if "method.name" in values else []
    params = [*method, *(f"{k}={json.dumps(v)}" for k, v in values.items() if k != "method.name")]
    data = cfg.to_dict()
    data["train"]["output_dir"] = str(sweep / "best")
    value = best.value(space.metric)
    header = [
        "# Best configuration of an ablation sweep; run it with scaleprompt/train.py --config <this file>",
        f"# sweep: {sweep}  (report.md, trials.csv)",
        f"# trial: {best.trial_id}, {space.metric} = {value:.4g} after {best.epoch} epochs ({best.path})",
        f"# base recipe: {recipe or '(defaults)'}",
        f"# searched: {' '.join(params)}",
        f"# sweep overrides kept: {' '.join(kept) or '-'}",
        f"# sweep overrides dropped (its shortened schedule; --keep-sweep-schedule keeps them): "
        f"{' '.join(dropped) or '-'}",
    ]
    out = sweep / "best_recipe.yaml"
    out.write_text("\n".join(header) + "\n" + yaml.safe_dump(data, sort_keys=False))
    return out


# --- the sweep's files --------------------------------------------------------------------------------------
def summarize(
    trials: list[TrialRecord],
    space: SearchSpace,
    recipe: str | None,
    overrides: list[str],
    sweep: Path,
    study: Any,
    opts: SearchOptions,
) -> dict[str, Any]:
    """Write the files of the sweep in the folder ``sweep`` (trials.csv, best_recipe.yaml, plots, report.md,
    summary.json) from its ``trials`` of ``space``, its base ``recipe`` and ``overrides``, the Optuna ``study`` and
    its options ``opts``, and log the table of trials; returns the summary. No trial finished with valid results:
    :class:`SearchFailed`."""
    write_trials_csv(trials, space, sweep / "trials.csv")
    best = choose_best(trials, space.metric, space.mode)
    counts = {k: sum(t.kind == k for t in trials) for k in ("finished", "stopped", "failed")}
    counts["without_results"] = sum(bool(t.missing_results) for t in trials)  # (counted in "failed" too)
    summary: dict[str, Any] = {
        "sweep": str(sweep),
        "trials": len(trials),
        **counts,
        "errors": distinct_errors(trials),
        "metric": space.metric,
        "mode": space.mode,
    }
    if best is not None:
        recipe_path = write_best_recipe(recipe, overrides, space, best, sweep, opts.keep_sweep_schedule)
        summary.update(
            best_trial=best.trial_id,
            best_params=best.params,
            best_metric=best.value(space.metric),
            best_test=best.test_numbers(),
            best_run=str(best.path / "run"),
            best_recipe=str(recipe_path),
        )
    summary["importances"] = {k.replace("/", "."): v for k, v in importances(study).items()}
    plots, skipped = write_plots(study, sweep / "plots")
    summary["plots"], summary["plots_skipped"] = [str(p) for p in plots], skipped
    summary["report"] = str(write_report(trials, space, best, sweep, recipe, overrides, plots))
    atomic_json(sweep / "summary.json", json.loads(json.dumps(summary, default=str)))
    _log_table(trials, space)
    if best is None:
        errors = "; ".join(f"{len(ids)} x {message}" for message, ids in summary["errors"].items())
        raise SearchFailed(
            f"no trial of the sweep finished ({counts['failed']} failed: {errors or 'no errors'}); "
            f"see {sweep / 'report.md'}"
        )
    logger.info(
        "best %s = %.2f (trial %s); report: %s; recipe: %s",
        space.metric,
        summary["best_metric"],
        best.trial_id,
        summary["report"],
        summary["best_recipe"],
    )
    return summary


def _log_table(trials: Sequence[TrialRecord], space: SearchSpace) -> None:
    keys = list(space.params)
    header = ["trial", "status", *[k.split(".")[-1] for k in keys], space.metric]
    rows = [
        [
            t.trial_id,
            t.status[:60],
            *[fmt(t.params.get(k)) for k in keys],
            "-" if t.value(space.metric) is None else f"{t.value(space.metric):.2f}",
        ]
        for t in trials
    ]
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        logger.info("  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)))


# --- report.md ----------------------------------------------------------------------------------------------
def _groups(
    trials: Sequence[TrialRecord], key: str, space: SearchSpace
) -> list[tuple[str, list[TrialRecord]]]:
    """Trials by value of ``key``: each value when there are few, else value bins over the range."""
    spec = space.params[key]
    values = sorted({json.dumps(t.params.get(key)) for t in trials}, key=lambda v: _order(json.loads(v)))
    if spec.type == "categorical" or spec.type == "int" and len(values) <= 8:
        order = [json.dumps(v) for v in spec.values or []] if spec.type == "categorical" else values
        return [
            (fmt(json.loads(v)), [t for t in trials if json.dumps(t.params.get(key)) == v]) for v in order
        ]
    low, high = spec.range  # (the space's bounds are resolved)
    log = spec.type == "loguniform"
    scale = (lambda x: math.log(x)) if log else (lambda x: x)
    edges = [
        math.exp(scale(low) + (scale(high) - scale(low)) * i / 4) if log else low + (high - low) * i / 4
        for i in range(5)
    ]
    out = []
    for i in range(4):
        members = [
            t
            for t in trials
            if edges[i] <= t.params[key] < edges[i + 1] or i == 3 and t.params[key] == edges[4]
        ]
        out.append((f"[{edges[i]:.3g}, {edges[i + 1]:.3g}{']' if i == 3 else ')'}", members))
    return out


def _cell(values: list[float]) -> str:
    if not values:
        return "—"
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"


def write_report(
    trials: Sequence[TrialRecord],
    space: SearchSpace,
    best: TrialRecord | None,
    sweep: Path,
    recipe: str | None,
    overrides: Sequence[str],
    plots: Sequence[Path],
) -> Path:
    """Write ``report.md`` in the sweep folder ``sweep`` and return it: the sweep of ``space`` over the base ``recipe`` and ``overrides``,
    its ``trials`` by status, the ``best`` trial (None: none finished), the papers' ablation tables (the finished
    trials by each parameter's values) and the figures ``plots``."""
    metric = space.metric
    kinds = {k: [t for t in trials if t.kind == k] for k in ("finished", "stopped", "failed")}
    missing = sum(bool(t.missing_results) for t in trials)
    lines = [
        f"# Ablation report: {space.name} ({sweep.name})",
        "",
        f"Recipe `{recipe or '(defaults)'}` with `{' '.join(overrides) or '-'}`. {len(trials)} trials: "
        f"{len(kinds['finished'])} finished, {len(kinds['stopped'])} stopped early by the scheduler, "
        f"{len(kinds['failed'])} failed"
        + (f" ({missing} of them ended without a valid results.json: not ranked)." if missing else "."),
        "",
        f"Numbers are `{metric}` (validation split, %) at each trial's last epoch. Tables use the finished trials "
        "only (same schedule, comparable); a stopped trial's number comes from fewer epochs and is shown "
        "apart. Each row pools the trials that share the value, whatever the other parameters were: a "
        "marginal view of a random search, not a controlled one-factor ablation.",
        "",
    ]
    if best is not None:
        lines += [
            "## Best trial",
            "",
            f"`{best.trial_id}` (`{best.path.name}/run`) — chosen on validation among finished "
            "trials; test numbers are reported, not used for the choice.",
            "",
            "| parameter | value |",
            "|:---|---:|",
        ]
        lines += [f"| {k} | {fmt(v)} |" for k, v in best.params.items()]
        lines += [f"| **{metric}** | **{best.value(metric):.2f}** |"]
        lines += [f"| {k} (epoch {best.epoch} prompts) | {v:.2f} |" for k, v in best.test_numbers().items()]
        lines += ["", "Its recipe, with the base recipe's full schedule: `best_recipe.yaml`.", ""]
    else:
        lines += ["## Best trial", "", "None: no trial finished.", ""]
    lines += ["## By parameter", ""]
    for key in space.params:
        lines += [
            f"### {key}",
            "",
            f"| {key.split('.')[-1]} | {metric} (mean ± std) | finished | stopped early "
            f"(their {metric}) | failed |",
            "|:---|---:|---:|---:|---:|",
        ]
        for label, members in _groups(trials, key, space):
            done = [v for t in members if t.kind == "finished" and (v := t.value(metric)) is not None]
            stopped = [v for t in members if t.kind == "stopped" and (v := t.value(metric)) is not None]
            failed = sum(t.kind == "failed" for t in members)
            lines.append(
                f"| {label} | {_cell(done)} | {len(done)} | {len(stopped)} ({_cell(stopped)}) | {failed} |"
            )
        lines.append("")
    lines += _controlled(trials, space)
    lines += [
        "## Trials",
        "",
        f"| trial | status | {' | '.join(space.params)} | {metric} | test (last prompts) |",
        "|:---|:---|" + "---:|" * len(space.params) + "---:|:---|",
    ]
    for t in trials:
        tests = ", ".join(f"{k[5:]} {v:.2f}" for k, v in t.test_numbers().items()) or "—"
        value = t.value(metric)
        lines.append(
            f"| {t.trial_id} | {t.status} | "
            + " | ".join(fmt(t.params.get(k)) for k in space.params)
            + f" | {'—' if value is None else f'{value:.2f}'} | {tests} |"
        )
    errors = distinct_errors(trials)
    if errors:
        lines += ["", "## Failures", ""]
        lines += [f"- {len(ids)} trial(s) ({', '.join(ids)}): {message}" for message, ids in errors.items()]
    if plots:
        lines += [
            "",
            "## Plots",
            "",
            "Optuna's figures of the searcher's study (`optuna.db`): stopped trials are "
            "PRUNED and failed ones FAIL in it (timeline, learning curves), the other figures use the "
            "finished trials. Optuna numbers the trials in its own order, not by the ids above: "
            "`scaleprompt plot <this folder>` draws the sweep with these ids, for a paper (PDF / PNG).",
            "",
        ]
        lines += [f"![{p.stem}](plots/{p.name})" for p in plots]
    out = sweep / "report.md"
    out.write_text("\n".join(lines) + "\n")
    return out


def _controlled(trials: Sequence[TrialRecord], space: SearchSpace) -> list[str]:
    """One-factor comparisons inside the sweep: finished trials that share every other parameter value and differ
    in one (frequent with categorical and integer parameters)."""
    metric, lines = space.metric, []
    done = [t for t in trials if t.kind == "finished" and t.value(metric) is not None]
    for key in space.params:
        others = [k for k in space.params if k != key]
        groups: dict[str, dict[str, TrialRecord]] = {}
        for t in done:  # (equal settings twice -- a re-sampled configuration -- keep the earlier trial)
            rest = json.dumps([t.params.get(k) for k in others])
            groups.setdefault(rest, {}).setdefault(json.dumps(t.params.get(key)), t)
        rows = [(rest, members) for rest, members in groups.items() if len(members) > 1]
        if not rows:
            continue
        lines += [
            f"### {key}, everything else equal",
            "",
            f"| {', '.join(k.split('.')[-1] for k in others)} | {key.split('.')[-1]}: {metric} (test) |",
            "|:---|:---|",
        ]
        for rest, members in rows:
            cells = []
            for value, t in sorted(members.items(), key=lambda kv: _order(json.loads(kv[0]))):
                tests = t.test_numbers()
                test = tests.get("test_hm", tests.get("test_test"))
                shown = f"{fmt(json.loads(value))}: {t.value(metric):.2f}"
                cells.append(shown + (f" ({test:.2f})" if test is not None else ""))
            lines.append(f"| {', '.join(fmt(v) for v in json.loads(rest))} | {' · '.join(cells)} |")
        lines.append("")
    if lines:
        lines = [
            "## Controlled comparisons",
            "",
            "Finished trials that differ in one parameter only (test: HM or "
            "top-1 of the last prompts, reported, not used for any choice).",
            "",
            *lines,
        ]
    return lines


def _order(value: Any) -> tuple[int, float, str]:
    """Numbers by value, then everything else by text."""
    number = isinstance(value, int | float) and not isinstance(value, bool)
    return (0, float(value), "") if number else (1, 0.0, str(value))


def fmt(value: Any) -> str:
    """The parameter ``value`` as the reports show it (floats to 4 significant digits)."""
    return f"{value:.4g}" if isinstance(value, float) else str(value)


# --- plots --------------------------------------------------------------------------------------------------
PLOTS = (
    "optimization_history",
    "slice",
    "parallel_coordinate",
    "param_importances",
    "intermediate_values",
    "timeline",
)


# Optuna's default importance evaluator (PED-ANOVA) compares the top 10% of trials with the rest: below this many
# finished trials it reports equal or noise importances, so none are computed
MIN_TRIALS_FOR_IMPORTANCES = 10


def _complete(study: Any) -> int:
    return sum(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials)


def draw(study: Any, name: str) -> Any:
    """Optuna's ``plot_<name>`` of ``study`` (``name``: one of :data:`PLOTS`) as a matplotlib Figure (None: nothing to draw), every axis of an
    integer parameter, trial numbers and epochs ("Step") on integer ticks."""
    if name == "param_importances" and _complete(study) < MIN_TRIALS_FOR_IMPORTANCES:
        raise ValueError(
            f"parameter importances need at least {MIN_TRIALS_FOR_IMPORTANCES} finished trials, "
            f"the study has {_complete(study)}"
        )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # (experimental API; degenerate axes of a few trials)
        axes = getattr(ovm, f"plot_{name}")(study)
    figure = (axes.flat[0] if hasattr(axes, "flat") else axes).figure
    if not any(ax.has_data() for ax in figure.axes):
        return None
    integers = {"Trial", "Step", "Trial number"}
    for trial in study.trials:
        integers |= {
            k for k, d in trial.distributions.items() if isinstance(d, optuna.distributions.IntDistribution)
        }
    for ax in figure.axes:
        if ax.get_xlabel() in integers:
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if ax.get_ylabel() in integers:
            ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    return figure


def write_plots(study: Any, out: Path) -> tuple[list[Path], dict[str, str]]:
    """Optuna's matplotlib figures of ``study`` (:data:`PLOTS`) as PNG files in the folder ``out``; returns
    (written, {plot: why it was skipped})."""
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # (after choosing the Agg backend)

    out.mkdir(parents=True, exist_ok=True)
    written, skipped = [], {}
    for name in PLOTS:
        try:
            figure = draw(study, name)
        except (ValueError, RuntimeError) as exc:  # e.g. importances of fewer than 2 finished trials
            skipped[name] = " ".join(str(exc).split())
            continue
        if figure is None:
            skipped[name] = "nothing to draw"
            plt.close("all")
            continue
        path = out / f"{name}.png"
        figure.savefig(path, dpi=110, bbox_inches="tight")
        plt.close(figure)
        written.append(path)
    return written, skipped


def importances(study: Any) -> dict[str, float]:
    """Optuna's default importance evaluator (PED-ANOVA in Optuna 5) over the COMPLETE trials of ``study`` (none below
    :data:`MIN_TRIALS_FOR_IMPORTANCES`)."""
    if _complete(study) < MIN_TRIALS_FOR_IMPORTANCES:
        return {}
    try:
        return dict(optuna.importance.get_param_importances(study))
    except (RuntimeError, ValueError) as exc:  # fewer than 2 finished trials, every value equal, ...
        logger.info("no parameter importances: %s", exc)
        return {}
