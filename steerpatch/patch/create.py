"""Building patches from a loaded model and SAE, and parsing the compact edit syntax `LATENT:OP:VALUE`."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

from steerpatch.errors import PatchError
from steerpatch.patch.format import Edit, Instance, Patch, Provenance
from steerpatch.patch.ops import OPS


def parse_edit(text: str) -> Edit:
    """Parse `LATENT:OP:VALUE`, e.g. `123:scale:0` or `7:clamp_if_active:2.5`.

    Raises:
        PatchError: naming the text and the expected form.
    """
    parts = text.strip().split(":")
    form = f"use LATENT:OP:VALUE with OP one of {', '.join(OPS)} (e.g. 123:scale:0)"
    if len(parts) != 3:
        raise PatchError(f"edit {text!r} is not of the form LATENT:OP:VALUE; {form}")
    latent_text, op, value_text = parts
    try:
        latent = int(latent_text)
        value = float(value_text)
    except ValueError:
        raise PatchError(f"edit {text!r}: latent must be an integer and value a number; {form}") from None
    if latent < 0 or not math.isfinite(value) or op not in OPS:
        raise PatchError(f"edit {text!r}: needs latent >= 0, a known op and a finite value; {form}")
    return Edit(latent=latent, op=op, value=value)


def _plain(value: Any) -> Any:
    # numpy and torch scalars (from attribution code) become Python numbers; anything else is left
    # for validation to judge, so a string latent is still refused rather than converted
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        value = value.item()
    return value


def _as_edit(item: Any) -> dict[str, Any]:
    if isinstance(item, Edit):
        return item.model_dump(mode="json")
    if isinstance(item, str):
        return parse_edit(item).model_dump(mode="json")
    if isinstance(item, Mapping):
        return {key: _plain(value) for key, value in item.items()}
    if isinstance(item, tuple) and len(item) == 3:
        latent, op, value = map(_plain, item)
        return {"latent": latent, "op": op, "value": value}
    raise PatchError(
        f"edit {item!r} is not an Edit, a dict, a (latent, op, value) tuple or 'LATENT:OP:VALUE'"
    )


def _as_provenance(value: Provenance | Mapping[str, Any] | None) -> dict[str, Any]:
    if value is None:
        return Provenance().model_dump(mode="json")
    if isinstance(value, Provenance):
        return value.model_dump(mode="json")
    data = dict(value)
    data["instances"] = [
        i.model_dump(mode="json") if isinstance(i, Instance) else dict(i) for i in data.get("instances", [])
    ]
    for instance in data["instances"]:
        if "scores" in instance:
            instance["scores"] = {str(_plain(k)): _plain(v) for k, v in instance["scores"].items()}
    return data


def new_patch(
    name: str,
    model: Any,
    sae: Any,
    edits: Iterable[Any],
    *,
    rationale: str,
    author: str,
    tokens: str | list[int] = "all",
    provenance: Provenance | Mapping[str, Any] | None = None,
    version: str = "1.0.0",
    parent: str | None = None,
    block: int | None = None,
    created_at: str | None = None,
) -> Patch:
    """Create a patch bound to a loaded model and an SAE.

    Args:
        name: a slug such as 'water-shortcut'.
        model: a `steerpatch.models.LoadedModel` (its `name` and `fingerprint` are recorded).
        sae: a `steerpatch.sae.SAE` (location, fingerprint, architecture, d_sae and hook block recorded).
        edits: `Edit`s, dicts, `(latent, op, value)` tuples or 'LATENT:OP:VALUE' strings.
        rationale: why the patch exists.
        author: who made it.
        tokens: 'cls', 'patches', 'all' or explicit token indices.
        provenance: source instances and their attribution scores.
        version: semantic version of the new patch.
        parent: 'name@version' this one derives from, if any.
        block: hook block; defaults to the SAE's own hook block.
        created_at: ISO 8601 UTC timestamp; defaults to now.

    Returns:
        The validated, hashed Patch.

    Raises:
        PatchError: listing every invalid field (a latent >= d_sae included).

    Example:
        >>> patch = new_patch("water-shortcut", model, sae, ["123:scale:0"],
        ...                   rationale="suppress the water latent", author="ana")  # doctest: +SKIP
    """
    if block is None:
        hook = getattr(sae, "hook", None)
        if hook is None:
            raise PatchError("the SAE records no hook block; pass block=N (CLI: --block N)")
        block = int(hook.block)
    fields: dict[str, Any] = {
        "name": name,
        "version": version,
        "rationale": rationale,
        "author": author,
        "parent": parent,
        "model": {"id": str(model.name), "fingerprint": str(model.fingerprint)},
        "sae": {
            "location": str(sae.location) if getattr(sae, "location", None) else "",
            "fingerprint": str(sae.fingerprint),
            "architecture": str(sae.architecture),
        },
        "hook": {"block": block},
        "tokens": tokens,
        "d_sae": int(sae.d_sae),
        "edits": [_as_edit(e) for e in edits],
        "provenance": _as_provenance(provenance),
    }
    if created_at is not None:
        fields["created_at"] = created_at
    return Patch.create(**fields)
