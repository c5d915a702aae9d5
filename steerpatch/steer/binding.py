"""Binding: a patch applies only to the model and SAE it was made for, unless a person overrides it.

A refused binding names both fingerprints. An override is never silent: it is logged and returned
as an `Override` record so reports and registries can keep it.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from typing import Any

from steerpatch.errors import PatchError, shorten
from steerpatch.patch.format import Patch, utc_now

log = logging.getLogger("steerpatch.steer")


@dataclass(frozen=True)
class Override:
    """A fingerprint mismatch that was allowed explicitly.

    Attributes:
        patch: the patch ref.
        kind: "model" or "sae".
        expected: the fingerprint recorded in the patch.
        actual: the fingerprint of what it was applied to.
        at: when (ISO 8601 UTC).
    """

    patch: str
    kind: str
    expected: str
    actual: str
    at: str

    def to_dict(self) -> dict[str, str]:
        return asdict(self)


def check_binding(
    patch: Patch,
    *,
    model_fingerprint: str | None,
    sae: Any,
    n_blocks: int | None = None,
    width: int | None = None,
    allow_fingerprint_mismatch: bool = False,
) -> list[Override]:
    """Check that a patch may be applied to this model and SAE.

    Args:
        patch: the patch.
        model_fingerprint: fingerprint of the model's weights (None skips the model check).
        sae: the `steerpatch.sae.SAE` to apply it with.
        n_blocks: number of vision blocks, to check the hook block (None skips).
        width: residual width at the hook block, to check the SAE's d_in (None skips).
        allow_fingerprint_mismatch: turn fingerprint mismatches into recorded overrides.

    Returns:
        The overrides that were allowed (empty when everything matched).

    Raises:
        PatchError: listing every problem; fingerprint mismatches name both fingerprints.
    """
    problems: list[str] = []
    overrides: list[Override] = []
    pairs = [
        ("model", patch.model.fingerprint, model_fingerprint),
        ("sae", patch.sae.fingerprint, sae.fingerprint),
    ]
    for kind, expected, actual in pairs:
        if actual is None or actual == expected:
            continue
        if allow_fingerprint_mismatch:
            overrides.append(Override(patch.ref, kind, expected, actual, utc_now()))
            log.warning("fingerprint override for %s: %s %s applied to %s", patch.ref, kind, expected, actual)
        else:
            what = f"{patch.model.id!r}" if kind == "model" else f"at {patch.sae.location!r}"
            problems.append(
                f"{kind} fingerprint mismatch: the patch was made for {kind} {what} with fingerprint {expected}, "
                f"but this {kind} has fingerprint {actual}; use the {kind} it was made for, or pass "
                "--allow-fingerprint-mismatch (allow_fingerprint_mismatch=True) to override and record it"
            )
    if n_blocks is not None and patch.hook.block >= n_blocks:
        problems.append(
            f"hook block {patch.hook.block} does not exist: the model has {n_blocks} vision blocks (0..{n_blocks - 1})"
        )
    elif width is not None and sae.d_in != width:
        problems.append(
            f"the SAE reads width d_in={sae.d_in} but block {patch.hook.block} of this model has width {width}; "
            "use the SAE trained for this model and block"
        )
    # with an override the SAE is knowingly another one; otherwise what the patch records must be this SAE
    strict = not allow_fingerprint_mismatch
    if strict and patch.d_sae is not None and patch.d_sae != sae.d_sae:
        problems.append(
            f"d_sae: the patch records {patch.d_sae} latents but this SAE has {sae.d_sae}; "
            "use the SAE it was made for"
        )
    if strict and patch.sae.architecture != sae.architecture:
        problems.append(
            f"sae.architecture: the patch records {patch.sae.architecture!r} but this SAE is "
            f"{sae.architecture!r}; use the SAE it was made for"
        )
    bad = [e.latent for e in patch.edits if e.latent >= sae.d_sae]
    if bad:
        problems.append(
            f"latent(s) [{shorten(bad)}] are out of range for this SAE (d_sae={sae.d_sae}); use 0..{sae.d_sae - 1}"
        )
    if problems:
        raise PatchError(f"patch {patch.ref} cannot be applied", problems)
    return overrides
