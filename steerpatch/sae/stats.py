"""Latent statistics over a labelled image folder: firing rates per class and group, top images.

A latent "fires on an image" when its activation is positive on any token in the SAE's scope; its
image-level activation is the maximum over those tokens. Stored beside the SAE as
`latent_stats.safetensors` (tensors) + `latent_stats.json` (names, ids, provenance).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, ValidationError

from steerpatch.errors import SAEError
from steerpatch.sae.activations import check_sae_fits, iter_batches, run_to_block, token_slice
from steerpatch.sae.module import SAE

STATS_TENSORS = "latent_stats.safetensors"
STATS_JSON = "latent_stats.json"
MAX_GROUP_VALUES = 32  # attributes with more distinct values (captions, seeds) are not groups


class _StatsRecord(BaseModel):
    model_config = ConfigDict(extra="forbid")

    format_version: Literal[1] = 1
    sae_fingerprint: str
    dataset_fingerprint: str
    dataset_root: str
    n_images: int
    block: int
    token_scope: str
    classes: list[str]
    class_sizes: dict[str, int]
    groups: list[str]
    group_sizes: dict[str, int]
    top_k: int
    item_ids: list[str]


@dataclass
class LatentStats:
    """Per-latent statistics of an SAE over a dataset (all tensors have d_sae in the last dimension).

    Attributes:
        firing_rate: share of images on which each latent fires.
        firing_rate_by_class: class -> firing rate among that class's images.
        firing_rate_by_group: "attribute=value" -> firing rate among those images.
        mean_active: mean image-level activation over the images where the latent fires (0 if never).
        max_activation: largest image-level activation seen.
        top_images: latent -> item ids of its top-activating images, strongest first.
        top_values: (d_sae, top_k) activations matching `top_images` (0 where fewer images fired).
        dataset_fingerprint: fingerprint of the dataset measured.
        sae_fingerprint: fingerprint of the SAE measured.
        n_images: number of images.
        class_sizes, group_sizes: image counts behind each rate.
    """

    firing_rate: torch.Tensor
    firing_rate_by_class: dict[str, torch.Tensor]
    firing_rate_by_group: dict[str, torch.Tensor]
    mean_active: torch.Tensor
    max_activation: torch.Tensor
    top_images: dict[int, list[str]]
    top_values: torch.Tensor
    dataset_fingerprint: str
    sae_fingerprint: str
    n_images: int
    class_sizes: dict[str, int]
    group_sizes: dict[str, int]
    block: int
    token_scope: str


def _groups(dataset: Any) -> dict[str, list[int]]:
    """'attribute=value' -> item positions, for scalar attributes with few distinct values."""
    values: dict[str, dict[str, list[int]]] = {}
    for i, item in enumerate(dataset.items):
        for key, value in (item.attributes or {}).items():
            if isinstance(value, (str, bool, int)) and not isinstance(value, float):
                text = str(value).lower() if isinstance(value, bool) else str(value)
                values.setdefault(key, {}).setdefault(text, []).append(i)
    out: dict[str, list[int]] = {}
    for key in sorted(values):
        if len(values[key]) <= MAX_GROUP_VALUES:
            for text in sorted(values[key]):
                out[f"{key}={text}"] = values[key][text]
    return out


@torch.no_grad()
def compute_latent_stats(
    loaded: Any, sae: SAE, dataset: Any, *, top_k: int = 16, batch_size: int = 64, progress: bool = True,
    workers: int | None = None,
) -> LatentStats:
    """Run every image of `dataset` through the model and the SAE and profile each latent.

    Args:
        loaded: a `steerpatch.models.LoadedModel` whose width at the SAE's block is `sae.d_in`.
        sae: the SAE, with a recorded hook.
        dataset: a `steerpatch.data.ImageDataset`.
        top_k: how many top-activating images to keep per latent.
        batch_size: images per forward pass.
        progress: show a progress bar on stderr.
        workers: image decoding threads, overlapping the forward pass (None: one per core, at most four).

    Returns:
        The statistics.

    Raises:
        SAEError: an SAE without a hook, or one that does not fit the model.
    """
    from tqdm import tqdm

    from steerpatch.data import iter_image_batches

    hook = sae.require_hook()
    check_sae_fits(sae, loaded.model)
    n = len(dataset)
    if n == 0:
        raise SAEError(f"dataset '{dataset.root}' has no images; generate or copy some first")
    sl = token_slice(hook.tokens)
    classes = list(dataset.classes)
    class_of = torch.tensor([classes.index(item.label) for item in dataset.items])
    groups = _groups(dataset)
    group_rows = torch.zeros(len(groups), n, dtype=torch.bool)
    for g, members in enumerate(groups.values()):
        group_rows[g, members] = True
    fires_by_class = torch.zeros(len(classes), sae.d_sae)
    fires_by_group = torch.zeros(len(groups), sae.d_sae)
    fires = torch.zeros(sae.d_sae)
    active_sum = torch.zeros(sae.d_sae)
    max_act = torch.zeros(sae.d_sae)
    k = min(top_k, n)
    top_vals = torch.zeros(sae.d_sae, 0)
    top_idx = torch.zeros(sae.d_sae, 0, dtype=torch.long)
    with tqdm(total=n, desc="latent statistics", unit="img", disable=not progress) as bar:
        batches = iter_image_batches(
            dataset, loaded.preprocess, batch_size=batch_size, workers=workers, on_undecodable="fail"
        )
        for idx, batch in zip(iter_batches(n, batch_size), batches, strict=True):
            acts = run_to_block(loaded.model, batch.pixels, hook.block)[:, sl, :].float()
            image_act = sae.encode(acts).amax(dim=1)  # (batch, d_sae)
            fired = (image_act > 0).float()
            fires += fired.sum(0)
            active_sum += image_act.clamp_min(0).sum(0)
            max_act = torch.maximum(max_act, image_act.max(0).values)
            rows = torch.tensor(list(idx))
            fires_by_class.index_add_(0, class_of[rows], fired)
            fires_by_group += group_rows[:, rows].float() @ fired
            vals = torch.cat([top_vals, image_act.T], dim=1)
            ids = torch.cat([top_idx, rows.expand(sae.d_sae, -1)], dim=1)
            keep = torch.topk(vals, k=min(k, vals.shape[1]), dim=1)
            top_vals, top_idx = keep.values, ids.gather(1, keep.indices)
            bar.update(len(idx))
    class_sizes = {c: int((class_of == i).sum()) for i, c in enumerate(classes)}
    group_sizes = {g: len(m) for g, m in groups.items()}
    item_ids = [item.id for item in dataset.items]
    return LatentStats(
        firing_rate=fires / n,
        firing_rate_by_class={c: fires_by_class[i] / max(class_sizes[c], 1) for i, c in enumerate(classes)},
        firing_rate_by_group={g: fires_by_group[i] / max(group_sizes[g], 1) for i, g in enumerate(groups)},
        mean_active=active_sum / fires.clamp_min(1),
        max_activation=max_act,
        top_images=_top_ids(top_vals, top_idx, item_ids),
        top_values=top_vals.clamp_min(0),
        dataset_fingerprint=dataset.fingerprint(),
        sae_fingerprint=sae.fingerprint,
        n_images=n,
        class_sizes=class_sizes,
        group_sizes=group_sizes,
        block=hook.block,
        token_scope=hook.tokens,
    )


def _top_ids(values: torch.Tensor, indices: torch.Tensor, ids: list[str]) -> dict[int, list[str]]:
    return {
        latent: [
            ids[j] for v, j in zip(values[latent].tolist(), indices[latent].tolist(), strict=True) if v > 0
        ]
        for latent in range(values.shape[0])
    }


def stats_folder(sae_path: str | Path) -> Path:
    """The folder statistics live in: the SAE folder itself, or the folder holding an SAE file."""
    path = Path(sae_path)
    return path if path.is_dir() else path.parent


def save_latent_stats(stats: LatentStats, sae_path: str | Path, dataset_root: str = "") -> tuple[Path, Path]:
    """Write the statistics beside the SAE (each file atomically).

    Returns:
        (tensors path, json path).
    """
    from safetensors.torch import save_file

    from steerpatch.io import atomic_file, atomic_write_text

    folder = stats_folder(sae_path)
    classes, groups = list(stats.firing_rate_by_class), list(stats.firing_rate_by_group)
    ids = sorted({i for v in stats.top_images.values() for i in v})
    position = {item_id: p for p, item_id in enumerate(ids)}
    top_index = torch.full(tuple(stats.top_values.shape), -1, dtype=torch.int64)
    for latent, names in stats.top_images.items():
        for rank, name in enumerate(names):
            top_index[latent, rank] = position[name]
    d_sae = stats.firing_rate.shape[0]
    tensors = {
        "firing_rate": stats.firing_rate,
        "mean_active": stats.mean_active,
        "max_activation": stats.max_activation,
        "firing_rate_by_class": torch.stack([stats.firing_rate_by_class[c] for c in classes])
        if classes
        else torch.zeros(0, d_sae),
        "firing_rate_by_group": torch.stack([stats.firing_rate_by_group[g] for g in groups])
        if groups
        else torch.zeros(0, d_sae),
        "top_image_index": top_index,
        "top_values": stats.top_values,
    }
    record = _StatsRecord(
        sae_fingerprint=stats.sae_fingerprint,
        dataset_fingerprint=stats.dataset_fingerprint,
        dataset_root=dataset_root,
        n_images=stats.n_images,
        block=stats.block,
        token_scope=stats.token_scope,
        classes=classes,
        class_sizes=stats.class_sizes,
        groups=groups,
        group_sizes=stats.group_sizes,
        top_k=int(stats.top_values.shape[1]),
        item_ids=ids,
    )
    tensor_path = folder / STATS_TENSORS
    with atomic_file(tensor_path) as tmp:
        save_file(
            {
                k: v.contiguous().float() if k != "top_image_index" else v.contiguous()
                for k, v in tensors.items()
            },
            str(tmp),
        )
    json_path = atomic_write_text(folder / STATS_JSON, record.model_dump_json(indent=2) + "\n")
    for path in (tensor_path, json_path):
        path.chmod(0o644)  # the temporary files they were renamed from are private
    return tensor_path, json_path


def load_latent_stats(sae_dir: str | Path, *, sae: SAE | None = None) -> LatentStats:
    """Read the statistics stored beside an SAE.

    Args:
        sae_dir: the SAE folder (or SAE file) the statistics were written beside.
        sae: when given, the statistics must have been computed for this SAE (same fingerprint).

    Returns:
        The statistics.

    Raises:
        SAEError: no statistics there, malformed files, or statistics of a different SAE.
    """
    from safetensors.torch import load_file

    folder = stats_folder(sae_dir)
    json_path, tensor_path = folder / STATS_JSON, folder / STATS_TENSORS
    if not json_path.exists() or not tensor_path.exists():
        raise SAEError(
            f"no latent statistics in '{folder}'; run `steerpatch sae stats {folder} --data DIR` first"
        )
    try:
        record = _StatsRecord.model_validate(json.loads(json_path.read_text(encoding="utf-8")))
        tensors = load_file(str(tensor_path))
    except (json.JSONDecodeError, ValidationError, OSError, ValueError) as error:
        raise SAEError(
            f"latent statistics in '{folder}' are malformed ({str(error).splitlines()[0]}); "
            "recompute them with `steerpatch sae stats`"
        ) from None
    if sae is not None and sae.fingerprint != record.sae_fingerprint:
        raise SAEError(
            f"latent statistics in '{folder}' were computed for SAE {record.sae_fingerprint[:16]}, "
            f"not {sae.fingerprint[:16]}; recompute them with `steerpatch sae stats`"
        )
    top_index = tensors["top_image_index"]
    top = {
        latent: [record.item_ids[j] for j in top_index[latent].tolist() if j >= 0]
        for latent in range(top_index.shape[0])
    }
    return LatentStats(
        firing_rate=tensors["firing_rate"],
        firing_rate_by_class={c: tensors["firing_rate_by_class"][i] for i, c in enumerate(record.classes)},
        firing_rate_by_group={g: tensors["firing_rate_by_group"][i] for i, g in enumerate(record.groups)},
        mean_active=tensors["mean_active"],
        max_activation=tensors["max_activation"],
        top_images=top,
        top_values=tensors["top_values"],
        dataset_fingerprint=record.dataset_fingerprint,
        sae_fingerprint=record.sae_fingerprint,
        n_images=record.n_images,
        class_sizes=record.class_sizes,
        group_sizes=record.group_sizes,
        block=record.block,
        token_scope=record.token_scope,
    )
