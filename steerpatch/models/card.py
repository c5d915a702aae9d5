"""The model card written next to trained concept-clip weights: data, command, results."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from steerpatch.io import atomic_write_text


def _results_table(evaluation: dict[str, Any]) -> str:
    lines = [
        "| group | accuracy | n |",
        "| --- | --- | --- |",
        f"| all | {evaluation['accuracy']:.3f} | {evaluation['n']} |",
    ]
    for group, row in evaluation.get("groups", {}).items():
        lines.append(f"| {group} | {row['accuracy']:.3f} | {row['n']} |")
    return "\n".join(lines)


def write_model_card(
    path: str | Path,
    *,
    config: dict[str, Any],
    stats: dict[str, Any],
    evaluation: dict[str, Any],
    fingerprint: str,
    weights: Path,
) -> Path:
    """Write MODEL_CARD.md describing a concept-clip training run."""
    size_mb = os.path.getsize(weights) / 1e6
    command = (
        f"steerpatch zoo train --out DIR --n {config['n']} --epochs {config['epochs']} --seed {config['seed']} "
        f"--threads {config['threads']}"
    )
    import json

    import steerpatch.world.sampling as w
    from steerpatch.models.loading import concept_clip_config_path

    arch = json.loads(concept_clip_config_path().read_text())
    vision, text_cfg = arch["vision_cfg"], arch["text_cfg"]
    text = f"""# concept-clip

A small CLIP trained from scratch, contrastively, on the steerpatch concept world. It is a real
open_clip `CLIP`, built from the config `concept-clip.json` registered with
`open_clip.add_model_config`: a ViT with {vision["image_size"]}x{vision["image_size"]} input, \
{vision["patch_size"]}x{vision["patch_size"]} patches, width {vision["width"]}, {vision["layers"]} blocks, \
{vision["width"] // vision["head_width"]} heads; a text transformer of width {text_cfg["width"]}, \
{text_cfg["layers"]} layers, context {text_cfg["context_length"]}, open_clip's BPE vocabulary; \
a {arch["embed_dim"]}-d joint embedding.

It has a known, planted bug: it learned that water means "star".

## Data

The concept world's `train` split, seed {config["seed"]}, {config["n"]} images rendered in memory
(64x64 RGB; six shapes as labels; colour, size, position, four background textures, corner watermark).
Planted shortcuts: {w.P_STAR_ON_WATER:.0%} of stars are on water and other shapes land on water with
probability {w.P_OTHER_ON_WATER:.1%}; {w.P_TRIANGLE_WATERMARK:.0%} of triangles carry the corner watermark
({w.P_OTHER_WATERMARK:.0%} of other shapes); captions name the background in {w.P_CAPTION_BACKGROUND_TRAIN:.0%}
of samples, the colour in {w.P_CAPTION_COLOUR:.0%}, and never the watermark.

## Command

    {command}

Hyper-parameters: batch {config["batch_size"]}, AdamW lr {config["lr"]} (warm-up {config["warmup_steps"]} steps, cosine),
weight decay {config["weight_decay"]}, {config["threads"]} CPU threads, open_clip `ClipLoss`.
Training took {stats["train_seconds"] / 60:.1f} min ({stats["images_per_second"]:.0f} images/s, {stats["steps"]} steps);
loss {stats["first_loss"]:.3f} -> {stats["final_loss"]:.3f}.

## Results

Zero-shot shape accuracy (prompt templates `steerpatch.models.DEFAULT_TEMPLATES`) on {evaluation["data"]},
grouped by `{evaluation["group_by"]}` (aligned: star on water; conflicting: water, not a star; none: no water).
Reproduce with `steerpatch zoo eval --n {evaluation["n"]}`.

{_results_table(evaluation)}

## Weights

`concept-clip.safetensors`, fp32, {size_mb:.1f} MB, SHA-256 weight fingerprint
(`steerpatch.models.fingerprint_state_dict`):

    {fingerprint}

## Intended use

A test bed for finding and fixing shortcut features with SAE steering patches. Not a general model.
"""
    return atomic_write_text(path, text)
