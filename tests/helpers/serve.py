"""The limits the serve tests' server runs with (shared by its fixture and the tests that probe them), and
random pixels for requests."""

from __future__ import annotations

import numpy as np

MAX_PIXELS = 200 * 200
MAX_BODY = 2 * 1024 * 1024


def pixels_of(seed: int, rows: int = 1, size: int = 64) -> np.ndarray:
    """`rows` seeded random images as the graph's (rows, 3, size, size) float32 input."""
    return np.random.default_rng(seed).normal(size=(rows, 3, size, size)).astype(np.float32)
