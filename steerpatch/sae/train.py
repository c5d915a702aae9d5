"""Training an SAE on an image folder: cache a block's activations, fit, measure on held-out images."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from steerpatch.sae.activations import cache_activations, check_block, flatten_tokens, select_images
from steerpatch.sae.config import check_token_scope, hook_metadata
from steerpatch.sae.fit import FitLog, FitSettings, fit_sae
from steerpatch.sae.module import SAE
from steerpatch.sae.quality import SAEQuality, reconstruction_metrics, spliced_accuracy, write_quality


@dataclass
class TrainResult:
    """A trained SAE with its held-out quality and training log."""

    sae: SAE
    quality: SAEQuality
    log: FitLog


def train_sae(
    loaded: Any,
    dataset: Any,
    *,
    block: int,
    tokens: str = "all",
    settings: FitSettings | None = None,
    eval_fraction: float = 0.1,
    max_images: int | None = None,
    measure_accuracy: bool = True,
    command: str | None = None,
    progress: bool = True,
) -> TrainResult:
    """Train an SAE on block `block` of `loaded`'s vision tower over the images of `dataset`.

    Args:
        loaded: a `steerpatch.models.LoadedModel`.
        dataset: a `steerpatch.data.ImageDataset`.
        block: the vision block whose residual output the SAE reads.
        tokens: cls, patches or all.
        settings: architecture, latents and optimisation settings.
        eval_fraction: share of images held out for FVU, L0, dead latents and spliced accuracy.
        max_images: use at most this many images (seeded choice), for quick runs.
        measure_accuracy: also measure zero-shot accuracy with the SAE spliced in.
        command: the command line that produced it, recorded in metadata.
        progress: show progress bars on stderr.

    Returns:
        The SAE (metadata records block, token scope, model name and fingerprint) and its quality.

    Raises:
        SAEError: for a block the model lacks, an unknown architecture or token scope, or too few images.

    Example:
        >>> result = train_sae(load_model("concept-clip"), load_dataset("world/train"), block=2)  # doctest: +SKIP
        >>> result.quality.fvu  # doctest: +SKIP
    """
    import torch

    settings = settings or FitSettings()
    check_token_scope(tokens)
    check_block(loaded.model, block)
    n = len(dataset)
    chosen = list(range(n))
    if max_images is not None and max_images < n:
        generator = torch.Generator().manual_seed(settings.seed)
        chosen = sorted(torch.randperm(n, generator=generator)[:max_images].tolist())
    train_pos, eval_pos = select_images(len(chosen), eval_fraction, settings.seed)
    train_idx = [chosen[i] for i in train_pos]
    eval_idx = [chosen[i] for i in eval_pos]

    def cache(indices: list[int], what: str) -> torch.Tensor:
        return cache_activations(loaded, lambda i: dataset.load_image(indices[i]), len(indices), block=block,
                                 tokens=tokens, progress=progress, desc=f"caching {what} activations")

    train_acts = cache(train_idx, "training")
    metadata: dict[str, Any] = {
        **hook_metadata(block, tokens),
        "model_name": loaded.name,
        "model_fingerprint": loaded.fingerprint,
        "dataset_fingerprint": dataset.fingerprint(),
        "training": {
            **settings.to_dict(),
            "n_train_images": len(train_idx),
            "n_eval_images": len(eval_idx),
            "n_train_tokens": int(train_acts.shape[0] * train_acts.shape[1]),
        },
        "trained_with": "steerpatch",
    }
    if command:
        metadata["training_command"] = command
    sae, log = fit_sae(flatten_tokens(train_acts), settings, metadata=metadata, progress=progress)
    del train_acts
    eval_acts = cache(eval_idx, "held-out")
    metrics = reconstruction_metrics(sae, flatten_tokens(eval_acts))
    clean: float | None = None
    spliced: float | None = None
    drop: float | None = None
    if measure_accuracy:
        clean, spliced = spliced_accuracy(
            loaded, sae, dataset, eval_idx, block=block, tokens=tokens, progress=progress
        )
        drop = round(100 * (clean - spliced), 3)
    quality = SAEQuality(
        fvu=metrics["fvu"],
        mean_l0=metrics["mean_l0"],
        dead_fraction=metrics["dead_fraction"],
        n_eval_tokens=int(metrics["n_eval_tokens"]),
        n_eval_images=len(eval_idx),
        accuracy_clean=clean,
        accuracy_spliced=spliced,
        accuracy_drop_points=drop,
        eval_data=str(dataset.root),
        extra={"resampled": log.resampled, "input_scale": log.scale},
    )
    return TrainResult(sae=sae, quality=quality, log=log)


def render_card(sae: SAE, quality: SAEQuality, *, title: str | None = None) -> str:
    """A short markdown card: what the SAE reads, how it was trained, and how good it is."""
    meta = sae.cfg.metadata
    hook = sae.require_hook()
    training = meta.get("training", {})
    lines = [
        f"# {title or 'SAE'}",
        "",
        "A sparse autoencoder over a CLIP vision tower's residual stream, in SAELens format",
        "(`cfg.json` + `sae_weights.safetensors`).",
        "",
        "| field | value |",
        "|---|---|",
        f"| model | `{meta.get('model_name')}` (fingerprint `{str(meta.get('model_fingerprint'))[:16]}…`) |",
        f"| hook | `{hook.hook_name}` (block {hook.block}, residual output), tokens `{hook.tokens}` |",
        f"| architecture | `{sae.architecture}` |",
        f"| d_in / d_sae | {sae.d_in} / {sae.d_sae} |",
        f"| fingerprint | `{sae.fingerprint}` |",
        f"| training | {training.get('steps')} steps, batch {training.get('batch_size')}, "
        f"{training.get('n_train_images')} images, {training.get('n_train_tokens')} tokens |",
        "",
        "## Quality on held-out images",
        "",
        f"- FVU: {quality.fvu:.4f}",
        f"- mean L0: {quality.mean_l0:.2f}",
        f"- dead latents: {100 * quality.dead_fraction:.2f}%",
    ]
    if quality.accuracy_clean is not None:
        lines.append(
            f"- zero-shot accuracy clean {quality.accuracy_clean:.4f}, spliced {quality.accuracy_spliced:.4f} "
            f"(drop {quality.accuracy_drop_points:.2f} points) on {quality.n_eval_images} images"
        )
    if meta.get("training_command"):
        lines += ["", "## Command", "", "```", str(meta["training_command"]), "```"]
    return "\n".join(lines) + "\n"


def sae_folder_files(sae: SAE, quality: SAEQuality, *, title: str | None = None) -> dict[str, str]:
    """The extra files saved beside a trained SAE: quality record and card."""
    return {"quality.json": write_quality(quality), "README.md": render_card(sae, quality, title=title)}
