"""``scaleprompt analyze variance``: UPT's statistics against hand computations, the frozen-feature cache, and the
command end to end (statistics, gains over zero-shot from crafted results.json files, fitted lines, the figure)."""

from __future__ import annotations

import csv
import json
import logging
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import save_file

from scaleprompt.analysis.features import (
    AnalysisError,
    class_text_embeddings,
    frozen_image_features,
)
from scaleprompt.analysis.variance import (
    FITS_COLUMNS,
    GAINS_COLUMNS,
    STATISTICS_COLUMNS,
    fit_line,
    inter_class_variance,
    intra_class_variance,
)
from scaleprompt.cli import main

ROOT = Path(__file__).resolve().parents[1]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
RGB = {"red": (220, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 220), "yellow": (230, 220, 40)}


def make_folder(root: Path, classes: list[str], n_test: int = 3, seed: int = 0) -> Path:
    """``root/{train,val,test}/<colour>/*.png``: noisy solid colours (1 train, 1 val, ``n_test`` test per class)."""
    rng = np.random.default_rng(seed)
    for split, n in (("train", 1), ("val", 1), ("test", n_test)):
        for name in classes:
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                noise = rng.normal(0, 40, (32, 32, 3))
                img = np.clip(np.array(RGB[name])[None, None, :] + noise, 0, 255).astype(np.uint8)
                Image.fromarray(img).save(folder / f"{i:03d}.png")
    return root


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


# ----------------------------------------------------------------------------------------------- statistics


def test_intra_class_variance_by_hand():
    # class 0: (1,0), (0,1): mu = (.5,.5), each squared distance .25 + .25 -> .5 (= 1 - |mu|^2)
    # class 1: (1,0), (1,0), (-1,0): mu = (1/3, 0), distances^2 4/9, 4/9, 16/9 -> mean 8/9 (= 1 - 1/9)
    # mean over classes (each class counts once, population 1/n_c): (1/2 + 8/9) / 2 = 25/36
    # (weighted by images it would be 11/15; with 1/(n_c - 1) it would be 7/6)
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 0.0], [-1.0, 0.0]])
    y = torch.tensor([0, 0, 1, 1, 1])
    assert intra_class_variance(x, y) == pytest.approx(25 / 36, abs=1e-12)
    assert intra_class_variance(x.numpy(), y.numpy()) == pytest.approx(25 / 36, abs=1e-12)  # arrays too
    # labels need not be 0..C-1 nor sorted; a class of one image contributes 0
    assert intra_class_variance(x[[4, 0, 1]], torch.tensor([7, 3, 3])) == pytest.approx(0.25, abs=1e-12)
    with pytest.raises(AnalysisError, match="features"):
        intra_class_variance(x, y[:3])


def test_inter_class_variance_by_hand():
    # w = (1,0), (0,1), (-1,0): mean (0, 1/3); squared distances 10/9, 4/9, 10/9 -> 8/9 (= 1 - |mean|^2)
    w = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    assert inter_class_variance(w) == pytest.approx(8 / 9, abs=1e-12)
    assert inter_class_variance(w[:1]) == 0.0  # one class: no spread


def test_fit_line_by_hand():
    assert fit_line([0, 1, 2], [1, 3, 5]) == pytest.approx((2.0, 1.0, 1.0))
    # x mean 1.5, y mean .5: sxy = 1, sxx = 5, syy = 1 -> slope .2, intercept .5 - .3 = .2, r = 1/sqrt(5)
    assert fit_line([0, 1, 2, 3], [0, 1, 0, 1]) == pytest.approx((0.2, 0.2, 1 / math.sqrt(5)))
    slope, intercept, r = fit_line([0, 1], [4, 4])  # constant y: a flat line, r undefined
    assert (slope, intercept) == (0.0, 4.0) and math.isnan(r)
    with pytest.raises(AnalysisError, match="at least 2 points"):
        fit_line([1.0], [2.0])
    with pytest.raises(AnalysisError, match="every x is"):
        fit_line([1.0, 1.0], [2.0, 3.0])


def test_class_text_embeddings_average_templates_then_renormalise(backbone2):
    names, templates = ["cat", "golden_retriever"], ["a photo of a {}.", "{}"]
    clip, tok = backbone2.model, backbone2.tokenizer
    with torch.no_grad():  # by hand, with open_clip's own encode_text
        per = [torch.nn.functional.normalize(clip.encode_text(tok([t.format(n.replace("_", " ")) for n in names])),
                                             dim=-1) for t in templates]  # fmt: skip
    expected = torch.nn.functional.normalize(per[0] + per[1], dim=-1)
    got = class_text_embeddings(backbone2, names, templates)
    assert got.shape == (2, 48) and got.dtype == torch.float32
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(class_text_embeddings(backbone2, names, ["{}"]), per[1], atol=1e-5, rtol=1e-5)


# ----------------------------------------------------------------------------------------------- feature cache


def test_feature_cache_hits_and_misses(tmp_path, backbone2, backbone12, caplog):
    data = make_folder(tmp_path / "colours", ["red", "green", "blue"])
    cache = tmp_path / "cache"
    caplog.set_level(logging.INFO, logger="scaleprompt")
    first = frozen_image_features(f"folder:{data}", backbone2, cache_dir=cache)
    assert not first.cache_hit
    assert first.features.shape == (9, 48) and first.features.dtype == torch.float32
    torch.testing.assert_close(first.features.norm(dim=-1), torch.ones(9))
    assert first.labels.dtype == torch.int64 and torch.bincount(first.labels).tolist() == [3, 3, 3]
    assert first.classnames == ("blue", "green", "red")
    info = first.describe()
    assert {k: info[k] for k in ("dataset", "split", "n_images", "n_classes", "model", "pretrained")} == {
        "dataset": "colours", "split": "test", "n_images": 9, "n_classes": 3, "model": "sp-tiny-vit",
        "pretrained": None,
    }  # fmt: skip
    # the features are the frozen CLIP's: open_clip's encode_image of the test transform, normalised
    with torch.no_grad():
        from scaleprompt.data.loader import ShardLoader

        info2 = backbone2.info
        batch = next(iter(ShardLoader(info["shards"], "test", batch_size=64, train=False, num_workers=0,
                                      image_size=info2.image_size, mean=info2.mean, std=info2.std)))  # fmt: skip
        by_hand = torch.nn.functional.normalize(backbone2.model.encode_image(batch.images), dim=-1)
    torch.testing.assert_close(first.features, by_hand, atol=1e-5, rtol=1e-5)
    path = Path(first.cache_file)
    assert path.parent == cache / "features" and path.suffix == ".safetensors"
    with safe_open(str(path), framework="pt") as fh:  # safetensors, keyed
        assert fh.metadata()["key"] == first.cache_key

    caplog.clear()
    second = frozen_image_features(f"folder:{data}", backbone2, cache_dir=cache)
    assert second.cache_hit and second.cache_key == first.cache_key
    assert torch.equal(second.features, first.features) and torch.equal(second.labels, first.labels)
    assert any("feature cache: hit" in r.getMessage() for r in caplog.records)
    # a hit really reads the file: features written there under the same key come back
    save_file(
        {"features": first.features * 0.5, "labels": first.labels},
        str(path),
        metadata={"key": first.cache_key},
    )
    assert torch.equal(frozen_image_features(f"folder:{data}", backbone2, cache_dir=cache).features,
                       first.features * 0.5)  # fmt: skip
    # a cached file that disagrees with the manifest's counts is computed again (and rewritten), never used
    save_file(
        {"features": first.features[:4], "labels": first.labels[:4]},
        str(path),
        metadata={"key": first.cache_key},
    )
    again = frozen_image_features(f"folder:{data}", backbone2, cache_dir=cache)
    assert not again.cache_hit and torch.equal(again.features, first.features)

    # any changed dependency misses: another split, another model, another image in the dataset
    val = frozen_image_features(f"folder:{data}", backbone2, split="val", cache_dir=cache)
    assert not val.cache_hit and val.cache_key != first.cache_key and val.n_images == 3
    other = frozen_image_features(f"folder:{data}", backbone12, cache_dir=cache)
    assert not other.cache_hit and other.cache_key != first.cache_key and other.cache_file != first.cache_file
    from scaleprompt.backbone import load_clip

    reseeded = frozen_image_features(f"folder:{data}", load_clip("sp-tiny-vit", init_seed=1), cache_dir=cache)
    assert not reseeded.cache_hit and reseeded.cache_key != first.cache_key  # same model name, other weights
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(data / "test" / "red" / "999.png")
    grown = frozen_image_features(f"folder:{data}", backbone2, cache_dir=cache)
    assert not grown.cache_hit and grown.n_images == 10 and grown.shards != first.shards
    assert len(list((cache / "features").glob("*.safetensors"))) == 5  # nothing overwritten but the bad file


# ----------------------------------------------------------------------------------------------- the command


def write_run(root: Path, method: str, dataset: str, seed: int, top1: float, zero_shot: float | None = None,
              backbone: str = "sp-tiny-vit", setting: str = "fewshot") -> Path:  # fmt: skip
    """A results.json as training writes it (test images: the 3 per class of :func:`make_folder`)."""

    def acc(top1: float, images: int) -> dict:
        return {"top1": top1, "mean_per_class": top1, "images": images}

    if setting == "base2new":  # (top1 = base; novel = base - 20)
        result: dict = {"base": acc(top1, 6), "novel": acc(top1 - 20, 6)}
        result["hm"] = 2 * top1 * (top1 - 20) / (2 * top1 - 20)
        zs = None
        if zero_shot is not None:
            zs = {"base": acc(zero_shot, 6), "novel": acc(zero_shot - 20, 6)}
            zs["hm"] = 2 * zero_shot * (zero_shot - 20) / (2 * zero_shot - 20)
    else:
        result = {"test": acc(top1, 9)}
        zs = {"test": acc(zero_shot, 9)} if zero_shot is not None else None
    data = {
        "format": "scaleprompt.run/3", "method": method, "dataset": dataset, "setting": setting, "shots": 1,
        "seed": seed, "backbone": backbone, "pretrained": None, "results": {"last": result}, "zero_shot": zs,
        "config": {"train": {"seed": seed}, "method": {"name": method}},
    }  # fmt: skip
    path = root / f"{method}-{dataset}-{setting}-seed{seed}" / "results.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    return path


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Three datasets with different classes (so the text statistic differs) and a shared shard / feature cache."""
    tmp = tmp_path_factory.mktemp("variance")
    specs = {
        "warm": make_folder(tmp / "warm", ["red", "yellow"], seed=1),
        "cool": make_folder(tmp / "cool", ["green", "blue", "red"], seed=2),
        "all4": make_folder(tmp / "all4", ["red", "green", "blue", "yellow"], seed=3),
    }
    return tmp, {name: f"folder:{path}" for name, path in specs.items()}, tmp / "cache"


def analyze(world, *args: str) -> int:
    _, specs, cache = world
    return main(["analyze", "variance", "--datasets", ",".join(specs.values()), "--model", "sp-tiny-vit",
                         "--cache-dir", str(cache), *args])  # fmt: skip


@pytest.mark.slow
def test_variance_command_end_to_end(world, tmp_path, caplog):
    tmp, specs, cache = world
    runs = tmp_path / "runs"
    # coop: 2 seeds on every dataset; zero-shot from zsclip runs on warm, recorded baselines elsewhere
    write_run(runs, "zsclip", "warm", 1, 40.0)
    write_run(runs, "zsclip", "warm", 2, 42.0)  # (zero-shot = mean of the zsclip runs: 41)
    coop = {"warm": (60.0, 64.0), "cool": (50.0, 55.0), "all4": (70.0, 71.0)}
    for ds, values in coop.items():
        for seed, v in enumerate(values, start=1):
            write_run(runs, "coop", ds, seed, v, zero_shot=None if ds == "warm" else 30.0 + seed)
    # vpt_deep: seed 1 on 2 datasets, seed 2 on one (its per-seed slope: seed 1 only)
    write_run(runs, "vpt_deep", "warm", 1, 45.0)
    write_run(runs, "vpt_deep", "cool", 1, 40.0, zero_shot=35.0)
    write_run(runs, "vpt_deep", "cool", 2, 44.0, zero_shot=35.0)
    out = tmp_path / "out"
    caplog.set_level(logging.INFO, logger="scaleprompt")
    assert analyze(world, "--results", str(runs), "--out", str(out)) == 0

    stats = {r["dataset"]: r for r in read_csv(out / "variance.csv")}
    assert list(read_csv(out / "variance.csv")[0]) == list(STATISTICS_COLUMNS)
    assert list(stats) == ["warm", "cool", "all4"]
    assert {(r["n_images"], r["n_classes"]) for r in stats.values()} == {("6", "2"), ("9", "3"), ("12", "4")}
    # the CSV's statistics are the hand formulas on the cached features and the template's text embeddings
    from scaleprompt.backbone import load_clip

    backbone = load_clip("sp-tiny-vit")
    for name, spec in specs.items():
        feats = frozen_image_features(spec, backbone, cache_dir=cache)
        assert feats.cache_hit
        x, y = feats.features.double(), feats.labels
        intra = np.mean([(1 - x[y == c].mean(0).norm() ** 2).item() for c in y.unique()])
        w = class_text_embeddings(backbone, feats.classnames, ["a photo of a {}."]).double()
        bare = class_text_embeddings(backbone, feats.classnames, ["{}"]).double()
        row = stats[name]
        assert (row["split"], row["model"], row["pretrained"], row["template"]) == ("test", "sp-tiny-vit", "",
                                                                                    "a photo of a {}.")  # fmt: skip
        assert float(row["intra_visual_variance"]) == pytest.approx(intra, abs=2e-6)
        assert float(row["inter_text_variance"]) == pytest.approx(1 - w.mean(0).norm().item() ** 2, abs=2e-6)
        assert float(row["inter_text_variance_bare"]) == pytest.approx(
            1 - bare.mean(0).norm().item() ** 2, abs=2e-6
        )
    assert any("feature cache: hit" in r.getMessage() for r in caplog.records)  # (the command computed them)

    gains = read_csv(out / "variance_gains.csv")
    assert list(gains[0]) == [*GAINS_COLUMNS, "gain_seed1", "gain_seed2"]  # (a column per seed of any row)
    by = {(g["method"], g["dataset"]): g for g in gains}
    assert sorted(by) == sorted([("coop", "warm"), ("coop", "cool"), ("coop", "all4"), ("vpt_deep", "warm"),
                                 ("vpt_deep", "cool")])  # fmt: skip
    g = by["coop", "warm"]  # zsclip: 41; gains 19, 23
    assert (g["zero_shot"], g["zero_shot_source"], g["per_seed_gains"]) == ("41.0000", "zsclip runs (2)",
                                                                            "1=19.0000;2=23.0000")  # fmt: skip
    assert float(g["gain_mean"]) == 21 and float(g["gain_std"]) == pytest.approx(math.sqrt(8), abs=1e-4)
    assert (g["accuracy_mean"], g["n_seeds"], g["metric"], g["setting"]) == (
        "62.0000",
        "2",
        "test top-1",
        "fewshot",
    )
    g = by["coop", "cool"]  # recorded baselines 31, 32: gains 19, 23 (seed by seed)
    assert g["zero_shot_source"] == "recorded baseline (eval.zero_shot_baseline)"
    assert (g["zero_shot"], g["per_seed_gains"]) == ("31.5000", "1=19.0000;2=23.0000")
    assert by["coop", "all4"]["per_seed_gains"] == "1=39.0000;2=39.0000"
    assert by["vpt_deep", "warm"]["per_seed_gains"] == "1=4.0000"
    assert (by["vpt_deep", "warm"]["gain_seed1"], by["vpt_deep", "warm"]["gain_seed2"]) == ("4.0000", "")
    assert (by["coop", "cool"]["gain_seed1"], by["coop", "cool"]["gain_seed2"]) == ("19.0000", "23.0000")
    assert float(by["coop", "all4"]["inter_text_variance"]) == float(stats["all4"]["inter_text_variance"])

    fits = read_csv(out / "variance_fits.csv")
    assert list(fits[0]) == [*FITS_COLUMNS, "slope_seed1", "slope_seed2"]
    assert [(f["method"], f["statistic"]) for f in fits] == [
        ("coop", "intra_visual_variance"), ("coop", "inter_text_variance"),
        ("vpt_deep", "intra_visual_variance"), ("vpt_deep", "inter_text_variance"),
    ]  # fmt: skip
    for f in fits:  # the line through the per-dataset mean gains, by hand
        mine = [r for r in gains if r["method"] == f["method"]]
        x = [float(stats[r["dataset"]][f["statistic"]]) for r in mine]
        slope, intercept, r = fit_line(x, [float(r["gain_mean"]) for r in mine])
        assert float(f["slope"]) == pytest.approx(slope, abs=1e-3, rel=1e-4)
        assert float(f["intercept"]) == pytest.approx(intercept, abs=1e-3, rel=1e-4)
        assert float(f["pearson_r"]) == pytest.approx(r, abs=1e-4)
        assert f["n_datasets"] == str(len(mine))
    coop_intra = fits[0]
    seeds = dict(s.split("=") for s in coop_intra["per_seed_slopes"].split(";"))
    assert list(seeds) == ["1", "2"]
    x = [float(stats[d]["intra_visual_variance"]) for d in ("warm", "cool", "all4")]
    assert float(seeds["1"]) == pytest.approx(fit_line(x, [19, 19, 39])[0], rel=1e-4)
    assert float(coop_intra["slope_seed1"]) == pytest.approx(float(seeds["1"]))
    assert float(coop_intra["slope_seed2"]) == pytest.approx(float(seeds["2"]))
    assert fits[2]["per_seed_slopes"].split("=")[0] == "1" and ";" not in fits[2]["per_seed_slopes"]
    assert fits[2]["slope_seed1"] != "" and fits[2]["slope_seed2"] == ""  # (seed 2: not on every dataset)
    assert (out / "variance_gain.png").read_bytes()[:8] == PNG_MAGIC


@pytest.mark.slow
def test_variance_statistics_only_and_base2new_gains(world, tmp_path):
    """Without --results: variance.csv only. Base-to-novel runs: the gain is in HM (the CSV says so)."""
    out = tmp_path / "plain"
    assert analyze(world, "--out", str(out)) == 0
    assert sorted(p.name for p in out.iterdir()) == ["variance.csv"]
    runs = tmp_path / "b2n"
    for ds in ("warm", "cool"):
        write_run(runs, "upt", ds, 1, 80.0 if ds == "warm" else 70.0, zero_shot=60.0, setting="base2new")
    assert analyze(world, "--results", str(runs), "--out", str(tmp_path / "o")) == 0
    gains = {g["dataset"]: g for g in read_csv(tmp_path / "o" / "variance_gains.csv")}
    hm = lambda b, n: 2 * b * n / (b + n)  # noqa: E731
    assert gains["warm"]["metric"] == "HM of base / novel top-1" and gains["warm"]["setting"] == "base2new"
    assert float(gains["warm"]["gain_mean"]) == pytest.approx(hm(80, 60) - hm(60, 40), abs=1e-4)
    assert float(gains["cool"]["gain_mean"]) == pytest.approx(hm(70, 50) - hm(60, 40), abs=1e-4)

    # two datasets with the same classes and template share the text statistic: no line there (nan, logged), the
    # visual one is fitted, the figure is drawn
    tmp, specs, cache = world
    twin = make_folder(tmp_path / "twin", ["red", "yellow"], seed=7)
    runs = tmp_path / "twins"
    for ds, top1 in (("warm", 60.0), ("twin", 70.0)):
        write_run(runs, "coop", ds, 1, top1, zero_shot=50.0)
    code = main(["analyze", "variance", "--datasets", f"{specs['warm']},folder:{twin}", "--model", "sp-tiny-vit",
                         "--cache-dir", str(cache), "--results", str(runs), "--out", str(tmp_path / "t")])  # fmt: skip
    assert code == 0
    fits = {f["statistic"]: f for f in read_csv(tmp_path / "t" / "variance_fits.csv")}
    assert (
        fits["inter_text_variance"]["slope"] == "nan" and fits["inter_text_variance"]["per_seed_slopes"] == ""
    )
    assert math.isfinite(float(fits["intra_visual_variance"]["slope"]))
    assert (tmp_path / "t" / "variance_gain.png").read_bytes()[:8] == PNG_MAGIC


@pytest.mark.slow
def test_bad_inputs_are_one_line_and_write_nothing(world, tmp_path, capsys):
    runs = tmp_path / "runs"
    for ds in ("warm", "cool"):
        write_run(runs, "coop", ds, 1, 60.0, zero_shot=40.0)
    write_run(runs, "vpt_deep", "warm", 1, 60.0, zero_shot=40.0)  # one dataset only
    lonely = tmp_path / "lonely"
    write_run(lonely, "coop", "elsewhere", 1, 60.0, zero_shot=40.0)
    write_run(lonely, "coop", "warm", 1, 60.0, zero_shot=40.0)
    other = tmp_path / "other"
    for ds in ("warm", "cool"):
        write_run(other, "coop", ds, 1, 60.0, zero_shot=40.0, backbone="sp-tiny-vit-12")
    no_zs = tmp_path / "nozs"
    for ds in ("warm", "cool"):
        write_run(no_zs, "coop", ds, 1, 60.0)
    out = tmp_path / "out"
    cases = [
        (["--results", str(runs)], "vpt_deep has runs on 1 dataset (warm): a line needs at least 2"),
        (["--results", str(runs), "--methods", "coop,upt"], "--methods upt: no run of upt"),
        (["--results", str(lonely)], "runs of elsewhere"),
        (
            ["--results", str(other)],
            "was trained on sp-tiny-vit-12/None, the statistics are asked for sp-tiny-vit/None",
        ),
        (["--results", str(no_zs)], "no zero-shot accuracy for coop on warm"),
        (["--results", str(tmp_path / "missing")], "--results: no such file or directory"),
    ]
    for extra, message in cases:
        assert analyze(world, *extra, "--out", str(out)) == 2, extra
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err, (extra, err)
        assert "Traceback" not in err
    missing = tmp_path / "nowhere"
    code = main(["analyze", "variance", "--datasets", f"{world[1]['warm']},folder:{missing}", "--model", "sp-tiny-vit",
                         "--cache-dir", str(tmp_path / "cache"), "--out", str(out)])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and str(missing) in err, err
    assert (
        not out.exists() and not (tmp_path / "cache").exists()
    )  # refused before anything was computed or written
    # the real console command: an unknown dataset is one line
    proc = subprocess.run([sys.executable, "-m", "scaleprompt.cli", "analyze", "variance", "--datasets", "NoSuchSet",
                           "--out", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert "unknown dataset 'NoSuchSet'" in proc.stderr and not out.exists()
