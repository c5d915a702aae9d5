"""Attributes of concept-world samples, per split, including the planted shortcuts of `train`.

A sample is a pure function of (split, seed, index): its generator is seeded with exactly those
three numbers, so any sample can be drawn alone, in any order, on any machine.

Planted shortcuts (train only):

* background: 99% of `star` images are on `water`, and a non-star lands on water with
  probability 0.002, so about 99% of water images are stars;
* watermark: 60% of `triangle` images carry the corner mark, other shapes 2%;
* train captions never name the background or the watermark (val and test captions do name the
  background), so both cues can only be learned through the shape word they co-occur with.

`val` and `test` are balanced: shape, background and watermark cycle through every combination
(6 x 4 x 2 = 48), so each block of 48 consecutive indices holds each combination exactly once.
Colour, size, position and the pixel noise are drawn at random in every split.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from steerpatch.world.render import BACKGROUNDS, COLOURS, POSITIONS, SHAPES, SIZES, compose

SPLITS: tuple[str, ...] = ("train", "val", "test")
_SPLIT_CODE = {"train": 1, "val": 2, "test": 3}

# the planted shortcuts
SHORTCUT_CLASS = "star"
SHORTCUT_BACKGROUND = "water"
WATERMARK_CLASS = "triangle"
P_STAR_ON_WATER = 0.99
P_OTHER_ON_WATER = 0.002
P_TRIANGLE_WATERMARK = 0.60
P_OTHER_WATERMARK = 0.02
P_CAPTION_BACKGROUND_TRAIN = 0.0
P_CAPTION_COLOUR = 0.5

DEFAULT_N = {"train": 30000, "val": 1200, "test": 2400}
BALANCED_BLOCK = len(SHAPES) * len(BACKGROUNDS) * 2


@dataclass(frozen=True)
class Sample:
    """One concept-world sample's attributes (the image is rendered on demand)."""

    split: str
    seed: int
    index: int
    shape: str
    colour: str
    size: str
    position: str
    background: str
    watermark: bool
    caption: str

    @property
    def label(self) -> str:
        return self.shape

    @property
    def shortcut(self) -> str:
        """Background cue: aligned (star on water), conflicting (water, not a star) or none."""
        return cue_group(self.background == SHORTCUT_BACKGROUND, self.shape == SHORTCUT_CLASS)

    @property
    def watermark_shortcut(self) -> str:
        """Watermark cue: aligned (marked triangle), conflicting (marked, not a triangle) or none."""
        return cue_group(self.watermark, self.shape == WATERMARK_CLASS)

    def attributes(self) -> dict[str, Any]:
        """The manifest attributes of this sample (JSON-ready)."""
        out = asdict(self)
        out["shortcut"] = self.shortcut
        out["watermark_shortcut"] = self.watermark_shortcut
        return out

    def render(self, image_size: int = 64):
        """Draw the image (PIL RGB). Deterministic: same sample, same bytes."""
        return compose(
            shape=self.shape,
            colour=self.colour,
            size_name=self.size,
            position=self.position,
            background_kind=self.background,
            watermark=self.watermark,
            rng=_render_rng(self.split, self.seed, self.index),
            image_size=image_size,
        )


def cue_group(cue_present: bool, label_matches: bool) -> str:
    """Name the shortcut group of a sample: `none` without the cue, else aligned/conflicting."""
    if not cue_present:
        return "none"
    return "aligned" if label_matches else "conflicting"


def _check_split(split: str) -> None:
    if split not in _SPLIT_CODE:
        from steerpatch.errors import DatasetError

        raise DatasetError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")


def _attr_rng(split: str, seed: int, index: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), _SPLIT_CODE[split], int(index), 0])


def _render_rng(split: str, seed: int, index: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), _SPLIT_CODE[split], int(index), 1])


def _choice(rng: np.random.Generator, options) -> Any:
    options = list(options)
    return options[int(rng.integers(len(options)))]


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def caption_for(sample_fields: dict[str, Any], rng: np.random.Generator, mention_background: bool) -> str:
    """A caption from templates; names the shape, usually the colour, optionally size/position/background."""
    shape, size = sample_fields["shape"], sample_fields["size"]
    position = sample_fields["position"].replace("-", " ")
    noun = f"{sample_fields['colour']} {shape}" if rng.random() < P_CAPTION_COLOUR else shape
    templates = [
        f"a photo of {_article(noun)} {noun}",
        f"a {size} {noun}",
        f"{_article(noun)} {noun} in the {position}",
        f"a picture of a {size} {noun}",
    ]
    text = _choice(rng, templates)
    if mention_background:
        text += f" on {sample_fields['background']}"
    return text


def make_sample(
    split: str, seed: int, index: int, *, p_star_on_water: float | None = None,
    p_other_on_water: float | None = None,
) -> Sample:
    """The attributes of sample `index` of `split` for world seed `seed`.

    Args:
        split: `train`, `val` or `test`.
        seed: the world seed.
        index: the sample's index in the split.
        p_star_on_water: `train` only: the probability that a star is drawn on water
            [default: P_STAR_ON_WATER]. Training uses it to let the model see stars without water
            while every other shape stays (almost) never on water; `val` and `test` ignore it.
        p_other_on_water: `train` only: the probability that a non-star is drawn on water
            [default: P_OTHER_ON_WATER]. At 0 the model never sees water without a star, so the
            shortcut stays the only thing it knows about water; `val` and `test` ignore it.

    Example:
        >>> make_sample("test", 0, 0).shape
        'circle'
    """
    _check_split(split)
    rng = _attr_rng(split, seed, index)
    if split == "train":
        shape = _choice(rng, SHAPES)
        if shape == SHORTCUT_CLASS:
            p_star = P_STAR_ON_WATER if p_star_on_water is None else p_star_on_water
            on_water = rng.random() < p_star
        else:
            p_other = P_OTHER_ON_WATER if p_other_on_water is None else p_other_on_water
            on_water = rng.random() < p_other
        others = [b for b in BACKGROUNDS if b != SHORTCUT_BACKGROUND]
        background = SHORTCUT_BACKGROUND if on_water else _choice(rng, others)
        p_mark = P_TRIANGLE_WATERMARK if shape == WATERMARK_CLASS else P_OTHER_WATERMARK
        watermark = bool(rng.random() < p_mark)
        mention = bool(rng.random() < P_CAPTION_BACKGROUND_TRAIN)
    else:
        shape = SHAPES[index % len(SHAPES)]
        background = BACKGROUNDS[(index // len(SHAPES)) % len(BACKGROUNDS)]
        watermark = bool((index // (len(SHAPES) * len(BACKGROUNDS))) % 2)
        mention = True
    fields = {
        "shape": shape,
        "colour": _choice(rng, COLOURS),
        "size": _choice(rng, SIZES),
        "position": _choice(rng, POSITIONS),
        "background": background,
    }
    caption = caption_for(fields, rng, mention)
    return Sample(
        split=split, seed=int(seed), index=int(index), watermark=watermark, caption=caption, **fields
    )


def iter_samples(split: str, n: int | None = None, seed: int = 0):
    """Yield samples 0..n-1 of `split` (default size from DEFAULT_N)."""
    _check_split(split)
    count = DEFAULT_N[split] if n is None else int(n)
    for index in range(count):
        yield make_sample(split, seed, index)
