"""`steerpatch suggest`: turn one or a few wrong predictions into candidate patches that generalise.

Exit codes: 0 candidates written, 2 bad input (nothing written), 130 interrupted.
"""

from __future__ import annotations

import json
from pathlib import Path

import click


@click.command()
@click.argument("images", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("--label", required=True, help="The correct class of the image(s).")
@click.option("--data", "pool", required=True, type=click.Path(file_okay=False),
              help="Unlabelled pool of images (its labels and manifest are never read).")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False),
              help="New folder for the candidate patches, search trace and fix-vs-ripple plot.")
@click.option("--budget", default=49, show_default=True, type=click.IntRange(1, 10000),
              help="Candidates to evaluate in the search.")
@click.option("--refine", "refine_budget", default=16, show_default=True, type=click.IntRange(0, 10000),
              help="Of the budget, evaluations for the greedy refinement after the grid sweep (0: sweep only).")
@click.option("--keep", default=5, show_default=True, type=click.IntRange(1, 100), help="Candidates to write.")
@click.option("--max-ripple", default=0.02, show_default=True, type=click.FloatRange(0.0, 1.0),
              help="Largest share of other pool images whose prediction a top candidate may change.")
@click.option("--neighbours", default=None, type=click.IntRange(1, None),
              help="Look-alike neighbourhood size (default: 5% of the pool).")
@click.option("--model", "model_spec", default="concept-clip", show_default=True, help="Model spec for load_model.")
@click.option("--sae", "sae_path", default=None, help="SAE folder (default: the shipped default SAE).")
@click.option("--classes", default=None, help="Comma-separated class names (default: from the SAE statistics).")
@click.option("--cache-dir", default=None, type=click.Path(file_okay=False), help="Keep the pool's hook activations here.")
@click.option("--name", default=None,
              help="Patch name of every candidate (alternatives for one fix), files NAME-c1.json... "
                   "[default: suggest-LABEL-cN].")
@click.option("--json", "as_json", is_flag=True, help='Print {"candidates": [...]} as JSON, best first.')
@click.option("--quiet", is_flag=True, help="No progress lines.")
def suggest(images, label, pool, out_dir, budget, refine_budget, keep, max_ripple, neighbours, model_spec, sae_path, classes,
            cache_dir, name, as_json, quiet) -> None:
    """Search for patches that fix IMAGES (truly --label), their look-alikes in the pool, and little else.

    Latents are proposed from the images' attribution and from how selectively they fire on look-alike
    failures in the unlabelled pool; suppressions of the top ones at several doses are scored over the
    pool's cached hook activations. Validate the best with `steerpatch validate` on labelled data.
    """
    from steerpatch.io import ensure_empty_dir
    from steerpatch.models import load_model
    from steerpatch.sae import default_sae_path, load_sae
    from steerpatch.suggest import suggest as run_suggest
    from steerpatch.suggest import write_suggestion

    if name is not None:
        from steerpatch.errors import SteerpatchError
        from steerpatch.patch.format import check_name

        try:
            check_name(name)
        except ValueError as error:
            raise SteerpatchError(f"--name {error}") from None
    out = ensure_empty_dir(Path(out_dir))  # refuse before any model work
    loaded = load_model(model_spec)
    sae = load_sae(sae_path or default_sae_path())
    class_list = [c.strip() for c in classes.split(",") if c.strip()] if classes else None

    def say(text: str) -> None:
        click.echo(text, err=True)

    found = run_suggest(
        loaded, sae, list(images), label, pool, classes=class_list, budget=budget, refine_budget=refine_budget, keep=keep,
        neighbours=neighbours, max_ripple=max_ripple, cache_dir=cache_dir, progress=None if quiet else say, name=name,
    )
    doc = write_suggestion(found, out)
    if as_json:
        click.echo(json.dumps({"candidates": doc["candidates"]}, indent=2))
        return
    click.echo(f"{len(doc['candidates'])} candidates in {out} ({found.timings['total_s']:.0f} s, "
               f"{found.timings['evaluations_per_s']:.2f} candidates/s), best first:")
    for rank, row in enumerate(doc["candidates"], 1):
        o = row["objective"]
        click.echo(f"  #{rank} {Path(row['patch']).name:28s} {row['edits']:3d} edits  images fixed {o['targets_fixed']:.0%}  "
                   f"look-alikes moved {o['lookalikes_moved']:.1%}  failure moved {o['failure_moved']:.1%}  "
                   f"ripple {o['ripple']:.2%}")
    click.echo(f"plot: {out / 'fix_vs_ripple.png'}")
