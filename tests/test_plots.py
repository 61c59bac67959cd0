"""PNG figures: the result bar chart, and the sweep figures drawn by Optuna from a study (finished, pruned and
failed trials; integer parameters on integer axes)."""

from __future__ import annotations

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState, create_trial

from scaleprompt.plots import grouped_bars
from scaleprompt.search.report import PLOTS, draw, write_plots

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
DISTS = {
    "method/args/depth": IntDistribution(1, 12),
    "method/args/n_ctx": CategoricalDistribution([4, 8, 16]),
    "optim/lr": FloatDistribution(0.001, 0.1, log=True),
}


def study_of(n_complete: int) -> optuna.Study:
    """A study like a sweep's: COMPLETE trials with per-epoch values, one PRUNED (stopped early), one FAIL."""
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    study = optuna.create_study(direction="maximize")
    for i in range(n_complete):
        params = {"method/args/depth": 1 + (3 * i) % 12, "method/args/n_ctx": [4, 8, 16][i % 3],
                  "optim/lr": 0.001 * 1.6**i}  # fmt: skip
        study.add_trial(create_trial(params=params, distributions=DISTS, value=40.0 + 3 * i + (i % 2),
                                     intermediate_values={1: 30.0 + i, 2: 40.0 + 3 * i}))  # fmt: skip
    pruned = {"method/args/depth": 5, "method/args/n_ctx": 4, "optim/lr": 0.05}
    study.add_trial(create_trial(params=pruned, distributions=DISTS, state=TrialState.PRUNED,
                                 intermediate_values={1: 20.0}))  # fmt: skip
    study.add_trial(create_trial(params=pruned, distributions=DISTS, state=TrialState.FAIL))
    return study


def test_grouped_bars_is_a_png(tmp_path):
    path = grouped_bars(["coop", "provp_ref"], {"Base": [(60.0, 1.0), (77.0, 2.0)], "HM": [(61.0, 0.5), (76.0, 1.5)]},
                        tmp_path / "bars.png", ylabel="accuracy", title="t", baseline=58.6)  # fmt: skip
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC and len(data) > 5000


def test_sweep_figures_are_optunas_and_integer_parameters_sit_on_integer_ticks(tmp_path):
    study = study_of(10)
    paths, skipped = write_plots(study, tmp_path / "plots")
    assert sorted(p.stem for p in paths) == sorted(PLOTS) and skipped == {}
    assert all(p.read_bytes()[:8] == PNG_MAGIC and p.stat().st_size > 5000 for p in paths)
    figure = draw(study, "slice")
    depth = next(ax for ax in figure.axes if ax.get_xlabel() == "method/args/depth")
    assert all(float(t).is_integer() for t in depth.get_xticks()) and len(depth.get_xticks()) >= 2
    steps = draw(study, "intermediate_values").axes[0]
    assert all(float(t).is_integer() for t in steps.get_xticks())
    # the learning curves include the pruned trial: its one epoch is drawn
    assert sum(len(line.get_xdata()) for line in steps.get_lines()) == 10 * 2 + 1


@pytest.mark.parametrize("complete", [0, 1])
def test_too_few_finished_trials_skip_figures_with_a_reason(tmp_path, complete):
    paths, skipped = write_plots(study_of(complete), tmp_path / "plots")
    assert "timeline" in {p.stem for p in paths}  # the states (pruned, failed) are always drawn
    assert "param_importances" in skipped and all(skipped.values())
