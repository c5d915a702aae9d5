"""Re-run a registered version's validation at promotion time and compare it with its report, exactly.

A report can be internally consistent and still not be this patch's: counts copied from another run
and re-derived by hand agree with themselves. Re-running the patch on the dataset the report names
settles it: the fresh per-image outcomes must give the same `results_digest` (or, for a report older
than the digest, the same counts), else promotion is refused. The policy's `[promotion]
revalidate_aliases` (default `["production"]`) says which aliases need this; the dataset is the
folder given to `steerpatch promote --data`, and must be the one the report measured (same hash).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from steerpatch.errors import IntegrityError, RegistryError


def _summary(report: Any) -> dict[str, Any]:
    return {
        "n": report.n,
        "accuracy": (report.accuracy.before, report.accuracy.after),
        "flips": (report.flips.right_to_wrong, report.flips.wrong_to_right),
        "per_class": {k: (v.before, v.after, v.n) for k, v in report.per_class.items()},
    }


def revalidate(patch: Any, sae_dir: Path, report: Any, data: str | Path, *, what: str) -> str:
    """Validate `patch` again on `data` and compare the per-image outcomes with `report`.

    Args:
        patch: the verified patch of the version.
        sae_dir: the verified SAE folder stored with it.
        report: its verified, consistent report.
        data: the labelled dataset folder the report was measured on.
        what: `NAME@VERSION`, for messages.

    Returns:
        A short note for the move record, e.g. "same per-image results (digest 1a2b3c4d…)".

    Raises:
        RegistryError: (exit 2) when `data` is not the dataset the report measured.
        IntegrityError: (exit 1) when the fresh results differ from the report's.
    """
    from steerpatch.data import load_dataset
    from steerpatch.models import load_model
    from steerpatch.sae import load_sae
    from steerpatch.validate.runner import Validator

    dataset = load_dataset(data)
    if dataset.fingerprint() != report.hashes.dataset:
        raise RegistryError(
            f"{what}: dataset '{data}' has hash {dataset.fingerprint()}, but report.json measured "
            f"{report.hashes.dataset}; pass the dataset the version was validated on to --data"
        )
    validator = Validator(
        load_model(patch.model.id), load_sae(sae_dir), dataset, classes=report.classes,
        group_by=report.group_by, progress=False,
    )
    fresh = validator.validate(patch, dose=False)
    if report.results_digest is not None and fresh.results_digest is not None:
        if fresh.results_digest != report.results_digest:
            raise IntegrityError(
                f"{what}: artifact 'report.json' has results_digest {report.results_digest}, a fresh validation "
                f"on '{data}' gives {fresh.results_digest}; the report is not this patch's result"
            )
        return f"same per-image results (digest {fresh.results_digest[:12]})"
    old, new = _summary(report), _summary(fresh)
    differs = [key for key in old if old[key] != new[key]]
    if differs:
        raise IntegrityError(
            f"{what}: artifact 'report.json' differs from a fresh validation on '{data}' in {', '.join(differs)}"
        )
    return "same counts (the report predates results_digest)"
