"""Prompt files a reader can verify: the ``tensors_sha256`` checksum, refused damaged / non-finite / badly described
files (one line naming the file), older files without a checksum (one warning per file)."""

from __future__ import annotations

import hashlib
import json
import logging
import struct
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from scaleprompt.cli import main
from scaleprompt.methods import build, load_prompts, save_prompts
from scaleprompt.methods.io import PromptFileError, open_prompt_file, read_prompt_file, verify_prompt_tensors

CLASSES = ["red", "green", "blue"]


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> Path:
    """UPT prompts (several tensors of several shapes) on the tiny backbone, as ``save_prompts`` writes them."""
    from scaleprompt.backbone import load_clip

    torch.manual_seed(0)
    method = build("upt", load_clip("sp-tiny-vit", None), CLASSES, n_ctx=2)
    return save_prompts(method, tmp_path_factory.mktemp("saved") / "prompts.safetensors")


def header_of(path: Path) -> tuple[dict, bytes]:
    """The safetensors header (a dict) and the data bytes of a file."""
    blob = path.read_bytes()
    (length,) = struct.unpack("<Q", blob[:8])
    return json.loads(blob[8 : 8 + length]), blob[8 + length :]


def rewrite(path: Path, out: Path, header: dict, data: bytes) -> Path:
    """A safetensors file with ``header`` (edited by a test) over ``data``."""
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    out.write_bytes(struct.pack("<Q", len(text)) + text + data)
    return out


def with_metadata(path: Path, out: Path, **entries) -> Path:
    """A copy of ``path`` whose metadata entries are replaced (``None``: removed); the tensor data is untouched."""
    header, data = header_of(path)
    for key, value in entries.items():
        if value is None:
            header["__metadata__"].pop(key)
        else:
            header["__metadata__"][key] = value
    return rewrite(path, out, header, data)


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if "error:" in line]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_the_checksum_is_the_documented_hash_of_the_tensor_data(saved):
    """Recomputed here from the module docstring's definition: for each tensor in name order, the JSON of
    [name, dtype, shape, nbytes], a newline, then the tensor's bytes as stored."""
    digest = hashlib.sha256()
    with safe_open(str(saved), framework="pt") as fh:
        recorded = fh.metadata()["tensors_sha256"]
        header, data = header_of(saved)
        for name in sorted(fh.keys()):  # noqa: SIM118 - safe_open has no __iter__
            entry = header[name]
            begin, end = entry["data_offsets"]
            raw = fh.get_tensor(name).contiguous().view(-1).view(torch.uint8).numpy().tobytes()
            assert raw == data[begin:end]  # (little-endian, row-major: the bytes as the file holds them)
            digest.update(
                json.dumps(
                    [name, entry["dtype"], entry["shape"], end - begin], separators=(",", ":")
                ).encode()
            )
            digest.update(b"\n" + raw)
    assert len(header) - 1 >= 3 and recorded == digest.hexdigest()
    file = open_prompt_file(saved)
    assert file.checksum == "verified" and file.sha256 == hashlib.sha256(saved.read_bytes()).hexdigest()
    assert verify_prompt_tensors(file.meta, file.tensors, saved) == "verified"


def test_flipped_bytes_are_refused_by_every_reader_naming_the_file(saved, tmp_path, capsys):
    """Four bytes of tensor data flipped (before: predict printed NaN probabilities, exit 0)."""
    header, data = header_of(saved)
    begin = min(entry["data_offsets"][0] for key, entry in header.items() if key != "__metadata__")
    damaged = bytearray(data)
    damaged[begin + 4 : begin + 8] = bytes(b ^ 0xFF for b in damaged[begin + 4 : begin + 8])
    bad = rewrite(saved, tmp_path / "damaged.safetensors", header, bytes(damaged))
    for read in (open_prompt_file, read_prompt_file, lambda p: load_prompts(p, None)):
        with pytest.raises(
            PromptFileError, match="damaged.safetensors is damaged: its tensor data does not match"
        ):
            read(bad)
    image = tmp_path / "x.png"
    from PIL import Image

    Image.new("RGB", (8, 8), (200, 0, 0)).save(image)
    for argv in (["inspect", str(bad)], ["predict", str(bad), str(image)], ["eval", str(bad)]):
        assert main(argv) == 2
        line = one_error_line(capsys)
        assert str(bad) in line and "tensors_sha256" in line
    tensors = open_prompt_file(saved).tensors
    tensors[sorted(tensors)[0]] = (
        tensors[sorted(tensors)[0]] + 1e-3
    )  # (the lead's resume path: tensors read elsewhere)
    with pytest.raises(PromptFileError, match="is damaged"):
        verify_prompt_tensors(open_prompt_file(saved).meta, tensors, saved)


def test_a_file_without_a_checksum_loads_with_one_warning(saved, tmp_path, caplog):
    old = with_metadata(saved, tmp_path / "old.safetensors", tensors_sha256=None)
    with caplog.at_level(logging.WARNING, logger="scaleprompt"):
        assert open_prompt_file(old).checksum == "absent"
        read_prompt_file(old)
    warnings = [r.getMessage() for r in caplog.records if "tensors_sha256" in r.getMessage()]
    assert len(warnings) == 1 and "old.safetensors records no tensors_sha256" in warnings[0]
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="scaleprompt"):
        assert main(["inspect", str(old)]) == 0
    report = json.loads(next(r.getMessage() for r in caplog.records if r.getMessage().startswith("{")))
    assert report["checksum"].startswith("absent")


def test_prompts_that_are_not_finite_are_refused_naming_the_tensor_and_the_count(tmp_path, capsys, caplog):
    """A valid checksum over NaN prompts (what a diverged run exports): load_prompts, eval and predict refuse it;
    inspect shows it."""
    from scaleprompt.backbone import load_clip

    method = build("coop", load_clip("sp-tiny-vit", None), CLASSES, n_ctx=2)
    with torch.no_grad():
        method.ctx[0, :5] = float("nan")
        method.ctx[1, 0] = float("inf")
    path = save_prompts(method, tmp_path / "nan.safetensors")
    n = method.ctx.numel()
    with pytest.raises(
        PromptFileError, match=f"nan.safetensors: tensor ctx has 6 of {n} values that are not finite"
    ):
        load_prompts(path, method.backbone)
    image = tmp_path / "x.png"
    from PIL import Image

    Image.new("RGB", (8, 8), (200, 0, 0)).save(image)
    for argv in (["predict", str(path), str(image)], ["eval", str(path)]):
        assert main(argv) == 2
        assert f"tensor ctx has 6 of {n} values that are not finite" in one_error_line(capsys)
    with caplog.at_level(logging.INFO, logger="scaleprompt"):
        assert main(["inspect", str(path)]) == 0
    report = json.loads(next(r.getMessage() for r in caplog.records if r.getMessage().startswith("{")))
    assert report["checksum"].startswith("verified") and report["non_finite_values"] == {"ctx": 6}
    assert open_prompt_file(path, allow_non_finite=True).checksum == "verified"


@pytest.mark.parametrize(
    "entries, message",
    [
        ({"config": "{not json"}, "the metadata entry 'config' is not valid JSON"),
        ({"classnames": '{"a": 1}'}, "the metadata entry 'classnames' is a JSON dict, not a list"),
        ({"backbone": "[1]"}, "the metadata entry 'backbone' is a JSON list, not an object or null"),
        ({"config": None}, "the metadata records no 'config'"),
    ],
    ids=["config-not-json", "classnames-object", "backbone-list", "no-config"],
)
def test_bad_metadata_is_one_line_in_inspect_predict_and_eval(saved, tmp_path, capsys, entries, message):
    bad = with_metadata(saved, tmp_path / "bad.safetensors", **entries)
    for argv in (["inspect", str(bad)], ["predict", str(bad), str(bad)], ["eval", str(bad)]):
        assert main(argv) == 2
        line = one_error_line(capsys)
        assert str(bad) in line and message in line, line
    with pytest.raises(PromptFileError, match=message):
        load_prompts(bad, None)


def test_metadata_that_is_not_a_table_of_strings_is_one_line(saved, tmp_path, capsys):
    """``__metadata__`` as a string (before: AttributeError in inspect) or with a non-string value."""
    header, data = header_of(saved)
    for i, meta in enumerate(["scaleprompt.prompts/1", {"format": "scaleprompt.prompts/1", "epoch": 3}]):
        bad = rewrite(saved, tmp_path / f"bad{i}.safetensors", {**header, "__metadata__": meta}, data)
        for argv in (["inspect", str(bad)], ["eval", str(bad)]):
            assert main(argv) == 2
            line = one_error_line(capsys)
            assert str(bad) in line and "__metadata__ is not a table of strings" in line


def test_inspect_shows_plain_string_entries_as_strings(saved, tmp_path, caplog):
    """A training run's selection / epoch / run entries are plain strings (before: JSONDecodeError)."""
    run = with_metadata(saved, tmp_path / "run.safetensors", selection="best_val", epoch="3", run="/runs/x y")
    with caplog.at_level(logging.INFO, logger="scaleprompt"):
        assert main(["inspect", str(run)]) == 0
    report = json.loads(caplog.records[-1].getMessage())
    assert (report["selection"], report["epoch"], report["run"]) == ("best_val", "3", "/runs/x y")
    assert report["classnames"] == CLASSES and report["config"]["n_ctx"] == 2 and report["method"] == "upt"
    assert report["checksum"].startswith("verified") and report["non_finite_values"] == {}


def test_a_bare_safetensors_file_is_not_a_prompt_file(tmp_path, capsys):
    """E.g. a checkpoint's best prompts as bare tensors: one line, in inspect too."""
    path = tmp_path / "best_prompts.safetensors"
    save_file({"ctx": torch.zeros(2, 4)}, str(path))
    assert main(["inspect", str(path)]) == 2
    assert "is not a scaleprompt prompt file (format=None: bare tensors" in one_error_line(capsys)
