"""Where on the image a latent fires: its activation over the patch tokens, drawn over the image.

The latent is read on every patch token (whatever token scope the SAE was trained on), reshaped to
the patch grid, upsampled to the image and blended in with a colour map.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from steerpatch.tokens import select_tokens

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
    from steerpatch.models.tower import vision_tower
    from steerpatch.steer import latent_activations
    rows, cols = vision_tower(model).grid_size
    values = latent_activations(sae, hidden[0, select_tokens("patches")], [latent])[:, 0]
    return values.reshape(rows, cols).float().numpy()


@torch.no_grad()
def latent_grid_cls(sae, hidden: torch.Tensor, latent: int) -> float:
    """A latent's activation on the class token, which the patch grid does not show."""
    from steerpatch.steer import latent_activations

    return float(latent_activations(sae, hidden[0, select_tokens("cls")], [latent])[0, 0])


SCALE_HEIGHT = 40  # pixels of the strip under the overlay: caption and colour bar
_COLOURMAP = "inferno"


def overlay(image: Image.Image, grid: np.ndarray, *, vmax: float | None = None, alpha: float = 0.75) -> Image.Image:
    """Blend a heat grid over an image.

    Cold cells leave the image as it is and hot ones cover it with the colour map, so where the
    latent fires stands out even when it fires weakly.

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
    colours = colormaps[_COLOURMAP](level)[..., :3]
    # any activation gets at least a third of the weight: a faint latent must still be visible
    weight = np.where(level > 0.02, 0.3 + (alpha - 0.3) * level, 0.0)[..., None]
    mixed = (1 - weight) * (np.asarray(base, dtype=np.float32) / 255.0) + weight * colours
    return Image.fromarray((mixed * 255).round().astype(np.uint8))


def with_scale(picture: Image.Image, vmax: float, label: str, note: str = "") -> Image.Image:
    """The overlay with a strip under it: a caption and the colour bar from 0 to `vmax`."""
    from matplotlib import colormaps
    from PIL import ImageDraw

    width = picture.width
    sheet = Image.new("RGB", (width, picture.height + SCALE_HEIGHT), "white")
    sheet.paste(picture, (0, 0))
    bar = colormaps[_COLOURMAP](np.linspace(0.0, 1.0, width - 16))[:, :3]
    strip = (np.repeat(bar[None], 10, axis=0) * 255).astype(np.uint8)
    sheet.paste(Image.fromarray(strip), (8, picture.height + 26))
    draw = ImageDraw.Draw(sheet)
    draw.text((8, picture.height + 4), f"{label}  0 .. {vmax:.3g}{note}", fill="black")
    draw.text((8, picture.height + 14), "0", fill="black")
    top = f"{vmax:.3g}"
    draw.text((width - 8 - 6 * len(top), picture.height + 14), top, fill="black")
    return sheet


def write_overlay(
    image: Image.Image, grid: np.ndarray, path: str | Path, *, label: str = "", cls_value: float | None = None
) -> Path:
    """Write a heatmap overlay with its colour scale as PNG, atomically.

    Args:
        image: the RGB image.
        grid: the latent's activation per patch token.
        path: the PNG to write.
        label: caption, e.g. "latent 240".
        cls_value: the activation on the class token, named in the caption when the patch
            tokens show nothing (a latent that fires on the class token only).

    Returns:
        The path written.
    """
    import io

    from steerpatch.io import atomic_write_bytes

    vmax = float(grid.max()) if grid.size else 0.0
    note = ""
    if vmax <= 0:
        note = "  (silent on patch tokens" + (f"; class token {cls_value:.3g})" if cls_value else ")")
    buffer = io.BytesIO()
    with_scale(overlay(image, grid), vmax, label, note).save(buffer, format="PNG")
    return atomic_write_bytes(path, buffer.getvalue())
