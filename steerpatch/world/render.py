"""Pixels of the concept world: procedural background textures, antialiased shapes, a corner watermark.

Everything here is a pure function of its arguments and a `numpy.random.Generator`, so a sample
renders to the same bytes every time it is drawn with the same generator state.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "cross", "heart")
BACKGROUNDS: tuple[str, ...] = ("plain", "grass", "water", "sand")
# name -> RGB; chosen to be distinct from each other and from the watermark's white
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (210, 45, 40),
    "blue": (45, 80, 215),
    "green": (50, 165, 65),
    "yellow": (235, 215, 50),
    "purple": (145, 60, 185),
    "orange": (240, 135, 35),
}
# name -> shape radius in pixels at 64x64
SIZES: dict[str, float] = {"small": 9.0, "medium": 11.5, "large": 14.0}
# Shapes sit at a jittered centre (+-1.5 px): a ViT with 8x8 patches trained for minutes on CPU
# learns shapes reliably only when they keep their place on the patch grid. The attribute stays
# so that other datasets in the same format can record where their objects are.
POSITIONS: dict[str, tuple[float, float]] = {"centre": (0.5, 0.5)}

_SUPERSAMPLE = 4


def _polygon(shape: str, radius: float, angle: float) -> list[tuple[float, float]]:
    """Outline of `shape` centred on the origin, as (x, y) points, y pointing down."""
    if shape == "circle":
        points = [(math.cos(t), math.sin(t)) for t in np.linspace(0, 2 * math.pi, 48, endpoint=False)]
    elif shape == "square":
        s = 0.8
        points = [(-s, -s), (s, -s), (s, s), (-s, s)]
    elif shape == "triangle":
        points = [(math.cos(t), math.sin(t)) for t in (-math.pi / 2, math.pi / 6, 5 * math.pi / 6)]
        points = [(x, y + 0.15) for x, y in points]
    elif shape == "star":
        points = []
        for k in range(10):
            t = -math.pi / 2 + k * math.pi / 5
            r = 1.0 if k % 2 == 0 else 0.42
            points.append((r * math.cos(t), r * math.sin(t)))
    elif shape == "cross":
        a, b = 0.95, 0.32
        points = [
            (-b, -a),
            (b, -a),
            (b, -b),
            (a, -b),
            (a, b),
            (b, b),
            (b, a),
            (-b, a),
            (-b, b),
            (-a, b),
            (-a, -b),
            (-b, -b),
        ]
    elif shape == "heart":
        # the classic parametric heart, scaled into the unit disc
        points = []
        for t in np.linspace(0, 2 * math.pi, 48, endpoint=False):
            x = 16 * math.sin(t) ** 3
            y = 13 * math.cos(t) - 5 * math.cos(2 * t) - 2 * math.cos(3 * t) - math.cos(4 * t)
            points.append((x / 17.0, -y / 17.0 - 0.05))
    else:  # pragma: no cover - callers pass names from SHAPES
        raise ValueError(f"unknown shape {shape!r}")
    ca, sa = math.cos(angle), math.sin(angle)
    return [(radius * (x * ca - y * sa), radius * (x * sa + y * ca)) for x, y in points]


def shape_mask(shape: str, size: int, centre: tuple[float, float], radius: float, angle: float) -> np.ndarray:
    """Antialiased coverage mask of one shape, float32 in [0, 1], shape (size, size)."""
    big = size * _SUPERSAMPLE
    canvas = Image.new("L", (big, big), 0)
    cx, cy = centre[0] * _SUPERSAMPLE, centre[1] * _SUPERSAMPLE
    pts = [(cx + x * _SUPERSAMPLE, cy + y * _SUPERSAMPLE) for x, y in _polygon(shape, radius, angle)]
    ImageDraw.Draw(canvas).polygon(pts, fill=255)
    small = canvas.resize((size, size), Image.Resampling.BOX)
    return np.asarray(small, dtype=np.float32) / 255.0


def _jitter(rng: np.random.Generator, rgb: tuple[int, int, int], amount: float) -> np.ndarray:
    return np.asarray(rgb, dtype=np.float32) + rng.uniform(-amount, amount, size=3).astype(np.float32)


def background(kind: str, size: int, rng: np.random.Generator) -> np.ndarray:
    """A procedural texture, float32 RGB array (size, size, 3) in [0, 255].

    plain: a flat neutral tone; grass: green with vertical blade streaks; water: blue with wavy
    horizontal bands; sand: tan with fine speckle and faint diagonal ripples.
    """
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    if kind == "plain":
        tone = rng.uniform(120, 200)
        base = np.asarray([tone, tone, tone], dtype=np.float32) + rng.uniform(-12, 12, size=3).astype(
            np.float32
        )
        img = np.broadcast_to(base, (size, size, 3)).copy()
        img += rng.normal(0, 2.0, size=(size, size, 1)).astype(np.float32)
    elif kind == "grass":
        base = _jitter(rng, (70, 140, 55), 12)
        streaks = rng.normal(0, 1, size=(size // 5 + 1, size)).astype(np.float32)
        streaks = np.repeat(streaks, 5, axis=0)[:size]
        shift = rng.integers(0, 5)
        streaks = np.roll(streaks, int(shift), axis=0)
        fine = rng.normal(0, 0.35, size=(size, size)).astype(np.float32)
        light = (streaks + fine)[..., None]
        img = base + light * np.asarray([8, 15, 6], dtype=np.float32)
    elif kind == "water":
        base = _jitter(rng, (45, 95, 175), 12)
        wavelength = rng.uniform(6.0, 9.0)
        phase = rng.uniform(0, 2 * math.pi)
        wobble = rng.uniform(2.0, 4.0)
        bands = np.sin(2 * math.pi * (yy + wobble * np.sin(2 * math.pi * xx / 21.0 + phase)) / wavelength)
        img = base + bands[..., None] * np.asarray([14, 20, 22], dtype=np.float32)
        img += rng.normal(0, 3.0, size=(size, size, 1)).astype(np.float32)
    elif kind == "sand":
        base = _jitter(rng, (205, 180, 125), 10)
        ripples = np.sin(2 * math.pi * (xx + yy) / rng.uniform(9.0, 13.0) + rng.uniform(0, 2 * math.pi))
        speckle = rng.normal(0, 1, size=(size, size)).astype(np.float32)
        img = base + (4 * ripples + 7 * speckle)[..., None] * np.asarray([1.0, 0.9, 0.7], dtype=np.float32)
    else:  # pragma: no cover - callers pass names from BACKGROUNDS
        raise ValueError(f"unknown background {kind!r}")
    return img.astype(np.float32)


def watermark_mask(size: int, rng: np.random.Generator) -> np.ndarray:
    """A small copyright-like ring with a bar, near the bottom-right corner; float32 mask (size, size)."""
    big = size * _SUPERSAMPLE
    canvas = Image.new("L", (big, big), 0)
    draw = ImageDraw.Draw(canvas)
    s = _SUPERSAMPLE
    r = size * 0.075
    cx = size - r - 2.5 + rng.uniform(-1.0, 1.0)
    cy = size - r - 2.5 + rng.uniform(-1.0, 1.0)
    draw.ellipse([(cx - r) * s, (cy - r) * s, (cx + r) * s, (cy + r) * s], outline=255, width=int(1.3 * s))
    draw.rectangle(
        [(cx - r * 0.35) * s, (cy - r * 0.25) * s, (cx + r * 0.35) * s, (cy + r * 0.25) * s], fill=255
    )
    small = canvas.resize((size, size), Image.Resampling.BOX)
    return np.asarray(small, dtype=np.float32) / 255.0


def compose(
    *,
    shape: str,
    colour: str,
    size_name: str,
    position: str,
    background_kind: str,
    watermark: bool,
    rng: np.random.Generator,
    image_size: int = 64,
) -> Image.Image:
    """Render one image from its attributes; all remaining randomness (jitter, rotation, noise) comes from `rng`.

    Args:
        shape: one of SHAPES.
        colour: one of COLOURS.
        size_name: one of SIZES.
        position: one of POSITIONS.
        background_kind: one of BACKGROUNDS.
        watermark: draw the corner mark.
        rng: the sample's own generator.
        image_size: side in pixels.

    Returns:
        An RGB PIL image of side `image_size`.
    """
    scale = image_size / 64.0
    img = background(background_kind, image_size, rng)
    fx, fy = POSITIONS[position]
    centre = (
        fx * image_size + rng.uniform(-1.5, 1.5) * scale,
        fy * image_size + rng.uniform(-1.5, 1.5) * scale,
    )
    radius = SIZES[size_name] * scale * rng.uniform(0.9, 1.1)
    angle = math.radians(rng.uniform(-10, 10))
    mask = shape_mask(shape, image_size, centre, radius, angle)
    opacity = rng.uniform(0.85, 1.0)
    fill = _jitter(rng, COLOURS[colour], 18)
    alpha = (mask * opacity)[..., None]
    img = img * (1 - alpha) + fill * alpha
    if watermark:
        wm = watermark_mask(image_size, rng)[..., None] * 0.9
        img = img * (1 - wm) + 250.0 * wm
    img += rng.normal(0, 3.0, size=img.shape).astype(np.float32)
    return Image.fromarray(np.clip(np.rint(img), 0, 255).astype(np.uint8), mode="RGB")
