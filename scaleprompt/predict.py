"""Classify images with saved prompts: ``Predictor("prompts.safetensors").classify_files([...])``.

The prompt file records its backbone (model name and pretrained weights), method, config and classes, so the
file alone rebuilds the classifier; pass ``pretrained=`` when the weights live somewhere else on this machine.

Batch prediction (``scaleprompt predict``, :func:`run_predict`): :func:`expand_inputs` turns image files, folders
(searched recursively) and glob patterns into one sorted list of image paths; :meth:`Predictor.predict_files`
reads them lazily, one batch at a time, and yields one :class:`Prediction` (the path and the top-k classes with
their probabilities) per image; :func:`write_predictions` writes them as JSON lines or CSV rows.

A file name that is not valid UTF-8 (Python holds its bytes as surrogate escapes) is written in a readable,
lossless form: each such byte as ``\\xNN`` (:func:`printable_path`). With ``--output``, the records go to a
temporary file renamed onto the output at the end; if the run stops on an error, the records written so far are
kept in ``<output>.partial`` (the error line says so).
"""

from __future__ import annotations

import csv
import glob
import json
import logging
import os
import sys
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import torch
from PIL import Image
from torch import Tensor
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from scaleprompt.backbone import load_clip
from scaleprompt.config import ConfigError
from scaleprompt.data.images import load_rgb, to_rgb
from scaleprompt.data.transforms import clip_transform
from scaleprompt.errors import OutputError, ScalepromptError, one_line
from scaleprompt.methods.base import clean_classnames
from scaleprompt.methods.io import PromptFile, PromptFileError, load_prompts, open_prompt_file

logger = logging.getLogger("scaleprompt")

# what a folder or a glob pattern contributes (compared case-insensitively); a file named explicitly is read
# whatever its suffix
IMAGE_SUFFIXES = (".bmp", ".gif", ".jpeg", ".jpg", ".png", ".tif", ".tiff", ".webp")
FORMATS = ("jsonl", "csv")
_GLOB_CHARS = frozenset("*?[")


class PredictInputError(ScalepromptError, ValueError):
    """An input of the prediction is missing, matches no image, or an image cannot be read (the message names
    it)."""


class ImageReadError(PredictInputError):
    """An image file cannot be opened or decoded (missing, not an image, truncated, no permission)."""


@dataclass(frozen=True)
class Prediction:
    """One image's top-k classes, most probable first: ``top = [(class name, probability), ...]``."""

    path: str
    top: list[tuple[str, float]]

    def record(self) -> dict[str, Any]:
        """The JSON-lines record: ``{"path": ..., "top": [{"class": ..., "prob": ...}, ...]}`` (the path as
        :func:`printable_path` writes it)."""
        return {
            "path": printable_path(self.path),
            "top": [{"class": name, "prob": prob} for name, prob in self.top],
        }

    def row(self) -> list[str | float]:
        """The CSV row: ``path, class_1, prob_1, ..., class_k, prob_k`` (the path as :func:`printable_path`
        writes it)."""
        return [printable_path(self.path), *(value for pair in self.top for value in pair)]


def printable_path(path: str) -> str:
    """``path`` as text that any UTF-8 writer can write: the bytes of a name that are not valid UTF-8 (held by
    Python as surrogate escapes, ``os.fsdecode``) become ``\\xNN``; any other path is unchanged."""
    return path.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


# --- inputs ---------------------------------------------------------------------------------------------------
def _has_image_suffix(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_SUFFIXES


def folder_images(folder: str | Path) -> list[Path]:
    """The image files under ``folder``, recursively, sorted by their path inside it. Hidden files and folders
    (a name starting with ``.``) are left out, as a glob's ``*`` and ``**`` leave them out; symlinked folders are
    not followed."""
    folder = Path(folder)
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        found += [Path(dirpath, f) for f in filenames if not f.startswith(".") and _has_image_suffix(f)]
    return sorted(found, key=lambda p: p.relative_to(folder).parts)


def expand_inputs(inputs: Iterable[str | Path]) -> list[Path]:
    """Image paths, in a deterministic order, from ``inputs``: image files, folders and glob patterns.

    Each input in turn: an existing folder gives its images (:func:`folder_images`), an existing file itself
    (whatever its suffix), anything else with ``*``, ``?`` or ``[`` is a glob pattern (``recursive=True``, so
    ``**`` spans folders) whose sorted matches give their image files and the images of the folders they match.
    An image reached twice is kept at its first place. Raises :class:`PredictInputError` naming a path that does
    not exist, a folder without images or a pattern that matches no image."""
    paths: list[Path] = []
    seen: set[str] = set()
    for given in inputs:
        text = str(given)
        path = Path(text)
        if path.is_dir():
            found = folder_images(path)
            if not found:
                raise PredictInputError(
                    f"folder {text} holds no image file (searched recursively for {' '.join(IMAGE_SUFFIXES)})"
                )
        elif path.exists():
            found = [path]
        elif _GLOB_CHARS.intersection(text):
            found = []
            for match in sorted(glob.glob(text, recursive=True)):
                if os.path.isdir(match):
                    found += folder_images(match)
                elif _has_image_suffix(match):
                    found.append(Path(match))
            if not found:
                raise PredictInputError(f"glob pattern {text!r} matches no image file")
        else:
            raise PredictInputError(f"image input not found: {text}")
        for image in found:
            key = os.path.abspath(image)
            if key not in seen:
                seen.add(key)
                paths.append(image)
    return paths


def _batches(items: Iterable[Path], size: int) -> Iterator[list[Path]]:
    batch: list[Path] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


# --- the classifier -------------------------------------------------------------------------------------------
class Predictor:
    """The method of a prompt file on its (rebuilt) backbone, in eval mode.

    The classes scored: ``classnames`` when given (a method whose prompts belong to the training classes, e.g.
    class-specific CoOp context, refuses with its own error); else, for a file of a base-to-novel run, its base
    AND novel classes (the file records them; base first, in label order), since an image of a novel class would
    otherwise come back as a base class; else the file's classes. ``scored`` says which, in words."""

    def __init__(
        self,
        prompts: str | Path | PromptFile,
        pretrained: str | None = None,
        device: str = "cpu",
        classnames: Sequence[str] | None = None,
    ) -> None:
        file = prompts if isinstance(prompts, PromptFile) else open_prompt_file(prompts)  # (read once)
        backbone = file.header.get("backbone")
        if not backbone:
            raise PromptFileError(
                f"{file.path} does not record its backbone; build the method with load_prompts()"
            )
        self.backbone = load_clip(
            backbone["model_name"],
            pretrained or backbone["pretrained"],
            device=device,
            init_seed=backbone.get("init_seed") or 0,
        )
        # loaded on its own classes, then moved: the method decides whether its prompts can move to others
        self.method = load_prompts(file, self.backbone).to(device).eval()
        trained, novel = list(self.method.classnames), file.header.get("novel_classnames") or []
        self.trained_classnames: list[str] = trained  # the classes the prompts were trained on
        self.novel_classnames: list[str] = novel  # a base-to-novel run's novel classes (else empty)
        if classnames is not None:
            if clean_classnames(classnames) != self.method.classnames:
                self.method.set_classnames(classnames)
            self.scored = f"the {len(self.method.classnames)} classes given"
        elif novel:  # a base-to-novel run's file: every class of the dataset
            try:
                self.method.set_classnames([*trained, *novel])
                self.scored = f"the {len(trained)} base + {len(novel)} novel classes of the base-to-novel run it comes from"
            except ConfigError as exc:  # (prompts that belong to their training classes stay on them)
                self.scored = f"only the {len(trained)} base classes it was trained on ({exc})"
        else:
            self.scored = f"the {len(trained)} classes it was trained on"
        info = self.backbone.info
        assert info is not None  # (load_clip records it; only a bare model wrapped by Backbone.of has none)
        self.info = info
        self.transform = clip_transform(info.image_size, train=False, mean=info.mean, std=info.std)
        self.device = device

    @property
    def classnames(self) -> list[str]:
        """The classes it predicts, in label order."""
        return self.method.classnames

    def load_image(self, path: str | Path) -> Tensor:
        """The transformed ``[3, H, W]`` image of the file ``path``; :class:`ImageReadError` names a file that cannot
        be read."""
        try:
            # (decodes the whole image: a truncated file fails here; 16-bit scaled, bombs refused)
            rgb = load_rgb(path)
        except Exception as exc:  # noqa: BLE001 - whatever PIL raises, the file is unreadable
            raise ImageReadError(f"cannot read image {path}: {one_line(exc)}") from exc
        return self.transform(rgb)

    @torch.no_grad()
    def _probabilities(self, batch: Tensor) -> Tensor:
        return self.method.logits(batch.to(self.device)).softmax(dim=-1).cpu()

    def probabilities(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """``[N, C]`` class probabilities of ``images``."""
        return self._probabilities(torch.stack([self.transform(to_rgb(img)) for img in images]))

    def predict_files(
        self,
        paths: Iterable[str | Path],
        top_k: int = 1,
        batch_size: int = 32,
        on_error: Callable[[Path, ImageReadError], None] | None = None,
    ) -> Iterator[Prediction]:
        """One :class:`Prediction` per image file, in order, with its ``top_k`` classes (at most all classes).

        ``paths`` is consumed lazily and the images are read one batch of ``batch_size`` at a time, so only one
        batch is ever in memory. An unreadable file raises :class:`ImageReadError`, or, with ``on_error``, is
        passed to ``on_error(path, error)`` and gets no prediction."""
        if top_k < 1 or batch_size < 1:
            raise ValueError(f"top_k ({top_k}) and batch_size ({batch_size}) must be at least 1")
        k = min(top_k, len(self.classnames))
        for batch in _batches((Path(p) for p in paths), batch_size):
            images, kept = [], []
            for path in batch:
                try:
                    images.append(self.load_image(path))
                except ImageReadError as exc:
                    if on_error is None:
                        raise
                    on_error(path, exc)
                    continue
                kept.append(path)
            if not kept:
                continue
            top = self._probabilities(torch.stack(images)).topk(k, dim=-1)
            for path, probs, indices in zip(kept, top.values.tolist(), top.indices.tolist(), strict=True):
                yield Prediction(
                    str(path), [(self.classnames[i], p) for p, i in zip(probs, indices, strict=True)]
                )

    def classify_files(self, paths: Sequence[str | Path], top_k: int = 1) -> list[list[tuple[str, float]]]:
        """The ``top_k`` (class name, probability) per image file of ``paths``."""
        return [prediction.top for prediction in self.predict_files(paths, top_k)]


# --- output ---------------------------------------------------------------------------------------------------
def output_format(output: str | Path | None, fmt: str | None = None) -> str:
    """``fmt`` if given, else from the suffix of the file ``output`` (``.csv``: csv), else ``jsonl``."""
    if fmt is not None:
        if fmt not in FORMATS:
            raise PredictInputError(f"unknown output format {fmt!r} (one of {', '.join(FORMATS)})")
        return fmt
    return "csv" if output is not None and Path(output).suffix.lower() == ".csv" else "jsonl"


def write_predictions(predictions: Iterable[Prediction], stream: TextIO, fmt: str, top_k: int) -> int:
    """Write each of ``predictions`` to ``stream`` as it comes (``fmt`` ``jsonl``: a JSON line; ``csv``: a row
    under a header with ``top_k`` class and probability columns); the number written."""
    count = 0
    if fmt == "csv":
        writer = csv.writer(stream, lineterminator="\n")
        writer.writerow(["path", *(f"{col}_{i}" for i in range(1, top_k + 1) for col in ("class", "prob"))])
        for prediction in predictions:
            writer.writerow(prediction.row())
            count += 1
    else:
        for prediction in predictions:
            stream.write(json.dumps(prediction.record()) + "\n")
            count += 1
    return count


def _counted(predictions: Iterable[Prediction], written: list[int]) -> Iterator[Prediction]:
    """``predictions``, counting in ``written[0]`` the ones the consumer is done with (it asks for the next one
    only after writing the last)."""
    for prediction in predictions:
        yield prediction
        written[0] += 1


def write_output(output: Path, write: Callable[[TextIO, list[int]], int]) -> int:
    """``write(stream, written)`` into a temporary file beside ``output``, renamed onto it once complete (``write``
    returns the number of records and keeps the number written so far in ``written[0]``). If it stops on an
    error, nothing already predicted is lost: the records written so far are kept in ``<output>.partial`` and the
    error says so (an ``OSError`` becomes an :class:`OutputError` naming ``output``)."""
    written = [0]
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{output.name}.", suffix=".tmp", dir=output.parent)
    except OSError as exc:
        raise OutputError(f"cannot write the predictions to {output}: {one_line(exc)}") from exc
    try:
        with os.fdopen(fd, "w", newline="", encoding="utf-8") as fh:
            count = write(fh, written)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, output)
        return count
    except BaseException as exc:
        note = ""
        if written[0]:
            partial = output.with_name(output.name + ".partial")
            try:
                os.replace(tmp, partial)
                note = f" (the {written[0]} records written before it are kept in {partial})"
            except OSError:
                pass
        if isinstance(exc, OSError):
            raise OutputError(f"cannot write the predictions to {output}: {one_line(exc)}{note}") from exc
        if isinstance(exc, PredictInputError):
            raise type(exc)(f"{exc}{note}") from exc
        if note:
            logger.warning("stopped:%s", note[:-1].replace(" (", " ", 1))
        raise
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def run_predict(
    prompts: str | Path,
    inputs: Sequence[str | Path],
    *,
    output: str | Path | None = None,
    fmt: str | None = None,
    top_k: int = 3,
    batch_size: int = 32,
    classnames: Sequence[str] | None = None,
    pretrained: str | None = None,
    device: str = "cpu",
    skip_bad: bool = False,
) -> int:
    """``scaleprompt predict``: classify every image of ``inputs`` (:func:`expand_inputs`) with the prompt file
    ``prompts`` (its backbone with the weights ``pretrained``, default the recorded ones, on ``device``; its
    classes, or ``classnames``), ``batch_size`` images at a time, and write one record per image (its ``top_k``
    classes) in the format ``fmt`` (:func:`output_format`) to ``output`` (:func:`write_output`: complete or not there; after an error the
    records written so far are in ``<output>.partial``), or to stdout (nothing else goes there: records already
    written stay there if a later image stops the run). A tqdm bar on stderr when there is more than one batch. An
    unreadable image stops the run with :class:`ImageReadError` naming it; ``skip_bad``: it is logged (a warning
    naming it, and a count at the end) and gets no record. Returns the exit code (0)."""
    if top_k < 1 or batch_size < 1:
        raise PredictInputError(f"--top-k ({top_k}) and --batch-size ({batch_size}) must be at least 1")
    fmt = output_format(output, fmt)
    paths = expand_inputs(inputs)
    predictor = Predictor(prompts, pretrained=pretrained, device=device, classnames=classnames)
    k = min(top_k, len(predictor.classnames))
    logger.info(
        "%d images from %d inputs; %s over %s, %d classes, top %d; scoring %s",
        len(paths),
        len(inputs),
        predictor.method.name,
        predictor.info.model_name,
        len(predictor.classnames),
        k,
        predictor.scored,
    )
    skipped: list[Path] = []

    def skip(path: Path, exc: ImageReadError) -> None:
        logger.warning("skipped: %s", exc)
        skipped.append(path)

    def write(stream: TextIO, written: list[int]) -> int:
        bar = tqdm(paths, desc="predict", unit="img", file=sys.stderr, disable=len(paths) <= batch_size)
        # (logging_redirect_tqdm: a warning about a skipped image goes above the bar, not through it)
        with bar, logging_redirect_tqdm():
            predictions = predictor.predict_files(bar, k, batch_size, on_error=skip if skip_bad else None)
            try:
                return write_predictions(_counted(predictions, written), stream, fmt, k)
            except ImageReadError as exc:
                raise ImageReadError(f"{exc} (--skip-bad skips unreadable images)") from exc

    if output is None:
        try:
            count = write(sys.stdout, [0])
            sys.stdout.flush()
        except BrokenPipeError:  # the reader stopped (``| head``): not an error; keep Python's exit quiet
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return 0
    else:
        count = write_output(Path(output), write)
    logger.info("wrote %d predictions to %s (%s)", count, output or "stdout", fmt)
    if skipped:
        logger.warning("skipped %d unreadable images of %d", len(skipped), len(paths))
    return 0
