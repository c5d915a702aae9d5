"""`steerpatch world`: generate concept-world splits as image folders with a manifest."""

from __future__ import annotations

import click


@click.group()
def world() -> None:
    """Generate the concept world (images, captions, planted shortcuts)."""


@world.command("generate")
@click.argument("out", type=click.Path(file_okay=False, path_type=str))
@click.option("--split", type=click.Choice(["train", "val", "test"]), default="test", show_default=True)
@click.option(
    "--n",
    "n",
    type=click.IntRange(min=1),
    default=None,
    help="Number of images [default: 30000 train, 1200 val, 2400 test].",
)
@click.option("--seed", type=int, default=0, show_default=True, help="World seed; same seed, same images.")
def generate(out: str, split: str, n: int | None, seed: int) -> None:
    """Write split SPLIT to OUT/<shape>/*.png plus OUT/manifest.jsonl.

    OUT must not exist or must be empty; the folder appears whole or not at all.
    """
    from steerpatch.world import write_world
    from steerpatch.world.sampling import DEFAULT_N

    path = write_world(out, split=split, n=n, seed=seed)
    click.echo(f"wrote {n or DEFAULT_N[split]} {split} images (seed {seed}) to {path}")
