"""`steerpatch patch`: create, inspect, check, compare, compose, bump and apply patch files."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from steerpatch.errors import PatchError, SAEError, SteerpatchError, shorten, shown_problems

_EDIT_HELP = (
    "An edit LATENT:OP:VALUE, e.g. 123:scale:0 (ops: scale, clamp, clamp_if_active, add). Repeatable."
)


def _write(patch: Any, out: str | None, default: Path, force: bool) -> Path:
    from steerpatch.patch import save_patch

    path = Path(out) if out else default
    save_patch(patch, path, overwrite=force)
    return path


class _InOrder(click.Group):
    """Lists subcommands in the order they are defined: the order of the workflow."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(self.commands)


@click.group(cls=_InOrder)
def patch() -> None:
    """Create, check, compare, compose and apply patches."""


@patch.command("new")
@click.option("--name", required=True, help="Patch name: a slug such as water-shortcut.")
@click.option(
    "--model", "model_spec", default="concept-clip", show_default=True, help="Model spec for load_model."
)
@click.option("--sae", "sae_path", default=None, help="SAE folder (default: the shipped default SAE).")
@click.option("--edit", "edits", multiple=True, help=_EDIT_HELP)
@click.option(
    "--suppress-selective", "groups", multiple=True, metavar="ATTR=VALUE",
    help="Also suppress (scale 0) every latent the SAE's statistics find selective for ATTR=VALUE, "
    "e.g. background=water: an SAE often splits one concept over many latents. Repeatable.",
)  # fmt: skip
@click.option("--rationale", required=True, help="Why this patch exists, for reviewers.")
@click.option("--author", default=None, help="Who made it (default: $STEERPATCH_USER, else the login name).")
@click.option(
    "--tokens", default="all", show_default=True, help="cls, patches, all, or indices such as 0,3,4."
)
@click.option("--block", type=int, default=None, help="Hook block (default: the SAE's own block).")
@click.option("--version", "version", default="1.0.0", show_default=True, help="Semantic version.")
@click.option("--out", default=None, help="Output file (default: NAME-VERSION.json here).")
@click.option("--force", is_flag=True, help="Replace an existing output file.")
def new(name, model_spec, sae_path, edits, groups, rationale, author, tokens, block, version, out, force) -> None:
    """Create a patch bound to a model and an SAE (give --edit, --suppress-selective or both)."""
    from steerpatch.preflight import check_model_spec

    check_model_spec(model_spec)  # before anything heavy, pydantic included
    from steerpatch.patch import new_patch, parse_edit, parse_tokens

    if not edits and not groups:
        raise click.UsageError("give at least one --edit LATENT:OP:VALUE or --suppress-selective ATTR=VALUE")
    for group in groups:
        if "=" not in group:
            raise click.BadParameter(f"{group!r} is not ATTR=VALUE, e.g. background=water", param_hint="--suppress-selective")
    parsed = [parse_edit(e) for e in edits]
    scope = parse_tokens(tokens)
    from steerpatch.models import load_model
    from steerpatch.sae import default_sae_path, load_sae
    from steerpatch.user import current_user

    loaded = load_model(model_spec)
    sae = load_sae(sae_path or default_sae_path())
    if groups:
        parsed += _selective_edits(sae, groups, {e.latent for e in parsed})
    created = new_patch(
        name, loaded, sae, parsed, rationale=rationale, author=author or current_user(),
        tokens=scope, version=version, block=block,
    )  # fmt: skip
    path = _write(created, out, Path(f"{created.name}-{created.version}.json"), force)
    click.echo(f"wrote {created.ref} to {path} (content_hash {created.content_hash})")


def _selective_edits(sae: Any, groups: tuple[str, ...], taken: set[int]) -> list[Any]:
    """Scale-0 edits for every latent selective for one of `groups`, skipping latents already edited."""
    from steerpatch.attribute import selective_latents
    from steerpatch.patch import Edit
    from steerpatch.sae import load_latent_stats

    stats = load_latent_stats(sae.location, sae=sae)
    out = []
    for group in groups:
        added = [latent for latent in selective_latents(stats, group) if latent not in taken]
        taken.update(added)
        out += [Edit(latent=latent, op="scale", value=0.0) for latent in added]
        click.echo(f"{group}: {len(added)} more selective latents suppressed (scale 0)", err=True)
    return out


def _indented(text: str) -> str:
    # free text may span lines; continuation lines are indented so they cannot pass for fields
    return text.replace("\n", "\n" + " " * 14)


def _summary(p: Any) -> str:
    tokens = p.tokens if isinstance(p.tokens, str) else shorten(p.tokens, sep=",")
    lines = [
        f"{p.ref}  ({p.content_hash})",
        f"  author      {p.author}, created {p.created_at}",
        f"  parent      {p.parent or '-'}",
        f"  rationale   {_indented(p.rationale)}",
        f"  model       {p.model.id}  {p.model.fingerprint}",
        f"  sae         {p.sae.architecture} at {p.sae.location or '-'}  {p.sae.fingerprint}",
        f"  hook        block {p.hook.block}, tokens {tokens}" + (f", d_sae {p.d_sae}" if p.d_sae else ""),
        f"  edits       {len(p.edits)}",
    ]
    lines += [f"    latent {e.latent:>6}  {e.op:<16} {e.value:g}" for e in p.edits]
    prov = p.provenance
    if prov.instances or prov.note or prov.composed_from:
        lines.append(f"  provenance  {len(prov.instances)} instance(s)")
        lines += [f"    from {ref}" for ref in prov.composed_from]
        for inst in prov.instances:
            top = sorted(inst.scores.items(), key=lambda kv: -abs(kv[1]))[:3]
            scores = ", ".join(f"{k}:{v:.3g}" for k, v in top)
            lines.append(
                f"    {inst.id or inst.image_sha256}  label={inst.label} predicted={inst.predicted}"
                + (f"  top scores {scores}" if scores else "")
            )
        if prov.note:
            lines.append(f"    note: {_indented(prov.note)}")
    return "\n".join(lines)


@patch.command("show")
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print the validated document as JSON.")
def show(file, as_json) -> None:
    """Show a patch file (validated first)."""
    from steerpatch.patch import dumps_patch, load_patch

    loaded = load_patch(file)
    click.echo(dumps_patch(loaded).rstrip() if as_json else _summary(loaded))


def _check_against_sae(p: Any, sae_path: str | None) -> None:
    from steerpatch.sae import SAE_REGISTRY, load_sae
    from steerpatch.steer import check_binding

    # the format checks the architecture's spelling; only the SAE registry knows which exist
    if p.sae.architecture not in SAE_REGISTRY:
        raise PatchError(
            f"patch {p.ref} is invalid",
            [
                f"sae.architecture: {p.sae.architecture!r} is not a registered SAE architecture; "
                f"use one of {', '.join(sorted(SAE_REGISTRY))}"
            ],
        )
    if sae_path:
        check_binding(p, model_fingerprint=None, sae=load_sae(sae_path))


@patch.command("check")
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option(
    "--sae", "sae_path", default=None, help="Also check the edits against this SAE (latents, fingerprint)."
)
@click.option(
    "--rehash", is_flag=True, help="Rewrite the content hash of a hand-edited file, if all else is valid."
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON result per file.")
def check(files, sae_path, rehash, as_json) -> None:
    """Validate patch files: exit 0 when all are valid, 2 otherwise."""
    from steerpatch.patch import load_patch, rehash_file

    results = []
    for file in files:
        try:
            p = rehash_file(file) if rehash else load_patch(file)
            _check_against_sae(p, sae_path)
            results.append(
                {"file": file, "valid": True, "ref": p.ref, "content_hash": p.content_hash, "problems": []}
            )
        except (PatchError, SAEError) as error:
            problems = error.problems or [str(error)]
            results.append(
                {
                    "file": file, "valid": False, "error": str(error).splitlines()[0],
                    "problems": shown_problems(problems), "problem_count": len(problems),
                }
            )  # fmt: skip
    for result in results:
        if as_json:
            click.echo(json.dumps(result))
        elif result["valid"]:
            action = "rehashed" if rehash else "valid"
            click.echo(f"{result['file']}: {action} ({result['ref']}, {result['content_hash']})")
        else:
            lines = [result["error"], *(f"  - {p}" for p in result["problems"] if p != result["error"])]
            click.echo("Error: " + "\n".join(lines), err=True)
    if not all(r["valid"] for r in results):
        sys.exit(2)


@patch.command("diff")
@click.argument("a", type=click.Path(dir_okay=False))
@click.argument("b", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print the differences as JSON.")
def diff(a, b, as_json) -> None:
    """Show what changed from patch A to patch B (metadata and edits)."""
    from steerpatch.patch import diff_patches, load_patch

    result = diff_patches(load_patch(a), load_patch(b))
    click.echo(json.dumps(result.to_dict(), indent=2) if as_json else result.to_text())


@patch.command("compose")
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("--name", required=True, help="Name of the composed patch.")
@click.option("--version", "version", default="1.0.0", show_default=True)
@click.option("--resolve", type=click.Choice(["first", "last"]), default=None,
              help="Which edit wins when two patches edit the same latent (default: refuse).")  # fmt: skip
@click.option("--rationale", default=None, help="Default: the parts' rationales.")
@click.option("--author", default=None, help="Default: the parts' authors.")
@click.option("--out", default=None, help="Output file (default: NAME-VERSION.json here).")
@click.option("--force", is_flag=True, help="Replace an existing output file.")
def compose_cmd(files, name, version, resolve, rationale, author, out, force) -> None:
    """Stack patches on one model, SAE and block into a single patch."""
    from steerpatch.patch import compose, load_patch

    parts = [load_patch(f) for f in files]
    result = compose(parts, name=name, version=version, resolve=resolve, rationale=rationale, author=author)
    path = _write(result, out, Path(f"{result.name}-{result.version}.json"), force)
    click.echo(f"wrote {result.ref} ({len(result.edits)} edits from {len(parts)} patches) to {path}")


@patch.command("bump")
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--part", type=click.Choice(["major", "minor", "patch"]), default="patch", show_default=True)
@click.option("--version", "version", default=None, help="Explicit new version instead of --part.")
@click.option("--edit", "edits", multiple=True, help=_EDIT_HELP + " Replaces the edit of the same latent.")
@click.option("--remove-latent", "remove", multiple=True, type=int, help="Drop the edit of this latent.")
@click.option("--rationale", default=None)
@click.option("--author", default=None)
@click.option("--out", default=None, help="Output file (default: NAME-VERSION.json beside FILE).")
@click.option("--force", is_flag=True, help="Replace an existing output file.")
def bump_cmd(file, part, version, edits, remove, rationale, author, out, force) -> None:
    """Write a new version of a patch whose parent is FILE's patch."""
    from steerpatch.patch import bump, load_patch, parse_edit
    from steerpatch.patch.algebra import merge_edits

    old = load_patch(file)
    changed = None
    if edits or remove:
        changed = merge_edits(old.edits, [parse_edit(e) for e in edits], remove)
    result = bump(old, part, version=version, edits=changed, rationale=rationale, author=author)
    path = _write(result, out, Path(file).parent / f"{result.name}-{result.version}.json", force)
    click.echo(f"wrote {result.ref} (parent {result.parent}) to {path}")


@patch.command("schema")
@click.option("--out", default=None, help="Write the schema to this file instead of printing it.")
def schema(out) -> None:
    """Print the JSON Schema of the patch format."""
    from steerpatch.io import atomic_write_text
    from steerpatch.patch import patch_json_schema

    text = json.dumps(patch_json_schema(), indent=2) + "\n"
    if out:
        atomic_write_text(out, text)
        click.echo(f"wrote the patch JSON Schema to {out}")
    else:
        click.echo(text, nl=False)


@patch.command("apply")
@click.argument("patch_file", type=click.Path(dir_okay=False))
@click.argument("images", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("--model", "model_spec", default=None, help="Model spec (default: the patch's model id).")
@click.option("--sae", "sae_path", default=None, help="SAE folder (default: the patch's SAE location).")
@click.option("--classes", default=None, help="Comma-separated class names for the zero-shot head.")
@click.option("--data", default=None, help="Take the class names from this image folder.")
@click.option("--top-k", "top_k", default=3, show_default=True, type=click.IntRange(1, 100))
@click.option(
    "--allow-fingerprint-mismatch", is_flag=True, help="Apply to a different model or SAE; recorded."
)
@click.option("--json", "as_json", is_flag=True, help="Print predictions as JSON.")
@click.option("--verbose", "-v", is_flag=True, help="List every image's top-k before and after.")
def apply(
    patch_file, images, model_spec, sae_path, classes, data, top_k, allow_fingerprint_mismatch, as_json, verbose
) -> None:
    """Print top-k zero-shot predictions of IMAGES before and after applying PATCH_FILE."""
    from steerpatch.patch import load_patch
    from steerpatch.preflight import preflight

    p = load_patch(patch_file)
    missing = [i for i in images if not Path(i).is_file()]
    if missing:
        raise SteerpatchError(f"image(s) {shorten(missing)} do not exist or are not files; check the paths")
    preflight(p, model_spec=model_spec, sae_path=sae_path, allow_fingerprint_mismatch=allow_fingerprint_mismatch)
    from steerpatch.steer.predict import predict_before_after

    result = predict_before_after(
        p, [Path(i) for i in images], model_spec=model_spec, sae_path=sae_path, classes=_classes(classes, data),
        top_k=top_k, allow_fingerprint_mismatch=allow_fingerprint_mismatch,
    )  # fmt: skip
    if as_json:
        click.echo(json.dumps(result, indent=2))
        return
    for override in result["overrides"]:
        click.echo(
            f"warning: {override['kind']} fingerprint override recorded: patch expects {override['expected']}, "
            f"applied to {override['actual']}",
            err=True,
        )
    click.echo(f"{result['patch']} on {result['model']} (block {p.hook.block}, tokens {p.tokens})")
    rows = result["images"]
    changed = [row for row in rows if row["before"][0][0] != row["after"][0][0]]
    if verbose:
        for row in rows:
            fmt = ", ".join
            before = fmt(f"{c} {q:.3f}" for c, q in row["before"])
            after = fmt(f"{c} {q:.3f}" for c, q in row["after"])
            flag = "  (changed)" if row in changed else ""
            click.echo(f"{row['image']}\n  before: {before}\n  after:  {after}{flag}")
    click.echo(f"top-1 prediction changed on {len(changed)} of {len(rows)} images")
    shown = changed if verbose else changed[:_SHOWN_CHANGES]
    for row in shown:
        click.echo(f"  {row['image']}: {row['before'][0][0]} -> {row['after'][0][0]}")
    if len(shown) < len(changed):
        click.echo(f"  and {len(changed) - len(shown):,} more (--verbose lists every image)")


_SHOWN_CHANGES = 20  # changed images listed without --verbose


def _classes(classes: str | None, data: str | None) -> list[str] | None:
    if classes and data:
        raise SteerpatchError("pass --classes or --data, not both")
    if classes:
        names = [c.strip() for c in classes.split(",") if c.strip()]
        if len(names) < 2:
            raise SteerpatchError(
                f"--classes {classes!r} names fewer than 2 classes; list them comma-separated"
            )
        return names
    if data:
        from steerpatch.data import load_dataset

        return list(load_dataset(data).classes)
    return None
