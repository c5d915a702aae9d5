"""Reading the registry back: history of versions and alias moves, diffs, and integrity checks."""

from __future__ import annotations

import json
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from steerpatch.registry.artifacts import (
    MANIFEST_TAG,
    download_file,
    download_version,
    get_version,
    parse_ref,
)
from steerpatch.registry.bundle import PATCH_FILE, check_manifest
from steerpatch.registry.promotion import alias_moves
from steerpatch.registry.register import TAG
from steerpatch.registry.store import client, resolve_store, with_retry


def _stamp(ms: int | None) -> str | None:
    if ms is None:
        return None
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _version_row(mv: Any, aliases: dict[str, str]) -> dict[str, Any]:
    tags = mv.tags or {}

    def tag(key: str) -> str | None:
        return tags.get(TAG + key)

    def number(key: str) -> float | None:
        value = tag(key)
        try:
            return float(value) if value not in (None, "", "None") else None
        except ValueError:
            return None

    return {
        "version": str(mv.version),
        "created": _stamp(mv.creation_timestamp),
        "patch_ref": tag("patch_ref"),
        "patch_hash": tag("patch_hash"),
        "verdict": tag("verdict"),
        "failed_gates": json.loads(tag("failed_gates") or "[]"),
        "accuracy_before": number("accuracy_before"),
        "accuracy_after": number("accuracy_after"),
        "right_to_wrong": number("right_to_wrong"),
        "wrong_to_right": number("wrong_to_right"),
        "author": tag("author"),
        "registered_by": tag("registered_by"),
        "parent": tag("parent") or None,
        "parent_version": tag("parent_version") or None,
        "aliases": sorted(a for a, v in aliases.items() if str(v) == str(mv.version)),
        "forced": {k[len(TAG + "forced.") :]: v for k, v in tags.items() if k.startswith(TAG + "forced.")},
        "description": mv.description,
    }


def history(name: str, *, tracking_uri: str | None = None) -> dict[str, Any]:
    """Everything the registry knows about one registered patch model.

    Args:
        name: the registered model name.
        tracking_uri: MLflow tracking URI; default: see `resolve_store`.

    Returns:
        `{"name", "description", "aliases": {alias: version}, "versions": [...], "moves": [...]}` with
        versions oldest first (patch ref, hash, verdict, key metrics, author, parent links, aliases)
        and every recorded alias move (who, when, why, from, to) oldest first.

    Raises:
        RegistryError: for an unknown name (listing known ones).
    """
    store = resolve_store(tracking_uri)
    c = client(store)
    get_version(c, name, "latest")  # a clear error for unknown or empty models
    model = with_retry(lambda: c.get_registered_model(name), what=f"read {name}")
    aliases = {a: str(v) for a, v in (model.aliases or {}).items()}
    versions = with_retry(lambda: c.search_model_versions(f"name = '{name}'"), what=f"list {name}")
    rows = [_version_row(mv, aliases) for mv in sorted(versions, key=lambda v: int(v.version))]
    return {
        "name": name,
        "description": model.description,
        "aliases": aliases,
        "versions": rows,
        "moves": [m.to_dict() for m in alias_moves(c, name)],
    }


def format_history(data: dict[str, Any]) -> str:
    """A readable rendering of `history()`."""
    lines = [
        f"{data['name']}  aliases: "
        + (", ".join(f"{a} -> v{v}" for a, v in sorted(data["aliases"].items())) or "none")
    ]
    lines.append("versions:")
    for row in data["versions"]:
        acc = ""
        if row["accuracy_before"] is not None and row["accuracy_after"] is not None:
            acc = f"  acc {row['accuracy_before']:.3f} -> {row['accuracy_after']:.3f}"
        parent = (
            f"  parent {row['parent']}" + (f" (v{row['parent_version']})" if row["parent_version"] else "")
            if row["parent"]
            else ""
        )
        alias = f"  [{', '.join(row['aliases'])}]" if row["aliases"] else ""
        lines.append(
            f"  v{row['version']}  {row['patch_ref']}  {row['verdict']}{acc}  by {row['author']}  {row['created']}{parent}{alias}"
        )
    lines.append("alias moves:")
    if not data["moves"]:
        lines.append("  none")
    for move in data["moves"]:
        forced = "  FORCED" if move["forced"] else ""
        origin = f"v{move['from']}" if move["from"] else "(new)"
        lines.append(
            f"  {move['when']}  {move['alias']}: {origin} -> v{move['to']}  by {move['who']}  [{move['kind']}] {move['why']}{forced}"
        )
    return "\n".join(lines)


def diff_versions(ref_a: str, ref_b: str, *, tracking_uri: str | None = None) -> dict[str, Any]:
    """Compare two registered versions: the patch documents and the recorded validation results.

    Args:
        ref_a: `NAME@VERSION|NAME@ALIAS` of the old version.
        ref_b: the new version, same form (may name another model).
        tracking_uri: MLflow tracking URI; default: see `resolve_store`.

    Returns:
        `{"a", "b", "patch": <steerpatch.patch diff as a dict>, "patch_text": str, "registry": {field: {a, b}}}`.
    """
    from steerpatch.patch import diff_patches, load_patch

    store = resolve_store(tracking_uri)
    c = client(store)
    sides = []
    with tempfile.TemporaryDirectory(prefix="steerpatch-diff-") as tmp:
        for i, ref in enumerate((ref_a, ref_b)):
            name, selector = parse_ref(ref)
            mv = get_version(c, name, selector)
            local = download_file(c, store, name, str(mv.version), PATCH_FILE, Path(tmp) / str(i))
            sides.append((f"{name}@{mv.version}", load_patch(local), _version_row(mv, {})))
    (label_a, patch_a, row_a), (label_b, patch_b, row_b) = sides
    patch_diff = diff_patches(patch_a, patch_b)
    fields = (
        "verdict",
        "failed_gates",
        "accuracy_before",
        "accuracy_after",
        "right_to_wrong",
        "wrong_to_right",
        "patch_hash",
    )
    registry = {f: {"a": row_a[f], "b": row_b[f]} for f in fields if row_a[f] != row_b[f]}
    return {
        "a": label_a,
        "b": label_b,
        "patch": patch_diff.to_dict(),
        "patch_text": patch_diff.to_text(),
        "registry": registry,
    }


def format_diff(data: dict[str, Any]) -> str:
    """A readable rendering of `diff_versions()`."""
    lines = [f"{data['a']} -> {data['b']}", data["patch_text"]]
    for key, pair in data["registry"].items():
        lines.append(f"~ {key}: {json.dumps(pair['a'])} -> {json.dumps(pair['b'])}")
    return "\n".join(lines)


def verify_version(ref: str, *, tracking_uri: str | None = None) -> dict[str, Any]:
    """Recompute the hash of every stored artifact of a version against its manifest.

    Args:
        ref: `NAME@VERSION|NAME@ALIAS`.
        tracking_uri: MLflow tracking URI; default: see `resolve_store`.

    Returns:
        `{"name", "version", "files": <number checked>, "ok": True}`.

    Raises:
        IntegrityError: (exit 1) naming each changed, missing or added file.
    """
    from steerpatch.errors import IntegrityError
    from steerpatch.patch import load_patch

    store = resolve_store(tracking_uri)
    c = client(store)
    name, selector = parse_ref(ref)
    mv = get_version(c, name, selector)
    what = f"{name}@{mv.version}"
    with tempfile.TemporaryDirectory(prefix="steerpatch-verify-") as tmp:
        local = download_version(c, store, name, str(mv.version), Path(tmp) / "model")
        n = check_manifest(local, manifest_sha256=(mv.tags or {}).get(MANIFEST_TAG), what=what)
        recorded = (mv.tags or {}).get(TAG + "patch_hash")
        patch = load_patch(local / PATCH_FILE)
        if recorded and patch.content_hash != recorded:
            raise IntegrityError(
                f"{what}: artifact '{PATCH_FILE}' has hash {patch.content_hash}, registered as {recorded}"
            )
    return {"name": name, "version": str(mv.version), "files": n, "ok": True}
