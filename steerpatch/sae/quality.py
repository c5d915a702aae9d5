"""How good an SAE is: reconstruction (FVU), sparsity (L0), dead latents, and accuracy when spliced in."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, ValidationError

from steerpatch.errors import SAEError
from steerpatch.models.tower import edit_block_output
from steerpatch.sae.activations import iter_batches, token_slice
from steerpatch.sae.module import SAE

QUALITY_FILENAME = "quality.json"


class SAEQuality(BaseModel):
    """Quality of an SAE on held-out data, as recorded beside it in `quality.json`."""

    model_config = ConfigDict(extra="forbid")

    format_version: Literal[1] = 1
    fvu: float  # fraction of variance unexplained, over held-out tokens
    mean_l0: float  # mean number of active latents per token
    dead_fraction: float  # latents that never fire on the held-out tokens
    accuracy_clean: float | None = None  # zero-shot accuracy of the unmodified model
    accuracy_spliced: float | None = None  # zero-shot accuracy with x_hat replacing the block output
    accuracy_drop_points: float | None = None  # 100 * (clean - spliced)
    n_eval_tokens: int
    n_eval_images: int | None = None
    eval_data: str | None = None
    extra: dict[str, Any] = {}


@torch.no_grad()
def reconstruction_metrics(sae: SAE, acts: torch.Tensor, *, batch_size: int = 8192) -> dict[str, float]:
    """FVU, mean L0 and dead-latent fraction of `sae` on activations (tokens, d_in).

    FVU = sum ||x - x_hat||^2 / sum ||x - mean(x)||^2 over all tokens.
    """
    acts = acts.reshape(-1, acts.shape[-1]).float()
    if len(acts) == 0:
        raise SAEError("no held-out activations to measure the SAE on; use more images")
    mean = acts.mean(0)
    err = total = l0 = 0.0
    fired = torch.zeros(sae.d_sae, dtype=torch.bool)
    for idx in iter_batches(len(acts), batch_size):
        x = acts[idx.start : idx.stop]
        z = sae.encode(x)
        err += float((sae.decode(z, x) - x).pow(2).sum())
        total += float((x - mean).pow(2).sum())
        active = z > 0
        l0 += float(active.sum())
        fired |= active.any(0)
    return {
        "fvu": err / max(total, 1e-12),
        "mean_l0": l0 / len(acts),
        "dead_fraction": float((~fired).float().mean()),
        "n_eval_tokens": len(acts),
    }


@contextlib.contextmanager
def splice(model: Any, sae: SAE, block: int, tokens: str) -> Iterator[None]:
    """Replace the tokens in scope of block `block`'s output by the SAE reconstruction (error term dropped)."""
    sl = token_slice(tokens)

    def reconstruct(x: torch.Tensor) -> torch.Tensor:
        x = x.clone()
        x[:, sl, :] = sae(x[:, sl, :]).to(x.dtype)
        return x

    with edit_block_output(model, block, reconstruct):
        yield


@torch.no_grad()
def spliced_accuracy(
    loaded: Any,
    sae: SAE,
    dataset: Any,
    indices: Sequence[int],
    *,
    block: int,
    tokens: str,
    batch_size: int = 64,
    progress: bool = True,
) -> tuple[float, float]:
    """Zero-shot accuracy of the clean model and of the model with the SAE spliced in, on `indices`.

    Returns:
        (clean accuracy, spliced accuracy), both in [0, 1].
    """
    from tqdm import tqdm

    from steerpatch.data import iter_image_batches
    from steerpatch.models import build_zero_shot_head, encode_images

    head = build_zero_shot_head(loaded, list(dataset.classes))
    class_index = {name: i for i, name in enumerate(head.classes)}
    clean = spliced = 0
    indices = list(indices)
    with tqdm(total=len(indices), desc="spliced accuracy", unit="img", disable=not progress) as bar:
        # streamed: decoded in threads while the model runs, never all held at once
        for batch in iter_image_batches(dataset, loaded.preprocess, items=[dataset[i] for i in indices],
                                        batch_size=batch_size, on_undecodable="fail"):
            pixels = batch.pixels
            labels = torch.tensor([class_index[item.label] for item in batch.items])
            clean += int((head.logits(encode_images(loaded, pixels)).argmax(-1) == labels).sum())
            with splice(loaded.model, sae, block, tokens):
                spliced += int((head.logits(encode_images(loaded, pixels)).argmax(-1) == labels).sum())
            bar.update(len(batch.items))
    n = max(len(indices), 1)
    return clean / n, spliced / n


def write_quality(quality: SAEQuality) -> str:
    """The JSON text of a quality record."""
    return quality.model_dump_json(indent=2) + "\n"


def load_quality(sae_path: str | Path) -> SAEQuality | None:
    """The quality record beside an SAE, or None when there is none.

    Raises:
        SAEError: if the record exists but is malformed.
    """
    path = Path(sae_path)
    folder = path if path.is_dir() else path.parent
    file = folder / QUALITY_FILENAME
    if not file.exists():
        return None
    try:
        return SAEQuality.model_validate(json.loads(file.read_text(encoding="utf-8")))
    except (json.JSONDecodeError, ValidationError) as error:
        raise SAEError(
            f"{file} is not a valid quality record ({str(error).splitlines()[0]}); retrain or delete it"
        ) from None
