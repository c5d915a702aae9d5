"""saev checkpoints (`sae.pt`): one JSON header line, then `torch.save(state_dict)`.

Header schemas, as saev writes them:

- none: the flat config (`d_vit`, `exp_factor`, ...), ReLU.
- 1: `{"schema": 1, "cfg": {...}, "cls": ...}`; `cls` names the activation (Relu/TopK/BatchTopK, `top_k` in
  cfg) or is `SparseAutoencoderConfig` with `cfg.activation = {cls, params}`.
- 2, 3, 4: `cfg.activation = {cls, params}`; width `d_vit` (2) or `d_model` (3+), size `exp_factor` or
  `d_sae` (4+).
- 5: `cfg` names `d_model`, `d_sae` and `activation: {cls, params}` (params may nest dataclasses).

Math, as saev computes it at inference: `h = x @ W_enc + b_enc` (schemas none and 1 were written by
saev versions that encoded `(x - b_dec) @ W_enc`; the change came with schema 2 in mid-2025);
Relu -> relu(h); TopK -> the k largest h kept as they are (no ReLU, so negatives survive);
BatchTopK -> at inference an elementwise threshold `h * 1[h > theta]` (relu when theta <= 0), from the
`activation.threshold` buffer; files older than that buffer ran a per-sample top-k, which is used then.
`x_hat = f @ W_dec + b_dec`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from steerpatch.errors import SAEError
from steerpatch.sae.config import config_from_saelens
from steerpatch.sae.module import SAE
from steerpatch.sae.weights import read_torch_weights, tensor_dict

_FIX = "re-save it with saev's nn.dump (header line + torch.save(state_dict))"
_TENSORS = ("W_enc", "b_enc", "W_dec", "b_dec")
_THRESHOLD = "activation.threshold"


@dataclass(frozen=True)
class SaevHeader:
    """What a saev header says, whatever its schema."""

    schema: int | None
    activation: str  # Relu, TopK or BatchTopK
    top_k: int | None
    d_model: int | None
    d_sae: int | None
    subtracts_b_dec: bool  # the encoder convention of the saev version that wrote this schema


def _width(cfg: dict[str, Any]) -> int | None:
    return cfg.get("d_model", cfg.get("d_vit"))


def _size(cfg: dict[str, Any]) -> int | None:
    if "d_sae" in cfg:
        return cfg["d_sae"]
    width, factor = _width(cfg), cfg.get("exp_factor")
    return width * factor if isinstance(width, int) and isinstance(factor, int) else None


def _activation_object(value: Any, *, source: str) -> tuple[str, int | None]:
    if not isinstance(value, dict) or "cls" not in value:
        raise SAEError(
            f"{source}: saev header field cfg.activation = {value!r} is not {{cls, params}}; {_FIX}"
        )
    params = value.get("params") or {}
    return str(value["cls"]), params.get("top_k")


def _schema_none(header: dict[str, Any], source: str) -> tuple[str, int | None, dict[str, Any]]:
    return "Relu", None, header


def _schema_1(header: dict[str, Any], source: str) -> tuple[str, int | None, dict[str, Any]]:
    cfg = _cfg(header, source)
    cls = header.get("cls", "SparseAutoencoderConfig")
    if cls == "SparseAutoencoderConfig":
        if "activation" not in cfg:
            return "Relu", None, cfg
        activation, top_k = _activation_object(cfg["activation"], source=source)
        return activation, top_k, cfg
    return str(cls), cfg.get("top_k"), cfg


def _schema_2_to_5(header: dict[str, Any], source: str) -> tuple[str, int | None, dict[str, Any]]:
    cfg = _cfg(header, source)
    if "activation" not in cfg:
        raise SAEError(f"{source}: saev schema {header['schema']} header has no cfg.activation; {_FIX}")
    activation, top_k = _activation_object(cfg["activation"], source=source)
    return activation, top_k, cfg


def _cfg(header: dict[str, Any], source: str) -> dict[str, Any]:
    cfg = header.get("cfg")
    if not isinstance(cfg, dict):
        raise SAEError(f"{source}: saev header field 'cfg' is {type(cfg).__name__}, expected an object; {_FIX}")
    return cfg


# schema -> (reader, whether the saev version that wrote it subtracted b_dec before encoding)
SCHEMAS: dict[int | None, tuple[Callable[[dict[str, Any], str], tuple[str, int | None, dict[str, Any]]], bool]] = {
    None: (_schema_none, True),
    1: (_schema_1, True),
    2: (_schema_2_to_5, False),
    3: (_schema_2_to_5, False),
    4: (_schema_2_to_5, False),
    5: (_schema_2_to_5, False),
}
ACTIVATIONS = ("Relu", "TopK", "BatchTopK")


def parse_header(header: Any, *, source: str) -> SaevHeader:
    """Read any saev header schema.

    Raises:
        SAEError: an unknown schema or activation, or a malformed header, naming the field.
    """
    if not isinstance(header, dict):
        raise SAEError(f"{source}: the saev header is {type(header).__name__}, expected a JSON object; {_FIX}")
    schema = header.get("schema")
    if schema not in SCHEMAS:
        known = "none, " + ", ".join(str(s) for s in SCHEMAS if s is not None)
        raise SAEError(
            f"{source}: saev header field 'schema' = {schema!r} is unknown (known: {known}); "
            "re-save it with a saev release that writes one of those, or convert it to a SAELens folder"
        )
    reader, subtracts = SCHEMAS[schema]
    activation, top_k, cfg = reader(header, source)
    if activation not in ACTIVATIONS:
        raise SAEError(
            f"{source}: saev activation {activation!r} is not supported; supported: {', '.join(ACTIVATIONS)}"
        )
    if activation != "Relu":
        top_k = 32 if top_k is None else top_k  # saev's dataclass default when the header omits it
        if isinstance(top_k, bool) or not (isinstance(top_k, int) and top_k > 0):
            raise SAEError(f"{source}: saev header top_k = {top_k!r} must be a positive integer; fix it")
    width, size = _width(cfg), _size(cfg)
    return SaevHeader(schema, activation, top_k, width, size, subtracts)


def load_saev(path: Path, *, apply_b_dec_to_input: bool | None = None) -> SAE:
    """Load a saev checkpoint as saev computes it.

    Args:
        path: the `sae.pt` file.
        apply_b_dec_to_input: override the b_dec convention detected from the header schema.

    Returns:
        The SAE; metadata records the schema, the activation and how the b_dec convention was chosen.

    Raises:
        SAEError: a header that is not JSON, an unknown schema, a pickled payload, shapes that
            disagree with the header.
    """
    source = str(path)
    with open(path, "rb") as handle:
        first = handle.readline()
        payload = handle.read()
    try:
        raw = json.loads(first)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise SAEError(f"{source}: the first line is not a JSON header, so this is not a saev file") from None
    header = parse_header(raw, source=source)
    state = tensor_dict(
        read_torch_weights(payload, source=source, fix=_FIX), source=source, fix=_FIX
    )
    unexpected = sorted(set(state) - {*_TENSORS, _THRESHOLD})
    missing = [n for n in _TENSORS if n not in state]
    if missing or unexpected:
        raise SAEError(
            f"{source}: the saev state dict lacks {missing or 'nothing'} and has unexpected {unexpected or 'nothing'}; "
            f"saev SAEs hold {', '.join(_TENSORS)} (and {_THRESHOLD}); {_FIX}"
        )
    if state["W_enc"].ndim != 2:
        raise SAEError(f"{source}: W_enc has shape {tuple(state['W_enc'].shape)}, expected (d_model, d_sae)")
    d_in, d_sae = (int(s) for s in state["W_enc"].shape)
    for field_name, declared, actual in (("d_model", header.d_model, d_in), ("d_sae", header.d_sae, d_sae)):
        if declared is not None and declared != actual:
            raise SAEError(
                f"{source}: saev header {field_name} = {declared} but W_enc has shape ({d_in}, {d_sae}); "
                "the header and the weights come from different SAEs, re-save them together"
            )
    subtract = header.subtracts_b_dec if apply_b_dec_to_input is None else apply_b_dec_to_input
    tensors = {name: state[name] for name in _TENSORS}
    fields: dict[str, Any] = {"d_in": d_in, "d_sae": d_sae, "apply_b_dec_to_input": subtract}
    if header.activation == "Relu":
        fields["architecture"] = "standard"
    elif header.activation == "BatchTopK" and _THRESHOLD in state:
        # saev's inference rule h * 1[h > theta] (relu when theta <= 0) is JumpReLU with threshold max(theta, 0)
        theta = float(state[_THRESHOLD].reshape(-1)[0])
        fields["architecture"] = "jumprelu"
        tensors["threshold"] = torch.full((d_sae,), max(theta, 0.0))
    else:
        fields["architecture"] = "topk_raw"
        fields["k"] = min(int(header.top_k), d_sae)  # type: ignore[arg-type]  # parse_header set it
    how = "set by --apply-b-dec/--no-apply-b-dec" if apply_b_dec_to_input is not None else (
        f"detected from header schema {header.schema if header.schema is not None else 'none'}"
    )
    fields["metadata"] = {
        "source_format": "saev",
        "saev_schema": header.schema,
        "saev_activation": header.activation,
        "b_dec_convention": how,
        "saev_header": raw,
    }
    cfg = config_from_saelens(fields, source=source)
    return SAE(cfg, tensors, location=source)
