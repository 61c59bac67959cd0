"""The prompt file's format, readable without torch: a safetensors file whose metadata records the method, its
config, the class names and the backbone (written by :func:`scaleprompt.methods.io.save_prompts`).

:func:`read_prompt_header` parses the safetensors header itself (8-byte little-endian length, then JSON), so
``scaleprompt inspect`` answers in a fraction of a second instead of importing torch and open_clip first.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

from scaleprompt.errors import ScalepromptError

FORMAT = "scaleprompt.prompts/1"
MAX_HEADER = 100 * 2**20  # a prompt file's header is a few KB; anything near this is not one


class PromptFileError(ScalepromptError, ValueError):
    """A prompt file is missing, corrupt, or does not fit the backbone / method."""


def read_prompt_header(path: str | Path) -> tuple[dict[str, str], dict[str, dict[str, Any]]]:
    """The metadata and the tensor table (name -> ``{"dtype", "shape"}``) of a prompt file, checked like
    :func:`scaleprompt.methods.io.read_prompt_file` (format tag, every tensor's bytes inside the file)."""
    path = Path(path)
    if not path.is_file():
        raise PromptFileError(f"prompt file not found: {path}")
    size = path.stat().st_size
    try:
        with path.open("rb") as fh:
            (length,) = struct.unpack("<Q", fh.read(8))
            if not 0 < length <= min(MAX_HEADER, size - 8):
                raise ValueError(f"header length {length} does not fit a file of {size} bytes")
            header = json.loads(fh.read(length))
        if not isinstance(header, dict):
            raise ValueError("the header is not a JSON object")
        meta = header.pop("__metadata__", None) or {}
        tensors = {}
        for name, entry in header.items():
            start, end = entry["data_offsets"]
            if not 0 <= start <= end <= size - 8 - length:
                raise ValueError(f"tensor {name!r} lies outside the file")
            tensors[name] = {"dtype": entry["dtype"], "shape": list(entry["shape"])}
    except (OSError, ValueError, KeyError, TypeError, struct.error) as exc:
        raise PromptFileError(f"{path} is not a readable safetensors file: {exc}") from exc
    if meta.get("format") != FORMAT:
        raise PromptFileError(f"{path} is not a scaleprompt prompt file (format={meta.get('format')!r})")
    return meta, tensors
