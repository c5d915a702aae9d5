"""Reading a CLIP vision tower's residual stream at one block, for training SAEs and profiling latents."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch

from steerpatch.errors import SAEError
from steerpatch.models import tower
from steerpatch.models.tower import run_to_block
from steerpatch.sae.config import check_token_scope
from steerpatch.tokens import select_tokens


def token_slice(tokens: str) -> slice:
    """The token positions of an SAE's scope in a (batch, tokens, width) block output: cls is position 0.

    Raises:
        SAEError: for a scope other than cls, patches or all.
    """
    check_token_scope(tokens)
    return select_tokens(tokens)  # type: ignore[return-value]  # a named scope is always a slice


def check_block(model: Any, block: int) -> None:
    """Refuse a block index the model does not have.

    Raises:
        SAEError: naming the block and the valid range.
    """
    tower.check_block(model, block, SAEError)


def iter_batches(n: int, batch_size: int) -> Iterator[range]:
    for start in range(0, n, batch_size):
        yield range(start, min(start + batch_size, n))


def cache_activations(
    loaded: Any,
    load_image: Callable[[int], Any],
    n_images: int,
    *,
    block: int,
    tokens: str = "all",
    batch_size: int = 64,
    progress: bool = True,
    desc: str = "caching activations",
    workers: int | None = None,
) -> torch.Tensor:
    """Run images through the vision tower up to `block` and keep the tokens in scope.

    Args:
        loaded: a `steerpatch.models.LoadedModel`.
        load_image: index -> PIL image (e.g. `dataset.load_image`).
        n_images: how many images, indices 0..n_images-1.
        block: the vision block whose residual output is read.
        tokens: cls, patches or all.
        batch_size: images per forward pass.
        progress: show a progress bar on stderr.
        desc: the progress bar's label.
        workers: image decoding threads, overlapping the forward pass (None: one per core, at most four).

    Returns:
        float32 tensor (n_images, tokens_in_scope, width).

    Raises:
        SAEError: for a block the model does not have or an empty image set.
    """
    from tqdm import tqdm

    from steerpatch.data import iter_image_batches

    sl = token_slice(tokens)
    if n_images <= 0:
        raise SAEError("no images to cache activations from; point --data at a folder with images")
    check_block(loaded.model, block)
    chunks: list[torch.Tensor] = []
    with tqdm(total=n_images, desc=desc, unit="img", disable=not progress) as bar:
        batches = iter_image_batches(
            load_image, loaded.preprocess, items=range(n_images), batch_size=batch_size, workers=workers,
            on_undecodable="fail",
        )
        for batch in batches:  # images are decoded in threads and dropped once preprocessed
            chunks.append(run_to_block(loaded.model, batch.pixels, block)[:, sl, :].float().cpu())
            bar.update(len(batch.items))
    return torch.cat(chunks)


def flatten_tokens(acts: torch.Tensor) -> torch.Tensor:
    """(images, tokens, width) -> (images * tokens, width)."""
    return acts.reshape(-1, acts.shape[-1])


def select_images(n: int, fraction: float, seed: int) -> tuple[Sequence[int], Sequence[int]]:
    """Split image indices into (train, held-out) with a seeded shuffle; held-out gets `fraction`."""
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(n, generator=generator).tolist()
    n_eval = max(1, int(round(n * fraction))) if n > 1 else 0
    return sorted(order[n_eval:]), sorted(order[:n_eval])


def check_sae_fits(sae: Any, model: Any) -> None:
    """Refuse an SAE whose input width differs from the model's width at the SAE's block.

    Args:
        sae: an `SAE` with a recorded hook.
        model: an open_clip CLIP (or a LoadedModel).

    Raises:
        SAEError: naming both widths and the block, or a block the model lacks.
    """
    model = getattr(model, "model", model)
    hook = sae.require_hook()
    check_block(model, hook.block)
    width = tower.residual_width(model)
    if width != sae.d_in:
        raise SAEError(
            f"SAE d_in={sae.d_in} does not match the model's width {width} at block {hook.block}; "
            "use an SAE trained on this model (or this block)"
        )
