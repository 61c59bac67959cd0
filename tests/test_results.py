"""Results aggregator: run JSONs -> mean ± std over seeds -> paper-style markdown / CSV tables.

Every expected number is computed by hand from the synthetic runs below.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

from scaleprompt.commands.results import main
from scaleprompt.report.aggregate import Stat, aggregate
from scaleprompt.report.load import load_runs
from scaleprompt.report.render import format_cell, to_csv, to_markdown
from scaleprompt.report.schema import ResultsError
from scaleprompt.report.tables import base2new_tables, fewshot_tables, make_tables, transfer_tables


def hm(b: float, n: float) -> float:
    return 2 * b * n / (b + n)


def split(top1: float) -> dict[str, float]:
    return {"top1": top1, "mean_per_class": top1 - 1}  # mean per class = top-1 - 1 throughout


def b2n_result(base: float, novel: float) -> dict:
    return {"val": split(50.0), "base": split(base), "novel": split(novel), "hm": round(hm(base, novel), 2)}


def run_json(
    method, dataset, seed, setting, last, best_val=None, shots=16, backbone="ViT-B-16", pretrained="openai"
):
    results = {"last": last} | ({"best_val": best_val} if best_val is not None else {})
    return {
        "format": "scaleprompt.run/1",
        "method": method,
        "dataset": dataset,
        "setting": setting,
        "shots": shots,
        "seed": seed,
        "backbone": backbone,
        "pretrained": pretrained,
        "world_size": 2,
        "epochs": 10,
        "best_val_epoch": 7 if best_val is not None else None,
        "results": results,
        "config": {"train": {"seed": seed}},
        "timing": {"train_seconds": 1.0, "images_per_second": 2.0},
    }


def write_run(root: Path, data: dict) -> Path:
    name = f"{data['setting']}/{data['method']}/{data['dataset']}/{data['shots']}shot-{data['backbone']}-{data['pretrained']}-seed{data['seed']}"
    path = root / name / "results.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    return path


# base-to-novel, top-1 (last epoch): method -> dataset -> [(base, novel) per seed 1, 2, 3]
B2N = {
    "coop": {"OxfordPets": [(80, 70), (82, 70), (84, 70)], "EuroSAT": [(90, 60), (90, 62), (90, 64)]},
    "provp_ref": {"OxfordPets": [(90, 80), (91, 81), (92, 82)], "EuroSAT": [(95, 70), (97, 72)]},  # 2 seeds
}


def make_b2n(root: Path) -> None:
    for method, per_dataset in B2N.items():
        for dataset, seeds in per_dataset.items():
            for seed, (b, n) in enumerate(seeds, start=1):
                # best_val = last + 1; provp_ref's OxfordPets seed 3 has no validation -> no best_val
                best = (
                    None
                    if (method, dataset, seed) == ("provp_ref", "OxfordPets", 3)
                    else b2n_result(b + 1, n + 1)
                )
                write_run(root, run_json(method, dataset, seed, "base2new", b2n_result(b, n), best))


def make_fewshot(root: Path) -> None:
    table = {  # (method, dataset, shots) -> test top-1 per seed
        ("coop", "OxfordPets", 1): [60, 62, 64], ("coop", "OxfordPets", 16): [80, 80, 80],
        ("coop", "Caltech101", 1): [70, 70, 70], ("coop", "Caltech101", 16): [90, 91, 92],
        ("provp_ref", "OxfordPets", 16): [85],
    }  # fmt: skip
    for (method, dataset, shots), values in table.items():
        for seed, v in enumerate(values, start=1):
            last = {"val": split(50.0), "test": split(v)}
            write_run(root, run_json(method, dataset, seed, "fewshot", last, shots=shots))


def make_transfer(root: Path) -> None:
    runs = {  # method -> per seed (source test, {target: top-1})
        "coop": [(71, {"ImageNetV2": 64, "ImageNetSketch": 46}), (72, {"ImageNetV2": 65, "ImageNetSketch": 47}),
                 (73, {"ImageNetV2": 66, "ImageNetSketch": 48})],
        "maple": [(70, {"ImageNetV2": 60}), (72, {"ImageNetV2": 62})],  # no ImageNetSketch
    }  # fmt: skip
    for method, seeds in runs.items():
        for seed, (test, targets) in enumerate(seeds, start=1):
            last = {
                "val": split(50.0),
                "test": split(test),
                "targets": {t: split(v) for t, v in targets.items()},
            }
            write_run(root, run_json(method, "ImageNet", seed, "transfer", last))


def by_key(rows):
    return {(r.method, r.dataset, r.shots): r for r in rows}


def md_row(markdown: str, method: str, title_part: str = "") -> list[str]:
    """Cells of ``method``'s line in the first table whose title contains ``title_part``."""
    section = next(s for s in markdown.split("### ")[1:] if title_part in s.splitlines()[0])
    line = next(ln for ln in section.splitlines() if ln.startswith(f"| {method} |"))
    return [c.strip() for c in line.strip("|").split("|")]


def md_header(markdown: str) -> list[str]:
    line = next(ln for ln in markdown.splitlines() if ln.startswith("| Method |"))
    return [c.strip() for c in line.strip("|").split("|")]


def csv_rows(text: str) -> dict[str, dict[str, str]]:
    return {r["method"]: r for r in csv.DictReader(io.StringIO(text))}


# ------------------------------------------------------------------------------------------- stats / aggregate


def test_stat_mean_and_sample_std():
    assert Stat.of([80, 82, 84]) == Stat(82.0, 2.0, 3)
    assert Stat.of([95, 97]) == Stat(96.0, pytest.approx(2**0.5), 2)
    assert Stat.of([77.5]) == Stat(77.5, 0.0, 1)  # one seed: std 0.0


def test_aggregate_base2new_means_stds_and_seed_counts(tmp_path):
    make_b2n(tmp_path)
    rows = aggregate(load_runs(tmp_path), selection="last", metric="top1")
    assert [(r.method, r.dataset) for r in rows] == [  # papers' order: methods, then datasets (Pets before EuroSAT)
        ("coop", "OxfordPets"), ("coop", "EuroSAT"), ("provp_ref", "OxfordPets"), ("provp_ref", "EuroSAT")
    ]  # fmt: skip
    got = by_key(rows)
    pets = got["coop", "OxfordPets", 16]
    assert pets.values["base"] == Stat(82.0, 2.0, 3)
    assert pets.values["novel"] == Stat(70.0, 0.0, 3)
    assert (
        pets.seeds == (1, 2, 3)
        and pets.n == 3
        and pets.backbone == "ViT-B-16"
        and pets.pretrained == "openai"
    )
    per_seed_hm = [80 * 70 * 2 / 150, 82 * 70 * 2 / 152, 84 * 70 * 2 / 154]
    assert pets.values["hm"].mean == pytest.approx(statistics.fmean(per_seed_hm))
    assert pets.values["hm"].std == pytest.approx(statistics.stdev(per_seed_hm))
    assert pets.hm_of_means == pytest.approx(2 * 82 * 70 / 152)  # 75.526...
    assert got["coop", "EuroSAT", 16].values["novel"] == Stat(62.0, 2.0, 3)
    euro = got["provp_ref", "EuroSAT", 16]
    assert euro.n == 2 and euro.values["base"] == Stat(96.0, pytest.approx(2**0.5), 2)


def test_aggregate_metric_mean_per_class_recomputes_hm(tmp_path):
    make_b2n(tmp_path)
    pets = by_key(aggregate(load_runs(tmp_path), metric="mean_per_class"))["coop", "OxfordPets", 16]
    assert pets.values["base"] == Stat(81.0, 2.0, 3) and pets.values["novel"] == Stat(69.0, 0.0, 3)
    assert pets.values["hm"].mean == pytest.approx(statistics.fmean([hm(79, 69), hm(81, 69), hm(83, 69)]))


def test_best_val_selection_and_runs_without_validation(tmp_path, caplog):
    make_b2n(tmp_path)
    runs = load_runs(tmp_path)
    with caplog.at_level(logging.WARNING, logger="scaleprompt"):
        got = by_key(aggregate(runs, selection="best_val"))
    assert got["coop", "OxfordPets", 16].values["base"] == Stat(83.0, 2.0, 3)  # best_val = last + 1
    pets = got["provp_ref", "OxfordPets", 16]
    assert pets.seeds == (1, 2) and pets.values["base"] == Stat(91.5, pytest.approx(0.5**0.5), 2)
    assert (
        "have no 'best_val' results" in caplog.text
        and "provp_ref/OxfordPets/16shot-ViT-B-16-openai-seed3" in caplog.text
    )
    assert all(r.selection == "best_val" for r in got.values())
    # the last-epoch view still has all three seeds of that group
    assert by_key(aggregate(runs, selection="last"))["provp_ref", "OxfordPets", 16].seeds == (1, 2, 3)


def test_aggregate_rejects_duplicate_seeds_and_bad_arguments(tmp_path):
    a = write_run(tmp_path / "a", run_json("coop", "OxfordPets", 1, "base2new", b2n_result(80, 70)))
    b = write_run(tmp_path / "b", run_json("coop", "OxfordPets", 1, "base2new", b2n_result(81, 70)))
    with pytest.raises(ResultsError, match="seed 1") as err:
        aggregate(load_runs([a, b]))
    assert str(a) in str(err.value) and str(b) in str(err.value)
    with pytest.raises(ValueError, match="selection"):
        aggregate(load_runs(a), selection="best_test")
    with pytest.raises(ValueError, match="metric"):
        aggregate(load_runs(a), metric="top5")


def test_different_pretrained_tags_are_different_backbones(tmp_path):
    for seed, tag in ((1, "openai"), (2, "laion2b_s34b_b79k")):
        write_run(
            tmp_path, run_json("coop", "OxfordPets", seed, "base2new", b2n_result(80, 70), pretrained=tag)
        )
    rows = aggregate(load_runs(tmp_path))
    assert sorted((r.pretrained, r.n) for r in rows) == [("laion2b_s34b_b79k", 1), ("openai", 1)]
    titles = [t.title for t in base2new_tables(rows)]
    assert len(titles) == 2 and any("ViT-B-16 (openai)" in t for t in titles)


def test_stored_hm_mismatch_is_logged(tmp_path, caplog):
    bad = run_json("coop", "OxfordPets", 1, "base2new", b2n_result(80, 70) | {"hm": 60.0})
    path = write_run(tmp_path, bad)
    with caplog.at_level(logging.WARNING, logger="scaleprompt"):
        (row,) = aggregate(load_runs(path))
    assert f"{path}: stored hm 60.00 differs" in caplog.text
    assert row.values["hm"].mean == pytest.approx(hm(80, 70))


# ------------------------------------------------------------------------------------------- tables


def test_base2new_markdown_table(tmp_path):
    make_b2n(tmp_path)
    markdown = to_markdown(make_tables(aggregate(load_runs(tmp_path)), "base2new"))
    title = markdown.splitlines()[0]
    assert title == (
        "### Base-to-novel generalization — ViT-B-16 (openai), 16-shot — top-1 accuracy (%) — selection: last epoch"
    )
    assert md_header(markdown) == [
        "Method", "Average Base", "Average Novel", "Average HM",
        "OxfordPets Base", "OxfordPets Novel", "OxfordPets HM", "EuroSAT Base", "EuroSAT Novel", "EuroSAT HM", "Seeds",
    ]  # fmt: skip
    pets_hm_std = statistics.stdev([hm(80, 70), hm(82, 70), hm(84, 70)])
    euro_hm_std = statistics.stdev([hm(90, 60), hm(90, 62), hm(90, 64)])
    # averages: Base (82 + 90) / 2 = 86, Novel (70 + 62) / 2 = 66, HM = 2*86*66/152 = 74.68 (HM of the averages;
    # the average of the per-dataset HMs would be (75.53 + 73.42) / 2 = 74.47)
    assert md_row(markdown, "coop") == [
        "coop", "86.00", "66.00", "74.68",
        "82.00 ± 2.00", "70.00 ± 0.00", f"75.53 ± {pets_hm_std:.2f}",
        "90.00 ± 0.00", "62.00 ± 2.00", f"{hm(90, 62):.2f} ± {euro_hm_std:.2f}", "3",
    ]  # fmt: skip
    assert f"{(hm(82, 70) + hm(90, 62)) / 2:.2f}" == "74.47"  # the discarded alternative differs
    provp = md_row(markdown, "provp_ref")
    assert provp[1:4] == ["93.50", "76.00", f"{hm(93.5, 76):.2f}"]  # (91 + 96) / 2, (81 + 71) / 2
    assert provp[7:9] == ["96.00 ± 1.41", "71.00 ± 1.41"] and provp[-1] == "2–3"
    assert "not the average of the per-dataset HMs" in markdown and "sample standard deviation" in markdown


def test_base2new_csv_has_separate_mean_std_and_counts(tmp_path):
    make_b2n(tmp_path)
    text = to_csv(base2new_tables(aggregate(load_runs(tmp_path))))
    rows = csv_rows(text)
    coop = rows["coop"]
    assert (coop["setting"], coop["selection"], coop["metric"]) == ("base2new", "last", "top1")
    assert (coop["backbone"], coop["pretrained"], coop["shots"]) == ("ViT-B-16", "openai", "16")
    assert (coop["OxfordPets Base mean"], coop["OxfordPets Base std"], coop["OxfordPets Base n_seeds"]) == (
        "82.0000", "2.0000", "3",
    )  # fmt: skip
    assert coop["OxfordPets HM mean"] == f"{hm(82, 70):.4f}"
    assert (coop["Average Base mean"], coop["Average HM mean"], coop["Average HM n_datasets"]) == (
        "86.0000", f"{hm(86, 66):.4f}", "2",
    )  # fmt: skip
    assert "Average Base std" not in coop  # averages carry no std
    assert rows["provp_ref"]["EuroSAT Novel std"] == f"{2**0.5:.4f}"


def test_base2new_best_val_title_and_partial_average(tmp_path):
    make_b2n(tmp_path)
    (tmp_path / "base2new/provp_ref/EuroSAT").rename(tmp_path / "elsewhere")  # provp_ref: OxfordPets only
    markdown = to_markdown(base2new_tables(aggregate(load_runs(tmp_path / "base2new"), selection="best_val")))
    assert "selection: best validation epoch" in markdown.splitlines()[0]
    assert "last epoch" not in markdown
    provp = md_row(markdown, "provp_ref")
    assert provp[1] == "91.50 (1/2)" and provp[7:10] == ["—", "—", "—"] and provp[-1] == "2"
    assert "(k/N)" in markdown


def test_fewshot_table(tmp_path):
    make_fewshot(tmp_path)
    tables = fewshot_tables(aggregate(load_runs(tmp_path)))
    markdown, text = to_markdown(tables), to_csv(tables)
    assert markdown.startswith(
        "### Few-shot classification — ViT-B-16 (openai) — top-1 accuracy (%) — selection: last epoch"
    )
    assert md_header(markdown) == [
        "Method", "Caltech101 1-shot", "Caltech101 16-shot", "OxfordPets 1-shot", "OxfordPets 16-shot",
        "Average 1-shot", "Average 16-shot", "Seeds",
    ]  # fmt: skip
    # averages per shot: 1-shot (70 + 62) / 2 = 66, 16-shot (91 + 80) / 2 = 85.5
    assert md_row(markdown, "coop") == [
        "coop", "70.00 ± 0.00", "91.00 ± 1.00", "62.00 ± 2.00", "80.00 ± 0.00", "66.00", "85.50", "3",
    ]  # fmt: skip
    assert md_row(markdown, "provp_ref") == [
        "provp_ref",
        "—",
        "—",
        "—",
        "85.00 ± 0.00",
        "—",
        "85.00 (1/2)",
        "1",
    ]
    rows = csv_rows(text)
    assert (
        rows["coop"]["OxfordPets 1-shot mean"] == "62.0000"
        and rows["coop"]["OxfordPets 1-shot std"] == "2.0000"
    )
    assert (
        rows["coop"]["Average 16-shot mean"] == "85.5000"
        and rows["provp_ref"]["Caltech101 1-shot mean"] == ""
    )
    assert "shots" not in rows["coop"]  # shots are columns here, not a key


def test_transfer_table(tmp_path):
    make_transfer(tmp_path)
    tables = transfer_tables(aggregate(load_runs(tmp_path)))
    markdown, text = to_markdown(tables), to_csv(tables)
    assert markdown.startswith(
        "### Transfer from a source dataset to targets — ViT-B-16 (openai), source ImageNet, 16-shot — "
        "top-1 accuracy (%) — selection: last epoch"
    )
    assert md_header(markdown) == [
        "Method", "ImageNet (source)", "ImageNetV2", "ImageNetSketch", "Average over targets", "Seeds"
    ]  # fmt: skip
    assert md_row(markdown, "coop") == ["coop", "72.00 ± 1.00", "65.00 ± 1.00", "47.00 ± 1.00", "56.00", "3"]
    assert md_row(markdown, "maple") == ["maple", "71.00 ± 1.41", "61.00 ± 1.41", "—", "61.00 (1/2)", "2"]
    coop = csv_rows(text)["coop"]
    assert (coop["source"], coop["ImageNet (source) mean"], coop["ImageNetV2 std"]) == (
        "ImageNet",
        "72.0000",
        "1.0000",
    )
    assert coop["Average over targets mean"] == "56.0000" and coop["Average over targets n_datasets"] == "2"


def test_format_cell_and_empty_tables():
    from scaleprompt.report.tables import Cell

    assert format_cell(Cell(82.0, 2.0, 3)) == "82.00 ± 2.00"
    assert format_cell(Cell(86.004, None, 2)) == "86.00" and format_cell(Cell()) == "—"
    assert to_markdown([]) == "" and make_tables([], "fewshot") == []
    with pytest.raises(ValueError, match="setting"):
        make_tables([], "zeroshot")


# ------------------------------------------------------------------------------------------- variants


def sweep_run(seed: int, *overrides: str, method: str = "provp_ref", stopped: int | None = None, base=80.0):
    """A base-to-novel OxfordPets run whose ``config`` is a real ``RunConfig.to_dict()`` (``key=value`` overrides);
    ``stopped``: a search trial stopped early by its scheduler after that many epochs."""
    from scaleprompt.engine.config import load_run_config

    data = run_json(method, "OxfordPets", seed, "base2new", b2n_result(base, 70))
    data["config"] = load_run_config(
        None, [f"method.name={method}", "eval.setting=base2new", f"train.seed={seed}", *overrides]
    ).to_dict()
    if stopped is not None:
        data["stopped_early"] = {"epoch": stopped, "of": 10, "reason": "asha"}
    return data


def write_sweep(root: Path, *runs: dict) -> list[Path]:
    """Each run in its own folder (trial0, trial1, ...): runs may share a seed."""
    return [write_run(root / f"trial{i}", data) for i, data in enumerate(runs)]


def test_same_seed_different_depth_are_two_variant_rows(tmp_path):
    write_sweep(
        tmp_path,
        sweep_run(0, "method.args.depth=2", base=80),
        sweep_run(0, "method.args.depth=4", base=84),
    )
    rows = aggregate(load_runs(tmp_path))  # no "two runs ... with seed 0"
    assert [(r.label, r.variant, r.seeds, r.values["base"].mean) for r in rows] == [
        ("provp_ref (depth=2)", "depth=2", (0,), 80.0),
        ("provp_ref (depth=4)", "depth=4", (0,), 84.0),
    ]
    tables = base2new_tables(rows)
    markdown, text = to_markdown(tables), to_csv(tables)
    assert md_row(markdown, "provp_ref (depth=2)")[4] == "80.00 ± 0.00"
    assert md_row(markdown, "provp_ref (depth=4)")[4] == "84.00 ± 0.00"
    assert "a variant — runs of this method" in markdown  # the note under the table
    got = list(csv.DictReader(io.StringIO(text)))
    assert [(r["method"], r["variant"], r["OxfordPets Base mean"]) for r in got] == [
        ("provp_ref", "depth=2", "80.0000"),
        ("provp_ref", "depth=4", "84.0000"),
    ]
    assert list(got[0])[:8] == [
        "setting", "selection", "metric", "backbone", "pretrained", "shots", "method", "variant",
    ]  # fmt: skip


def test_different_seeds_and_lr_are_not_averaged_together(tmp_path):
    # the silent-averaging bug: seeds 1 and 2 of DIFFERENT learning rates used to make one row of 2 seeds
    write_sweep(tmp_path, sweep_run(1, "optim.lr=0.05", base=80), sweep_run(2, "optim.lr=0.002", base=90))
    rows = aggregate(load_runs(tmp_path))
    assert [(r.label, r.n, r.values["base"]) for r in rows] == [
        ("provp_ref (lr=0.002)", 1, Stat(90.0, 0.0, 1)),
        ("provp_ref (lr=0.05)", 1, Stat(80.0, 0.0, 1)),
    ]


def test_sweep_label_has_every_differing_field_compactly(tmp_path):
    write_sweep(
        tmp_path,
        sweep_run(0, "method.args.depth=2", "optim.lr=0.05"),
        sweep_run(0, "method.args.depth=2", "optim.lr=0.0123456"),
        sweep_run(0, "method.args.depth=10", "optim.lr=0.05"),
        sweep_run(1, "method.args.depth=10", "optim.lr=0.05"),
    )
    rows = aggregate(load_runs(tmp_path))
    assert [(r.label, r.seeds) for r in rows] == [  # natural order: depth 2 before 10
        ("provp_ref (depth=2, lr=0.01235)", (0,)),  # 4 significant digits
        ("provp_ref (depth=2, lr=0.05)", (0,)),
        ("provp_ref (depth=10, lr=0.05)", (0, 1)),
    ]
    markdown = to_markdown(base2new_tables(rows))
    assert md_row(markdown, "provp_ref (depth=10, lr=0.05)")[-1] == "2"


def test_variant_labels_stay_distinct(tmp_path):
    # values equal to 4 significant digits: every digit is shown
    write_sweep(tmp_path / "a", sweep_run(0, "optim.lr=0.0123451"), sweep_run(0, "optim.lr=0.0123454"))
    assert [r.variant for r in aggregate(load_runs(tmp_path / "a"))] == ["lr=0.0123451", "lr=0.0123454"]
    # two differing fields with one last component: the whole dotted keys
    runs = []
    for seed, lr in ((0, 0.05), (1, 0.5)):
        data = run_json("coop", "OxfordPets", seed, "base2new", b2n_result(80, 70))
        data["config"] = {"optim": {"lr": lr}, "eval": {"lr": lr * 2}, "train": {"seed": seed}}
        runs.append(data)
    write_sweep(tmp_path / "b", *runs)
    assert [r.variant for r in aggregate(load_runs(tmp_path / "b"))] == [
        "optim.lr=0.05, eval.lr=0.1",
        "optim.lr=0.5, eval.lr=1",
    ]


def test_runs_differing_only_in_ignored_fields_are_one_row(tmp_path):
    write_sweep(
        tmp_path,
        sweep_run(1, "train.output_dir=runs/a", "train.log_every_steps=5", "data.root=/data", base=80),
        sweep_run(
            2, "train.output_dir=runs/b", "eval.batch_size=256", "train.checkpoint_every_epochs=3", base=82
        ),
        # the method's default given explicitly is the same configuration as the default left out
        sweep_run(3, "train.output_dir=runs/c", "method.args.n_ctx=50", base=84),
    )
    (row,) = aggregate(load_runs(tmp_path))
    assert (row.label, row.variant, row.seeds, row.values["base"]) == (
        "provp_ref",
        "",
        (1, 2, 3),
        Stat(82, 2, 3),
    )
    tables = base2new_tables([row])
    markdown, text = to_markdown(tables), to_csv(tables)
    assert md_row(markdown, "provp_ref")[-1] == "3"
    assert "variant" not in markdown and "variant" not in text.splitlines()[0]  # today's tables, unchanged


def test_ignored_fields_are_explicit():
    from scaleprompt.report.variants import VARIANT_IGNORED, ignored_fields

    assert ignored_fields("last") == VARIANT_IGNORED
    assert set(VARIANT_IGNORED) == {
        "train.seed", "train.output_dir", "train.log_every_steps", "train.report_to", "train.tensorboard",
        "train.checkpoint_every_epochs", "train.checkpoint_every_steps", "train.keep_checkpoints",
        "eval.every_epochs", "eval.batch_size", "eval.zero_shot_baseline", "eval.targets", "eval.targets_root",
        "data.cache_dir", "data.root", "data.shards", "data.max_bad_samples", "data.strict_classnames", "model.cache_dir",
        "model.grad_checkpointing", "model.text_chunk", "train.nonfinite", "train.max_nonfinite_skips",
        "train.checkpoint_on_signal", "data.allow_fewer_shots",
    }  # fmt: skip
    # optim.epochs and train.max_steps may change on resume, but they change what was trained
    assert "optim.epochs" not in VARIANT_IGNORED and "train.max_steps" not in VARIANT_IGNORED
    assert ignored_fields("best_val") == VARIANT_IGNORED - {"eval.every_epochs"}


def test_epochs_and_validation_frequency(tmp_path):
    write_sweep(tmp_path / "a", sweep_run(1, "optim.epochs=5"), sweep_run(2, "optim.epochs=10"))
    assert [r.variant for r in aggregate(load_runs(tmp_path / "a"))] == ["epochs=5", "epochs=10"]
    # eval.every_epochs cannot change the last epoch, but can change the best validation epoch
    runs = [sweep_run(1, "eval.every_epochs=1"), sweep_run(2, "eval.every_epochs=2")]
    for data in runs:
        data["results"]["best_val"] = b2n_result(81, 71)
    write_sweep(tmp_path / "b", *runs)
    assert [r.variant for r in aggregate(load_runs(tmp_path / "b"), selection="last")] == [""]
    assert [r.variant for r in aggregate(load_runs(tmp_path / "b"), selection="best_val")] == [
        "every_epochs=1",
        "every_epochs=2",
    ]


def test_stopped_early_run_is_its_own_variant(tmp_path):
    write_sweep(
        tmp_path,
        sweep_run(1, "optim.lr=0.05", base=80),
        sweep_run(2, "optim.lr=0.05", base=82),
        sweep_run(3, "optim.lr=0.05", stopped=1, base=50),
    )
    rows = aggregate(load_runs(tmp_path))
    assert [(r.label, r.seeds, r.values["base"].mean) for r in rows] == [
        ("provp_ref", (1, 2), 81.0),
        ("provp_ref (stopped at epoch 1)", (3,), 50.0),
    ]
    # with a config difference too
    write_sweep(tmp_path / "more", sweep_run(4, "optim.lr=0.5"), sweep_run(5, "optim.lr=0.5", stopped=2))
    rows = aggregate(load_runs(tmp_path))
    assert [(r.label, r.seeds) for r in rows] == [
        ("provp_ref (lr=0.05)", (1, 2)),
        ("provp_ref (lr=0.05; stopped at epoch 1)", (3,)),
        ("provp_ref (lr=0.5)", (4,)),
        ("provp_ref (lr=0.5; stopped at epoch 2)", (5,)),
    ]
    markdown = to_markdown(base2new_tables(rows))
    assert md_row(markdown, "provp_ref (lr=0.05; stopped at epoch 1)")[4] == "50.00 ± 0.00"
    assert "stopped early by its scheduler" in markdown
    # absent and null stopped_early are both a finished run
    finished = sweep_run(6, "optim.lr=0.5") | {"stopped_early": None}
    write_run(tmp_path / "more" / "null", finished)
    assert aggregate(load_runs(tmp_path / "more"))[0].seeds == (4, 6)


def test_same_seed_duplicate_within_a_variant_still_raises(tmp_path):
    a, b, _ = write_sweep(
        tmp_path,
        sweep_run(0, "method.args.depth=2", "train.output_dir=runs/a"),
        sweep_run(0, "method.args.depth=2", "train.output_dir=runs/b"),  # differs only in an ignored field
        sweep_run(0, "method.args.depth=4"),
    )
    with pytest.raises(ResultsError, match=r"provp_ref \(depth=2\) on OxfordPets .* with seed 0") as err:
        aggregate(load_runs(tmp_path))
    assert str(a) in str(err.value) and str(b) in str(err.value)


def test_results_names_and_skips_duplicate_runs_unless_asked_to_stop(tmp_path, caplog, capsys):
    """One configuration and seed twice (a copied folder, a rerun): one warning line per duplicate set naming the
    kept run (the path that sorts first, whatever the argument order) and the skipped ones; counted once.
    ``--duplicates error``: the old refusal, one line, exit code 2."""
    a = write_run(tmp_path / "a", run_json("coop", "OxfordPets", 1, "base2new", b2n_result(80, 70)))
    b = write_run(tmp_path / "b", run_json("coop", "OxfordPets", 1, "base2new", b2n_result(90, 70)))
    c = write_run(tmp_path / "c", run_json("coop", "OxfordPets", 1, "base2new", b2n_result(70, 70)))
    write_run(tmp_path / "a", run_json("coop", "OxfordPets", 2, "base2new", b2n_result(82, 70)))
    out = tmp_path / "tables"
    with caplog.at_level(logging.INFO, logger="scaleprompt"):
        assert (
            main([str(tmp_path / "c"), str(tmp_path / "b"), str(tmp_path / "a"), "--out-dir", str(out)]) == 0
        )
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [
        f"duplicate runs of base2new coop on OxfordPets (16 shots, ViT-B-16/openai) with seed 1: keeping {a}, "
        f"skipping {b}, {c} (--duplicates error stops instead)"
    ]
    row = md_row((out / "results_base2new.md").read_text(), "coop")
    assert row[1] == "81.00"  # the mean of seeds 1 (a: 80) and 2 (82), never b's 90 or c's 70
    assert main([str(tmp_path), "--duplicates", "error"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "with seed 1" in err and str(a) in err and str(b) in err


def test_variants_in_fewshot_and_transfer_tables(tmp_path):
    for seed, lr, v in ((1, 0.05, 80), (2, 0.05, 82), (1, 0.5, 60)):
        data = run_json("coop", "OxfordPets", seed, "fewshot", {"test": split(v)})
        data["config"] = {"optim": {"lr": lr}, "train": {"seed": seed}}
        write_run(tmp_path / "fs" / f"lr{lr}", data)
    markdown = to_markdown(fewshot_tables(aggregate(load_runs(tmp_path / "fs"))))
    assert md_row(markdown, "coop (lr=0.05)")[1:] == ["81.00 ± 1.41", "81.00", "2"]
    assert md_row(markdown, "coop (lr=0.5)")[1:] == ["60.00 ± 0.00", "60.00", "1"]
    for seed, stopped in ((1, None), (2, {"epoch": 3, "reason": "asha"})):
        last = {"test": split(70 + seed), "targets": {"ImageNetV2": split(60 + seed)}}
        data = run_json("coop", "ImageNet", seed, "transfer", last) | {"stopped_early": stopped}
        write_run(tmp_path / "tr", data)
    tables = transfer_tables(aggregate(load_runs(tmp_path / "tr")))
    markdown = to_markdown(tables)
    assert md_row(markdown, "coop")[1:3] == ["71.00 ± 0.00", "61.00 ± 0.00"]
    assert md_row(markdown, "coop (stopped at epoch 3)")[1:3] == ["72.00 ± 0.00", "62.00 ± 0.00"]
    assert [(r["method"], r["variant"]) for r in csv.DictReader(io.StringIO(to_csv(tables)))] == [
        ("coop", ""),
        ("coop", "stopped at epoch 3"),
    ]


# ------------------------------------------------------------------------------------------- loading errors


def test_load_runs_accepts_files_directories_and_globs(tmp_path):
    make_b2n(tmp_path / "b2n")
    make_fewshot(tmp_path / "fs")
    assert len(load_runs(tmp_path)) == 11 + 13  # directories are searched recursively
    assert len(load_runs(str(tmp_path / "b2n" / "**" / "coop" / "**" / "results.json"))) == 6  # a glob
    one = next((tmp_path / "fs").rglob("results.json"))
    runs = load_runs([one, tmp_path / "fs", str(one)])  # the same file reached three times is read once
    assert len(runs) == 13 and runs[0].source == str(one)
    with pytest.raises(FileNotFoundError, match="nothing-here"):
        load_runs(tmp_path / "nothing-here")
    with pytest.raises(FileNotFoundError, match="no run results match"):
        load_runs(str(tmp_path / "*.nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no results.json under"):
        load_runs(tmp_path / "empty")


def _good() -> dict:
    return run_json("coop", "OxfordPets", 1, "base2new", b2n_result(80, 70))


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d.update(format="scaleprompt.run/9"), "format is 'scaleprompt.run/9'"),
        (lambda d: d.pop("format"), "format is None"),
        (lambda d: d.pop("method"), "'method' must be a non-empty string"),
        (lambda d: d.update(setting="zeroshot"), "'setting' must be one of"),
        (lambda d: d.update(seed="1"), "'seed' must be an integer"),
        (lambda d: d["results"].pop("last"), "no 'last'"),
        (lambda d: d["results"]["last"].pop("novel"), "results.last has no 'novel'"),
        (lambda d: d["results"]["last"].pop("hm"), "results.last.hm must be a percentage"),
        (
            lambda d: d["results"]["last"]["base"].update(top1=0.95e3),
            "results.last.base.top1 must be a percentage",
        ),
        (lambda d: d["results"]["last"]["base"].pop("mean_per_class"), "base.mean_per_class must be"),
        (lambda d: d["results"].update(best_val={"base": split(80)}), "results.best_val has no 'novel'"),
    ],
)
def test_wrong_format_raises_value_error_naming_the_file(tmp_path, mutate, message):
    data = _good()
    mutate(data)
    path = tmp_path / "run" / "results.json"
    path.parent.mkdir()
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="results.json") as err:
        load_runs(tmp_path)
    assert str(err.value).startswith(str(path)) and message in str(err.value)


def test_transfer_without_targets_and_optional_val(tmp_path):
    last = {"test": split(70)}  # no val (run without validation) is fine, no targets is not
    path = write_run(tmp_path, run_json("coop", "ImageNet", 1, "transfer", last))
    with pytest.raises(ResultsError, match="targets must be a non-empty object"):
        load_runs(path)
    path.write_text(json.dumps(run_json("coop", "ImageNet", 1, "fewshot", {"test": split(70), "val": None})))
    assert load_runs(path)[0].result.results["last"].test.top1 == 70


@pytest.mark.parametrize("text", ["{not json", "", "[1, 2]", '"results"'])
def test_bad_json_raises_value_error_naming_the_file(tmp_path, text):
    path = tmp_path / "results.json"
    path.write_text(text)
    with pytest.raises(ValueError) as err:
        load_runs(path)
    assert str(err.value).startswith(f"{path}: not ")


# ------------------------------------------------------------------------------------------- CLI


def test_main_end_to_end_writes_one_md_and_csv_per_setting(tmp_path, caplog):
    runs = tmp_path / "runs"
    make_b2n(runs)
    make_fewshot(runs)
    make_transfer(runs)
    out = tmp_path / "tables"
    with caplog.at_level(logging.INFO, logger="scaleprompt"):
        assert main([str(runs), "--out-dir", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == [
        "results_base2new.csv",
        "results_base2new.md",
        "results_fewshot.csv",
        "results_fewshot.md",
        "results_transfer.csv",
        "results_transfer.md",
    ]
    b2n = (out / "results_base2new.md").read_text()
    assert md_row(b2n, "coop")[1:4] == ["86.00", "66.00", "74.68"] and "selection: last epoch" in b2n
    assert "| coop | 86.00 | 66.00 | 74.68 |" in caplog.text  # the markdown is logged
    assert csv_rows((out / "results_transfer.csv").read_text())["coop"]["ImageNetV2 mean"] == "65.0000"
    assert "selection: last epoch" in (out / "results_fewshot.md").read_text()

    assert (
        main(
            [
                str(runs / "base2new"),
                "--out-dir",
                str(out / "mpc"),
                "--selection",
                "best_val",
                "--metric",
                "mean_per_class",
            ]
        )
        == 0
    )
    md = (out / "mpc" / "results_base2new.md").read_text()
    assert "mean per-class accuracy (%) — selection: best validation epoch" in md and "last epoch" not in md
    assert md_row(md, "coop")[4] == "82.00 ± 2.00"  # best_val base = last + 1 = 81..85, minus 1 for per-class
    assert sorted(p.name for p in (out / "mpc").iterdir()) == ["results_base2new.csv", "results_base2new.md"]


def test_main_errors_name_the_file(tmp_path, capsys):
    make_fewshot(tmp_path)
    bad = tmp_path / "broken" / "results.json"
    bad.parent.mkdir()
    bad.write_text("{")
    assert main([str(tmp_path), "--out-dir", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert (
        f"{bad}: not valid JSON" in err
        and len(err.strip().splitlines()) == 1
        and not (tmp_path / "out").exists()
    )
    # fewshot runs here have no best_val at all
    assert main([str(tmp_path / "fewshot"), "--selection", "best_val"]) == 2
    assert "none of the 13 runs has 'best_val' results" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([str(tmp_path), "--selection", "best_test"])


def test_the_results_command_runs_in_its_own_process(tmp_path):
    make_transfer(tmp_path / "runs")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "scaleprompt.cli",
            "results",
            str(tmp_path / "runs"),
            "--out-dir",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "| coop | 72.00 ± 1.00 | 65.00 ± 1.00 | 47.00 ± 1.00 | 56.00 | 3 |" in result.stderr
    assert (tmp_path / "results_transfer.md").is_file()


# ------------------------------------------------------------------------------------------- same test data


def with_images(data: dict, **counts: int) -> dict:
    """``data`` with ``images`` set per split of its last results (``novel=1``; ``ImageNetV2=1`` for a target)."""
    last = data["results"]["last"]
    for split, n in counts.items():
        (last[split] if split in last else last["targets"][split])["images"] = n
    return data


def test_seeds_tested_on_different_images_are_refused_in_one_line(tmp_path, capsys):
    """The issue's case: one seed scored on 1 test image, two on 1600, in one cell: never a mean of the three."""
    paths = [
        write_run(
            tmp_path, with_images(run_json("coop", "OxfordPets", seed, "fewshot", {"test": split(v)}), test=n)
        )
        for seed, v, n in [(1, 80.0, 1600), (2, 100.0, 1), (3, 82.0, 1600)]
    ]
    out = tmp_path / "tables"
    assert main([str(tmp_path), "--out-dir", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.strip().splitlines() == [
        "scaleprompt results: error: fewshot coop on OxfordPets (16 shots, ViT-B-16/openai): its runs were tested on "
        f"different data, not averaged: test split with 1 image ({paths[1]}); 1600 images ({paths[0]}, {paths[2]}); "
        "pass only the runs of one test set, or rerun the others on it"
    ]
    assert not out.exists()
    rows = aggregate(load_runs([paths[0], paths[2]]))  # the runs of one test set: averaged
    assert [(r.n, r.values["test"].mean) for r in rows] == [(2, 81.0)]


def test_base_novel_and_transfer_target_counts_are_compared_split_by_split(tmp_path):
    b2n = [
        with_images(run_json("coop", "EuroSAT", s, "base2new", b2n_result(90, 60)), base=500, novel=n)
        for s, n in [(1, 400), (2, 399)]
    ]
    with pytest.raises(ResultsError, match=r"base2new coop on EuroSAT .*: novel split with 399 images \("):
        aggregate(b2n)
    targets = {"test": split(70), "targets": {"ImageNetV2": split(60), "ImageNetSketch": split(50)}}
    transfer = [
        with_images(
            run_json("coop", "ImageNet", s, "transfer", json.loads(json.dumps(targets))),
            test=50000,
            ImageNetV2=10000,
            ImageNetSketch=n,
        )
        for s, n in [(1, 50889), (2, 50889), (3, 2)]
    ]
    with pytest.raises(
        ResultsError, match=r"target ImageNetSketch split with 2 images \(<run 2>\); 50889 images"
    ):
        aggregate(transfer)
    transfer[2]["results"]["last"]["targets"]["ImageNetSketch"]["images"] = 50889
    assert [r.n for r in aggregate(transfer)] == [3]


def test_test_counts_only_bind_the_seeds_of_one_cell(tmp_path):
    """Different variants (a sweep's trials) may be tested on different sets: each is its own row; a run that
    recorded no count (scaleprompt.run/1) is not compared."""
    runs = [
        with_images(sweep_run(0, "optim.lr=0.05"), base=10, novel=10),
        with_images(sweep_run(0, "optim.lr=0.002"), base=500, novel=400),
    ]
    assert [r.label for r in aggregate(runs)] == ["provp_ref (lr=0.002)", "provp_ref (lr=0.05)"]
    old = [run_json("coop", "OxfordPets", s, "fewshot", {"test": split(80)}) for s in (1, 2)]
    assert [r.n for r in aggregate([with_images(old[0], test=1600), old[1]])] == [2]


def test_a_run_trained_on_fewer_shots_than_its_label_is_its_own_variant(tmp_path):
    """data.allow_fewer_shots: a "16-shot" run whose classes had 10-12 training images is never averaged with the
    real 16-shot seeds; its row says how many shots per class it had."""
    short = sweep_run(3, base=60)
    short["data"] = {"train_shots_per_class": {"min": 10, "max": 12}}
    full = sweep_run(2, base=82)
    full["data"] = {"train_shots_per_class": {"min": 16, "max": 16}}
    write_sweep(tmp_path, sweep_run(1, base=80), full, short)
    rows = aggregate(load_runs(tmp_path))
    assert [(r.label, r.seeds, r.values["base"].mean) for r in rows] == [
        ("provp_ref", (1, 2), 81.0),
        ("provp_ref (10-12 of 16 shots per class)", (3,), 60.0),
    ]
