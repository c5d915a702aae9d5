"""Checks that need no torch: is a model spec known, and can a patch fit that model and SAE at all?

Building a model costs seconds and gigabytes (ViT-L-14: 12 s, 2.6 GB); a typo in its name or a patch
that cannot fit it should be refused before that, from files alone: open_clip's model config JSONs,
the shipped model's training record and the SAE's `cfg.json`. Everything here reads JSON only.
"""

from __future__ import annotations

import difflib
import importlib.util
import json
from pathlib import Path
from typing import Any

from steerpatch.errors import ModelError, PatchError

CONCEPT_CLIP = "concept-clip"
_ZOO = Path(__file__).resolve().parent / "zoo"
_PREFIXES = ("local-dir:", "hf-hub:")


def _open_clip_configs() -> Path | None:
    # find_spec locates the package without executing it, so torch is not imported
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(list(spec.submodule_search_locations)[0]) / "model_configs"
    return folder if folder.is_dir() else None


def _config_path(name: str) -> Path | None:
    if name == CONCEPT_CLIP:
        return _ZOO / f"{CONCEPT_CLIP}.json"
    folder = _open_clip_configs()
    if folder is None or "/" in name or name.startswith("."):
        return None
    path = folder / f"{name}.json"
    return path if path.is_file() else None


def known_model_names() -> list[str] | None:
    """Every architecture name `load_model` accepts without a prefix, or None if open_clip is not found.

    The same list as `steerpatch.models.known_names()` (open_clip's config files plus the shipped
    model), read from the file system instead of importing open_clip.
    """
    folder = _open_clip_configs()
    if folder is None:
        return None
    return [CONCEPT_CLIP, *sorted(p.stem for p in folder.glob("*.json"))]


def check_model_spec(spec: str) -> None:
    """Refuse an unknown model name in milliseconds, with close names.

    Prefixed specs (`local-dir:`, `hf-hub:`) and a missing open_clip are left to `load_model`.

    Raises:
        ModelError: naming the spec and the closest known names.
    """
    if spec.startswith(_PREFIXES):
        return
    names = known_model_names()
    if names is None or spec in names:
        return
    close = difflib.get_close_matches(spec, names, n=5, cutoff=0.5) or difflib.get_close_matches(
        spec.lower(), [n.lower() for n in names], n=5, cutoff=0.4
    )
    hint = (
        f"close names: {', '.join(close)}" if close else f"known names include: {', '.join(names[:8])}, ..."
    )
    raise ModelError(
        f"unknown model '{spec}'; {hint}; or pass a 'local-dir:/path', 'hf-hub:org/repo' spec, "
        "or an open_clip architecture name with --pretrained CHECKPOINT"
    )


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        if not path.is_file():
            return None
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None  # whoever loads the file for real reports what is wrong with it
    return data if isinstance(data, dict) else None


def shipped_fingerprint() -> str | None:
    """The weight fingerprint recorded when the shipped `concept-clip` was trained."""
    record = _read_json(_ZOO / "training.json") or {}
    value = record.get("fingerprint")
    return value if isinstance(value, str) else None


def preflight(
    patch: Any,
    *,
    model_spec: str | None = None,
    pretrained: str | None = None,
    sae_path: str | Path | None = None,
    allow_fingerprint_mismatch: bool = False,
) -> None:
    """Refuse, before any model is built, a patch that cannot fit the model and SAE it will meet.

    Checks what files alone can tell: the model name is known; the hook block exists in the model's
    config; the SAE's `cfg.json` width matches the model's width; and, for the shipped model, the
    patch's model fingerprint is the shipped one. What needs the weights is left to `check_binding`.

    Args:
        patch: the `Patch`.
        model_spec: the model the command will load (default: the patch's `model.id`).
        pretrained: a checkpoint that replaces the default weights (turns the fingerprint check off).
        sae_path: the SAE the command will load (default: the patch's `sae.location`).
        allow_fingerprint_mismatch: skip the fingerprint check, as the binding check does.

    Raises:
        ModelError: an unknown model name.
        PatchError: listing every way the patch cannot fit.
    """
    spec = model_spec or patch.model.id
    check_model_spec(spec)
    problems: list[str] = []
    config_path = _config_path(spec)
    config = _read_json(config_path) if config_path else None
    vision = config.get("vision_cfg") if config else None
    layers = vision.get("layers") if isinstance(vision, dict) else None
    width = vision.get("width") if isinstance(vision, dict) else None
    if isinstance(layers, int) and patch.hook.block >= layers:
        problems.append(
            f"hook block {patch.hook.block} does not exist: {spec} has {layers} vision blocks (0..{layers - 1})"
        )
    location = sae_path or patch.sae.location
    sae_cfg = _read_json(Path(location) / "cfg.json") if location and Path(location).is_dir() else None
    d_in = sae_cfg.get("d_in") if sae_cfg else None
    if isinstance(width, int) and isinstance(d_in, int) and d_in != width:
        problems.append(
            f"the SAE at '{location}' reads width d_in={d_in} but {spec} has width {width}; "
            "use the SAE trained for this model, or the model the patch was made for"
        )
    shipped = shipped_fingerprint() if spec == CONCEPT_CLIP and pretrained is None else None
    if shipped and patch.model.fingerprint != shipped and not allow_fingerprint_mismatch:
        problems.append(
            f"model fingerprint mismatch: the patch was made for model {patch.model.id!r} with fingerprint "
            f"{patch.model.fingerprint}, but the shipped {CONCEPT_CLIP} has fingerprint {shipped}; use the model "
            "it was made for, or pass --allow-fingerprint-mismatch to override and record it"
        )
    if problems:
        raise PatchError(f"patch {patch.ref} cannot be applied", problems)
