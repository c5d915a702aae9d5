"""A valid patch document to start from, and the golden file: shared by the patch tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

GOLDEN = Path(__file__).resolve().parents[1] / "patch" / "golden" / "water-shortcut-1.0.0.json"
MODEL_FP = "1f" * 32
SAE_FP = "2e" * 32


def make_fields(**overrides: Any) -> dict[str, Any]:
    """Fields of a valid patch (without content_hash)."""
    fields: dict[str, Any] = {
        "name": "water-shortcut",
        "version": "1.0.0",
        "rationale": "suppress the water-background latent that makes stars of everything on water",
        "author": "ana",
        "created_at": "2024-05-01T12:00:00Z",
        "parent": None,
        "model": {"id": "concept-clip", "fingerprint": MODEL_FP},
        "sae": {"location": "steerpatch/zoo/concept-clip-sae", "fingerprint": SAE_FP, "architecture": "topk"},
        "hook": {"block": 2},
        "tokens": "all",
        "d_sae": 512,
        "edits": [
            {"latent": 17, "op": "scale", "value": 0.0},
            {"latent": 301, "op": "clamp_if_active", "value": 0.5},
        ],
        "provenance": {
            "instances": [
                {
                    "id": "star/00042.png",
                    "label": "star",
                    "predicted": "circle",
                    "scores": {"17": 0.91, "301": 0.22},
                }
            ],
            "note": "found from one misclassified star on water",
        },
    }
    fields.update(overrides)
    return fields
