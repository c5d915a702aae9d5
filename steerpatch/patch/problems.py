"""A patch document's validation errors as lines a person can act on: the field path, then the fix."""

from __future__ import annotations

import json
from typing import Any

from pydantic import ValidationError

# pydantic error type -> what to tell the reader; the offending value is appended
_WANTED: dict[str, str] = {
    "int_type": "expected an integer",
    "float_type": "expected a number",
    "string_type": "expected a string",
    "list_type": "expected a list",
    "dict_type": "expected an object",
    "model_type": "expected an object",
    "model_attributes_type": "expected an object",
    "bool_type": "expected true or false",
}
# our own validators write messages that already name the field path
_SELF_NAMING = {"latent_range", "duplicate_latent", "hash_mismatch"}
# our own validators whose message needs the path in front
_OWN = {
    "patch_name",
    "patch_version",
    "patch_ref",
    "sha256",
    "timestamp",
    "patch_op",
    "score_key",
    "instance_id",
    "tokens",
    "control_chars",
    "text_length",
    "edit_value",
}
def _path(loc: tuple[Any, ...]) -> str:
    parts: list[str] = []
    for item in loc:
        if isinstance(item, int):
            parts.append(f"[{item}]")
        elif "[" in item or "(" in item or item == "str":
            continue  # union branch labels such as 'list[int]' or 'function-after[...]'
        else:
            parts.append(("." if parts else "") + item)
    return "".join(parts) or "(document)"


def short_value(value: Any) -> str:
    """A value as JSON for a message, cut to 40 characters."""
    try:
        text = json.dumps(value)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _describe(error: Any) -> str:
    kind, path, given = error["type"], _path(tuple(error["loc"])), error.get("input")
    if kind in _SELF_NAMING:
        return error["msg"]
    if kind == "extra_forbidden":
        return f"{path}: unknown key; remove it or check its spelling"
    if kind == "missing":
        return f"{path}: required key is missing; add it"
    if kind == "finite_number":
        return f"{path}: NaN or infinity is not allowed; use a finite number"
    if kind == "greater_than_equal":
        return f"{path}: {short_value(given)} is too small; use a value >= {error['ctx']['ge']}"
    if kind == "string_too_short":
        return f"{path}: must not be empty; fill it in"
    if kind in ("less_than", "less_than_equal"):
        bound = error["ctx"].get("lt", error["ctx"].get("le"))
        op = "<" if kind == "less_than" else "<="
        return f"{path}: {short_value(given)} is too large; use a value {op} {bound}"
    if kind == "too_long":
        return f"{path}: has {error['ctx'].get('actual_length')} items; use at most {error['ctx']['max_length']}"
    if kind == "string_pattern_mismatch" and path == "sae.architecture":
        return f"{path}: {short_value(given)} is not an architecture name; use a registered one such as 'standard', 'topk' or 'jumprelu'"
    if kind in _WANTED:
        return f"{path}: {_WANTED[kind]}, got {short_value(given)}"
    if kind in _OWN:
        return f"{path}: {error['msg']}"
    if path == "tokens":
        return f"tokens: {short_value(given)} is not a token scope; use 'cls', 'patches', 'all' or a list of token indices"
    return f"{path}: {error['msg']}"


def problems(error: ValidationError) -> list[str]:
    """One line per problem pydantic found, each naming its field path and the fix, without repeats."""
    errors = error.errors()
    # A value failing every branch of the `tokens` union is reported once per branch; when the list
    # branch got as far as an element, that element's error is the useful one.
    if any(e["loc"][:1] == ("tokens",) and any(isinstance(x, int) for x in e["loc"]) for e in errors):
        errors = [e for e in errors if e["loc"] != ("tokens", "literal['cls','patches','all']")]
    return list(dict.fromkeys(_describe(e) for e in errors))
