"""The model card written next to trained concept-clip weights: data, command, results."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from steerpatch.io import atomic_write_text


def _water_share(n: int, p_star: float, p_other: float) -> str:
    # what the model can learn from: stars it sees without water, and how pure water is as a cue
    from steerpatch.world.render import SHAPES

    stars = n / len(SHAPES)
    star_water = stars * p_star
    other_water = (n - stars) * p_other
    return (
        f" (about {stars * (1 - p_star):.0f} stars without water; "
        f"{star_water / max(star_water + other_water, 1e-9):.1%} of water images are stars)"
    )


def _class_table(evaluation: dict[str, Any]) -> str:
    by_group = evaluation.get("class_accuracy_by_group", {})
    if "none" not in by_group:
        return ""
    rows = " | ".join(f"{label} {acc:.3f}" for label, acc in by_group["none"].items())
    return f"\nPer class within group `none` (no water): {rows}.\n"


def _results_table(evaluation: dict[str, Any]) -> str:
    lines = [
        "| group | accuracy | n |",
        "| --- | --- | --- |",
        f"| all | {evaluation['accuracy']:.3f} | {evaluation['n']} |",
    ]
    for group, row in evaluation.get("groups", {}).items():
        lines.append(f"| {group} | {row['accuracy']:.3f} | {row['n']} |")
    return "\n".join(lines)


def _one_command(config: dict[str, Any]) -> str:
    """The `zoo train` command line a run's config stands for (options at their defaults left out)."""
    import steerpatch.world.sampling as w

    command = (
        f"steerpatch zoo train --out DIR --n {config['n']} --epochs {config['epochs']} --seed {config['seed']} "
        f"--threads {config['threads']}"
    )
    p_star = config.get("p_star_on_water", w.P_STAR_ON_WATER)
    if p_star != w.P_STAR_ON_WATER:
        command += f" --star-on-water {p_star:g}"
    p_other = config.get("p_other_on_water", w.P_OTHER_ON_WATER)
    if p_other != w.P_OTHER_ON_WATER:
        command += f" --other-on-water {p_other:g}"
    if config.get("lr", 2e-3) != 2e-3:
        command += f" --lr {config['lr']:g}"
    return command


def _command(config: dict[str, Any], stats: dict[str, Any], init: dict[str, Any] | None) -> str:
    """The command block: one line, or every stage when the run continued from recorded weights."""
    command = _one_command(config)
    if not config.get("init"):
        return command
    if init is None:
        return (
            f"{command} --init INIT\n\nwhere INIT holds the weights with fingerprint "
            f"`{stats.get('init_fingerprint', '?')}` (the model card of that run gives its command)"
        )
    stages = []
    run: dict[str, Any] | None = init
    while run is not None:  # earliest stage last in the record; print it first
        stages.append(run)
        run = run.get("init_run")
    lines = []
    for number, stage in enumerate(reversed(stages), start=1):
        seconds = stage.get("stats", {}).get("train_seconds", 0.0)
        extra = " --init STAGE" + str(number - 1) if stage.get("config", {}).get("init") else ""
        lines.append(f"# stage {number} ({seconds / 60:.1f} min), weights {stage.get('fingerprint', '?')[:16]}...")
        lines.append(_one_command(stage.get("config", {})).replace("--out DIR", f"--out STAGE{number}") + extra)
    lines.append(f"# stage {len(stages) + 1}: this run, from the weights of stage {len(stages)}")
    lines.append(f"{command} --init STAGE{len(stages)}/concept-clip.safetensors")
    return "\n    ".join(lines)


def write_model_card(
    path: str | Path,
    *,
    config: dict[str, Any],
    stats: dict[str, Any],
    evaluation: dict[str, Any],
    fingerprint: str,
    weights: Path,
    init: dict[str, Any] | None = None,
) -> Path:
    """Write MODEL_CARD.md describing a concept-clip training run."""
    size_mb = os.path.getsize(weights) / 1e6
    import json

    import steerpatch.world.sampling as w

    p_star = config.get("p_star_on_water", w.P_STAR_ON_WATER)
    p_other = config.get("p_other_on_water", w.P_OTHER_ON_WATER)
    command = _command(config, stats, init)
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
Planted shortcuts: {p_star:.0%} of stars are on water and other shapes land on water with
probability {p_other:.1%}{_water_share(config["n"], p_star, p_other)}; {w.P_TRIANGLE_WATERMARK:.0%} of triangles carry the corner watermark
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
{_class_table(evaluation)}

## Weights

`concept-clip.safetensors`, fp32, {size_mb:.1f} MB, SHA-256 weight fingerprint
(`steerpatch.models.fingerprint_state_dict`):

    {fingerprint}

## Intended use

A test bed for finding and fixing shortcut features with SAE steering patches. Not a general model.
"""
    return atomic_write_text(path, text)
