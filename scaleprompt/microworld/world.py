"""A procedural image world with compositional captions (vectorised numpy, deterministic by seed).

Every image holds one object: a shape (8) in a colour (8), small or large, somewhere in the frame (its position
word is derived from where it lands), rotated a little, on a background style (4 in distribution). Captions
mention some of these attributes through several templates, so a caption can be true of many images
(:func:`caption_matches` says which). Domain shifts are parameters of :class:`WorldStyle`: new background
textures, pixel noise, lower saturation, other object styles (outline, striped fill), blur.

    rng = np.random.default_rng(0)
    scenes = sample_scenes(rng, 256)                      # attribute arrays
    images = render(scenes, rng, size=64)                 # uint8 [256, 64, 64, 3]
    texts, mentions = captions(scenes, rng)               # 256 strings + which attributes each mentions
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from scaleprompt.config import check_types, require

SHAPES = ("circle", "square", "triangle", "star", "cross", "ring", "crescent", "heart")
COLOURS = ("red", "orange", "yellow", "green", "cyan", "blue", "purple", "pink")
RGB = np.array(
    [[215, 35, 35], [245, 135, 20], [240, 215, 30], [40, 165, 55],
     [40, 205, 215], [35, 70, 220], [135, 45, 185], [250, 125, 185]],
    dtype=np.float32,
)  # fmt: skip
SIZES = ("small", "large")
BACKGROUNDS = ("plain", "striped", "checkered", "dotted")  # in distribution
NEW_BACKGROUNDS = ("noise", "waves", "colourful")  # only in shifted worlds
ALL_BACKGROUNDS = BACKGROUNDS + NEW_BACKGROUNDS
POSITIONS = ("left", "right", "top", "bottom", "center")
POSITION_PHRASES = ("on the left", "on the right", "at the top", "at the bottom", "in the center")
OBJECT_STYLES = ("filled", "outline", "striped")
ATTRIBUTES = ("shape", "colour", "size", "background", "position")

# (template, attributes it mentions); {size} {colour} {shape} {background} {position} are filled per scene
TEMPLATES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("a photo of a {colour} {shape}.", ("colour", "shape")),
    ("a photo of a {size} {colour} {shape} on a {background} background.", ATTRIBUTES[:4]),
    ("a {size} {colour} {shape}.", ("size", "colour", "shape")),
    ("a {colour} {shape} {position}.", ("colour", "shape", "position")),
    ("a {shape} that is {colour}.", ("shape", "colour")),
    ("a {colour} {shape} on a {background} background.", ("colour", "shape", "background")),
    ("a picture of a {size} {shape}.", ("size", "shape")),
    ("a photo of a {shape}.", ("shape",)),
    ("something {colour}.", ("colour",)),
)


@dataclass(frozen=True)
class WorldStyle:
    """How a world looks. The default is the pretraining distribution; shifts change some fields."""

    backgrounds: tuple[str, ...] = BACKGROUNDS  # drawn uniformly
    object_styles: tuple[str, ...] = ("filled",)  # drawn uniformly
    saturation: float = 1.0  # 1 = the palette's colours, 0 = grey objects
    noise: float = 0.0  # std of additive Gaussian pixel noise (0..255 scale)
    blur: int = 0  # box-blur radius in pixels
    colour_jitter: float = 18.0  # per-image RGB jitter of the object colour
    max_rotation: float = 30.0  # degrees, uniform in [-max, max]

    def __post_init__(self) -> None:
        check_types(self)
        unknown = [b for b in self.backgrounds if b not in ALL_BACKGROUNDS]
        require(
            not unknown and bool(self.backgrounds),
            "backgrounds",
            f"choose from {ALL_BACKGROUNDS}, got {self.backgrounds}",
        )
        unknown = [s for s in self.object_styles if s not in OBJECT_STYLES]
        require(
            not unknown and bool(self.object_styles),
            "object_styles",
            f"choose from {OBJECT_STYLES}, got {self.object_styles}",
        )
        require(0.0 <= self.saturation <= 1.0, "saturation", f"must be in [0, 1], got {self.saturation}")
        require(self.noise >= 0 and self.blur >= 0, "noise", "noise and blur must be >= 0")

    def shifted(self, **changes: Any) -> WorldStyle:
        """A copy with the fields ``changes`` changed."""
        return replace(self, **changes)


@dataclass
class Scenes:
    """Attribute arrays of N scenes (indices into the tuples above) plus continuous layout."""

    shape: np.ndarray
    colour: np.ndarray
    size: np.ndarray
    background: np.ndarray  # index into ALL_BACKGROUNDS
    object_style: np.ndarray  # index into OBJECT_STYLES
    cx: np.ndarray  # object centre, fraction of the frame
    cy: np.ndarray
    scale: np.ndarray  # object radius, fraction of the frame
    angle: np.ndarray  # radians
    extra: dict[str, np.ndarray] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.shape)

    @property
    def label(self) -> np.ndarray:
        """The colour-shape class: colour * 8 + shape (see :func:`class_names`)."""
        return self.colour * len(SHAPES) + self.shape

    @property
    def position(self) -> np.ndarray:
        """Index into POSITIONS: the dominant offset from the centre, 'center' when close to it."""
        dx, dy = self.cx - 0.5, self.cy - 0.5
        horizontal = np.where(dx < 0, 0, 1)
        vertical = np.where(dy < 0, 2, 3)
        pos = np.where(np.abs(dx) >= np.abs(dy), horizontal, vertical)
        return np.where(np.maximum(np.abs(dx), np.abs(dy)) < 0.1, 4, pos)

    def attribute(self, name: str) -> np.ndarray:
        """The values of the attribute ``name`` (of :data:`ATTRIBUTES`) per scene."""
        return self.position if name == "position" else getattr(self, name)


def class_names() -> list[str]:
    """The 64 colour-shape classes, label = colour * 8 + shape: 'red circle', 'red square', ..."""
    return [f"{c} {s}" for c in COLOURS for s in SHAPES]


def sample_scenes(
    rng: np.random.Generator,
    n: int,
    style: WorldStyle | None = None,
    shape: np.ndarray | None = None,
    colour: np.ndarray | None = None,
) -> Scenes:
    """``n`` random scenes drawn with ``rng`` in ``style`` (default: ``WorldStyle()``); ``shape`` /
    ``colour`` fix those attributes (e.g. to balance classes)."""
    style = style or WorldStyle()
    size = rng.integers(0, 2, n)
    scale = np.where(size == 0, rng.uniform(0.15, 0.21, n), rng.uniform(0.29, 0.36, n))
    margin = scale + 0.03
    backgrounds = np.array([ALL_BACKGROUNDS.index(b) for b in style.backgrounds])
    styles = np.array([OBJECT_STYLES.index(s) for s in style.object_styles])
    return Scenes(
        shape=rng.integers(0, len(SHAPES), n) if shape is None else np.asarray(shape),
        colour=rng.integers(0, len(COLOURS), n) if colour is None else np.asarray(colour),
        size=size,
        background=backgrounds[rng.integers(0, len(backgrounds), n)],
        object_style=styles[rng.integers(0, len(styles), n)],
        cx=rng.uniform(margin, 1 - margin),
        cy=rng.uniform(margin, 1 - margin),
        scale=scale,
        angle=np.deg2rad(rng.uniform(-style.max_rotation, style.max_rotation, n)),
    )


def _shape_masks(shape: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Inside-masks ``[N, H, W]`` of unit-size shapes in object coordinates (v points up)."""
    r2 = u * u + v * v
    r = np.sqrt(r2)
    out = np.zeros(u.shape, dtype=bool)
    for k, name in enumerate(SHAPES):
        sel = shape == k
        if not sel.any():
            continue
        a, b, rr, rr2 = u[sel], v[sel], r[sel], r2[sel]
        if name == "circle":
            m = rr2 <= 0.92
        elif name == "square":
            m = np.maximum(np.abs(a), np.abs(b)) <= 0.78
        elif name == "triangle":
            m = (b >= -0.55) & (np.sqrt(3.0) * np.abs(a) + b <= 1.0)
        elif name == "star":
            phi = np.arctan2(a, b)  # 0 = up: a point of the star
            wedge = np.abs((phi + np.pi / 5) % (2 * np.pi / 5) - np.pi / 5) / (np.pi / 5)  # 0 at the points
            m = rr <= 0.4 + 0.62 * (1 - wedge)
        elif name == "cross":
            m = ((np.abs(a) <= 0.3) & (np.abs(b) <= 0.95)) | ((np.abs(b) <= 0.3) & (np.abs(a) <= 0.95))
        elif name == "ring":
            m = (rr <= 1.0) & (rr >= 0.58)
        elif name == "crescent":
            m = (rr <= 1.0) & ((a - 0.5) ** 2 + (b - 0.15) ** 2 >= 0.72)
        else:  # heart: (x^2 + y^2 - 1)^3 - x^2 y^3 <= 0
            x, y = a * 1.25, b * 1.25 + 0.25
            m = (x * x + y * y - 1) ** 3 - x * x * y**3 <= 0
        out[sel] = m
    return out


def _backgrounds(scenes: Scenes, rng: np.random.Generator, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
    """Float RGB backgrounds ``[N, H, W, 3]``: low-saturation greys with a pattern (colourful in shifts)."""
    n = len(scenes)
    h, w = yy.shape
    base = rng.uniform(40, 215, (n, 1, 1, 1)) + rng.uniform(-12, 12, (n, 1, 1, 3))
    contrast = rng.uniform(18, 40, (n, 1, 1)) * rng.choice([-1.0, 1.0], (n, 1, 1))
    period = rng.uniform(5, 11, (n, 1, 1))
    theta = rng.choice([0.0, np.pi / 4, np.pi / 2, 3 * np.pi / 4], (n, 1, 1))
    phase = rng.uniform(0, 2 * np.pi, (n, 1, 1))
    along = (xx * np.cos(theta) + yy * np.sin(theta)) / period * 2 * np.pi + phase  # [N, H, W]
    pattern = np.zeros((n, h, w), dtype=np.float32)
    kind = np.array(ALL_BACKGROUNDS)[scenes.background]
    striped = kind == "striped"
    pattern[striped] = (np.sin(along[striped]) > 0).astype(np.float32)
    checkered = kind == "checkered"
    cell = period[checkered].astype(np.int64) + 1
    pattern[checkered] = ((xx[None] // cell + yy[None] // cell) % 2).astype(np.float32)
    dotted = kind == "dotted"
    gx = (xx[None] % period[dotted]) - period[dotted] / 2
    gy = (yy[None] % period[dotted]) - period[dotted] / 2
    pattern[dotted] = (gx * gx + gy * gy <= (period[dotted] / 4) ** 2).astype(np.float32)
    noise = kind == "noise"
    coarse = rng.uniform(0, 1, (int(noise.sum()), h // 4, w // 4))
    pattern[noise] = np.repeat(np.repeat(coarse, 4, axis=1), 4, axis=2)[:, :h, :w] * 2 - 1
    waves = kind == "waves"
    pattern[waves] = np.sin(along[waves] + 2.0 * np.sin(yy[None] / 4.0 + phase[waves]))
    bg = base + (contrast * pattern)[..., None]  # [N, H, W, 3]
    colourful = kind == "colourful"
    if colourful.any():
        tint = rng.uniform(0, 255, (int(colourful.sum()), 1, 1, 3))
        bg[colourful] = (
            0.5 * bg[colourful] + 0.5 * tint + (contrast[colourful] * pattern[colourful])[..., None]
        )
    return bg


def render(
    scenes: Scenes, rng: np.random.Generator, size: int = 64, style: WorldStyle | None = None
) -> np.ndarray:
    """uint8 images ``[N, size, size, 3]`` of ``scenes`` in ``style`` (default: ``WorldStyle()``), drawn
    with ``rng``: same rng state, same pixels."""
    style = style or WorldStyle()
    n = len(scenes)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    images = _backgrounds(scenes, rng, yy, xx)
    # object coordinates: centred, rotated, in units of the object radius; v points up
    dx = (xx[None] / size - scenes.cx[:, None, None]) / scenes.scale[:, None, None]
    dy = (scenes.cy[:, None, None] - yy[None] / size) / scenes.scale[:, None, None]
    cos, sin = np.cos(scenes.angle)[:, None, None], np.sin(scenes.angle)[:, None, None]
    u, v = cos * dx + sin * dy, -sin * dx + cos * dy
    mask = _shape_masks(scenes.shape, u, v)
    kind = np.array(OBJECT_STYLES)[scenes.object_style]
    outline = kind == "outline"
    if outline.any():  # the shape minus a shrunk copy of itself: a drawn contour
        inner = _shape_masks(scenes.shape[outline], u[outline] / 0.72, v[outline] / 0.72)
        mask[outline] &= ~inner
    striped = kind == "striped"
    if striped.any():  # filled with stripes across the object
        mask[striped] &= np.sin(u[striped] * 7.0) > -0.2
    colour = RGB[scenes.colour] + rng.uniform(-style.colour_jitter, style.colour_jitter, (n, 3))
    grey = colour.mean(axis=1, keepdims=True)
    colour = grey + style.saturation * (colour - grey)
    colour = colour * rng.uniform(0.85, 1.1, (n, 1))
    images = np.where(mask[..., None], colour[:, None, None, :], images)
    if style.blur:
        images = _box_blur(images, style.blur)
    if style.noise:
        images = images + rng.normal(0, style.noise, images.shape)
    return np.clip(images, 0, 255).astype(np.uint8)


def _box_blur(images: np.ndarray, radius: int) -> np.ndarray:
    k = 2 * radius + 1
    padded = np.pad(images, ((0, 0), (radius, radius), (radius, radius), (0, 0)), mode="edge")
    c = padded.cumsum(axis=1).cumsum(axis=2)
    c = np.pad(c, ((0, 0), (1, 0), (1, 0), (0, 0)))
    h, w = images.shape[1:3]
    return (c[:, k : k + h, k : k + w] - c[:, :h, k : k + w] - c[:, k : k + h, :w] + c[:, :h, :w]) / (k * k)


def captions(
    scenes: Scenes, rng: np.random.Generator, templates: tuple[int, ...] | None = None
) -> tuple[list[str], np.ndarray]:
    """One caption per scene of ``scenes`` from a template drawn with ``rng`` (of ``templates``, default all) and a boolean
    ``[N, len(ATTRIBUTES)]`` array of the attributes each caption mentions."""
    pool = np.arange(len(TEMPLATES)) if templates is None else np.asarray(templates)
    which = pool[rng.integers(0, len(pool), len(scenes))]
    words = {
        "shape": np.array(SHAPES)[scenes.shape],
        "colour": np.array(COLOURS)[scenes.colour],
        "size": np.array(SIZES)[scenes.size],
        "background": np.array(ALL_BACKGROUNDS)[scenes.background],
        "position": np.array(POSITION_PHRASES)[scenes.position],
    }
    texts = [TEMPLATES[t][0].format(**{k: str(w[i]) for k, w in words.items()}) for i, t in enumerate(which)]
    mentions = np.array([[a in TEMPLATES[t][1] for a in ATTRIBUTES] for t in which], dtype=bool)
    return texts, mentions


def caption_matches(scenes: Scenes, mentions: np.ndarray) -> np.ndarray:
    """``[N, N]`` bool: caption j (of scene j of ``scenes``, mentioning ``mentions[j]``) is true of image i."""
    ok = np.ones((len(scenes), len(scenes)), dtype=bool)
    for k, name in enumerate(ATTRIBUTES):
        a = scenes.attribute(name)
        ok &= (a[:, None] == a[None, :]) | ~mentions[None, :, k]
    return ok
