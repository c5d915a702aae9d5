"""`NAME@SELECTOR` references: the one parser every caller uses.

Two kinds of reference share the shape:

- a patch's own reference, `NAME@VERSION` with a semantic version (`water-shortcut@1.0.0`), checked
  by the patch format;
- a registered model version, `NAME@VERSION` (digits), `NAME@ALIAS` or `NAME@latest`
  (`concept-clip.water-shortcut@production`), resolved by the MLflow registry.

The rule is the same for both: the selector follows the *last* `@`. This module imports nothing
heavy, so the CLI and the patch format can use it.
"""

from __future__ import annotations

import re
from pathlib import Path

from steerpatch.errors import RegistryError

# a registered model name (MLflow allows more, steerpatch registers these) and a selector
_REGISTRY_REF = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*@[A-Za-z0-9._-]+$")

LATEST = "latest"
MODEL_URI_PREFIX = "models:/"


def split_ref(text: str) -> tuple[str, str] | None:
    """Split a reference at its last `@` into (name, selector); None when there is no `@`.

    Either side may be empty: each kind of reference checks its own parts.

    Example:
        >>> split_ref("concept-clip.water@production")
        ('concept-clip.water', 'production')
        >>> split_ref("water.json") is None
        True
    """
    name, sep, selector = text.rpartition("@")
    return (name, selector) if sep else None


def parse_ref(ref: str) -> tuple[str, str]:
    """Split a registry reference `NAME@VERSION|NAME@ALIAS|NAME@latest` into its two parts.

    Raises:
        RegistryError: when there is no `@` or either side is empty.

    Example:
        >>> parse_ref("concept-clip.water@production")
        ('concept-clip.water', 'production')
    """
    parts = split_ref(ref)
    if parts is None or not all(parts):
        raise RegistryError(
            f"'{ref}' is not a registry reference; use NAME@VERSION or NAME@ALIAS, e.g. concept-clip.water@production"
        )
    return parts


def is_registry_ref(source: str) -> bool:
    """True for `NAME@ALIAS` / `NAME@VERSION` strings that are not existing files.

    Example:
        >>> is_registry_ref("concept-clip.water@production"), is_registry_ref("water.json")
        (True, False)
    """
    return not Path(source).exists() and bool(_REGISTRY_REF.match(source))


def alias_of(ref: str) -> str | None:
    """The alias a registry reference names; None for a version number, `latest`, or no `@`.

    Example:
        >>> alias_of("m@production"), alias_of("m@3"), alias_of("m@latest")
        ('production', None, None)
    """
    parts = split_ref(ref)
    if parts is None:
        return None
    selector = parts[1]
    return None if not selector or selector.isdecimal() or selector == LATEST else selector


def ref_of_model_uri(uri: str) -> str | None:
    """The reference an MLflow model URI names: `models:/NAME/VERSION` -> `NAME@VERSION`, `models:/NAME@ALIAS` as is.

    None for text that is not a `models:/` URI, or one naming no version or alias.

    Example:
        >>> ref_of_model_uri("models:/concept-clip.water/3"), ref_of_model_uri("models:/concept-clip.water")
        ('concept-clip.water@3', None)
    """
    if not uri.startswith(MODEL_URI_PREFIX):
        return None
    rest = uri[len(MODEL_URI_PREFIX) :].strip("/")
    if split_ref(rest) is not None:
        return rest
    name, _, version = rest.rpartition("/")
    return f"{name}@{version}" if name and version else None
