"""Published numbers beside ours: the packaged table (every number with its source), its loader's refusals, and
``scaleprompt results RUNS --published`` on crafted runs (expected differences computed by hand)."""

from __future__ import annotations

import csv
import fnmatch
import io
import json
import logging
import math
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from scaleprompt.commands.results import main
from scaleprompt.data.datasets import BENCHMARKS
from scaleprompt.report.published import PublishedError, load_published, packaged_path

ROOT = Path(__file__).resolve().parents[1]

# What the team found, as the brief lists it (method label, variant) -> (base, novel, hm): the packaged table must
# hold exactly these numbers (a silent edit of a published number fails here).
EXPECTED_B2N = {
    ("zero-shot CLIP", ""): (69.34, 74.22, 71.70),
    ("CoOp", "", "MaPLe"): (82.69, 63.22, 71.66),
    ("CoOp", "", "KgCoOp"): (82.63, 67.99, 74.60),
    ("CoCoOp", ""): (80.47, 71.69, 75.83),
    ("VPT-deep", "Deep Vision Prompting, 5 epochs"): (80.24, 73.43, 76.68),
    ("IVLP", "5 epochs"): (82.15, 74.07, 77.90),
    ("IVLP", "20 epochs"): (84.21, 71.79, 77.51),
    ("MaPLe", ""): (82.28, 75.14, 78.55),
    ("KgCoOp", ""): (80.73, 73.60, 77.00),
    ("PromptSRC", ""): (84.26, 76.10, 79.97),
    ("ProVP-Ref", ""): (85.20, 73.22, 78.76),
}


# ------------------------------------------------------------------------------------------- the packaged table


def test_packaged_table_loads_and_every_number_has_a_source():
    table = load_published()
    assert table.path == str(packaged_path())
    assert len(table.entries) == 12
    for e in table.entries:
        assert e.source.strip() and e.url.startswith("https://"), e
        assert e.datasets == tuple(BENCHMARKS) and e.dataset_set == "coop11"
        assert (e.backbone, e.pretrained, e.shots, e.metric) == ("ViT-B-16", "openai", 16, "top1")
        assert all(math.isfinite(v) and 0 <= v <= 100 for v in e.values.values())
        if not e.verified:
            assert "not checked against" in e.note
    b2n = [e for e in table.entries if e.setting == "base2new"]
    got = {}
    for e in b2n:
        key = (e.method, e.variant) if e.method != "CoOp" else (e.method, e.variant, e.source.split()[0])
        got[key] = (e.values["base"], e.values["novel"], e.values["hm"])
    assert got == EXPECTED_B2N
    (fewshot,) = [e for e in table.entries if e.setting == "fewshot"]
    assert (fewshot.method, fewshot.values, fewshot.verified) == ("ProVP-Ref", {"accuracy": 83.07}, False)
    # published labels -> scaleprompt methods; KgCoOp / PromptSRC are reference lines only
    mapping = {e.method: e.scaleprompt_method for e in table.entries}
    assert mapping == {
        "zero-shot CLIP": "zsclip", "CoOp": "coop", "CoCoOp": "cocoop", "VPT-deep": "vpt_deep", "IVLP": "ivlp",
        "MaPLe": "maple", "ProVP-Ref": "provp_ref", "KgCoOp": None, "PromptSRC": None,
    }  # fmt: skip
    assert [e.epochs for e in table.for_method("ivlp")] == [5, 20]
    provp_b2n = next(e for e in b2n if e.method == "ProVP-Ref")
    assert not provp_b2n.verified and "third-party README" in provp_b2n.note


def test_docs_methods_shows_the_same_numbers():
    """docs/methods.md's published figures are the packaged ones (a number changed in one place fails here)."""
    docs = (ROOT / "docs" / "methods.md").read_text()
    section = docs[docs.index("## Published figures") : docs.index("## Differences from the releases")]
    for e in load_published().entries:
        if e.setting == "base2new":
            shown = " | ".join(f"{e.values[k]:.2f}" for k in ("base", "novel", "hm"))
            assert f"| {shown} |" in section, e.label
        else:
            assert f"ProVP-Ref {e.values['accuracy']:.2f} %" in section
    assert section.count("**not verified**") == sum(not e.verified for e in load_published().entries)


def test_the_table_ships_as_package_data():
    package_data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    relative = packaged_path().relative_to(ROOT / "scaleprompt").as_posix()
    assert any(fnmatch.fnmatch(relative, pattern) for pattern in package_data["scaleprompt"])


# ------------------------------------------------------------------------------------------- a bad table


def _table() -> dict:
    return json.loads(packaged_path().read_text())


def _set(index: int, **fields):
    def mutate(data: dict) -> None:
        data["entries"][index].update(fields)

    return mutate


def _drop(index: int, key: str):
    def mutate(data: dict) -> None:
        del data["entries"][index][key]

    return mutate


def _duplicate(data: dict) -> None:
    data["entries"].append(dict(data["entries"][1]))


@pytest.mark.parametrize(
    "mutate,message",
    [
        (_drop(1, "source"), "entry 1 (CoOp): missing 'source'"),
        (_set(1, source="  "), "entry 1 (CoOp): 'source' is empty"),
        (_set(1, hm=72.5), "entry 1 (CoOp): 'hm' 72.50 is not 2·B·N/(B+N) = 71.66 of its base 82.69 and novel 63.22"),
        (_duplicate, "entry 12 (CoOp) repeats entry 1: the same method, variant, setting, backbone, shots and source"),
        (_set(3, novel=171.69), "entry 3 (CoCoOp): 'novel' must be a percentage in [0, 100], got 171.69"),
        (_set(0, base=float("nan")), "entry 0 (zero-shot CLIP): 'base' must be a percentage in [0, 100], got nan"),
        (_set(7, scaleprompt_method="mapel"), "entry 7 (MaPLe): 'scaleprompt_method' 'mapel' is not a scaleprompt method"),
        (_set(10, note=""), "entry 10 (ProVP-Ref): 'verified' is false: the 'note' must say"),
        (_set(2, seeds=3), "entry 2 (CoOp): unknown field 'seeds'"),
        (_set(2, datasets="coop12"), "entry 2 (CoOp): 'datasets' names 'coop12', which is not in 'dataset_sets'"),
        (_set(4, shots=True), "entry 4 (VPT-deep): 'shots' must be an integer, got True"),
    ],
)  # fmt: skip
def test_a_bad_table_is_refused_in_one_line_and_nothing_is_written(tmp_path, capsys, mutate, message):
    data = _table()
    mutate(data)
    bad = tmp_path / "published.json"
    bad.write_text(json.dumps(data))  # (NaN is written as NaN: Python's json reads it back)
    runs = tmp_path / "runs"
    make_b2n_runs(runs, "coop", BENCHMARKS)
    out = tmp_path / "out"
    assert main([str(runs), "--published-file", str(bad), "--out-dir", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"scaleprompt results: error: {bad}: {message}"), err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not out.exists()  # refused before any table was written
    with pytest.raises(
        PublishedError,
        match="repeats entry|missing|empty|not 2·B·N|percentage|not a scaleprompt|"
        "must say|unknown field|not in 'dataset_sets'|must be an integer",
    ):
        load_published(bad)


def test_the_command_refuses_a_bad_table_in_one_line(tmp_path):
    """A real process: exit code 2, one line on stderr naming the file and the entry, no traceback."""
    data = _table()
    data["entries"][5]["hm"] = 80.0
    bad = tmp_path / "published.json"
    bad.write_text(json.dumps(data))
    result = subprocess.run(
        [sys.executable, "-m", "scaleprompt.cli", "results", "--published-file", str(bad)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"scaleprompt results: error: {bad}: entry 5 (IVLP): 'hm' 80.00 is not 2·B·N/(B+N) = 77.90 of its base "
        "82.15 and novel 74.07 (tolerance 0.02)"
    ]


def test_a_table_that_is_not_json_or_not_there_is_one_line(tmp_path, capsys):
    bad = tmp_path / "published.json"
    bad.write_text("{")
    assert main(["--published-file", str(bad)]) == 2
    assert f"{bad}: not valid JSON" in capsys.readouterr().err
    assert main(["--published-file", str(tmp_path / "nope.json")]) == 2
    assert "nope.json: cannot read the published table" in capsys.readouterr().err
    bad.write_text(json.dumps({**_table(), "format": "scaleprompt.published/9"}))
    assert main(["--published"]) == 0  # the packaged one is fine
    assert main(["--published-file", str(bad)]) == 2
    assert "'format' must be 'scaleprompt.published/1'" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------- crafted runs


def _split(top1: float) -> dict[str, float]:
    return {"top1": top1, "mean_per_class": top1 - 1}


def _run(method, dataset, setting, last, seed=1, shots=16, backbone="ViT-B-16", pretrained="openai") -> dict:
    return {
        "format": "scaleprompt.run/1",
        "method": method,
        "dataset": dataset,
        "setting": setting,
        "shots": shots,
        "seed": seed,
        "backbone": backbone,
        "pretrained": pretrained,
        "world_size": 1,
        "epochs": 5,
        "best_val_epoch": None,
        "results": {"last": last},
        "config": {"train": {"seed": seed}},
        "timing": {"train_seconds": 1.0, "images_per_second": 2.0},
    }


def _write(root: Path, data: dict) -> None:
    name = f"{data['setting']}/{data['backbone']}/{data['method']}/{data['dataset']}/{data['shots']}/seed{data['seed']}"
    path = root / name / "results.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))


def make_b2n_runs(root: Path, method: str, datasets, values=None, **kw) -> None:
    """One seed per dataset; ``values``: dataset -> (base, novel), default (83, 64)."""
    for d in datasets:
        b, n = (values or {}).get(d, (83.0, 64.0))
        hm = round(2 * b * n / (b + n), 2)
        _write(root, _run(method, d, "base2new", {"base": _split(b), "novel": _split(n), "hm": hm}, **kw))


def make_fewshot_runs(root: Path, method: str, datasets, accuracy: float, shots: int = 16) -> None:
    for d in datasets:
        _write(root, _run(method, d, "fewshot", {"test": _split(accuracy)}, shots=shots))


def csv_records(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text)))


def test_published_beside_measured_base2new_on_all_11_datasets(tmp_path, caplog):
    runs = tmp_path / "runs"
    # coop: base 83 / novel 64 on 9 datasets, ImageNet 80 / 60 and Caltech101 86 / 68 -> averages 83.00 / 64.00,
    # HM of the averages 2·83·64/147 = 72.2721 (the per-dataset HMs' average would be 72.27 - not used)
    make_b2n_runs(runs, "coop", BENCHMARKS, {"ImageNet": (80.0, 60.0), "Caltech101": (86.0, 68.0)})
    make_b2n_runs(runs, "ivlp", BENCHMARKS, {d: (85.0, 70.0) for d in BENCHMARKS})  # HM 2·85·70/155 = 76.7742
    make_b2n_runs(runs, "upt", BENCHMARKS)  # no published number
    make_b2n_runs(runs, "maple", BENCHMARKS[:3])  # 3 of the 11
    make_b2n_runs(runs, "coop", ["MicroWorld"], backbone="sp-micro-clip", pretrained="microworld")
    plain, with_published = tmp_path / "plain", tmp_path / "published"
    assert main([str(runs), "--out-dir", str(plain)]) == 0
    with caplog.at_level(logging.INFO, logger="scaleprompt"):
        assert main([str(runs), "--out-dir", str(with_published), "--published"]) == 0

    # the measured tables and their CSV are byte for byte those of a run without --published
    for name in ("results_base2new.md", "results_base2new.csv"):
        assert (with_published / name).read_bytes() == (plain / name).read_bytes()
    measured_csv = (plain / "results_base2new.csv").read_text()
    assert "82.69" not in measured_csv and "published" not in measured_csv.lower()
    assert sorted(p.name for p in with_published.iterdir()) == [
        "published_vs_measured_base2new.csv", "published_vs_measured_base2new.md",
        "results_base2new.csv", "results_base2new.md",
    ]  # fmt: skip

    records = csv_records((with_published / "published_vs_measured_base2new.csv").read_text())
    got = {
        (r["method"], r["published_method"], r["published_variant"], r["source"].split()[0]): (
            r["measured_base"], r["published_base"], r["diff_base"],
            r["measured_novel"], r["published_novel"], r["diff_novel"],
            r["measured_hm"], r["published_hm"], r["diff_hm"],
        )
        for r in records
    }  # fmt: skip
    assert got == {
        # CoOp: two sources that disagree -> two rows, each with its own source
        ("coop", "CoOp", "", "MaPLe"): (
            "83.0000", "82.6900", "0.3100", "64.0000", "63.2200", "0.7800", "72.2721", "71.6600", "0.6121"),
        ("coop", "CoOp", "", "KgCoOp"): (
            "83.0000", "82.6300", "0.3700", "64.0000", "67.9900", "-3.9900", "72.2721", "74.6000", "-2.3279"),
        # IVLP at 5 and at 20 epochs: two rows, never averaged
        ("ivlp", "IVLP", "5 epochs", "MaPLe"): (
            "85.0000", "82.1500", "2.8500", "70.0000", "74.0700", "-4.0700", "76.7742", "77.9000", "-1.1258"),
        ("ivlp", "IVLP", "20 epochs", "PromptSRC"): (
            "85.0000", "84.2100", "0.7900", "70.0000", "71.7900", "-1.7900", "76.7742", "77.5100", "-0.7358"),
    }  # fmt: skip
    assert {r["backbone"] + "/" + r["pretrained"] for r in records} == {"ViT-B-16/openai"}
    assert {r["verified"] for r in records} == {"true"}

    md = (with_published / "published_vs_measured_base2new.md").read_text()
    assert md in caplog.text  # logged after the measured tables
    assert caplog.text.index("Published (source) vs measured") > caplog.text.index(
        "| coop | 83.00 | 64.00 | 72.27 |"
    )
    assert (
        "| coop | CoOp | 83.00 | 82.69 | +0.31 | 64.00 | 63.22 | +0.78 | 72.27 | 71.66 | +0.61 | 200 | MaPLe README"
        in md
    )
    assert (
        "| ivlp | IVLP (20 epochs) | 85.00 | 84.21 | +0.79 | 70.00 | 71.79 | -1.79 | 76.77 | 77.51 | -0.74 | 20 |"
        in md
    )
    assert "- Nothing comparable: upt: no published number for this method" in md
    assert (
        "- Nothing comparable: maple: measured on 3 of the 11 datasets of the published average (missing: "
        "StanfordCars, OxfordFlowers, Food101, FGVCAircraft, SUN397, DescribableTextures, EuroSAT, UCF101)"
        in md
    )
    assert (
        "- Nothing comparable: backbone sp-micro-clip (microworld): no published numbers (published: "
        "ViT-B-16 (openai))" in md
    )
    assert "KgCoOp |" not in md and "PromptSRC |" not in md  # reference lines match no measured cell


def test_published_fewshot_other_metric_and_transfer_say_why_or_compare(tmp_path):
    runs = tmp_path / "runs"
    make_fewshot_runs(runs, "provp_ref", BENCHMARKS, 84.0)  # 84.00 vs 83.07 (a secondary quote)
    make_fewshot_runs(runs, "provp_ref", BENCHMARKS[:2], 70.0, shots=1)  # no published 1-shot number
    make_fewshot_runs(runs, "coop", BENCHMARKS, 80.0)
    _write(
        runs,
        _run("coop", "ImageNet", "transfer", {"test": _split(71.0), "targets": {"ImageNetV2": _split(64.0)}}),
    )
    out = tmp_path / "out"
    assert main([str(runs), "--out-dir", str(out), "--published"]) == 0
    fewshot = (out / "published_vs_measured_fewshot.md").read_text()
    assert "| provp_ref | ProVP-Ref | 84.00 | 83.07 | +0.93 | — | UPrompt paper" in fewshot
    assert "not verified: as quoted by a later paper" in fewshot
    assert "- Nothing comparable: coop: no published number for this method" in fewshot
    assert "- Nothing comparable: 1-shot: no published numbers (published: 16-shot)" in fewshot
    (record,) = csv_records((out / "published_vs_measured_fewshot.csv").read_text())
    assert (record["diff_accuracy"], record["verified"]) == ("0.9300", "false")
    transfer = (out / "published_vs_measured_transfer.md").read_text()
    assert "Nothing comparable: Transfer from a source dataset to targets: no published numbers" in transfer

    # the papers report top-1: a mean-per-class table has nothing to compare
    assert (
        main(
            [
                str(runs / "fewshot"),
                "--out-dir",
                str(out / "mpc"),
                "--published",
                "--metric",
                "mean_per_class",
            ]
        )
        == 0
    )
    mpc = (out / "mpc" / "published_vs_measured_fewshot.md").read_text()
    assert "metric mean per-class accuracy (%): the published numbers are top-1 accuracy (%)" in mpc
    assert csv_records((out / "mpc" / "published_vs_measured_fewshot.csv").read_text()) == []


def test_published_alone_prints_the_table_with_its_sources(tmp_path, caplog, capsys):
    out = tmp_path / "out"
    with caplog.at_level(logging.INFO, logger="scaleprompt"):
        assert main(["--published", "--out-dir", str(out)]) == 0
    md = (out / "published.md").read_text()
    assert md in caplog.text
    assert "| IVLP (5 epochs) | ivlp | 5 | 82.15 | 74.07 | 77.90 | yes | MaPLe README" in md
    assert "| KgCoOp | — (not a scaleprompt method) | — | 80.73 | 73.60 | 77.00 | yes | KgCoOp README" in md
    assert "| ProVP-Ref | provp_ref | — | 85.20 | 73.22 | 78.76 | no | LightRA README" in md
    records = csv_records((out / "published.csv").read_text())
    assert len(records) == 12 and all(r["source"] and r["url"] for r in records)
    assert {r["n_datasets"] for r in records} == {"11"}
    # no runs and no --published: one line, exit 2
    assert main([]) == 2
    assert "no RUNS given" in capsys.readouterr().err
