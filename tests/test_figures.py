"""``scaleprompt plot``: figures of runs (grouped bars over seeds, per-epoch curves with the seeds as a band) and of
sweeps (trial ids as in report.md), in a paper's style: readable tick labels, PDF and PNG, a caption per figure."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pytest

import scaleprompt.report.figures as run_figures_module
import scaleprompt.search.figures as sweep_figures_module
from scaleprompt.commands.plot import main
from scaleprompt.engine.checkpoint import atomic_json
from scaleprompt.plots import overlapping_tick_labels, shown_tick_labels
from scaleprompt.report.schema import Accuracy, RunResult, SelectionResult
from scaleprompt.search.figures import load_sweep, report_trial_ids

PDF, PNG = b"%PDF", b"\x89PNG\r\n\x1a\n"


def accuracy(top1: float, images: int = 100) -> Accuracy:
    return Accuracy(top1, top1 - 1.0, images)


def b2n(base: float, novel: float) -> SelectionResult:
    return SelectionResult(
        val=accuracy(base - 2),
        base=accuracy(base),
        novel=accuracy(novel),
        hm=2 * base * novel / (base + novel),
    )


def write_b2n_run(root: Path, method: str, seed: int, base: float, novel: float, epochs: int = 3) -> Path:
    """A base-to-novel run folder as the engine leaves it (results.json through the schema's own writer), with a
    per-epoch history and zero-shot numbers."""
    history = [
        {"epoch": e, "val": {"top1": base - 10 + 4 * e + seed, "mean_per_class": base - 11 + 4 * e, "images": 64},
         "lr": 0.01, "train_loss": 2.0 / e + 0.1 * seed}
        for e in range(1, epochs + 1)
    ]  # fmt: skip
    result = RunResult(
        method=method,
        dataset="OxfordPets",
        setting="base2new",
        shots=16,
        seed=seed,
        backbone="ViT-B-16",
        pretrained="openai",
        results={"last": b2n(base, novel)},
        epochs=epochs,
        steps=4 * epochs,
        history=history,
        zero_shot=b2n(70.0, 74.0),
        config={"method": {"name": method}, "train": {"seed": seed}},
    )
    folder = root / method / f"seed{seed}"
    folder.mkdir(parents=True)
    atomic_json(folder / "results.json", result.to_dict())
    return folder


@pytest.fixture
def figures(monkeypatch):
    """Every figure the plot modules save, by file stem (still drawable after it is saved and closed)."""
    saved: dict[str, object] = {}
    for module in (run_figures_module, sweep_figures_module):
        original = module.save_figure

        def keep(fig, stem, formats=("png",), dpi=300, _original=original):
            saved[stem.name] = fig
            return _original(fig, stem, formats, dpi)

        monkeypatch.setattr(module, "save_figure", keep)
    return saved


def test_plot_draws_bars_and_seed_bands_of_runs_with_captions(tmp_path, figures):
    runs = tmp_path / "runs"
    for method, base, novel in (("coop", 82.0, 64.0), ("provp_ref", 84.0, 75.0)):
        for seed in (1, 2, 3):
            write_b2n_run(runs, method, seed, base + seed, novel - seed)
    out = tmp_path / "figs"
    assert main([str(runs), "--out-dir", str(out), "--format", "pdf,png"]) == 0
    stem = "base2new_OxfordPets_16shot_ViT-B-16-openai"
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted(
        f"{kind}_{stem}.{ext}" for kind in ("bars", "curves") for ext in ("pdf", "png", "txt")
    )
    for kind in ("bars", "curves"):
        assert (out / f"{kind}_{stem}.pdf").read_bytes()[:4] == PDF
        assert (out / f"{kind}_{stem}.png").read_bytes()[:8] == PNG
    caption = (out / f"bars_{stem}.txt").read_text()
    assert "selection: last epoch" in caption.lower() and "3 seeds per bar" in caption
    assert "| coop | 1, 2, 3 | 84.00 ± 1.00 | 62.00 ± 1.00 |" in caption  # (base 83-85, novel 63-61)
    assert "zero-shot CLIP HM (mean of 6 runs' zero-shot numbers) = 71.94" in caption
    bars = figures[f"bars_{stem}"]
    ax = bars.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["coop", "provp_ref"]
    assert ax.get_ylabel() == "top-1 accuracy (%)"
    legend = ax.get_legend()
    assert legend.get_title().get_text() == "mean ± std over 3 seeds"
    assert [t.get_text() for t in legend.get_texts()] == ["zero-shot CLIP", "Base", "Novel", "HM"]
    curves = figures[f"curves_{stem}"]
    val, loss = curves.axes
    assert val.get_xlabel() == "epoch" and "%" in val.get_ylabel() and "loss" in loss.get_ylabel()
    labels = [t.get_text() for t in curves.legends[0].get_texts()]
    assert labels == ["coop (3 seeds)", "provp_ref (3 seeds)", "band: min–max over seeds"]
    assert len(val.collections) == 2  # (one band per method)
    assert "- coop (seeds 1, 2, 3): epoch 1: 80 [78, 82]" in (out / f"curves_{stem}.txt").read_text()


def test_category_ticks_never_overlap_and_one_font_size(tmp_path, figures):
    """Many long method labels: the renderer's boxes of the category tick labels do not intersect."""
    runs = tmp_path / "runs"
    for i in range(14):
        write_b2n_run(runs, f"a_rather_long_method_name_{i:02d}", 1, 70.0 + i, 60.0 + i, epochs=1)
    out = tmp_path / "figs"
    assert main([str(runs), "--out-dir", str(out), "--format", "png", "--band", "std"]) == 0
    ax = figures["bars_base2new_OxfordPets_16shot_ViT-B-16-openai"].axes[0]
    shown = shown_tick_labels(ax, "x")
    assert len(shown) >= 7 and overlapping_tick_labels(ax, "x") == []
    assert overlapping_tick_labels(ax, "y") == []
    texts = [t for t in ax.figure.findobj(lambda a: hasattr(a, "get_fontsize") and hasattr(a, "get_text"))
             if t.get_text().strip()]  # fmt: skip
    assert {t.get_fontsize() for t in texts} == {9.0}


# --- sweeps -----------------------------------------------------------------------------------------------------
TRIAL_IDS = ["c3d4e5f6", "0a1b2c3d", "ffee0011", "77aa55bb", "12345678", "9e8d7c6b"]


def write_sweep(root: Path, monkeypatch) -> Path:
    """A finished sweep's files written by the sweep's own writers (:func:`scaleprompt.search.report.summarize`:
    trials.csv, summary.json, report.md, best_recipe.yaml) from trials with run folders; Optuna's figures are
    left out (they are drawn from its study, not needed here)."""
    import optuna

    import scaleprompt.search.report as report
    from scaleprompt.search.options import SearchOptions
    from scaleprompt.search.space import ParamSpec, SearchSpace

    monkeypatch.setattr(report, "write_plots", lambda study, out: ([], {}))
    space = SearchSpace(
        {
            "optim.lr": ParamSpec("loguniform", 0.0005, 0.5),
            "method.args.variant": ParamSpec("categorical", values=["attention", "mlp", "per_token"]),
            "method.args.depth": ParamSpec("int", 1, 4),
        },
        name="core",
    )
    sweep = root / "core-upt"
    trials = []
    for i, trial_id in enumerate(TRIAL_IDS):
        params = {"optim.lr": 0.0007 * 2.9**i, "method.args.variant": ["attention", "mlp", "per_token"][i % 3],
                  "method.args.depth": 1 + i % 4}  # fmt: skip
        folder = sweep / f"trial_{trial_id}"
        stopped = i == 4
        value = 50.0 + 3 * i - (i % 2) * 7
        epochs = 1 if stopped else 3
        if i != 5:  # (the failed trial left no results)
            write_b2n_run(folder, "upt", 0, value, value - 5, epochs=epochs)
            (folder / "upt" / "seed0").rename(folder / "run")
        metrics = {"epoch": epochs, "epochs": 3, "final": not stopped, "val_top1": value, "train_loss": 1.0}
        if stopped:
            metrics["stopped_early"] = 1
        if i == 5:  # a failed trial: no metrics, no results
            metrics, error = {}, "RuntimeError: killed"
        else:
            error = None
        record = report.TrialRecord(trial_id, params, metrics, folder, error)
        report.read_results(record)
        trials.append(record)
    study = optuna.create_study(direction="maximize")
    report.summarize(trials, space, None, ["optim.epochs=3"], sweep, study, SearchOptions())
    return sweep


def test_sweep_figures_name_trials_by_the_ids_of_report_md(tmp_path, monkeypatch, figures, caplog):
    sweep = write_sweep(tmp_path / "search", monkeypatch)
    ids = report_trial_ids(sweep / "report.md")
    assert ids == TRIAL_IDS  # (report.md's order: the trials' start order)
    loaded = load_sweep(sweep)
    assert [t.kind for t in loaded.trials] == ["finished"] * 4 + ["stopped", "failed"]
    out = tmp_path / "figs"
    # a parent folder holding the sweep: the sweep is drawn, its trials are not read as runs
    with caplog.at_level(logging.INFO, logger="scaleprompt"):
        assert main([str(tmp_path / "search"), "--out-dir", str(out), "--format", "png"]) == 0
    assert sorted(p.name for p in out.iterdir()) == sorted(
        f"sweep_core-upt_{view}.{ext}" for view in ("objective", "params", "curves") for ext in ("png", "txt")
    )
    objective = figures["sweep_core-upt_objective"].axes[0]
    assert [t.get_text() for t in objective.get_xticklabels()] == ids
    assert overlapping_tick_labels(objective, "x") == []
    best = max((t for t in loaded.trials if t.kind == "finished"), key=lambda t: t.value or 0.0)
    legend = [t.get_text() for t in figures["sweep_core-upt_objective"].legends[0].get_texts()]
    assert f"best: {best.trial_id}" in legend and "failed" in legend
    caption = (out / "sweep_core-upt_objective.txt").read_text()
    assert re.findall(r"^\| ([0-9a-f]{8}) \|", caption, re.M) == ids
    assert f"Best trial: {best.trial_id}" in caption and "not Optuna's trial numbers" in caption
    # parameter views: the log axis is labelled at its decades only, categories readable
    params = figures["sweep_core-upt_params"]
    lr = next(ax for ax in params.axes if ax.get_xlabel() == "optim.lr")
    assert lr.get_xscale() == "log"
    labels = [t.get_text() for t in shown_tick_labels(lr, "x")]
    assert labels and all(re.fullmatch(r"\$\\mathdefault\{10\^\{-?\d+\}\}\$", t) for t in labels), labels
    for ax in params.axes:
        if ax.get_visible():
            assert overlapping_tick_labels(ax, "x") == [], ax.get_xlabel()
    variant = next(ax for ax in params.axes if ax.get_xlabel() == "method.args.variant")
    assert [t.get_text() for t in variant.get_xticklabels()] == ["attention", "mlp", "per_token"]
    # per-epoch curves: one line per trial with a history, labelled with its report.md id
    curves = figures["sweep_core-upt_curves"].axes[0]
    assert [t.get_text() for t in curves.get_legend().get_texts()] == [
        f"{i}{' (best)' if i == best.trial_id else ''}{' (stopped)' if i == TRIAL_IDS[4] else ''}"
        for i in TRIAL_IDS[:5]
    ]


def test_plot_errors_are_one_line(tmp_path, capsys):
    assert main([str(tmp_path / "missing"), "--out-dir", str(tmp_path / "out")]) == 2
    assert "no such file or directory" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main([str(tmp_path / "empty")]) == 2
    assert "no results.json or sweep under" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([str(tmp_path), "--format", "pdf,jpg"])
    assert "unknown figure format jpg" in capsys.readouterr().err
