"""``scaleprompt predict``: files, folders and globs in, one JSON line / CSV row per image out, in batches."""

from __future__ import annotations

import csv
import json
import logging
import os
from pathlib import Path

import pytest
import torch
from PIL import Image

from scaleprompt.cli import main
from scaleprompt.predict import Predictor, expand_inputs

CLASSES = ["red", "green", "blue", "yellow"]
COLORS = [(220, 30, 30), (30, 200, 30), (30, 30, 220), (230, 220, 40), (120, 120, 120)]


@pytest.fixture(scope="module")
def prompts(tmp_path_factory) -> Path:
    """CoOp prompts (untrained) on the tiny random backbone: the file records the backbone, so it rebuilds."""
    from scaleprompt.backbone import load_clip
    from scaleprompt.methods import build, save_prompts

    torch.manual_seed(0)
    backbone = load_clip("sp-tiny-vit", None)
    folder = tmp_path_factory.mktemp("prompts")
    save_prompts(build("coop", backbone, CLASSES, n_ctx=4, class_specific=True), folder / "csc.safetensors")
    return save_prompts(build("coop", backbone, CLASSES, n_ctx=4), folder / "prompts.safetensors")


def image(path: Path, i: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (24 + i, 20), COLORS[i % len(COLORS)]).save(path)
    return path


@pytest.fixture
def photos(tmp_path) -> Path:
    """``photos/``: 3 images at the top (one upper-case suffix), 2 in a nested subfolder, a hidden one and a text
    file (both ignored); ``more/``: 2 JPEGs and a PNG outside; ``single.png``."""
    root = tmp_path / "photos"
    for i, name in enumerate(["b.png", "a.jpg", "C.PNG", "sub/deeper/e.bmp", "sub/d.webp"]):
        image(root / name, i)
    image(root / ".hidden" / "x.png", 0)
    (root / "notes.txt").write_text("not an image")
    for i, name in enumerate(["more/k.jpg", "more/nested/j.jpg", "more/z.png"]):
        image(tmp_path / name, i + 1)
    image(tmp_path / "single.png", 4)
    return tmp_path


def records(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines()]


def test_a_folder_a_glob_and_a_file_give_a_sorted_deduplicated_list(photos):
    root = photos / "photos"
    expected = [root / n for n in ["C.PNG", "a.jpg", "b.png", "sub/d.webp", "sub/deeper/e.bmp"]]
    expected += [photos / "more/k.jpg", photos / "more/nested/j.jpg", photos / "single.png"]
    inputs = [root, f"{photos}/more/**/*.jpg", photos / "single.png", root / "a.jpg"]  # a.jpg: already there
    assert expand_inputs(inputs) == expected
    assert expand_inputs(inputs) == expand_inputs(inputs)
    more = photos / "more"  # a folder a pattern matches gives its images
    assert expand_inputs([f"{more}/*"]) == [more / "k.jpg", more / "nested/j.jpg", more / "z.png"]
    notes = root / "notes.txt"
    assert expand_inputs([notes]) == [notes]  # a file named explicitly is read whatever it is


def test_jsonl_records_go_to_stdout_and_nothing_else(prompts, photos, capsys):
    inputs = [str(photos / "photos"), f"{photos}/more/**/*.jpg", str(photos / "single.png")]
    assert main(["predict", str(prompts), *inputs]) == 0
    out = records(capsys.readouterr().out)
    assert [r["path"] for r in out] == [str(p) for p in expand_inputs(inputs)] and len(out) == 8
    for r in out:
        assert len(r["top"]) == 3  # the default top 3
        assert {t["class"] for t in r["top"]} <= set(CLASSES)
        probs = [t["prob"] for t in r["top"]]
        assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1 + 1e-6


def test_csv_output_file_has_path_and_k_class_prob_columns(prompts, photos, capsys):
    out = photos / "results" / "predictions.csv"
    assert main(["predict", str(prompts), str(photos / "photos"), "--output", str(out), "--top-k", "2"]) == 0
    assert capsys.readouterr().out == ""
    with open(out, newline="") as fh:
        rows = list(csv.reader(fh))
    assert rows[0] == ["path", "class_1", "prob_1", "class_2", "prob_2"]
    assert [r[0] for r in rows[1:]] == [str(p) for p in expand_inputs([photos / "photos"])]
    assert all(r[1] in CLASSES and r[3] in CLASSES and float(r[2]) >= float(r[4]) for r in rows[1:])
    single = str(photos / "single.png")  # --format wins over the suffix
    assert main(["predict", str(prompts), single, "-o", str(out), "--format", "jsonl"]) == 0
    assert records(out.read_text())[0]["path"] == str(photos / "single.png")


def test_batches_give_the_probabilities_of_one_batch_with_a_bar_only_for_many(prompts, photos, capsys):
    inputs = [str(photos / "photos"), str(photos / "more")]

    def run(batch_size: int) -> tuple[list[dict], str]:
        assert main(["predict", str(prompts), *inputs, "--batch-size", str(batch_size), "--top-k", "4"]) == 0
        captured = capsys.readouterr()
        return records(captured.out), captured.err

    small, small_err = run(2)
    one, one_err = run(64)
    assert [r["path"] for r in small] == [r["path"] for r in one] and len(one) == 8
    for a, b in zip(small, one, strict=True):
        pa, pb = ({t["class"]: t["prob"] for t in r["top"]} for r in (a, b))
        assert pa.keys() == pb.keys() == set(CLASSES)
        assert all(abs(pa[c] - pb[c]) < 1e-6 for c in CLASSES)
    assert "8/8" in small_err and "8/8" not in one_err  # the tqdm bar on stderr, only for several batches
    # the Python API agrees
    predictor = Predictor(prompts)
    files = expand_inputs(inputs)
    top = predictor.classify_files(files, top_k=4)
    for pairs, r in zip(top, one, strict=True):
        assert [name for name, _ in pairs] == [t["class"] for t in r["top"]]
        assert [p for _, p in pairs] == pytest.approx([t["prob"] for t in r["top"]], abs=1e-6)
    images = []
    for f in files:
        with Image.open(f) as img:
            images.append(img.convert("RGB"))
    best = predictor.probabilities(images).argmax(dim=-1).tolist()
    assert [CLASSES[i] for i in best] == [t[0][0] for t in top]


def test_top_k_is_capped_at_the_number_of_classes(prompts, photos, capsys):
    assert main(["predict", str(prompts), str(photos / "single.png"), "--top-k", "50"]) == 0
    (record,) = records(capsys.readouterr().out)
    assert sorted(t["class"] for t in record["top"]) == sorted(CLASSES)
    assert sum(t["prob"] for t in record["top"]) == pytest.approx(1, abs=1e-5)
    out = photos / "p.csv"
    assert main(["predict", str(prompts), str(photos / "single.png"), "--top-k", "50", "-o", str(out)]) == 0
    assert out.read_text().splitlines()[0].endswith("class_4,prob_4")


def test_new_classnames_replace_the_files_classes(prompts, photos, capsys):
    assert main(["predict", str(prompts), str(photos / "photos"), "--classnames", "cat,dog_breed"]) == 0
    out = records(capsys.readouterr().out)
    assert len(out) == 5 and all({t["class"] for t in r["top"]} == {"cat", "dog breed"} for r in out)
    names = photos / "names.txt"
    names.write_text("apple\n\nbanana\n  \ncherry\n")
    assert main(["predict", str(prompts), str(photos / "single.png"), "--classnames-file", str(names)]) == 0
    assert {t["class"] for t in records(capsys.readouterr().out)[0]["top"]} == {"apple", "banana", "cherry"}
    # class-specific context belongs to its training classes: the method refuses, in one line
    csc = prompts.parent / "csc.safetensors"
    assert main(["predict", str(csc), str(photos / "single.png"), "--classnames", "a,b,c,d"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("scaleprompt: error: ") and "class-specific" in err and len(err.splitlines()) == 1


@pytest.mark.parametrize(
    "given,message",
    [
        ("missing.png", "image input not found: {}"),
        ("empty", "folder {} holds no image file"),
        ("photos/*.gif", "glob pattern '{}' matches no image file"),
    ],
)
def test_a_bad_input_is_named_in_one_line_with_exit_code_2(prompts, photos, capsys, given, message):
    (photos / "empty" / "sub").mkdir(parents=True)
    (photos / "empty" / "sub" / "readme.txt").write_text("no images")
    bad = f"{photos}/{given}"
    assert main(["predict", str(prompts), str(photos / "single.png"), bad]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith(f"scaleprompt: error: {message.format(bad)}")
    assert len(captured.err.splitlines()) == 1


def test_a_corrupt_image_is_named_or_skipped_with_skip_bad(prompts, photos, capsys, caplog):
    bad = photos / "photos" / "sub" / "broken.jpg"
    bad.write_bytes(b"\xff\xd8 not really a jpeg")
    out = photos / "p.jsonl"
    assert main(["predict", str(prompts), str(photos / "photos"), "-o", str(out), "--batch-size", "2"]) == 2
    err = capsys.readouterr().err.splitlines()[-1]  # (after the progress bar)
    assert err.startswith(f"scaleprompt: error: cannot read image {bad}: ") and "--skip-bad" in err
    assert not out.exists()  # written atomically: no half file
    partial = photos / "p.jsonl.partial"  # nothing already predicted is lost: the first batch's 2 records
    assert err.endswith(f"(the 2 records written before it are kept in {partial})")
    assert [r["path"] for r in records(partial.read_text())] == [
        str(photos / "photos" / n) for n in ("C.PNG", "a.jpg")
    ]
    with caplog.at_level(logging.WARNING, logger="scaleprompt"):
        assert main(["predict", str(prompts), str(photos / "photos"), "-o", str(out), "--skip-bad"]) == 0
    paths = [r["path"] for r in records(out.read_text())]
    assert len(paths) == 5 and str(bad) not in paths
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(str(bad) in w for w in warnings) and any("skipped 1 unreadable" in w for w in warnings)


def test_a_file_name_that_is_not_utf8_is_written_readably_in_csv_and_jsonl(prompts, tmp_path, capsys):
    """A real file whose name holds the byte 0xE9 (Latin-1 "é"; before: UnicodeEncodeError, every prediction
    lost): the name is written with that byte as ``\\xe9``, the other records as they are."""
    folder = tmp_path / "imgs"
    image(folder / "a.png", 0)
    odd = os.fsdecode(os.path.join(os.fsencode(folder), b"caf\xe9.png"))  # (surrogate-escaped in Python)
    image(Path(odd), 1)
    assert os.path.exists(os.path.join(os.fsencode(folder), b"caf\xe9.png"))
    shown = f"{folder}/caf\\xe9.png"
    out = tmp_path / "x.csv"
    assert main(["predict", str(prompts), str(folder), "--output", str(out)]) == 0
    with open(out, newline="", encoding="utf-8") as fh:
        assert [r[0] for r in csv.reader(fh)][1:] == [str(folder / "a.png"), shown]
    assert main(["predict", str(prompts), str(folder)]) == 0  # JSON lines on stdout
    assert [r["path"] for r in records(capsys.readouterr().out)] == [str(folder / "a.png"), shown]


def test_predict_reads_a_16_bit_png_as_its_8_bit_values(prompts, tmp_path):
    """predict decodes images like training does (scaleprompt.data.images): a 16-bit PNG is its values >> 8, not
    convert("RGB")'s near-white clip."""
    import numpy as np
    from PIL import Image

    from scaleprompt.predict import Predictor

    values = (np.arange(32 * 32, dtype=np.int64).reshape(32, 32) * 64 + 31).astype(np.uint16)
    Image.fromarray(values).save(tmp_path / "deep.png")
    Image.fromarray(np.repeat((values >> 8).astype(np.uint8)[..., None], 3, axis=2)).save(
        tmp_path / "eight.png"
    )
    predictor = Predictor(prompts)
    torch.testing.assert_close(predictor.load_image(tmp_path / "deep.png"), predictor.load_image(tmp_path / "eight.png"),
                               rtol=0, atol=0)  # fmt: skip
    with Image.open(tmp_path / "deep.png") as img:
        assert img.mode.startswith("I")
        torch.testing.assert_close(
            predictor.probabilities([img]), predictor.probabilities([Image.open(tmp_path / "eight.png")])
        )
