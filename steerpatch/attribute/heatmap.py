"""Where on the image a latent fires: its activation over the patch tokens, drawn over the image.

The latent is read on every patch token (whatever token scope the SAE was trained on), reshaped to
the patch grid, upsampled to the image and blended in with a colour map.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

OVERLAY_SIZE = 256  # pixels per side of the written overlay; small world images are upscaled to it


@torch.no_grad()
def latent_grid(model, sae, hidden: torch.Tensor, latent: int) -> np.ndarray:
    """A latent's activation on each patch token, as the patch grid (rows, cols).

    Args:
        model: the open_clip CLIP (for its patch grid).
        sae: the SAE.
        hidden: residual stream after the SAE's block for one image, (1, T, D).
        latent: the latent index.

    Returns:
        A float array of shape `model.visual.grid_size`.
    """
    from steerpatch.steer import latent_activations

    rows, cols = model.visual.grid_size
    values = latent_activations(sae, hidden[0, 1:], [latent])[:, 0]
    return values.reshape(rows, cols).float().numpy()


def overlay(image: Image.Image, grid: np.ndarray, *, vmax: float | None = None, alpha: float = 0.55) -> Image.Image:
    """Blend a heat grid over an image.

    Args:
        image: the RGB image.
        grid: non-negative values, (rows, cols).
        vmax: value mapped to the top of the colour map; None uses the grid's maximum.
        alpha: weight of the heat layer where it is hottest.

    Returns:
        An RGB image of `OVERLAY_SIZE` pixels per side.
    """
    from matplotlib import colormaps

    base = image.convert("RGB").resize((OVERLAY_SIZE, OVERLAY_SIZE), Image.Resampling.NEAREST)
    top = float(vmax if vmax is not None else grid.max())
    norm = np.clip(grid / top, 0.0, 1.0) if top > 0 else np.zeros_like(grid)
    heat = Image.fromarray((norm * 255).astype(np.uint8)).resize((OVERLAY_SIZE, OVERLAY_SIZE), Image.Resampling.BILINEAR)
    level = np.asarray(heat, dtype=np.float32) / 255.0
    colours = colormaps["inferno"](level)[..., :3]
    weight = (alpha * level)[..., None]
    mixed = (1 - weight) * (np.asarray(base, dtype=np.float32) / 255.0) + weight * colours
    return Image.fromarray((mixed * 255).round().astype(np.uint8))


def write_overlay(image: Image.Image, grid: np.ndarray, path: str | Path) -> Path:
    """Write a heatmap overlay as PNG, atomically.

    Returns:
        The path written.
    """
    import io

    from steerpatch.io import atomic_write_bytes

    buffer = io.BytesIO()
    overlay(image, grid).save(buffer, format="PNG")
    return atomic_write_bytes(path, buffer.getvalue())
