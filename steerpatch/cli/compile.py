"""`steerpatch compile`: a patch (file or registry ref) -> a parity-checked ONNX graph, optionally registered."""

from __future__ import annotations

import json
from pathlib import Path

import click


def _classes(value: str | None) -> list[str] | None:
    if value is None:
        return None
    names = [c.strip() for c in value.split(",") if c.strip()]
    if not names:
        raise click.BadParameter("give class names separated by commas, e.g. circle,square,star", param_hint="--classes")
    return names


def _alias_of(source: str) -> str | None:
    """The alias of a `NAME@ALIAS` ref (None for a file, a version number or `latest`)."""
    from steerpatch.refs import alias_of, is_registry_ref

    return alias_of(source) if is_registry_ref(source) else None


@click.command("compile")
@click.argument("sources", metavar="PATCH|NAME@ALIAS [PATCH|NAME@ALIAS ...]", nargs=-1, required=True)
@click.option("--head", type=click.Choice(["zero-shot", "embedding"]), default="zero-shot", show_default=True,
              help="Bake in the zero-shot head (embedding, logits, probs) or output embeddings only.")
@click.option("--out", default=None, help="Graph file to write (default: PATCH-VERSION.onnx here).")
@click.option("--data", default=None, help="Held-out image folder for the parity gate (default: random inputs).")
@click.option("--classes", default=None, help="Class names for the zero-shot head, comma-separated.")
@click.option("--sae", "sae_path", default=None, help="SAE folder, when it is not where the patch says.")
@click.option("--tolerance", type=float, default=1e-4, show_default=True,
              help="Largest max-abs difference ONNX Runtime vs torch the parity gate accepts.")
@click.option("--samples", type=click.IntRange(min=64), default=64, show_default=True, help="Parity inputs.")
@click.option("--register", is_flag=True, help="Log the graph with mlflow.onnx and register it as a sibling model.")
@click.option("--tracking-uri", default=None, help="MLflow tracking URI (default: the local registry store).")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.option("--optimize", is_flag=True,
              help="Run ONNX Runtime's transformer optimiser (fusions); kept only where parity still holds.")
@click.option("--int8", is_flag=True,
              help="int8 dynamic quantisation, gated on top-1 agreement >= 99.5%% with the fp32 graph (exit 1 below).")
def compile_cmd(sources, head, out, data, classes, sae_path, tolerance, samples, register, tracking_uri, as_json,
                optimize, int8) -> None:
    """Compile a patch into an ONNX graph of the steered image encoder.

    SOURCE is a patch file or a registered patch NAME@ALIAS / NAME@VERSION. The graph is checked in
    ONNX Runtime against the torch steered model before anything is written; with --register it is
    logged as an mlflow.onnx model and registered (compiling NAME@ALIAS also moves ALIAS on the graph).

    Two or more SOURCEs (same model and block) make one graph with a second input, `patch_index`
    (int64 per row: 0 unpatched, i the i-th SOURCE), parity-checked at every index; --out is required.
    With --register it is registered as `<model>.<patch>_<patch>...-onnx`, each patch linked by hash
    to its registered patch version (checked when the graph is downloaded to be served).
    """
    if len(sources) > 1 and out is None:
        raise click.UsageError(f"{len(sources)} patches make one multi-patch graph: name it with --out FILE.onnx")
    for each in sources:
        if Path(each).is_file() or Path(each).suffix == ".json":
            # a patch file: refuse a bad one, or one that cannot fit its model, before torch is imported
            from steerpatch.patch import load_patch
            from steerpatch.preflight import preflight

            preflight(load_patch(each), sae_path=sae_path)
    from steerpatch.compile import compile_patch, register_graph
    from steerpatch.compile.export import write_graph

    source = sources[0] if len(sources) == 1 else list(sources)
    sae = None
    if sae_path is not None:
        from steerpatch.sae import load_sae

        sae = load_sae(sae_path)
    result = compile_patch(
        source,
        sae=sae,
        head=head,
        classes=_classes(classes),
        data=data,
        tolerance=tolerance,
        samples=samples,
        tracking_uri=tracking_uri,
        log=lambda line: click.echo(line, err=True),
        optimize=optimize,
        int8=int8,
    )
    info = result.info
    result.path = write_graph(result.data, Path(out) if out else Path(f"{info.patch_name}-{info.patch_version}.onnx"))
    if register:
        # a multi-patch graph takes the alias its refs share (water@production grass@production -> production)
        aliases = {_alias_of(each) for each in sources}
        graph = register_graph(result, alias=aliases.pop() if len(aliases) == 1 else None, tracking_uri=tracking_uri)
        result.registered = graph.to_dict()
    if as_json:
        click.echo(json.dumps(result.to_dict(), indent=2))
        return
    click.echo(f"wrote {result.path} ({len(result.data) / 1e6:.1f} MB, {result.seconds:.1f} s)")
    click.echo(f"mode: {info.mode} - {info.mode_reason} ({info.extra_weights} extra weights)")
    click.echo(
        f"parity: max abs diff {info.parity_max_abs_diff:.3g} <= tolerance {info.parity_tolerance:g} "
        f"on {info.parity_samples} inputs ({info.parity_inputs})"
    )
    click.echo(f"outputs: {', '.join(info.outputs)}" + (f"; classes: {', '.join(info.classes)}" if info.classes else ""))
    if info.fusions is not None:
        click.echo("optimised: " + (", ".join(f"{op} {n}" for op, n in sorted(info.fusions.items())) or "no fusions"))
    if info.int8_top1_agreement is not None:
        click.echo(f"int8: top-1 agreement with fp32 {info.int8_top1_agreement:.2%}")
    for entry in info.patches or []:
        click.echo(f"patch_index {entry.index}: {entry.patch_ref} ({entry.patch_hash[:12]}, {entry.mode}, "
                   f"parity {entry.parity_max_abs_diff:.3g})")
    if result.registered:
        reg = result.registered
        click.echo(f"registered {reg['name']} version {reg['version']} ({reg['model_uri']}), via {reg['via']}")
