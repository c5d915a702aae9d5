"""`steerpatch zoo`: train and evaluate the embedded default model, concept-clip."""

from __future__ import annotations

import json
from typing import Any

import click


@click.group()
def zoo() -> None:
    """Train and evaluate the embedded default model."""


@zoo.command("train")
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=str),
    default=".steerpatch/zoo",
    show_default=True,
    help="Folder for concept-clip.safetensors, MODEL_CARD.md and training.json.",
)
@click.option(
    "--n", "n", type=click.IntRange(min=256), default=None, help="Train-split images [default: 30000]."
)
@click.option(
    "--epochs", type=click.IntRange(min=1), default=None, help="Passes over the images [default: 6]."
)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option(
    "--threads", type=click.IntRange(min=1), default=None, help="CPU threads for torch [default: 1]."
)
@click.option(
    "--eval-n",
    type=click.IntRange(min=1),
    default=None,
    help="Test images for the card's results [default: 2400].",
)
@click.option(
    "--star-on-water",
    type=click.FloatRange(min=0.0, max=1.0),
    default=None,
    help="Share of train stars drawn on water (see --other-on-water) [default: 0.99].",
)
@click.option(
    "--other-on-water",
    type=click.FloatRange(min=0.0, max=1.0),
    default=None,
    help="Share of train non-star shapes drawn on water [default: 0.002].",
)
@click.option(
    "--init",
    type=click.Path(dir_okay=False, exists=True, path_type=str),
    default=None,
    help="Continue from these concept-clip weights (.safetensors) instead of a fresh init.",
)
@click.option(
    "--lr",
    type=click.FloatRange(min=0.0, min_open=True),
    default=None,
    help="Peak learning rate [default: 0.002].",
)
def train(
    out: str,
    n: int | None,
    epochs: int | None,
    seed: int,
    threads: int | None,
    eval_n: int | None,
    star_on_water: float | None,
    other_on_water: float | None,
    init: str | None,
    lr: float | None,
) -> None:
    """Train concept-clip contrastively on the concept world's train split, on CPU.

    To replace the shipped weights, pass --out steerpatch/zoo.
    """
    from steerpatch.models.train import TrainConfig, train_concept_clip

    given: dict[str, Any] = {
        "n": n, "epochs": epochs, "threads": threads, "eval_n": eval_n, "p_star_on_water": star_on_water,
        "p_other_on_water": other_on_water, "init": init, "lr": lr,
    }
    config = TrainConfig(seed=seed, **{key: value for key, value in given.items() if value is not None})
    result = train_concept_clip(out, config)
    groups = result.evaluation.get("groups", {})
    summary = ", ".join(f"{g} {row['accuracy']:.3f}" for g, row in groups.items())
    click.echo(
        f"trained in {result.seconds / 60:.1f} min ({result.images_per_second:.0f} img/s); "
        f"test accuracy {result.evaluation['accuracy']:.3f} ({summary})"
    )
    click.echo(f"wrote {result.weights} and {result.card}")


@zoo.command("eval")
@click.option(
    "--model", "spec", default="concept-clip", show_default=True, help="Model spec (see load_model)."
)
@click.option("--pretrained", default=None, help="Pretrained tag or checkpoint path for the model.")
@click.option(
    "--data",
    type=click.Path(path_type=str),
    default=None,
    help="Image folder to evaluate on [default: the concept world's test split, rendered in memory].",
)
@click.option("--split", type=click.Choice(["train", "val", "test"]), default="test", show_default=True)
@click.option(
    "--n", "n", type=click.IntRange(min=1), default=None, help="World images [default: 2400 for test]."
)
@click.option("--seed", type=int, default=0, show_default=True, help="World seed.")
@click.option("--group-by", default="shortcut", show_default=True, help="Attribute to group accuracy by.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON object instead of a table.")
def eval_cmd(
    spec: str,
    pretrained: str | None,
    data: str | None,
    split: str,
    n: int | None,
    seed: int,
    group_by: str,
    as_json: bool,
) -> None:
    """Zero-shot shape accuracy, overall and per group."""
    from steerpatch.models import load_model
    from steerpatch.models.evaluate import evaluate_dataset, evaluate_world

    loaded = load_model(spec, pretrained=pretrained)
    if data is not None:
        from steerpatch.data import load_dataset

        result = evaluate_dataset(loaded, load_dataset(data), group_by=group_by)
    else:
        result = evaluate_world(loaded, split=split, n=n, seed=seed, group_by=group_by)
    result["model"] = {"name": loaded.name, "fingerprint": loaded.fingerprint}
    if as_json:
        click.echo(json.dumps(result, indent=2, sort_keys=True))
        return
    click.echo(f"model {loaded.name} ({loaded.fingerprint[:12]}) on {result['data']}")
    labels = {group: f"{group_by}={group}" for group in result["groups"]}
    width = max([len("group"), *map(len, labels.values())]) + 2
    click.echo(f"{'group':<{width}}{'accuracy':>10}{'n':>8}")
    click.echo(f"{'all':<{width}}{result['accuracy']:>10.3f}{result['n']:>8}")
    for group, row in result["groups"].items():
        click.echo(f"{labels[group]:<{width}}{row['accuracy']:>10.3f}{row['n']:>8}")
