"""A stable SHA-256 fingerprint of model weights, used to bind patches and SAEs to one model.

The digest covers every tensor's name, kind, shape and values; it does not depend on the order of
the state dict, on the device the tensors live on, or on the float width they are stored in
(floats are hashed as float32, so an fp64 copy of fp32 weights hashes the same).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

import torch


def _canonical(tensor: torch.Tensor) -> tuple[str, torch.Tensor]:
    tensor = tensor.detach().to("cpu")
    if tensor.is_floating_point():
        return "float", tensor.to(torch.float32).contiguous()
    if tensor.dtype == torch.bool:
        return "bool", tensor.to(torch.uint8).contiguous()
    return "int", tensor.to(torch.int64).contiguous()


def fingerprint_state_dict(state_dict: Mapping[str, torch.Tensor]) -> str:
    """SHA-256 hex digest of a state dict, independent of key order, device and float width.

    Args:
        state_dict: parameter name -> tensor (as from `model.state_dict()`).

    Returns:
        A 64-character lowercase hex string.

    Example:
        >>> fingerprint_state_dict({"w": torch.zeros(2)}) == fingerprint_state_dict({"w": torch.zeros(2).double()})
        True
    """
    digest = hashlib.sha256()
    for name in sorted(state_dict):
        kind, tensor = _canonical(state_dict[name])
        header = f"{name}|{kind}|{tuple(tensor.shape)}\n".encode()
        digest.update(len(header).to_bytes(8, "little"))
        digest.update(header)
        digest.update(tensor.numpy().tobytes())
    return digest.hexdigest()


def fingerprint_model(model: torch.nn.Module) -> str:
    """Fingerprint of a module's state dict (see `fingerprint_state_dict`)."""
    return fingerprint_state_dict(model.state_dict())
