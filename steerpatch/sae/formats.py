"""Reading and writing SAEs: SAELens folders, saev `sae.pt` files, plain safetensors state dicts.

No pickle is ever unpickled: safetensors is checked by its magic before parsing, and saev's
torch payload goes through `torch.load(weights_only=True)`.
"""

from __future__ import annotations

import io
import json
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from steerpatch.errors import SAEError
from steerpatch.io import atomic_dir, refuse_special_file
from steerpatch.sae.config import check_token_scope, config_from_saelens
from steerpatch.sae.module import SAE
from steerpatch.sae.registry import SAE_REGISTRY, get_architecture

CFG_FILENAME = "cfg.json"
WEIGHTS_FILENAME = "sae_weights.safetensors"
SAEV_FILENAME = "sae.pt"
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
    """Load an SAE from a SAELens folder, a saev `sae.pt`, or a plain safetensors state dict.

    Args:
        path: a SAELens folder (cfg.json + sae_weights.safetensors), its cfg.json, a saev file, or a
            `.safetensors` file holding W_enc, b_enc, W_dec, b_dec (and threshold for jumprelu).
        architecture: required for a plain safetensors file; refused for the other formats, which record it.
        k: topk's k for a plain safetensors file.
        block: the vision block the SAE reads, overriding or filling in its metadata.
        tokens: the token scope (cls, patches, all), overriding or filling in its metadata.
        apply_b_dec_to_input: for a plain safetensors file (default true, as SAELens).

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
    if path.is_file() and path.name == CFG_FILENAME:
        path = path.parent
    if path.is_dir():
        if (path / CFG_FILENAME).exists():
            sae = _load_saelens(path)
        elif (path / SAEV_FILENAME).exists():
            sae = _load_saev(path / SAEV_FILENAME)
        else:
            raise SAEError(
                f"SAE folder '{path}' has neither {CFG_FILENAME} (SAELens) nor {SAEV_FILENAME} (saev); "
                "point at the folder that holds them"
            )
    elif _is_safetensors(path):
        if architecture is None:
            raise SAEError(
                f"'{path}' is a plain safetensors state dict, which does not record its architecture; "
                f"pass --arch (one of {', '.join(sorted(SAE_REGISTRY))})"
            )
        sae = _load_plain(path, architecture, k=k, apply_b_dec_to_input=apply_b_dec_to_input)
        architecture = None
    elif _starts_with_json_line(path):
        sae = _load_saev(path)
    else:
        raise SAEError(
            f"'{path}' is not a SAELens folder, a saev file or a safetensors file ({_describe_magic(path)}); "
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
    cfg = config_from_saelens(raw, source=str(cfg_path))
    weights = folder / WEIGHTS_FILENAME
    if not weights.exists():
        raise SAEError(
            f"SAELens folder '{folder}' has no {WEIGHTS_FILENAME}; copy the weights file beside cfg.json"
        )
    tensors = _read_safetensors(weights)
    return SAE(cfg, tensors, location=str(folder))


# --- plain safetensors --------------------------------------------------------------------------


def _load_plain(path: Path, architecture: str, *, k: int | None, apply_b_dec_to_input: bool | None) -> SAE:
    get_architecture(architecture)
    tensors = _read_safetensors(path)
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


# --- saev ---------------------------------------------------------------------------------------

# saev activation class -> (architecture, how to read k)
_SAEV_ACTIVATIONS = {"Relu": "standard", "TopK": "topk", "BatchTopK": "jumprelu"}


def _load_saev(path: Path) -> SAE:
    """saev files: one JSON header line, then `torch.save(state_dict)`; saev encodes without b_dec."""
    with open(path, "rb") as handle:
        first = handle.readline()
        payload = handle.read()
    try:
        header = json.loads(first)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise SAEError(f"{path}: the first line is not a JSON header, so this is not a saev file") from None
    if not isinstance(header, dict):
        raise SAEError(f"{path}: the saev header is {type(header).__name__}, expected a JSON object")
    activation, top_k = _saev_activation(header, source=str(path))
    try:
        state = torch.load(io.BytesIO(payload), weights_only=True, map_location="cpu")
    except Exception as error:  # torch raises several types for refused or corrupt payloads
        raise SAEError(
            f"{path}: the saev weights could not be read with weights-only loading "
            f"({type(error).__name__}: {str(error).splitlines()[0][:160]}); re-save the state dict with torch.save"
        ) from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise SAEError(f"{path}: the saev payload is not a dict of tensors; re-save the SAE's state_dict")
    tensors = {name: state[name] for name in ("W_enc", "b_enc", "W_dec", "b_dec") if name in state}
    if "W_enc" not in tensors or tensors["W_enc"].ndim != 2:
        raise SAEError(f"{path}: the saev state dict lacks a 2-D W_enc; it has {', '.join(sorted(state))}")
    d_in, d_sae = (int(s) for s in tensors["W_enc"].shape)
    architecture = _SAEV_ACTIVATIONS[activation]
    fields: dict[str, Any] = {
        "d_in": d_in,
        "d_sae": d_sae,
        "architecture": architecture,
        "apply_b_dec_to_input": False,
        "metadata": {"source_format": "saev", "saev_header": header},
    }
    if architecture == "topk":
        fields["k"] = min(int(top_k or 32), d_sae)
    if architecture == "jumprelu":
        # BatchTopK at inference is an elementwise threshold; a non-positive one means plain ReLU
        theta = float(state.get("activation.threshold", torch.tensor(0.0)).reshape(-1)[0])
        tensors["threshold"] = torch.full((d_sae,), max(theta, 0.0))
    cfg = config_from_saelens(fields, source=str(path))
    return SAE(cfg, tensors, location=str(path))


def _saev_activation(header: dict[str, Any], *, source: str) -> tuple[str, int | None]:
    """The activation class name and top_k of any saev header schema (none, 1..5)."""
    cfg = header.get("cfg", header) if "schema" in header else header
    if not isinstance(cfg, dict):
        raise SAEError(f"{source}: the saev header's cfg is not an object")
    cls = header.get("cls")
    activation = cfg.get("activation")
    top_k = cfg.get("top_k")
    if isinstance(activation, dict):
        cls = activation.get("cls")
        params = activation.get("params") or {}
        top_k = params.get("top_k", top_k)
    elif cls in (None, "SparseAutoencoderConfig"):
        cls = "Relu"
    if cls not in _SAEV_ACTIVATIONS:
        raise SAEError(
            f"{source}: saev activation {cls!r} is not supported; supported: {', '.join(_SAEV_ACTIVATIONS)}"
        )
    return cls, top_k


# --- file magic ---------------------------------------------------------------------------------


def _head(path: Path, n: int = 16) -> bytes:
    with open(path, "rb") as handle:
        return handle.read(n)


def _is_safetensors(path: Path) -> bool:
    head = _head(path, 9)
    if len(head) < 9:
        return False
    (length,) = struct.unpack("<Q", head[:8])
    return 0 < length <= path.stat().st_size - 8 and head[8:9] == b"{"


def _starts_with_json_line(path: Path) -> bool:
    return _head(path, 1) == b"{"


def _describe_magic(path: Path) -> str:
    head = _head(path, 4)
    if head.startswith(b"PK\x03\x04"):
        return "it is a torch zip/pickle archive"
    if head[:1] == b"\x80":
        return "it is a Python pickle"
    if not head:
        return "it is empty"
    return f"it starts with bytes {head!r}"


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """Read a safetensors file after checking its magic, so a renamed pickle is named as such."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not _is_safetensors(path):
        raise SAEError(
            f"{path} is not a safetensors file ({_describe_magic(path)}); pickles are never loaded, "
            "convert it with safetensors.torch.save_file(state_dict, ...)"
        )
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as error:
        raise SAEError(f"{path} is a corrupt safetensors file ({error}); re-export it") from None
