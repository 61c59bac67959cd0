"""PNG figures: axis positions are exact, files are real PNGs, nothing is drawn without finished trials."""

from __future__ import annotations

import math

import pytest

from scaleprompt.plots import _position, metric_vs_params, parallel_coordinates
from scaleprompt.search import ParamSpec, SearchSpace, write_plots

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
AXES = [("param.n_ctx", "categorical", [2, 4, 8]), ("param.lr", "log", None), ("param.lam", "float", None)]
TRIALS = [
    {"param.n_ctx": 2, "param.lr": 0.001, "param.lam": 0.5, "val_top1": 31.0},
    {"param.n_ctx": 8, "param.lr": 0.1, "param.lam": 2.0, "val_top1": 55.5},
    {"param.n_ctx": "4", "param.lr": "0.01", "param.lam": "1.0", "val_top1": "40"},  # as read back from a CSV
]


def test_axis_positions():
    assert _position(8, "categorical", [2, 4, 8]) == 2.0
    assert _position("4", "categorical", [2, 4, 8]) == 1.0  # CSV strings match typed categories
    assert math.isnan(_position(16, "categorical", [2, 4, 8]))
    assert _position(0.001, "log", None) == pytest.approx(-3.0)
    assert _position("2.5", "float", None) == 2.5


def test_plots_are_png_files(tmp_path):
    a = metric_vs_params(TRIALS, AXES, "val_top1", tmp_path / "a" / "m.png", mode="max")
    b = parallel_coordinates(TRIALS, AXES, "val_top1", tmp_path / "b.png")
    for path in (a, b):
        data = path.read_bytes()
        assert data[:8] == PNG_MAGIC and len(data) > 5000, path


def test_write_plots_skips_failed_trials_and_draws_nothing_without_finished_ones(tmp_path):
    space = SearchSpace(
        name="s", metric="val_top1", mode="max",
        params={"method.args.n_ctx": ParamSpec("categorical", values=[2, 4])},
    )  # fmt: skip
    failed = [{"param.method.args.n_ctx": 2, "status": "error", "val_top1": None}]
    assert write_plots(failed, space, tmp_path / "none") == []
    assert not (tmp_path / "none").exists()
    ok = [*failed, {"param.method.args.n_ctx": 4, "status": "ok", "val_top1": 50.0}]
    paths = write_plots(ok, space, tmp_path / "plots")
    assert sorted(p.name for p in paths) == ["metric_vs_params.png", "parallel_coordinates.png"]
    assert all(p.read_bytes()[:8] == PNG_MAGIC for p in paths)
