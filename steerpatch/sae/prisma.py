"""ViT-Prisma SAE folders: `config.json` (VisionModelSAERunnerConfig) + `weights.pt` (a state dict).

Math, as ViT-Prisma computes it: `x_n = norm_in(x)` by `normalize_activations` (default `layer_norm`);
`sae_in = x_n - b_dec` (always); standard: `z = act(sae_in @ W_enc + b_enc)` with act relu or
topk (ReLU of the k largest); gated: `z = 1[sae_in @ W_enc + b_gate > 0] * relu(sae_in @ (W_enc *
exp(r_mag)) + b_mag)`; `x_hat = norm_out(z @ W_dec + b_dec)`. `weights.pt` is read weights-only; a
legacy file that pickles its config object next to the weights is refused with the conversion.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from steerpatch.errors import SAEError
from steerpatch.sae.config import config_from_saelens
from steerpatch.sae.hooks import block_for_hook
from steerpatch.sae.module import SAE
from steerpatch.sae.weights import read_torch_weights, tensor_dict

CONFIG_FILENAME = "config.json"
WEIGHTS_FILENAME = "weights.pt"
_CONVERT = (
    "convert it in ViT-Prisma: sae = SparseAutoencoder.load_from_pretrained(path); "
    "sae.cfg.save_config('config.json'); torch.save(sae.state_dict(), 'weights.pt')"
)
_ACTIVATIONS = {"relu": "standard", "topk": "topk"}
_ARCHITECTURES = ("standard", "gated")


def is_prisma_folder(folder: Path) -> bool:
    """A folder holding ViT-Prisma's config.json and weights.pt."""
    return (folder / CONFIG_FILENAME).is_file() and (folder / WEIGHTS_FILENAME).is_file()


def _config_fields(raw: dict[str, Any], source: str) -> dict[str, Any]:
    """SAEConfig fields from a ViT-Prisma config.json."""
    if raw.get("is_transcoder"):
        raise SAEError(f"{source}: field 'is_transcoder' is true; transcoders are not SAEs and cannot be loaded")
    d_in, factor = raw.get("d_in"), raw.get("expansion_factor")
    for name, value in (("d_in", d_in), ("expansion_factor", factor)):
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise SAEError(f"{source}: field '{name}' = {value!r} must be a positive integer; fix it")
    d_sae = int(d_in) * int(factor)  # type: ignore[arg-type]  # checked just above
    if "d_sae" in raw and raw["d_sae"] != d_sae:
        raise SAEError(
            f"{source}: field 'd_sae' = {raw['d_sae']!r} disagrees with d_in * expansion_factor = {d_sae}; "
            "fix one of them"
        )
    architecture = raw.get("architecture", "standard")
    if architecture not in _ARCHITECTURES:
        raise SAEError(
            f"{source}: field 'architecture' = {architecture!r} is not one ViT-Prisma can load; "
            f"supported: {', '.join(_ARCHITECTURES)}"
        )
    activation = raw.get("activation_fn_str", "relu")
    kwargs = raw.get("activation_fn_kwargs") or {}
    if activation not in _ACTIVATIONS or (architecture == "gated" and activation != "relu"):
        allowed = "relu" if architecture == "gated" else ", ".join(_ACTIVATIONS)
        raise SAEError(
            f"{source}: field 'activation_fn_str' = {activation!r} is not supported for a {architecture} SAE; "
            f"supported: {allowed}"
        )
    fields: dict[str, Any] = {
        "d_in": d_in,
        "d_sae": d_sae,
        "architecture": "gated" if architecture == "gated" else _ACTIVATIONS[activation],
        "apply_b_dec_to_input": True,  # ViT-Prisma always encodes x - b_dec
        # ViT-Prisma's default when the file does not say
        "normalize_activations": raw.get("normalize_activations", "layer_norm"),
    }
    if activation == "topk":
        if "k" not in kwargs:
            raise SAEError(f"{source}: activation_fn_str 'topk' needs activation_fn_kwargs.k; add it")
        fields["k"] = kwargs["k"]
    dtype = raw.get("_dtype", raw.get("dtype"))
    if isinstance(dtype, str):
        fields["dtype"] = dtype.removeprefix("torch.")
    layer, subtype = raw.get("hook_point_layer"), raw.get("layer_subtype", "ln2.hook_normalized")
    if isinstance(layer, bool) or not isinstance(layer, int):
        raise SAEError(f"{source}: field 'hook_point_layer' = {layer!r} must be an integer; fix it")
    hook_name = f"blocks.{layer}.{subtype}"
    try:
        block = block_for_hook(hook_name)
    except SAEError as error:
        raise SAEError(f"{source}: fields 'hook_point_layer'/'layer_subtype': {error}") from None
    if raw.get("cls_token_only") and raw.get("use_patches_only"):
        raise SAEError(f"{source}: cls_token_only and use_patches_only are both true; set one to false")
    tokens = "cls" if raw.get("cls_token_only") else "patches" if raw.get("use_patches_only") else "all"
    fields["metadata"] = {
        "source_format": "vit-prisma",
        "hook_name": hook_name,
        "block": block,
        "token_scope": tokens,
        "model_name": raw.get("model_name"),
        "prisma_activation_fn": activation,
        "b_dec_convention": "ViT-Prisma always encodes x - b_dec",
    }
    return fields


def load_prisma(folder: Path) -> SAE:
    """Load a ViT-Prisma SAE folder as ViT-Prisma computes it.

    Raises:
        SAEError: a pickled config, unsupported settings, a non-residual hook, shapes that disagree.
    """
    cfg_path, weights_path = folder / CONFIG_FILENAME, folder / WEIGHTS_FILENAME
    try:
        raw = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise SAEError(f"{cfg_path} is not valid JSON ({error}); fix or re-export it") from None
    if not isinstance(raw, dict):
        raise SAEError(f"{cfg_path} holds {type(raw).__name__}, expected a JSON object")
    fields = _config_fields(raw, str(cfg_path))
    loaded = read_torch_weights(
        weights_path.read_bytes(),
        source=str(weights_path),
        fix=f"it pickles objects (a legacy ViT-Prisma file that stores its config object); {_CONVERT}",
    )
    if isinstance(loaded, dict) and "state_dict" in loaded and isinstance(loaded["state_dict"], dict):
        loaded = loaded["state_dict"]  # a {"cfg": plain dict, "state_dict": ...} file; config.json wins
    state = tensor_dict(loaded, source=str(weights_path), fix=_CONVERT)
    cfg = config_from_saelens(fields, source=str(cfg_path))
    return SAE(cfg, state, location=str(folder))
