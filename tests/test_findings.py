"""bench/findings.py, the pre-registered miniatures of the papers' claims (docs/findings.md): the quick smoke
version runs through the real engine and writes its row. It checks the pipeline, NOT the claims (those are a bench:
bench/results/findings.md)."""

from __future__ import annotations

import csv
import importlib.util
import json
import subprocess
import sys

import pytest
from engine_utils import ROOT


def _bench():
    spec = importlib.util.spec_from_file_location("bench_findings", ROOT / "bench" / "findings.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_findings"] = module  # (dataclasses look their module up)
    assert spec.loader is not None
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow  # an end-to-end micro-world run (two trainings through the engine): in the full suite only
def test_quick_base_to_novel_miniature_runs_and_writes_its_row(tmp_path):
    runs, out = tmp_path / "runs", tmp_path / "out"
    subprocess.run(
        [sys.executable, "bench/findings.py", "--quick", "--runs", str(runs), "--out", str(out)],
        cwd=ROOT,
        check=True,
        timeout=900,
    )
    for method in ("zsclip", "coop"):
        result = json.loads(
            (runs / "b2n" / "MicroWorldNovelShapes" / method / "seed1" / "results.json").read_text()
        )
        assert result["dataset"] == "MicroWorldNovelShapes" and result["setting"] == "base2new"
        assert result["results"]["last"]["base"]["images"] == 32 * 50
    with open(out / "findings.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["claim"][:2] for r in rows] == ["1a"]
    assert rows[0]["reproduced"].startswith("NovelShapes: ")
    table = (out / "findings.md").read_text()
    assert "Not a measurement of any claim" in table and "| zsclip |" in table and "| coop |" in table


def test_verdict_rules_follow_the_pre_registration():
    bench = _bench()
    a, b = bench.Cell([10.0, 11.0, 12.0]), bench.Cell([5.0, 5.0, 5.0])
    assert bench.greater(a, b) == "margin"  # 6 points, one standard error is 0.58
    assert bench.greater(bench.Cell([5.0, 6.0, 7.0]), bench.Cell([5.0, 5.5, 6.0])) == "mean"
    assert bench.greater(b, a) == "no"
    assert bench.verdict(["margin", "margin"]) == "yes"
    assert bench.verdict(["margin", "mean"]) == "partly"
    assert bench.verdict(["margin", "no"]) == "partly"
    assert bench.verdict(["no", "margin"]) == "no"  # the main (first) part reversed
    assert bench.verdict(["no", "margin"], main=False) == "partly"  # (a ranking: no part is the main one)
    assert bench.verdict(["no", "no"], main=False) == "no"
