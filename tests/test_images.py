"""Decoding images (scaleprompt.data.images): a decompression bomb is an undecodable image that is never decoded,
and 16-bit grayscale PNGs are scaled to 8 bit instead of clipped to white, in the shard writer and the loader."""

from __future__ import annotations

import io
import resource
import struct
import tarfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from engine_utils import make_color_folder
from PIL import Image

from scaleprompt.data.datasets import load_dataset
from scaleprompt.data.images import ImageTooLarge, load_rgb, open_image
from scaleprompt.data.layout import DatasetError
from scaleprompt.data.loader import DataError, ShardLoader, decode_sample
from scaleprompt.data.shards import write_shards


def bomb_png(width: int = 20000, height: int = 20000) -> bytes:
    """A real PNG of 200 bytes whose header says ``width`` x ``height`` (RGB: 1.2 GB decoded, 1.6 GB as RGBA); its
    data holds two rows (a decoder would fail only after allocating the whole image)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    rows = zlib.compress((b"\x00" + b"\x00" * 3 * width) * 2, 9)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", rows) + chunk(b"IEND", b"")


def png16(values: np.ndarray) -> bytes:
    """A real 16-bit grayscale PNG (bit depth 16 in its header) of ``values``."""
    out = io.BytesIO()
    Image.fromarray(values.astype(np.uint16)).save(out, format="PNG")
    data = out.getvalue()
    assert data[24] == 16, "bit depth 16"
    return data


def gradient16() -> np.ndarray:
    """32 x 32 values over the whole 16-bit range."""
    return (np.arange(32 * 32, dtype=np.int64).reshape(32, 32) * 64 + 31).astype(np.uint16)


# --- 16-bit PNGs ----------------------------------------------------------------------------------------------------
def test_a_16_bit_png_is_scaled_to_8_bit_not_clipped():
    values = gradient16()
    data = png16(values)
    with Image.open(io.BytesIO(data)) as img:
        assert img.mode in ("I;16", "I")
        clipped = np.asarray(img.convert("RGB"))
    assert (clipped == 255).mean() > 0.99, "what convert('RGB') does: nearly every pixel white"
    expected = (values >> 8).astype(np.uint8)
    rgb = np.asarray(load_rgb(io.BytesIO(data)))
    assert rgb.shape == (32, 32, 3) and rgb.dtype == np.uint8
    for channel in range(3):
        np.testing.assert_array_equal(rgb[..., channel], expected)
    # the loader decodes a shard's sample the same way (the shard holds the PNG bytes as they are on disk)
    sample = {"png": data, "cls": b"0", "__key__": "k", "__url__": "u"}
    image, label, key = decode_sample(sample, np.asarray)
    np.testing.assert_array_equal(image[..., 0], expected)
    # 8-bit images are untouched: convert("RGB") as before
    eight = io.BytesIO()
    Image.fromarray(expected).save(eight, format="PNG")
    np.testing.assert_array_equal(np.asarray(load_rgb(io.BytesIO(eight.getvalue())))[..., 1], expected)


def test_the_shard_writer_resizes_a_16_bit_png_from_its_8_bit_values(tmp_path):
    data = make_color_folder(tmp_path / "colors", n_train=1, n_val=1, n_test=1)
    values = gradient16()
    (data / "train" / "red" / "000.png").write_bytes(png16(values))
    out = tmp_path / "shards"
    write_shards(load_dataset(f"folder:{data}"), out, max_image_size=16)  # (re-encodes the 32 x 32 images)
    with tarfile.open(out / "train-000000.tar") as tar:
        metas = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}  # type: ignore[union-attr]
    key = next(k for k, v in metas.items() if k.endswith(".json") and b"red/000.png" in v).removesuffix(
        ".json"
    )
    with Image.open(io.BytesIO(metas[f"{key}.png"])) as small:
        got = np.asarray(small.convert("RGB"))
    eight = Image.fromarray((values >> 8).astype(np.uint8), "L").convert("RGB")
    expected = np.asarray(eight.resize((16, 16), Image.Resampling.BICUBIC))
    np.testing.assert_array_equal(got, expected)


# --- decompression bombs ----------------------------------------------------------------------------------------------
def test_a_decompression_bomb_is_refused_before_decoding():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(ImageTooLarge, match=r"header says 400,000,000 pixels, over the limit of 89,478,485 "):
        load_rgb(io.BytesIO(bomb_png()))
    # between 1x and 2x Pillow's limit Pillow only warns and decodes (300 MB here): refused too
    with pytest.raises(
        ImageTooLarge, match=r"header says 10000 x 10000 = 100,000,000 pixels, over the limit"
    ):
        open_image(io.BytesIO(bomb_png(10000, 10000)))
    grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert grown_mib < 200, f"nothing was decoded (peak RSS grew {grown_mib:.0f} MiB)"
    with open_image(io.BytesIO(bomb_png(9000, 9000))) as img:  # under the limit: opens (not decoded here)
        assert img.size == (9000, 9000)


def test_a_decompression_bomb_in_a_folder_dataset_is_one_line_naming_it(tmp_path):
    data = make_color_folder(tmp_path / "colors", n_train=1, n_val=1, n_test=1)
    bomb = data / "train" / "red" / "bomb.png"
    bomb.write_bytes(bomb_png())
    with pytest.raises(DatasetError, match=rf"^image cannot be decoded: {bomb} \(the image header says "
                       r"400,000,000 pixels, over the limit of 89,478,485 .*not decoded\)$"):  # fmt: skip
        write_shards(load_dataset(f"folder:{data}"), tmp_path / "shards")
    assert bomb.read_bytes() == bomb_png()  # the source is left alone


def test_a_decompression_bomb_in_a_shard_is_an_undecodable_sample(tmp_path):
    good = io.BytesIO()
    Image.new("RGB", (8, 8), (255, 0, 0)).save(good, format="PNG")
    shard = tmp_path / "bombs.tar"
    with tarfile.open(shard, "w") as tar:
        for i in range(4):
            for name, payload in (
                (f"s{i}.png", bomb_png() if i == 2 else good.getvalue()),
                (f"s{i}.cls", b"0"),
            ):
                info = tarfile.TarInfo(name)
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))
    loader = ShardLoader(str(shard), "test", batch_size=2, image_size=8, num_workers=0, max_bad_samples=1)
    assert [k for b in loader for k in b.keys] == ["s0", "s1", "s3"] and loader.skipped == 1
    strict = ShardLoader(str(shard), "test", batch_size=2, image_size=8, num_workers=0, max_bad_samples=0)
    with pytest.raises(DataError, match=r"^1 undecodable samples .*max_bad_samples=0\); last: .*bombs\.tar:s2: the "
                       r"image header says 400,000,000 pixels"):  # fmt: skip
        list(strict)


@pytest.mark.slow
def test_train_py_reports_a_bomb_in_a_folder_dataset_in_one_line(tmp_path, capsys):
    from scaleprompt.train import main

    data = make_color_folder(tmp_path / "colors", n_train=1, n_val=1, n_test=1)
    bomb = data / "train" / "red" / "bomb.png"
    bomb.write_bytes(bomb_png())
    args = ["model.name=sp-tiny-vit", "model.pretrained=null", f"data.dataset=folder:{data}", f"data.cache_dir={tmp_path / 'cache'}",
            "data.shots=0", "data.num_workers=0", f"train.output_dir={tmp_path / 'out'}", "train.report_to=none"]  # fmt: skip
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(
        f"train.py: error: image cannot be decoded: {bomb} (the image header says 400,000,000"
    )
    assert "\n" not in err and "Traceback" not in err
    assert Path(bomb).read_bytes() == bomb_png()
