"""Find the SAE a patch edits: one rule for steering, `patch apply`, compile and the registry bundle.

A patch records its SAE by `sae.location` (a path, as it was where the patch was made) and
`sae.fingerprint` (a hash of its weights). The location may not exist on another machine, or may
hold a retrained SAE by now; the fingerprint is what identifies the SAE.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from steerpatch.errors import PatchError


def load_patch_sae(patch: Any, *, path: str | Path | None = None, stored: str | Path | None = None) -> Any:
    """Load the SAE a patch edits. The first of these wins:

    1. `path`, the SAE folder the caller names (`--sae PATH`): loaded as given. Its fingerprint is not
       checked here: the binding check names both fingerprints and honours `--allow-fingerprint-mismatch`,
       and a registry bundle refuses a mismatch itself.
    2. `stored`, the copy kept with the patch (a registered version's `sae/` folder),
    3. the patch's recorded `sae.location`,
    4. the SAE shipped in the package (`default_sae_path()`).

    Candidates 2-4 are taken only when they exist and their fingerprint is the patch's: a stale path, or
    another SAE saved over the old one, is passed over rather than used by accident.

    Args:
        patch: the `Patch`.
        path: an explicit SAE folder, or None.
        stored: the folder of the SAE stored with the patch, or None.

    Returns:
        The loaded `SAE`.

    Raises:
        PatchError: when no candidate has the patch's fingerprint; it names the location, says
            "SAE fingerprint mismatch" (with both fingerprints) when an SAE was found but is another one,
            and gives the fix (`--sae PATH`).
        SAEError: when a candidate folder exists but is not a readable SAE.

    Example:
        >>> sae = load_patch_sae(load_patch("registry/patches/water-shortcut.json"))  # doctest: +SKIP
    """
    from steerpatch.sae import default_sae_path, load_sae

    if path is not None:
        return load_sae(path)
    location = patch.sae.location
    candidates = [Path(stored)] if stored is not None else []
    if location:
        candidates.append(Path(location).expanduser())
    candidates.append(default_sae_path())
    seen: dict[Path, str] = {}  # existing candidates and their fingerprints, none of them the patch's
    for candidate in candidates:
        if not candidate.exists() or candidate.resolve() in seen:
            continue
        sae = load_sae(candidate)
        if sae.fingerprint == patch.sae.fingerprint:
            return sae
        seen[candidate.resolve()] = sae.fingerprint
    raise _not_found(patch, seen)


def _not_found(patch: Any, seen: dict[Path, str]) -> PatchError:
    location = patch.sae.location
    wrong = ", ".join(f"'{path}' has fingerprint {fingerprint}" for path, fingerprint in seen.items())
    recorded = Path(location).expanduser() if location else None
    # the recorded SAE is here (a patch made on another checkout names the shipped SAE by a path that ends
    # like ours) but it is another SAE
    named = recorded is not None and (
        recorded.resolve() in seen or any(path.parts[-len(recorded.parts) :] == recorded.parts for path in seen)
    )
    if named:
        # the SAE it names is there: what is wrong is the fingerprint, not the path
        return PatchError(
            f"patch {patch.ref}: SAE fingerprint mismatch: it names the SAE '{location}' but {wrong}, not the "
            f"patch's {patch.sae.fingerprint}; use the SAE it was made for (--sae PATH)"
        )
    where = f"'{location}' does not exist" if location else "records no SAE location"
    also = f" ({wrong}, not the patch's {patch.sae.fingerprint}: an SAE fingerprint mismatch)" if seen else ""
    return PatchError(f"patch {patch.ref}: its SAE {where}; pass the SAE explicitly (--sae PATH){also}")
