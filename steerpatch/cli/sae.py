"""`steerpatch sae`: train an SAE on a model's block, profile its latents, and describe an SAE file."""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import Any

import click

# kept in step with steerpatch.sae.SAE_REGISTRY by a test (importing it here would load torch)
ARCHITECTURES = ("standard", "topk", "jumprelu")  # the trainable ones
READ_ARCHITECTURES = ("standard", "topk", "jumprelu", "topk_raw", "gated")  # every registered one


@click.group()
def sae() -> None:
    """Train, inspect and profile sparse autoencoders (SAELens, ViT-Prisma, saev, safetensors)."""


def _command_line(ctx: click.Context) -> str:
    """The invocation, rebuilt from parsed parameters so it is reproducible whatever the shell said."""
    parts = ["steerpatch", "sae", "train"]
    for param in ctx.command.params:
        value = ctx.params.get(param.name)
        if isinstance(param, click.Argument) or param.name in _unused_by(ctx.params.get("architecture")):
            continue
        if isinstance(param, click.Option) and param.is_flag:
            if value and param.name != "as_json":
                parts.append(param.opts[0])
            continue
        if value is not None:
            parts += [param.opts[0], str(value)]
    parts += [str(ctx.params[p.name]) for p in ctx.command.params if isinstance(p, click.Argument)]
    return shlex.join(parts)


def _unused_by(architecture: str | None) -> set[str]:
    """Options that do not affect an architecture, left out of the recorded command."""
    used = {"standard": "l1_coefficient", "topk": "k", "jumprelu": "l0_coefficient"}.get(architecture or "")
    return {"k", "l1_coefficient", "l0_coefficient"} - {used}


@sae.command("train", short_help="Train an SAE on one block of a model and report its quality.")
@click.option(
    "--model", "model_spec", default="concept-clip", show_default=True, help="Model spec to read from."
)
@click.option(
    "--pretrained", default=None, help="Pretrained tag or checkpoint for an open_clip architecture name."
)
@click.option("--block", type=int, required=True, help="Vision block whose residual output the SAE reads.")
@click.option(
    "--arch", "architecture", type=click.Choice(ARCHITECTURES), default="standard", show_default=True
)
@click.option("--latents", type=int, required=True, help="Number of SAE latents (d_sae).")
@click.option("--tokens", type=click.Choice(["cls", "patches", "all"]), default="all", show_default=True)
@click.option(
    "--data", "data_dir", type=click.Path(path_type=Path), required=True, help="Image folder to train on."
)
@click.option("--k", type=int, default=32, show_default=True, help="Latents kept per token (topk).")
@click.option("--l1", "l1_coefficient", type=float, default=None, help="L1 coefficient (standard).")
@click.option("--l0", "l0_coefficient", type=float, default=None, help="L0 coefficient (jumprelu).")
@click.option("--steps", type=int, default=3000, show_default=True)
@click.option("--batch-size", type=int, default=1024, show_default=True, help="Tokens per step.")
@click.option("--lr", type=float, default=2e-3, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--max-images", type=int, default=None, help="Use at most this many images.")
@click.option("--eval-fraction", type=float, default=0.1, show_default=True, help="Share of images held out.")
@click.option("--no-accuracy", is_flag=True, help="Skip the spliced zero-shot accuracy measurement.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.argument("out", type=click.Path(path_type=Path))
@click.pass_context
def train(
    ctx: click.Context,
    model_spec: str,
    pretrained: str | None,
    block: int,
    architecture: str,
    latents: int,
    tokens: str,
    data_dir: Path,
    k: int,
    l1_coefficient: float | None,
    l0_coefficient: float | None,
    steps: int,
    batch_size: int,
    lr: float,
    seed: int,
    max_images: int | None,
    eval_fraction: float,
    no_accuracy: bool,
    as_json: bool,
    out: Path,
) -> None:
    """Cache block activations over --data, train an SAE, save it in SAELens format to OUT, report quality."""
    from steerpatch.preflight import check_model_spec

    check_model_spec(model_spec)  # a typo is refused before torch is imported
    from steerpatch.data import load_dataset
    from steerpatch.errors import SAEError
    from steerpatch.io import ensure_empty_dir
    from steerpatch.models import load_model
    from steerpatch.sae import FitSettings, save_sae, train_sae
    from steerpatch.sae.train import sae_folder_files

    ensure_empty_dir(out, what="SAE output folder")
    for name, value in (("--latents", latents), ("--steps", steps), ("--batch-size", batch_size)):
        if value <= 0:
            raise SAEError(f"{name} {value} must be a positive integer")
    if not 0 < eval_fraction < 1:
        raise SAEError(f"--eval-fraction {eval_fraction} must be between 0 and 1")
    settings = FitSettings(
        architecture=architecture, d_sae=latents, k=k, steps=steps, batch_size=batch_size, lr=lr, seed=seed
    )
    if l1_coefficient is not None:
        settings.l1_coefficient = l1_coefficient
    if l0_coefficient is not None:
        settings.l0_coefficient = l0_coefficient
    loaded = load_model(model_spec, pretrained=pretrained)
    dataset = load_dataset(data_dir)
    result = train_sae(
        loaded,
        dataset,
        block=block,
        tokens=tokens,
        settings=settings,
        eval_fraction=eval_fraction,
        max_images=max_images,
        measure_accuracy=not no_accuracy,
        command=_command_line(ctx),
    )
    save_sae(result.sae, out, extra_files=sae_folder_files(result.sae, result.quality, title=out.name))
    _report(out, result.sae, result.quality, as_json)


@sae.command("stats", short_help="Profile every latent over a labelled image folder.")
@click.argument("sae_path", metavar="SAE", type=click.Path(path_type=Path))
@click.option(
    "--data", "data_dir", type=click.Path(path_type=Path), required=True, help="Labelled image folder."
)
@click.option(
    "--model", "model_spec", default=None, help="Model spec (default: the SAE's recorded model_name)."
)
@click.option(
    "--pretrained", default=None, help="Pretrained tag or checkpoint for an open_clip architecture name."
)
@click.option(
    "--top-k", type=int, default=16, show_default=True, help="Top-activating images kept per latent."
)
@click.option("--json", "as_json", is_flag=True, help="Print a summary as JSON.")
def stats(
    sae_path: Path, data_dir: Path, model_spec: str | None, pretrained: str | None, top_k: int, as_json: bool
) -> None:
    """Per-latent firing rates (overall, per class, per group), mean activation and top images, saved beside SAE."""
    from steerpatch.preflight import check_model_spec

    if model_spec:
        check_model_spec(model_spec)
    from steerpatch.data import load_dataset
    from steerpatch.errors import SAEError
    from steerpatch.models import load_model
    from steerpatch.sae import compute_latent_stats, load_sae, save_latent_stats

    if top_k <= 0:
        raise SAEError(f"--top-k {top_k} must be a positive integer")
    sae_model = load_sae(sae_path)
    spec = model_spec or sae_model.cfg.metadata.get("model_name") or "concept-clip"
    loaded = load_model(spec, pretrained=pretrained)
    recorded = sae_model.cfg.metadata.get("model_fingerprint")
    if recorded and recorded != loaded.fingerprint:
        click.echo(
            f"warning: SAE was trained on model {str(recorded)[:16]}, this is {loaded.fingerprint[:16]}",
            err=True,
        )
    dataset = load_dataset(data_dir)
    result = compute_latent_stats(loaded, sae_model, dataset, top_k=top_k)
    tensor_path, json_path = save_latent_stats(result, sae_path, dataset_root=str(data_dir))
    summary: dict[str, Any] = {
        "n_images": result.n_images,
        "dead_on_data": float((result.firing_rate == 0).float().mean()),
        "mean_firing_rate": float(result.firing_rate.mean()),
        "files": [str(tensor_path), str(json_path)],
    }
    if as_json:
        click.echo(json.dumps(summary, indent=2))
        return
    click.echo(f"profiled {sae_model.d_sae} latents over {result.n_images} images")
    click.echo(f"  never firing on this data: {100 * summary['dead_on_data']:.1f}%")
    click.echo(f"  mean firing rate: {summary['mean_firing_rate']:.4f}")
    click.echo(f"wrote {tensor_path} and {json_path}")


@sae.command("info", short_help="Describe an SAE: architecture, sizes, hook, fingerprint, quality.")
@click.argument("path", type=click.Path(path_type=Path))
@click.option(
    "--arch",
    "architecture",
    type=click.Choice(READ_ARCHITECTURES),
    default=None,
    help="Architecture of a plain safetensors state dict.",
)
@click.option("--k", type=int, default=None, help="k of a plain safetensors topk state dict.")
@click.option(
    "--apply-b-dec/--no-apply-b-dec",
    "apply_b_dec",
    default=None,
    help="saev/safetensors: subtract b_dec before encoding (default: detected from the saev header schema).",
)
@click.option("--block", type=int, default=None, help="Vision block the SAE reads (saev files record none).")
@click.option("--tokens", type=click.Choice(["cls", "patches", "all"]), default=None, help="Token scope.")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
def info(
    path: Path,
    architecture: str | None,
    k: int | None,
    apply_b_dec: bool | None,
    block: int | None,
    tokens: str | None,
    as_json: bool,
) -> None:
    """Source format, conventions, architecture, d_in, d_sae, hook, fingerprint and quality of an SAE."""
    from steerpatch.sae import load_quality, load_sae

    sae_model = load_sae(
        path, architecture=architecture, k=k, apply_b_dec_to_input=apply_b_dec, block=block, tokens=tokens
    )
    _report(path, sae_model, load_quality(path) if path.is_dir() else None, as_json)


def _describe(path: Path, sae_model: Any, quality: Any) -> dict[str, Any]:
    from steerpatch.sae.stats import STATS_JSON, stats_folder

    hook = sae_model.hook
    meta = sae_model.cfg.metadata
    cfg = sae_model.cfg
    conventions = {
        "b_dec_subtracted": cfg.apply_b_dec_to_input,
        "b_dec_convention": meta.get("b_dec_convention", "recorded in the config"),
        "normalization": cfg.normalize_activations,
        "normalization_math": sae_model.norm.description,
        "norm_scaling_factor": cfg.norm_scaling_factor,
        "activation": sae_model.spec.description,
        "finetuning_scaling_factor": meta.get("finetuning_scaling_factor", False),
        "compile_mode": sae_model.spec.compile_mode[0],
    }
    return {
        "path": str(path),
        "format": meta.get("source_format", "saelens"),
        "architecture": sae_model.architecture,
        "d_in": sae_model.d_in,
        "d_sae": sae_model.d_sae,
        "k": sae_model.cfg.k,
        "dtype": sae_model.cfg.dtype,
        "apply_b_dec_to_input": sae_model.cfg.apply_b_dec_to_input,
        "conventions": conventions,
        "hook": None
        if hook is None
        else {"block": hook.block, "tokens": hook.tokens, "hook_name": hook.hook_name},
        "source_hook_name": meta.get("hook_name"),
        "model_name": meta.get("model_name"),
        "model_fingerprint": meta.get("model_fingerprint"),
        "fingerprint": sae_model.fingerprint,
        "quality": None if quality is None else quality.model_dump(),
        "latent_stats": (stats_folder(path) / STATS_JSON).exists(),
    }


def _report(path: Path, sae_model: Any, quality: Any, as_json: bool) -> None:
    desc = _describe(path, sae_model, quality)
    if as_json:
        click.echo(json.dumps(desc, indent=2))
        return
    hook = desc["hook"]
    click.echo(f"SAE {desc['path']} ({desc['format']})")
    arch = desc["architecture"] + (f" (k={desc['k']})" if desc["architecture"] == "topk" else "")
    click.echo(f"  architecture: {arch}")
    click.echo(f"  d_in: {desc['d_in']}  d_sae: {desc['d_sae']}  dtype: {desc['dtype']}")
    conv = desc["conventions"]
    click.echo(
        f"  encoder input: {'x - b_dec' if conv['b_dec_subtracted'] else 'x'} ({conv['b_dec_convention']}); "
        f"normalisation: {conv['normalization']}"
    )
    where = "not recorded" if hook is None else (
        f"block {hook['block']}, tokens {hook['tokens']} (output of {hook['hook_name']}"
        + (f", mapped from {desc['source_hook_name']})" if desc["source_hook_name"] not in (None, hook["hook_name"]) else ")")
    )
    click.echo(f"  hook: {where}")
    if desc["model_name"]:
        click.echo(f"  model: {desc['model_name']}")
    click.echo(f"  fingerprint: {desc['fingerprint']}")
    if quality is not None:
        line = f"  quality: FVU {quality.fvu:.4f}, L0 {quality.mean_l0:.1f}, dead {100 * quality.dead_fraction:.1f}%"
        if quality.accuracy_clean is not None:
            line += (
                f", accuracy {quality.accuracy_clean:.3f} -> {quality.accuracy_spliced:.3f} spliced "
                f"({quality.accuracy_drop_points:+.2f} points drop)"
            )
        click.echo(line)
    else:
        click.echo("  quality: not recorded")
    click.echo(f"  latent statistics: {'present' if desc['latent_stats'] else 'none'}")
