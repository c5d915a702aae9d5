"""Write a concept-world split to disk in the steerpatch dataset format (see `steerpatch.data`)."""

from __future__ import annotations

import json
from pathlib import Path

from tqdm import tqdm

from steerpatch.io import atomic_dir
from steerpatch.world.render import SHAPES
from steerpatch.world.sampling import DEFAULT_N, _check_split, make_sample

WORLD_FORMAT_VERSION = 1


def write_world(
    out: str | Path, *, split: str = "test", n: int | None = None, seed: int = 0, progress: bool = True
) -> Path:
    """Render `n` samples of `split` into `out/<shape>/<split>-<index>.png` plus `out/manifest.jsonl`.

    The folder is built under a temporary name and renamed into place, so it either appears whole
    or not at all.

    Args:
        out: destination folder; must not exist or be empty.
        split: `train`, `val` or `test`.
        n: number of samples (default: the split's default size).
        seed: world seed.
        progress: show a progress bar.

    Returns:
        The destination folder.

    Raises:
        OutputError: `out` exists and is not empty.
        DatasetError: unknown split or a non-positive `n`.

    Example:
        >>> write_world("world/test", split="test", n=96)  # doctest: +SKIP
    """
    from steerpatch.errors import DatasetError

    _check_split(split)
    count = DEFAULT_N[split] if n is None else int(n)
    if count <= 0:
        raise DatasetError(f"--n must be a positive number of images, got {count}")
    with atomic_dir(out) as tmp:
        for shape in SHAPES:
            (tmp / shape).mkdir()
        rows = []
        for index in tqdm(range(count), desc=f"world {split}", disable=not progress, unit="img"):
            sample = make_sample(split, seed, index)
            rel = f"{sample.shape}/{split}-{index:05d}.png"
            sample.render().save(tmp / rel, format="PNG", optimize=False)
            rows.append(json.dumps({"path": rel, "label": sample.label, "attributes": sample.attributes()}))
        (tmp / "manifest.jsonl").write_text("\n".join(rows) + "\n", encoding="utf-8")
        meta = {"format_version": WORLD_FORMAT_VERSION, "split": split, "n": count, "seed": seed}
        (tmp / "world.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    return Path(out)


# the verb the CLI uses
generate_world = write_world
