"""Decoding one image the same way everywhere (the shard writer, the streaming loader, ``predict``).

* Size: an image whose header says it holds more than ``PIL.Image.MAX_IMAGE_PIXELS`` pixels (Pillow's limit,
  89.5 M by default, about 9459 x 9459) is refused with :class:`ImageTooLarge` BEFORE any pixel is decoded. Pillow
  itself only warns between 1x and 2x its limit and decodes the image (a 10000 x 10000 PNG: 300 MB); a decompression
  bomb (a few hundred bytes of PNG that say 20000 x 20000: 1.6 GB decoded) is an undecodable image here, whatever
  its size. Set ``PIL.Image.MAX_IMAGE_PIXELS`` to change the limit (None: no limit).
* 16-bit data: Pillow opens a 16-bit grayscale PNG as mode ``I;16`` (``I`` in some versions), and its
  ``convert("RGB")`` CLIPS those values to 255 (nearly every pixel turns white). :func:`to_rgb` scales them to 8 bit
  instead (``value >> 8``, the high byte, as Pillow does for 16-bit RGB PNGs). Every other mode goes through
  ``convert("RGB")``.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path
from typing import IO

import numpy as np
from PIL import Image

SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N", "I")  # integer grayscale modes holding 16-bit data


class ImageTooLarge(ValueError):
    """An image's header says it holds more pixels than ``PIL.Image.MAX_IMAGE_PIXELS`` (a decompression bomb?)."""


def open_image(source: str | Path | IO[bytes]) -> Image.Image:
    """``Image.open(source)`` (a file or stream; reads the header only), refused with :class:`ImageTooLarge` when it holds more than
    ``PIL.Image.MAX_IMAGE_PIXELS`` pixels. The caller closes the image."""
    with warnings.catch_warnings():  # (Pillow only warns between 1x and 2x its limit: refused below instead)
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            img = Image.open(source)
        except Image.DecompressionBombError as exc:  # (over 2x: Pillow refuses it itself)
            found = re.search(r"\((\d+) pixels\)", str(exc))
            pixels = f"{int(found.group(1)):,} pixels" if found else str(exc)
            raise ImageTooLarge(_too_large(pixels)) from None
    limit = Image.MAX_IMAGE_PIXELS
    if limit is not None and img.width * img.height > limit:
        size = f"{img.width} x {img.height} = {img.width * img.height:,} pixels"
        img.close()
        raise ImageTooLarge(_too_large(size))
    return img


def _too_large(size: str) -> str:
    return (
        f"the image header says {size}, over the limit of {Image.MAX_IMAGE_PIXELS:,} (PIL.Image.MAX_IMAGE_PIXELS): "
        "a decompression bomb? not decoded"
    )


def to_rgb(img: Image.Image) -> Image.Image:
    """``img`` as 8-bit RGB: 16-bit grayscale (:data:`SIXTEEN_BIT` modes) scaled by ``>> 8`` (not clipped to 255, as
    ``convert("RGB")`` does); every other mode through ``convert("RGB")``."""
    if img.mode not in SIXTEEN_BIT:
        return img.convert("RGB")
    values = np.asarray(img).astype(np.int64)
    high = np.clip(values >> 8, 0, 255).astype(np.uint8)  # (mode I may hold values outside 0..65535: clipped)
    return Image.fromarray(high, "L").convert("RGB")


def load_rgb(source: str | Path | IO[bytes]) -> Image.Image:
    """The decoded 8-bit RGB image of ``source``, a file or stream: :func:`open_image` (the pixel limit, checked before
    decoding), then :func:`to_rgb` (decodes every pixel: a truncated file fails here)."""
    with open_image(source) as img:
        return to_rgb(img)
