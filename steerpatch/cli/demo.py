"""`steerpatch demo`: the whole job on the embedded default, end to end, through the same calls as the CLI.

find a shortcut mistake -> attribute -> suggest a patch from it and an unlabelled pool -> validate ->
register -> promote -> compile -> serve.
"""

from __future__ import annotations

import base64
import io
import time
from pathlib import Path

import click

PATCH_NAME = "water-shortcut"
SHORTCUT_GROUP = "background=water"
POOL_SIZE = 1200  # images in the unlabelled pool `suggest` searches over


def _step(number: int, title: str) -> None:
    click.secho(f"\n[{number}/8] {title}", bold=True)


def _say(text: str) -> None:
    click.echo(f"      {text}")


def _world(out: Path) -> Path:
    from steerpatch.world import write_world

    world = out / "world-test"
    if not (world / "manifest.jsonl").exists():
        write_world(world, split="test", seed=0)
    return world


def _pool(out: Path) -> Path:
    """An unlabelled pool for `suggest`: another seed of the world, whose labels the search never reads."""
    from steerpatch.world import write_world

    pool = out / "pool-seed1"
    if not (pool / "manifest.jsonl").exists():
        write_world(pool, split="test", n=POOL_SIZE, seed=1)
    return pool


def _pick_instance(loaded, dataset, classes):
    """The first conflicting image (water behind a non-star) that the model calls a star."""
    from steerpatch.models import build_zero_shot_head, classify_dataset

    head = build_zero_shot_head(loaded, classes)
    candidates = [item for item in dataset.items if item.attributes.get("shortcut") == "conflicting"]
    for start in range(0, len(candidates), 64):
        chunk = candidates[start : start + 64]
        predictions = classify_dataset(loaded, dataset, head, items=chunk, progress=False)
        for item, predicted in zip(chunk, predictions, strict=True):
            if predicted != item.label:
                return item, predicted
    raise click.ClickException("the model made no shortcut mistake on the held-out world; nothing to fix")


def _shortcut_latent(attribution):
    """The highest-ranked latent whose firing concentrates on water backgrounds, else the top latent."""
    for entry in attribution.latents:
        if entry.top_groups and entry.top_groups[0].group == SHORTCUT_GROUP:
            return entry, True
    return attribution.latents[0], False


def _next_version(tracking_uri: str | None, model_id: str) -> tuple[str, str | None]:
    """1.0.0 for the first run; after that one patch version above the newest registered one."""
    from steerpatch.patch.algebra import next_version
    from steerpatch.refs import split_ref
    from steerpatch.registry import registered_name
    from steerpatch.registry.store import client, resolve_store

    c = client(resolve_store(tracking_uri))
    name = registered_name(model_id, PATCH_NAME)
    try:
        versions = c.search_model_versions(f"name='{name}'")
    except Exception:  # noqa: BLE001 - a store with no such model yet
        versions = []
    refs = [split_ref(v.tags.get("steerpatch.patch_ref", "")) for v in versions]
    numbers = sorted(
        (tuple(int(p) for p in ref[1].split(".")) for ref in refs if ref is not None and ref[0] == PATCH_NAME),
    )
    if not numbers:
        return "1.0.0", None
    latest = ".".join(map(str, numbers[-1]))
    return next_version(latest, "patch"), f"{PATCH_NAME}@{latest}"


def _png_b64(image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


@click.command()
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=Path("steerpatch-demo"),
              show_default=True, help="Folder for the held-out world and each run's artifacts.")
@click.option("--tracking-uri", default=None, help="MLflow tracking URI (default: the local store under registry/).")
@click.option("--requests", "n_requests", default=4, show_default=True, help="Images to send to the server.")
def demo(out_dir: Path, tracking_uri: str | None, n_requests: int) -> None:
    """Run the whole workflow on the embedded default model and SAE, end to end.

    Finds a misclassified shortcut image, attributes it to SAE latents, lets `suggest` find a patch
    from that one image and an unlabelled pool, validates the patch for ripple effects, registers and promotes it in MLflow, compiles it to a
    parity-checked ONNX graph and serves it with ONNX Runtime on loopback.
    """
    import httpx

    from steerpatch.attribute import attribute
    from steerpatch.cli.validate import summary
    from steerpatch.compile import compile_patch, register_graph
    from steerpatch.data import load_dataset
    from steerpatch.errors import GateFailed
    from steerpatch.models import build_zero_shot_head, classify_dataset, load_model
    from steerpatch.patch import new_patch, save_patch
    from steerpatch.registry import promote, register_patch, resolve_store
    from steerpatch.sae import default_sae_path, load_sae
    from steerpatch.serve import ServerThread, create_app
    from steerpatch.suggest import suggest
    from steerpatch.user import current_user
    from steerpatch.validate import validate_patch, write_report

    started = time.monotonic()
    out_dir = out_dir.resolve()
    run = out_dir / time.strftime("run-%Y%m%d-%H%M%S")
    store = resolve_store(tracking_uri)  # a bad URI fails here, before anything is written
    run.mkdir(parents=True, exist_ok=True)

    _step(1, "Load the embedded default and its held-out world")
    loaded = load_model("concept-clip")
    sae = load_sae(default_sae_path())
    hook = sae.require_hook()
    world = _world(out_dir)
    dataset = load_dataset(world)
    classes = dataset.classes
    _say(f"model concept-clip  fingerprint {loaded.fingerprint[:12]}")
    _say(f"SAE {sae.architecture}, {sae.d_sae} latents at block {hook.block}  ({default_sae_path()})")
    _say(f"held-out world: {len(dataset)} images in {world}")

    _step(2, "Find a misclassified shortcut instance")
    item, predicted = _pick_instance(loaded, dataset, classes)
    _say(f"{item.id}: a {item.attributes.get('shape')} on {item.attributes.get('background')}, "
         f"predicted '{predicted}' (true '{item.label}')")

    _step(3, "Attribute the mistake to SAE latents")
    attribution = attribute(loaded, sae, dataset.load_image(item), target=predicted, against=item.label,
                            classes=classes, top_n=5, out_dir=run / "attribution")
    _say(f"{'latent':>8s}{'score':>10s}{'ablation':>10s}  fires most on")
    for entry in attribution.latents:
        where = ", ".join(f"{g.group} x{g.lift:.1f}" for g in entry.top_groups[:2]) or "-"
        effect = f"{entry.ablation_effect:+.3f}" if entry.ablation_effect is not None else "-"
        _say(f"{entry.latent:8d}{entry.score:10.3f}{effect:>10s}  {where}")
    chosen, is_water = _shortcut_latent(attribution)
    _say(f"heatmaps: {run / 'attribution'}")
    _say(f"chosen latent {chosen.latent}" + (" (its exemplars are water backgrounds)" if is_water else ""))

    _step(4, "Suggest the patch from this one image and an unlabelled pool")
    pool = _pool(out_dir)
    # the CLI's defaults (grid sweep, then greedy refinement), so the demo finds what `suggest` finds
    found = suggest(loaded, sae, [item.path], item.label, pool, classes=classes)
    best = found.candidates[0]
    o = best.objective
    _say(f"pool {pool} ({found.inputs['pool_images']} images, labels unread); "
         f"{int(found.timings['evaluations'])} candidates in {found.timings['total_s']:.0f} s")
    _say(f"best: suppress {len(best.latents)} latents (scale {best.value:g}); image fixed, "
         f"{100 * o['failure_moved']:.1f}% of pool images called {predicted} move off it, ripple {100 * o['ripple']:.2f}%")
    version, parent = _next_version(tracking_uri, loaded.name)
    patch = new_patch(
        PATCH_NAME, loaded, sae, best.edits,
        rationale=(f"Suppress the {len(best.latents)} latents that fire selectively on look-alikes of "
                   f"{item.id} (predicted {predicted}, truly {item.label}) in an unlabelled pool; "
                   f"found by `steerpatch suggest`, top attributed latent {chosen.latent}."),
        author=current_user(default="steerpatch-demo"), tokens=hook.tokens,
        provenance=found.patches[0].provenance, version=version, parent=parent,
    )
    patch_path = save_patch(patch, run / f"{PATCH_NAME}-{version}.json")
    _say(f"{patch.ref}  hash {patch.content_hash[:12]}  -> {patch_path}")

    _step(5, "Validate on the held-out world: fixes and ripple effects")
    report = validate_patch(patch, dataset, model=loaded, sae=sae, targets=[item.id],
                            same_failure={"shortcut": "conflicting"}, group_by="shortcut", classes=classes)
    report_json, report_html = write_report(report, run / "report")
    for line in summary(report).splitlines():
        _say(line)
    # the summary carries the floor/ceiling baselines and the blast radius predicted before the run
    _say(f"report: {report_html}")

    _step(6, "Register in MLflow and promote to production")
    registered = register_patch(patch_path, report_json, sae_path=default_sae_path(), tracking_uri=tracking_uri)
    _say(f"registered {registered.name} version {registered.version}  ({store.tracking_uri})")
    try:
        move = promote(registered.name, registered.version, "production", tracking_uri=tracking_uri)
    except GateFailed as refused:
        _say(f"not promoted: {refused}")
        _say(f"done in {time.monotonic() - started:.0f} s; artifacts in {run}")
        raise SystemExit(1) from refused
    _say(f"alias production: {move.from_version or '-'} -> {move.to_version}")

    _step(7, "Compile the production patch to ONNX, gated on parity")
    ref = f"{registered.name}@production"
    result = compile_patch(ref, data=dataset, out=run / "steered.onnx", tracking_uri=tracking_uri, progress=False)
    _say(f"{result.info.mode} compile ({result.info.mode_reason}); parity max |diff| "
         f"{result.info.parity_max_abs_diff:.2e} <= {result.info.parity_tolerance:g}")
    graph = register_graph(result, alias="production", tracking_uri=tracking_uri)
    _say(f"graph {run / 'steered.onnx'}; registered {graph.name} version {graph.version} @production")

    _step(8, "Serve it with ONNX Runtime on loopback and send real requests")
    sample = [i for i in dataset.items if i.attributes.get("shortcut") == "conflicting"][:n_requests]
    head = build_zero_shot_head(loaded, classes)
    before = classify_dataset(loaded, dataset, head, items=sample, progress=False)
    with ServerThread(create_app(ref, tracking_uri=tracking_uri)) as server:
        _say(f"server {server.url}  metadata: {httpx.get(server.url + '/metadata').json().get('patch_hash', '')[:12]}")
        _say(f"{'image':34s}{'true':>9s}{'before':>9s}{'after':>9s}")
        for shown, old in zip(sample, before, strict=True):
            response = httpx.post(server.url + "/predict", json={"image": _png_b64(dataset.load_image(shown))})
            response.raise_for_status()
            prediction = response.json()["predictions"][0]
            _say(f"{shown.id:34s}{shown.label:>9s}{old:>9s}{prediction['label']:>9s}")
    _say("server stopped")
    click.secho(f"\nDone in {time.monotonic() - started:.0f} s. Artifacts: {run}", bold=True)
