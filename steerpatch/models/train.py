"""Contrastive training of `concept-clip` on the concept world's train split, on CPU.

The train split is rendered in memory (no PNGs), captions are tokenised once, and the model is a
real `open_clip.CLIP` built from the shipped JSON config and trained with open_clip's `ClipLoss`.
A run is deterministic for a seed and a thread count.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from steerpatch.io import atomic_file, atomic_write_text
from steerpatch.models.fingerprint import fingerprint_model
from steerpatch.models.loading import CONCEPT_CLIP, _load_state, read_checkpoint, register_concept_clip
from steerpatch.pixels import OPENAI_MEAN, OPENAI_STD
from steerpatch.world.sampling import P_OTHER_ON_WATER, P_STAR_ON_WATER


@dataclass
class TrainConfig:
    """Hyper-parameters of one training run (recorded in the model card)."""

    n: int = 30000  # train-split samples rendered
    epochs: int = 6
    seed: int = 0  # seeds the world's train split and the model init / batch order
    batch_size: int = 128
    lr: float = 2e-3
    weight_decay: float = 0.05
    warmup_steps: int = 50
    threads: int = 1  # one thread is faster than two whenever anything else is running
    eval_n: int = 2400  # test-split samples for the card's results
    # share of train stars drawn on water; below the world's 0.99 the model sees enough stars off
    # water to learn the shape, while water stays ~99% stars (other shapes ~never on water)
    p_star_on_water: float = P_STAR_ON_WATER
    # share of the other shapes drawn on water; every such image tells the model that water is not
    # enough for "star", so fewer of them keep the planted shortcut strong while stars are learned
    p_other_on_water: float = P_OTHER_ON_WATER
    # continue from these concept-clip weights instead of a fresh init (a second stage of training)
    init: str | None = None


@dataclass
class TrainResult:
    """What a run wrote and measured."""

    weights: Path
    card: Path
    seconds: float
    images_per_second: float
    final_loss: float
    fingerprint: str
    evaluation: dict[str, Any] = field(default_factory=dict)


def render_split(
    split: str, n: int, seed: int, *, progress: bool = True, p_star_on_water: float | None = None,
    p_other_on_water: float | None = None,
) -> tuple[np.ndarray, list[Any]]:
    """Render `n` samples of a concept-world split into a uint8 array (n, 64, 64, 3) plus their samples."""
    from steerpatch.world import make_sample

    samples = [
        make_sample(split, seed, i, p_star_on_water=p_star_on_water, p_other_on_water=p_other_on_water)
        for i in range(n)
    ]
    pixels = np.empty((n, 64, 64, 3), dtype=np.uint8)
    for i, sample in enumerate(tqdm(samples, desc=f"render {split}", disable=not progress, unit="img")):
        pixels[i] = np.asarray(sample.render())
    return pixels, samples


def to_model_input(pixels: np.ndarray) -> torch.Tensor:
    """uint8 (B, H, W, 3) -> normalised float (B, 3, H, W), as open_clip's preprocess does for 64x64 input."""
    x = torch.from_numpy(np.array(pixels, dtype=np.uint8)).permute(0, 3, 1, 2).float().div_(255.0)
    mean = torch.tensor(OPENAI_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(OPENAI_STD).view(1, 3, 1, 1)
    return (x - mean) / std


def _lr_at(step: int, total: int, config: TrainConfig) -> float:
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    progress = (step - config.warmup_steps) / max(1, total - config.warmup_steps)
    return config.lr * 0.5 * (1.0 + math.cos(math.pi * progress))


def train_model(config: TrainConfig, *, progress: bool = True) -> tuple[Any, dict[str, Any]]:
    """Train a fresh concept-clip; return the model (eval mode) and run statistics."""
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(config.threads)
    try:
        return _train(config, progress=progress)
    finally:
        torch.set_num_threads(previous_threads)


def _train(config: TrainConfig, *, progress: bool) -> tuple[Any, dict[str, Any]]:
    import open_clip

    register_concept_clip()
    pixels, samples = render_split(
        "train", config.n, config.seed, progress=progress, p_star_on_water=config.p_star_on_water,
        p_other_on_water=config.p_other_on_water,
    )
    tokenizer = open_clip.get_tokenizer(CONCEPT_CLIP)
    tokens = tokenizer([s.caption for s in samples])

    torch.manual_seed(config.seed)
    model = open_clip.create_model(CONCEPT_CLIP, pretrained=None)
    init_fingerprint = None
    if config.init is not None:
        _load_state(model, read_checkpoint(config.init), config.init)
        init_fingerprint = fingerprint_model(model)
    model.train()
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embedding" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "embedding" not in n)]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=config.lr,
        betas=(0.9, 0.98),
        eps=1e-6,
    )
    loss_fn = open_clip.ClipLoss()
    order_gen = torch.Generator().manual_seed(config.seed)
    steps_per_epoch = config.n // config.batch_size
    total = steps_per_epoch * config.epochs
    losses: list[float] = []
    start = time.perf_counter()
    bar = tqdm(total=total, desc="train concept-clip", disable=not progress, unit="step")
    step = 0
    for _epoch in range(config.epochs):
        order = torch.randperm(config.n, generator=order_gen)
        for b in range(steps_per_epoch):
            idx = order[b * config.batch_size : (b + 1) * config.batch_size]
            images = to_model_input(pixels[idx.numpy()])
            for group in optimizer.param_groups:
                group["lr"] = _lr_at(step, total, config)
            image_features, text_features, logit_scale = model(images, tokens[idx])
            loss = loss_fn(image_features, text_features, logit_scale)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            with torch.no_grad():
                # CLIP's clamp: a temperature above 100 makes the loss unstable
                model.logit_scale.clamp_(0, math.log(100))
            losses.append(float(loss.item()))
            step += 1
            bar.update(1)
            if step % 10 == 0:
                bar.set_postfix(loss=f"{np.mean(losses[-10:]):.3f}")
    bar.close()
    seconds = time.perf_counter() - start
    model.eval()
    stats: dict[str, Any] = {
        "train_seconds": seconds,
        "images_per_second": total * config.batch_size / max(seconds, 1e-9),
        "steps": total,
        "final_loss": float(np.mean(losses[-20:])) if losses else float("nan"),
        "first_loss": float(np.mean(losses[:20])) if losses else float("nan"),
    }
    if init_fingerprint is not None:
        stats["init_fingerprint"] = init_fingerprint
    return model, stats


def save_weights(model: Any, path: str | Path, metadata: dict[str, str] | None = None) -> Path:
    """Write a model's state dict as fp32 safetensors, atomically."""
    from safetensors.torch import save_file

    state = {k: v.detach().to(torch.float32).contiguous().cpu() for k, v in model.state_dict().items()}
    with atomic_file(path) as tmp:
        save_file(state, str(tmp), metadata=metadata or {})
    return Path(path)


def init_run(init: str | None, init_fingerprint: str | None) -> dict[str, Any] | None:
    """The recorded run that made the `--init` weights: its `training.json`, when it sits beside them and names them.

    A second stage of training is only reproducible with the first stage's command, so the card of the
    second names both. A record whose fingerprint is not the init weights' is ignored (it describes
    other weights); a missing or unreadable one leaves the card with the init fingerprint only.
    """
    if init is None or init_fingerprint is None:
        return None
    path = Path(init).with_name("training.json")
    try:
        if path.stat().st_size > 1_000_000:
            return None
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or record.get("fingerprint") != init_fingerprint:
        return None
    keep = ("config", "stats", "fingerprint", "init_run")
    return {key: record[key] for key in keep if key in record}


def train_concept_clip(
    out_dir: str | Path, config: TrainConfig | None = None, *, progress: bool = True
) -> TrainResult:
    """Train concept-clip and write `concept-clip.safetensors`, `MODEL_CARD.md` and `training.json` to `out_dir`.

    Args:
        out_dir: destination folder (created if missing); existing files of the same names are replaced atomically.
        config: hyper-parameters; defaults reproduce the shipped weights.
        progress: show tqdm bars on stderr.

    Returns:
        The paths written and the measured numbers.

    Example:
        >>> train_concept_clip("out", TrainConfig(n=2048, epochs=1))  # doctest: +SKIP
    """
    from steerpatch.models.card import write_model_card
    from steerpatch.models.evaluate import evaluate_world
    from steerpatch.models.loading import LoadedModel

    config = config or TrainConfig()
    if config.init is not None:
        # a checkpoint that does not fit fails here, before the split is rendered or anything is written
        import open_clip

        register_concept_clip()
        _load_state(
            open_clip.create_model(CONCEPT_CLIP, pretrained=None), read_checkpoint(config.init), config.init
        )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model, stats = train_model(config, progress=progress)
    fingerprint = fingerprint_model(model)
    weights = save_weights(
        model, out / f"{CONCEPT_CLIP}.safetensors", {"model": CONCEPT_CLIP, "fingerprint": fingerprint}
    )
    import open_clip

    _, _, preprocess = open_clip.create_model_and_transforms(CONCEPT_CLIP, pretrained=None)
    loaded = LoadedModel(
        model=model,
        preprocess=preprocess,
        tokenizer=open_clip.get_tokenizer(CONCEPT_CLIP),
        name=CONCEPT_CLIP,
        fingerprint=fingerprint,
        image_size=64,
    )
    evaluation = evaluate_world(loaded, split="test", n=config.eval_n, seed=0, progress=progress)
    record = {"config": asdict(config), "stats": stats, "fingerprint": fingerprint, "evaluation": evaluation}
    earlier = init_run(config.init, stats.get("init_fingerprint"))
    if earlier is not None:
        record["init_run"] = earlier
    atomic_write_text(out / "training.json", json.dumps(record, indent=2, sort_keys=True) + "\n")
    card = write_model_card(
        out / "MODEL_CARD.md",
        config=asdict(config),
        stats=stats,
        evaluation=evaluation,
        fingerprint=fingerprint,
        weights=weights,
        init=earlier,
    )
    return TrainResult(
        weights=weights,
        card=card,
        seconds=stats["train_seconds"],
        images_per_second=stats["images_per_second"],
        final_loss=stats["final_loss"],
        fingerprint=fingerprint,
        evaluation=evaluation,
    )
