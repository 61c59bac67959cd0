"""The console script: shards from the embedded dataset, the method check."""

from __future__ import annotations

import json

from scaleprompt.cli import main


def test_shards_command_writes_the_embedded_dataset(tmp_path):
    out = tmp_path / "shards"
    rc = main(["shards", "--dataset", "fashion_mnist", "--root", str(tmp_path / "data"), "--out", str(out),
               "--shots", "4", "--seed", "2", "--subset", "base", "--min-shards", "2"])  # fmt: skip
    assert rc == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["classnames"] == ["t-shirt", "trouser", "pullover", "dress", "coat"]
    assert manifest["splits"]["train"]["count"] == 20 and manifest["splits"]["test"]["count"] == 500
    assert (tmp_path / "data" / "fashion_mnist" / "split_zhou_FashionMNIST.json").is_file()


def test_check_command_runs_a_step_and_a_reload_per_method():
    assert main(["check", "--methods", "coop", "provp_ref", "--batch-size", "4"]) == 0
