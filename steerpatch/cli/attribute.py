"""`steerpatch attribute`: rank the SAE latents behind one image's prediction, with heatmaps and exemplars."""

from __future__ import annotations

import json
from pathlib import Path

import click

from steerpatch.errors import SteerpatchError


def _table(result) -> str:
    against = result.against or "best other class"
    lines = [
        f"{result.image}: predicted {result.predicted} ({100 * result.probabilities[result.predicted]:.1f}%), "
        f"margin {result.target} vs {against} = {result.margin:.3f}  [block {result.block}, tokens {result.tokens}]",
        f"{'rank':>4} {'latent':>7} {'score':>9} {'act':>7} {'ablate':>9} {'-> pred':<10} top group / exemplars",
    ]
    for rank, row in enumerate(result.latents, 1):
        effect = "-" if row.ablation_effect is None else f"{row.ablation_effect:+.3f}"
        group = row.top_groups[0] if row.top_groups else None
        about = f"{group.group} ({group.rate:.2f}, x{group.lift:.1f})" if group else ""
        if row.exemplar_attributes:
            key, counts = max(row.exemplar_attributes.items(), key=lambda kv: max(kv[1].values()) if kv[1] else 0)
            value, count = next(iter(counts.items()))
            about += f"  exemplars: {key}={value} {count}/{len(row.exemplars)}"
        lines.append(
            f"{rank:>4} {row.latent:>7} {row.score:>+9.4f} {row.activation:>7.3f} {effect:>9} "
            f"{row.ablated_prediction or '-':<10} {about}"
        )
    return "\n".join(lines)


@click.command()
@click.argument("image", type=click.Path(dir_okay=False))
@click.option("--target", default="predicted", show_default=True, help="Class whose margin to explain, or 'predicted'.")
@click.option("--against", default=None, help="Competing class (e.g. the true label); default: the best other class.")
@click.option("--model", "model_spec", default="concept-clip", show_default=True, help="Model spec for load_model.")
@click.option("--sae", "sae_path", default=None, help="SAE folder (default: the shipped default SAE).")
@click.option("--classes", default=None, help="Comma-separated class names (default: from --data or the SAE statistics).")
@click.option("--data", default=None, type=click.Path(file_okay=False), help="Held-out folder the SAE statistics refer to (exemplar images and attributes; also the classes).")
@click.option("--top", "top_n", default=10, show_default=True, type=click.IntRange(1, 1000), help="Latents to list and ablate.")
@click.option("--no-ablate", is_flag=True, help="Skip the exact ablation re-runs.")
@click.option("--out", "out_dir", default="attribution", show_default=True, type=click.Path(file_okay=False), help="Folder for heatmap and exemplar PNGs.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def attribute(image, target, against, model_spec, sae_path, classes, data, top_n, no_ablate, out_dir, as_json) -> None:
    """Rank the SAE latents that drive IMAGE's TARGET margin; write heatmaps of where each one fires.

    Scores are activation x gradient of the logit margin (TARGET minus AGAINST, or minus the best other
    class); the top ones are checked exactly by re-running the model with each latent suppressed.
    """
    from steerpatch.preflight import check_model_spec

    check_model_spec(model_spec)  # a typo or a missing file is refused before torch is imported
    if not Path(image).is_file():
        raise SteerpatchError(f"image '{image}' does not exist or is not a file; check the path")
    if data and not Path(data).is_dir():
        raise SteerpatchError(f"--data '{data}' is not a folder; pass the held-out image folder")
    from steerpatch.attribute import attribute as run_attribution
    from steerpatch.models import load_model
    from steerpatch.sae import default_sae_path, load_sae

    loaded = load_model(model_spec)
    sae = load_sae(sae_path or default_sae_path())
    dataset = None
    if data:
        from steerpatch.data import load_dataset

        dataset = load_dataset(data)
    class_list = [c.strip() for c in classes.split(",") if c.strip()] if classes else None
    if class_list is None and dataset is not None:
        class_list = list(dataset.classes)
    result = run_attribution(
        loaded, sae, Path(image), target=target, against=against, classes=class_list, top_n=top_n,
        ablate=not no_ablate, out_dir=out_dir, exemplar_data=dataset,
    )
    if as_json:
        click.echo(json.dumps(result.model_dump(mode="json"), indent=2))
    else:
        click.echo(_table(result))
        click.echo(f"heatmaps and exemplars in {Path(out_dir)}/")
