"""Reading and writing SAEs: SAELens folders, saev `sae.pt` files, ViT-Prisma folders, plain safetensors.

No pickle is ever unpickled: safetensors is checked by its magic before parsing, and torch payloads
(saev, ViT-Prisma) go through `torch.load(weights_only=True)`. Each foreign format is read by its
own module (`saev.py`, `prisma.py`) as its library computes it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from steerpatch.errors import SAEError
from steerpatch.io import atomic_dir, refuse_special_file
from steerpatch.sae.architectures import ARCHITECTURES, get_architecture
from steerpatch.sae.config import check_token_scope, config_from_saelens
from steerpatch.sae.module import SAE
from steerpatch.sae.prisma import is_prisma_folder, load_prisma
from steerpatch.sae.saev import load_saev
from steerpatch.sae.weights import describe_magic, is_safetensors, read_safetensors, starts_with_json_line

CFG_FILENAME = "cfg.json"
WEIGHTS_FILENAME = "sae_weights.safetensors"
SAEV_FILENAME = "sae.pt"
SCALER_FILENAME = "activation_scaler.json"  # SAELens's record of expected_average_only_in's factor
_FINETUNING_TENSORS = ("finetuning_scaling_factor", "scaling_factor")
_DTYPES = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float64": torch.float64,
}


def default_sae_path() -> Path:
    """The SAE shipped for the embedded `concept-clip` model (a SAELens folder inside the package)."""
    return Path(__file__).resolve().parent.parent / "zoo" / "concept-clip-sae"


def load_sae(
    path: str | Path,
    *,
    architecture: str | None = None,
    k: int | None = None,
    block: int | None = None,
    tokens: str | None = None,
    apply_b_dec_to_input: bool | None = None,
) -> SAE:
    """Load an SAE from a SAELens folder, a saev `sae.pt`, a ViT-Prisma folder or a plain safetensors file.

    Args:
        path: a SAELens folder (cfg.json + sae_weights.safetensors), its cfg.json, a saev file, a
            ViT-Prisma folder (config.json + weights.pt) or its weights.pt, or a `.safetensors` file
            holding W_enc, b_enc, W_dec, b_dec (and threshold for jumprelu).
        architecture: required for a plain safetensors file; refused for the other formats, which record it.
        k: topk's k for a plain safetensors file.
        block: the vision block the SAE reads, overriding or filling in its metadata.
        tokens: the token scope (cls, patches, all), overriding or filling in its metadata.
        apply_b_dec_to_input: for a plain safetensors file (default true, as SAELens); for a saev
            file, overrides the convention detected from its header schema.

    Returns:
        The SAE in eval mode, float32, with `location` set to `path`.

    Raises:
        SAEError: a missing path, an unrecognised file, a pickle where safetensors was expected,
            a config/tensor mismatch, NaN/inf weights or an unknown architecture.

    Example:
        >>> sae = load_sae(default_sae_path())  # doctest: +SKIP
        >>> sae.encode(x).shape  # doctest: +SKIP
    """
    path = Path(path)
    refuse_special_file(path, what="SAE path", entries=True, error=SAEError)
    if not path.exists():
        raise SAEError(
            f"SAE path '{path}' does not exist; give a SAELens folder, a saev sae.pt or a .safetensors file"
        )
    if path.is_file() and (path.name == CFG_FILENAME or is_prisma_folder(path.parent)):
        path = path.parent
    if apply_b_dec_to_input is not None and not (_is_saev(path) or (path.is_file() and is_safetensors(path))):
        raise SAEError(
            f"'{path}' records its b_dec convention; --apply-b-dec/--no-apply-b-dec only applies to saev "
            "files and plain safetensors"
        )
    if path.is_dir():
        if (path / CFG_FILENAME).exists():
            sae = _load_saelens(path)
        elif is_prisma_folder(path):
            sae = load_prisma(path)
        elif (path / SAEV_FILENAME).exists():
            sae = load_saev(path / SAEV_FILENAME, apply_b_dec_to_input=apply_b_dec_to_input)
        else:
            raise SAEError(
                f"SAE folder '{path}' has neither {CFG_FILENAME} (SAELens), config.json + weights.pt "
                f"(ViT-Prisma) nor {SAEV_FILENAME} (saev); point at the folder that holds them"
            )
    elif is_safetensors(path):
        if architecture is None:
            raise SAEError(
                f"'{path}' is a plain safetensors state dict, which does not record its architecture; "
                f"pass --arch (one of {', '.join(sorted(ARCHITECTURES))})"
            )
        sae = _load_plain(path, architecture, k=k, apply_b_dec_to_input=apply_b_dec_to_input)
        architecture = None
    elif starts_with_json_line(path):
        sae = load_saev(path, apply_b_dec_to_input=apply_b_dec_to_input)
    else:
        raise SAEError(
            f"'{path}' is not a SAELens folder, a saev file or a safetensors file ({describe_magic(path)}); "
            "convert it to a SAELens folder (cfg.json + sae_weights.safetensors)"
        )
    if architecture is not None and architecture != sae.architecture:
        raise SAEError(
            f"'{path}' records architecture {sae.architecture!r}, not {architecture!r}; drop --arch for this file"
        )
    if block is not None or tokens is not None:
        metadata = dict(sae.cfg.metadata)
        current = sae.hook
        new_block = block if block is not None else (current.block if current else None)
        if new_block is None:
            raise SAEError(f"SAE '{path}' records no block; pass --block together with --tokens")
        new_tokens = check_token_scope(
            tokens if tokens is not None else (current.tokens if current else "all")
        )
        metadata.update(
            {
                "hook_name": f"visual.transformer.resblocks.{new_block}",
                "block": int(new_block),
                "token_scope": new_tokens,
            }
        )
        sae.cfg = sae.cfg.model_copy(update={"metadata": metadata})
    sae.location = str(path)
    return sae


def save_sae(sae: SAE, path: str | Path, *, extra_files: Mapping[str, str | bytes] | None = None) -> Path:
    """Write `sae` as a SAELens folder: cfg.json + sae_weights.safetensors (+ extra files such as a card).

    The folder is built under a temporary name and renamed into place, so it appears complete or not at all.

    Args:
        sae: the SAE to write; weights are stored in `sae.cfg.dtype`.
        path: the folder to create; it must not exist or be empty.
        extra_files: more files to put in the folder (name -> text or bytes).

    Returns:
        The folder path.

    Raises:
        OutputError: if `path` exists and is not empty.
    """
    from safetensors.torch import save_file

    path = Path(path)
    dtype = _DTYPES[sae.cfg.dtype]
    tensors = {name: t.to(dtype).contiguous() for name, t in sae.state_tensors().items()}
    with atomic_dir(path, what="SAE folder") as tmp:
        (tmp / CFG_FILENAME).write_text(
            json.dumps(sae.cfg.to_saelens_dict(), indent=2) + "\n", encoding="utf-8"
        )
        save_file(tensors, str(tmp / WEIGHTS_FILENAME), metadata={"format": "pt"})
        if sae.cfg.norm_scaling_factor is not None:
            (tmp / SCALER_FILENAME).write_text(
                json.dumps({"scaling_factor": sae.cfg.norm_scaling_factor}) + "\n", encoding="utf-8"
            )
        for name, content in (extra_files or {}).items():
            target = tmp / name
            if isinstance(content, bytes):
                target.write_bytes(content)
            else:
                target.write_text(content, encoding="utf-8")
        # temporary folders are created private; a saved SAE is meant to be shared like any model file
        tmp.chmod(0o755)
        for child in tmp.iterdir():
            child.chmod(0o644)
    return path


# --- SAELens ------------------------------------------------------------------------------------


def _load_saelens(folder: Path) -> SAE:
    cfg_path = folder / CFG_FILENAME
    try:
        raw = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise SAEError(f"{cfg_path} is not valid JSON ({error}); fix or re-export it") from None
    if isinstance(raw, dict) and raw.get("normalize_activations") == "expected_average_only_in":
        raw = {**raw, "norm_scaling_factor": raw.get("norm_scaling_factor", _scaler_factor(folder))}
    cfg = config_from_saelens(raw, source=str(cfg_path))
    weights = folder / WEIGHTS_FILENAME
    if not weights.exists():
        raise SAEError(
            f"SAELens folder '{folder}' has no {WEIGHTS_FILENAME}; copy the weights file beside cfg.json"
        )
    tensors = read_safetensors(weights)
    if cfg.metadata.get("finetuning_scaling_factor") is True or any(n in tensors for n in _FINETUNING_TENSORS):
        tensors = _fold_finetuning_scale(tensors, cfg, source=str(weights))
    return SAE(cfg, tensors, location=str(folder))


def _scaler_factor(folder: Path) -> float | None:
    """The scaling factor SAELens's trainer recorded in activation_scaler.json (None: none recorded)."""
    path = folder / SCALER_FILENAME
    if not path.is_file():
        return None
    try:
        value = json.loads(path.read_text(encoding="utf-8"))["scaling_factor"]
    except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError):
        raise SAEError(f"{path} is not {{\"scaling_factor\": number}}; fix or delete it") from None
    if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
        raise SAEError(f"{path}: scaling_factor = {value!r} must be a number or null; fix it")
    return None if value is None else float(value)


def _fold_finetuning_scale(tensors: dict[str, torch.Tensor], cfg: Any, *, source: str) -> dict[str, torch.Tensor]:
    """SAELens decodes (z * f) @ W_dec with finetuning_scaling_factor f; fold f into W_dec's rows."""
    tensors = dict(tensors)
    names = [n for n in _FINETUNING_TENSORS if n in tensors]
    flagged = cfg.metadata.get("finetuning_scaling_factor") is True
    if not names:
        raise SAEError(
            f"{source}: cfg.json sets finetuning_scaling_factor=true but the weights have no "
            "finetuning_scaling_factor tensor; add it or set the flag to false"
        )
    scale = tensors.pop(names[0]).float()
    if not flagged:
        if torch.allclose(scale, torch.ones_like(scale)):
            return tensors  # SAELens wrote an all-ones scaling_factor for a while; it changes nothing
        raise SAEError(
            f"{source}: has tensor {names[0]} but cfg.json's finetuning_scaling_factor is false; set it to true"
        )
    if tuple(scale.shape) != (cfg.d_sae,):
        raise SAEError(
            f"{source}: tensor {names[0]} has shape {tuple(scale.shape)}, expected (d_sae,) = ({cfg.d_sae},); "
            "fix d_sae in cfg.json or re-export the weights"
        )
    if cfg.rescale_acts_by_decoder_norm:
        raise SAEError(
            f"{source}: finetuning_scaling_factor with rescale_acts_by_decoder_norm is not supported; "
            "turn one of them off"
        )
    if "W_dec" in tensors:
        tensors["W_dec"] = tensors["W_dec"].float() * scale[:, None]
    cfg.metadata["finetuning_scaling_factor"] = "folded into W_dec"
    return tensors


# --- plain safetensors --------------------------------------------------------------------------


def _load_plain(path: Path, architecture: str, *, k: int | None, apply_b_dec_to_input: bool | None) -> SAE:
    get_architecture(architecture)
    tensors = read_safetensors(path)
    if "W_enc" not in tensors:
        raise SAEError(
            f"{path} lacks tensor W_enc (shape d_in x d_sae); it has {', '.join(sorted(tensors)) or 'none'}; "
            "rename the tensors to SAELens names W_enc, b_enc, W_dec, b_dec"
        )
    if tensors["W_enc"].ndim != 2:
        raise SAEError(f"{path}: W_enc has shape {tuple(tensors['W_enc'].shape)}, expected (d_in, d_sae)")
    d_in, d_sae = (int(s) for s in tensors["W_enc"].shape)
    fields: dict[str, Any] = {
        "d_in": d_in,
        "d_sae": d_sae,
        "architecture": architecture,
        "metadata": {"source_format": "safetensors"},
    }
    if k is not None:
        fields["k"] = k
    if apply_b_dec_to_input is not None:
        fields["apply_b_dec_to_input"] = apply_b_dec_to_input
    cfg = config_from_saelens(fields, source=str(path))
    return SAE(cfg, tensors, location=str(path))


def _is_saev(path: Path) -> bool:
    if path.is_dir():
        return not (path / CFG_FILENAME).exists() and not is_prisma_folder(path) and (path / SAEV_FILENAME).exists()
    return path.is_file() and not is_safetensors(path) and starts_with_json_line(path)
