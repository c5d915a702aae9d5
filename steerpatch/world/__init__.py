"""The concept world: seeded procedural images with attributes, captions and planted shortcuts."""

from steerpatch.world.render import BACKGROUNDS, COLOURS, POSITIONS, SHAPES, SIZES, compose
from steerpatch.world.sampling import (
    DEFAULT_N,
    SPLITS,
    Sample,
    cue_group,
    iter_samples,
    make_sample,
)
from steerpatch.world.writer import generate_world, write_world

__all__ = [
    "BACKGROUNDS",
    "COLOURS",
    "DEFAULT_N",
    "POSITIONS",
    "SHAPES",
    "SIZES",
    "SPLITS",
    "Sample",
    "compose",
    "cue_group",
    "generate_world",
    "iter_samples",
    "make_sample",
    "write_world",
]
