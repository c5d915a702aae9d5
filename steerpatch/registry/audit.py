"""Reading the registry back: history of versions and alias moves, diffs, and integrity checks."""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from steerpatch.refs import parse_ref
from steerpatch.registry.artifacts import download_file, get_version
from steerpatch.registry.bundle import PATCH_FILE
from steerpatch.registry.promotion import alias_moves, failed_gates_of, verified_evidence
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


def _version_metrics(c: Any, mv: Any) -> dict[str, float]:
    """The MLflow metrics on a version's LoggedModel (empty for versions registered before they existed)."""
    from steerpatch.registry.metrics import logged_model_metrics, version_model_id

    model_id = version_model_id(mv)
    if not model_id:
        return {}
    return with_retry(lambda: logged_model_metrics(c, model_id), what=f"read the metrics of version {mv.version}")


def history(name: str, *, tracking_uri: str | None = None, metrics: bool = False) -> dict[str, Any]:
    """Everything the registry knows about one registered patch model.

    Args:
        name: the registered model name.
        tracking_uri: MLflow tracking URI; default: see `resolve_store`.
        metrics: also read each version's MLflow metrics (one request per version) into `metrics`.

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
    ordered = sorted(versions, key=lambda v: int(v.version))
    rows = [_version_row(mv, aliases) for mv in ordered]
    if metrics:
        for row, mv in zip(rows, ordered, strict=True):
            row["metrics"] = _version_metrics(c, mv)
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
        if "metrics" in row:
            shown = ", ".join(f"{k}={v:.4g}" for k, v in sorted(row["metrics"].items())) or "none logged"
            lines.append(f"      metrics: {shown}")
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
        `{"a", "b", "patch": <steerpatch.patch diff as a dict>, "patch_text": str, "registry": {field: {a, b}},
        "metrics": {metric: {a, b}}}` (metrics: the versions' MLflow metrics, None where one side lacks it).
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
            sides.append((f"{name}@{mv.version}", load_patch(local), _version_row(mv, {}), _version_metrics(c, mv)))
    (label_a, patch_a, row_a, metrics_a), (label_b, patch_b, row_b, metrics_b) = sides
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
        # every MLflow metric of either side, so an unchanged number is visible next to the changed ones
        "metrics": {k: {"a": metrics_a.get(k), "b": metrics_b.get(k)} for k in sorted(metrics_a.keys() | metrics_b.keys())},
    }


def format_diff(data: dict[str, Any]) -> str:
    """A readable rendering of `diff_versions()`."""
    lines = [f"{data['a']} -> {data['b']}", data["patch_text"]]
    for key, pair in data["registry"].items():
        lines.append(f"~ {key}: {json.dumps(pair['a'])} -> {json.dumps(pair['b'])}")
    if data.get("metrics"):
        lines.append("metrics:")
    for key, pair in data.get("metrics", {}).items():
        a, b = pair["a"], pair["b"]
        delta = f"  ({b - a:+.4g})" if a is not None and b is not None and a != b else ""
        lines.append(f"  {'~' if a != b else ' '} {key}: {_num(a)} -> {_num(b)}{delta}")
    return "\n".join(lines)


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"


def verify_version(ref: str, *, tracking_uri: str | None = None,
                   on_patch: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Check a registered version, and for a patch version its compiled graphs, against the registry's record.

    A multi-patch graph's patch links are checked as downloading it checks them
    (`steerpatch.registry.graph_links.verify_patch_links`): its `steerpatch.patches` tag, `PATCHES.json`
    and the graph's metadata agree, and every linked patch version verifies.

    Args:
        ref: `NAME@VERSION|NAME@ALIAS` of a patch version or of a compiled graph (`NAME-onnx@…`).
        tracking_uri: MLflow tracking URI; default: see `resolve_store`.
        on_patch: for a multi-patch graph, called with each patch's outcome as it is checked, so a
            caller can show them even when a later one fails.

    Returns:
        `{"name", "version", "kind", "files": <number checked>, "graphs": [{"name", "version"}], "ok": True}`,
        and for a multi-patch graph `"patches"`: one outcome per patch (`verify_patch_links`).

    Raises:
        IntegrityError: (exit 1) naming the version, the file and what differs: a file against
            MANIFEST.json, MANIFEST.json against its recorded hash, MLmodel's loader, the patch and
            report against the recorded hashes, a graph against its recorded hash and patch version,
            a multi-patch graph's patch list or a linked patch version (naming the patch_index).
    """
    from steerpatch.registry.graph_links import verify_patch_links
    from steerpatch.registry.graphs import graph_record
    from steerpatch.registry.integrity import GRAPH_FILE, is_graph
    from steerpatch.registry.verification import verify_model_version

    store = resolve_store(tracking_uri)
    c = client(store)
    name, selector = parse_ref(ref)
    mv = get_version(c, name, selector)
    patches: list[dict[str, Any]] = []

    def record(outcome: dict[str, Any]) -> None:
        patches.append(outcome)
        if on_patch is not None:
            on_patch(outcome)

    def check_links(folder: Path) -> None:
        info = graph_record(folder / GRAPH_FILE) if is_graph(mv) else None
        if info is not None and info.patches:  # the same decision as download_graph
            verify_patch_links(c, store, mv, info, folder, f"{mv.name}@{mv.version}", report=record)

    result = verify_model_version(c, store, mv, check_folder=check_links)
    if patches:
        result["patches"] = patches
    return result


def _first_line(error: Exception) -> str:
    return str(error).splitlines()[0]


def audit_model(name: str, *, policy: str | Path | None = None, tracking_uri: str | None = None) -> dict[str, Any]:
    """Walk the whole history of a registered patch: every version, every graph, every alias move.

    A version is fine when it verifies (files, MLmodel, report hashes, compiled graphs) and its report
    is consistent; a recorded move is fine when its version exists, verifies and, unless forced,
    passes the gates re-derived under `policy`; each current alias must be where its last recorded
    move put it; and one `name@version` must hold one content.

    Args:
        name: the registered patch model (`<model>.<patch>`).
        policy: the policy file moves are re-checked against; default `registry/policy.toml`.
        tracking_uri: MLflow tracking URI; default: see `resolve_store`.

    Returns:
        `{"name", "versions": [{"version", "kind", "ok", "problem"}], "moves": [...], "problems": [str]}`;
        `problems` is empty when everything verifies. Each patch version's row also lists under
        `linked_graphs` the multi-patch graph versions that link it (`{"name", "version", "aliases",
        "patch_index"}`, `steerpatch.registry.graph_links.linking_graphs`), with `linked_graphs_more`
        true when there were more than it lists.
    """
    from steerpatch.errors import SteerpatchError
    from steerpatch.registry.graph_links import linking_graphs
    from steerpatch.registry.integrity import GRAPH_SUFFIX
    from steerpatch.registry.verification import verify_model_version

    store = resolve_store(tracking_uri)
    c = client(store)
    get_version(c, name, "latest")  # a clear error for unknown or empty models
    model = with_retry(lambda: c.get_registered_model(name), what=f"read {name}")
    versions = sorted(
        with_retry(lambda: c.search_model_versions(f"name = '{name}'"), what=f"list {name}"), key=lambda v: int(v.version)
    )
    problems: list[str] = []
    rows: list[dict[str, Any]] = []
    failed_by_version: dict[str, list[str] | None] = {}
    for mv in versions:
        row: dict[str, Any] = {"version": str(mv.version), "kind": "patch", "ok": True, "problem": None}
        try:
            with tempfile.TemporaryDirectory(prefix="steerpatch-audit-") as tmp:
                _, report, _ = verified_evidence(c, store, mv, Path(tmp))
            failed_by_version[str(mv.version)] = failed_gates_of(report, policy)[0]
        except SteerpatchError as error:
            row.update(ok=False, problem=_first_line(error))
            problems.append(_first_line(error))
            failed_by_version[str(mv.version)] = None
        linked, more, wrong = linking_graphs(c, name, str(mv.version), (mv.tags or {}).get(TAG + "patch_hash", ""))
        row.update(linked_graphs=linked, linked_graphs_more=more)
        problems.extend(wrong)
        rows.append(row)
    try:
        graphs = with_retry(lambda: c.search_model_versions(f"name = '{name}{GRAPH_SUFFIX}'"), what="list graphs")
    except Exception:  # noqa: BLE001 - no sibling model: nothing was compiled and registered
        graphs = []
    for gv in sorted(graphs, key=lambda v: int(v.version)):
        row = {"version": f"{gv.name}@{gv.version}", "kind": "graph", "ok": True, "problem": None}
        try:
            verify_model_version(c, store, gv, graphs=False)
        except SteerpatchError as error:
            row.update(ok=False, problem=_first_line(error))
            problems.append(_first_line(error))
        rows.append(row)
    contents: dict[str, set[str]] = {}
    for mv in versions:
        tags = mv.tags or {}
        contents.setdefault(tags.get(TAG + "patch_ref", "?"), set()).add(tags.get(TAG + "patch_hash", "?"))
    problems.extend(
        f"{name}: {ref} is registered with {len(hashes)} different contents; one name@version must hold one content"
        for ref, hashes in sorted(contents.items()) if len(hashes) > 1
    )
    moves = []
    last: dict[str, str] = {}
    for move in alias_moves(c, name):
        entry = {**move.to_dict(), "ok": True, "problem": None}
        failed = failed_by_version.get(move.to_version, ["(version does not exist)"])
        if failed is None:
            entry["problem"] = f"{name}@{move.to_version} (alias {move.alias}) does not verify"
        elif failed and not move.forced:
            entry["problem"] = (f"{name}: alias {move.alias} moved to v{move.to_version} at {move.when} unforced, "
                                f"but it fails {', '.join(failed)}")
        if entry["problem"]:
            entry["ok"] = False
            problems.append(entry["problem"])
        last[move.alias] = move.to_version
        moves.append(entry)
    for alias, version in sorted((model.aliases or {}).items()):
        if last.get(alias) != str(version):
            problems.append(f"{name}: alias {alias} points at v{version} but no recorded move put it there "
                            "(moved outside steerpatch)")
    return {"name": name, "versions": rows, "moves": moves, "problems": problems}


def format_audit(data: dict[str, Any]) -> str:
    """A readable rendering of `audit_model()`."""
    lines = [f"{data['name']}: " + ("everything verifies" if not data["problems"] else f"{len(data['problems'])} problem(s)")]
    for row in data["versions"]:
        label = row["version"] if row["kind"] == "graph" else f"v{row['version']}"
        lines.append(f"  {row['kind']:5} {label}: " + ("ok" if row["ok"] else row["problem"]))
        for graph in row.get("linked_graphs", []):
            alias = f" [{', '.join(graph['aliases'])}]" if graph["aliases"] else ""
            lines.append(f"        in multi-patch graph {graph['name']}@{graph['version']}{alias} "
                         f"as patch_index {graph['patch_index']}")
        if row.get("linked_graphs_more"):
            lines.append("        and more multi-patch graphs (not listed)")
    for move in data["moves"]:
        origin = f"v{move['from']}" if move["from"] else "(new)"
        state = "ok" if move["ok"] else move["problem"]
        lines.append(f"  move  {move['when']} {move['alias']}: {origin} -> v{move['to']}" +
                     (" FORCED" if move["forced"] else "") + f": {state}")
    lines.extend(f"  PROBLEM {p}" for p in data["problems"] if not any(p in str(r.get("problem")) for r in data["versions"] + data["moves"]))
    return "\n".join(lines)
