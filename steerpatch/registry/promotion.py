"""Gated alias moves (promotion, rollback) and their audit trail.

An alias moves to a version only when that version verifies against the registry's record (its
files, its MLmodel, its report's hashes, its compiled graphs: `steerpatch.registry.integrity`), its
report is consistent with its own counts, and the gates *re-derived from those counts* pass the
policy in force *now* (the report's own gate values and verdict are never read, and tightening the
policy also guards old versions), unless the move is forced with a reason. Forcing bypasses gates,
never integrity. Every move is recorded as its own registered-model tag
`steerpatch.alias_move.<ns-timestamp>.<nonce>` holding one JSON record (who, when, why, from, to),
written before the alias itself moves and removed again if that fails — one tag per move keeps each
record atomic and within MLflow's tag size limit however long the history grows.
"""

from __future__ import annotations

import json
import re
import secrets
import tempfile
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from steerpatch.errors import GateFailed, IntegrityError, RegistryError
from steerpatch.registry.artifacts import download_version, get_version
from steerpatch.registry.register import TAG
from steerpatch.registry.store import Store, client, resolve_store, store_lock, with_retry
from steerpatch.user import current_user

MOVE_PREFIX = TAG + "alias_move."
_ALIAS = re.compile(r"[A-Za-z_][A-Za-z0-9_-]{0,254}")


@dataclass(frozen=True)
class AliasMove:
    """One recorded alias move.

    Attributes:
        alias: the alias moved, e.g. "production".
        from_version: where it pointed before (None when new).
        to_version: where it points now.
        who, when, why: the user, the UTC time (ISO 8601) and the reason given or implied.
        forced: whether gates were bypassed.
        kind: "promote" or "rollback".
        failed_gates: the gates that failed under the policy in force (non-empty only when forced).
        policy: the policy file the gates were checked against.
        revalidated: what re-running validation at the move found, or why it was not re-run
            (None when the policy does not ask for it for this alias).
    """

    alias: str
    from_version: str | None
    to_version: str
    who: str
    when: str
    why: str
    forced: bool = False
    kind: str = "promote"
    failed_gates: tuple[str, ...] = ()
    policy: str | None = None
    revalidated: str | None = None

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["from"] = data.pop("from_version")
        data["to"] = data.pop("to_version")
        data["failed_gates"] = list(self.failed_gates)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AliasMove:
        return cls(
            alias=data["alias"],
            from_version=data.get("from"),
            to_version=data["to"],
            who=data.get("who", ""),
            when=data.get("when", ""),
            why=data.get("why", ""),
            forced=bool(data.get("forced", False)),
            kind=data.get("kind", "promote"),
            failed_gates=tuple(data.get("failed_gates") or ()),
            policy=data.get("policy"),
            revalidated=data.get("revalidated"),
        )


def measured_values(report: Any) -> dict[str, float | None]:
    """The value each known gate measures, re-derived from a recorded report's raw counts.

    The report's own `gates` values are never used: a gate switched on later, or a value edited in
    the file, is measured from the counts all the same (see `steerpatch.registry.evidence`).
    """
    from steerpatch.registry.evidence import rederived_values

    return rederived_values(report)


def check_consistent(report: Any, what: str, patch: Any = None) -> None:
    """Refuse a report whose numbers contradict its counts (exit 1), naming the first contradiction."""
    from steerpatch.registry.evidence import consistency_problems

    problems = consistency_problems(report, patch)
    if problems:
        raise IntegrityError(
            f"{what}: artifact 'report.json' contradicts itself ({problems[0]}); it was edited after validation",
            problems[1:],
        )


def recheck_report(
    report_path: str | Path, policy_path: str | Path | None = None, alias: str | None = None
) -> tuple[list[str], str | None]:
    """Re-evaluate a recorded report against the policy in force.

    Args:
        report_path: a validation report JSON.
        policy_path: the policy file; None means the default (`registry/policy.toml`).

    Returns:
        `(failed_gates, policy_source)`: an empty list when every gate passes.

    Raises:
        IntegrityError: when the report's numbers contradict its own counts.
    """
    from steerpatch.validate.report import load_report

    report = load_report(report_path)
    check_consistent(report, f"report '{report_path}'")
    return failed_gates_of(report, policy_path, alias)


def failed_gates_of(
    report: Any, policy_path: str | Path | None, alias: str | None = None
) -> tuple[list[str], str | None]:
    from steerpatch.validate.policy import load_policy
    from steerpatch.validate.report import evaluate_gates

    policy = load_policy(policy_path)
    results = evaluate_gates(measured_values(report), policy, alias=alias)
    failed = [r.name + ("" if r.measured else " (not measured)") for r in results if not r.passed]
    decoding = getattr(report, "decoding", "exact")
    if decoding != "exact":
        # numbers measured on approximate pixels (validate --fast-decode) are not what serving computes:
        # they guide, they do not vet
        failed.append(f"exact_decoding (the report was made with {decoding} pixels; validate without --fast-decode)")
    return failed, policy.source


def verified_evidence(c: Any, store: Store, mv: Any, workdir: Path) -> tuple[Any, Any, Path]:
    """Verify a patch version and its compiled graphs; return its (patch, report, verified local folder).

    The report is also checked for consistency with its own counts and with the patch.

    Raises:
        IntegrityError: (exit 1) at the first file or number that does not match the record.
        RegistryError: when the version is a compiled graph rather than a patch.
    """
    from steerpatch.registry.integrity import graphs_of, is_graph, verify_patch_folder
    from steerpatch.registry.verification import verify_model_version

    what = f"{mv.name}@{mv.version}"
    if is_graph(mv):
        raise RegistryError(
            f"{what} is a compiled graph; promote the patch version it was compiled from "
            f"(`steerpatch promote {(mv.tags or {}).get(TAG + 'patch_model', 'NAME')} VERSION`)"
        )
    local = download_version(c, store, mv.name, str(mv.version), Path(workdir) / "model")
    _, patch, report = verify_patch_folder(local, mv, what)
    for graph in graphs_of(c, mv.name, (mv.tags or {}).get(TAG + "patch_hash")):
        verify_model_version(c, store, graph, graphs=False)
    check_consistent(report, what, patch)
    return patch, report, local


def alias_moves(c: Any, name: str) -> list[AliasMove]:
    """Every recorded move of every alias of `name`, oldest first."""
    model = with_retry(lambda: c.get_registered_model(name), what=f"read {name}")
    keys = sorted(k for k in (model.tags or {}) if k.startswith(MOVE_PREFIX))
    return [AliasMove.from_dict(json.loads(model.tags[k])) for k in keys]


def _move_alias(
    c: Any, store: Store, name: str, version: str, alias: str, move_fields: dict[str, Any]
) -> AliasMove:
    from mlflow.exceptions import MlflowException

    with store_lock(store):
        model = with_retry(lambda: c.get_registered_model(name), what=f"read {name}")
        current = (model.aliases or {}).get(alias)
        move = AliasMove(
            alias=alias,
            from_version=str(current) if current is not None else None,
            to_version=version,
            who=current_user(),
            when=datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            **move_fields,
        )
        key = f"{MOVE_PREFIX}{time.time_ns():020d}.{secrets.token_hex(3)}"
        with_retry(
            lambda: c.set_registered_model_tag(name, key, json.dumps(move.to_dict())), what="record the move"
        )
        try:
            with_retry(lambda: c.set_registered_model_alias(name, alias, version), what=f"move alias {alias}")
        except BaseException as error:
            # the move did not happen: its record must not claim it did
            with_retry(lambda: c.delete_registered_model_tag(name, key), what="withdraw the move record")
            if isinstance(error, MlflowException):
                raise RegistryError(
                    f"MLflow refused to point alias '{alias}' of '{name}' at {version}: {error}"
                ) from error
            raise
    return move


def promote(
    name: str,
    version: str | int,
    alias: str = "production",
    *,
    force: bool = False,
    reason: str | None = None,
    policy: str | Path | None = None,
    tracking_uri: str | None = None,
    kind: str = "promote",
    data: str | Path | None = None,
    revalidate: bool | None = None,
) -> AliasMove:
    """Point `alias` of registered model `name` at `version`, if its validation passes the policy in force.

    Args:
        name: the registered model.
        version: the version number to promote.
        alias: the alias to move (not of the reserved form `v<number>`).
        force: move even when gates fail; needs `reason`, which is recorded.
        reason: why; recorded with the move (required with `force`).
        policy: the policy file; default `registry/policy.toml`.
        tracking_uri: MLflow tracking URI; default: see `resolve_store`.
        kind: "promote" or "rollback", recorded with the move.
        data: the dataset folder the version was validated on; validation is re-run on it when
            `revalidate` says so, and the fresh per-image results must equal the report's.
        revalidate: re-run validation; None follows the policy's `[promotion] revalidate_aliases`
            (default: for `production`). Without `data` the re-run is skipped and the move says so.

    Returns:
        The recorded `AliasMove`.

    Raises:
        IntegrityError: (exit 1) when the version does not verify against the registry's record or its
            report contradicts its counts; `force` does not bypass this. Nothing is moved.
        GateFailed: (exit 1) naming the failed gates (re-derived from the report's counts), when not forced.
        IntegrityError: (exit 1) also when a re-run of validation gives other results than the report.
        RegistryError: for an unknown model/version, a bad alias, or `force` without a reason.

    Example:
        >>> promote("concept-clip.water-shortcut", 3, "production")  # doctest: +SKIP
    """
    version = str(version)
    if not _ALIAS.fullmatch(alias) or re.fullmatch(r"v\d+", alias) or alias == "latest":
        raise RegistryError(
            f"alias '{alias}' is not allowed; use a word such as 'production' ('latest' and 'v<number>' are reserved)"
        )
    if force and not (reason and reason.strip()):
        raise RegistryError('--force needs --reason "…" saying why the gates are bypassed; it is recorded')
    store = resolve_store(tracking_uri)
    c = client(store)
    from steerpatch.validate.policy import load_policy

    mv = get_version(c, name, version)
    if revalidate is None:
        revalidate = alias in load_policy(policy).promotion.revalidate_aliases
    with tempfile.TemporaryDirectory(prefix="steerpatch-promote-") as tmp:
        patch, report, local = verified_evidence(c, store, mv, Path(tmp))
        failed, policy_source = failed_gates_of(report, policy, alias=alias)
        if failed and not force:
            raise GateFailed(
                f"{name} version {version} fails the policy in force ({policy_source}); not promoted to '{alias}'. "
                'Fix the patch and register a new version, or use --force --reason "…"',
                [f"failed gate: {gate}" for gate in failed],
            )
        revalidated = None
        if revalidate and data is None:
            revalidated = f"not re-run: no dataset given (promote --data DIR re-runs validation for '{alias}')"
        elif revalidate and data is not None:
            from steerpatch.registry.revalidate import revalidate as rerun

            revalidated = rerun(patch, local / "sae", report, data, what=f"{name}@{mv.version}")
    why = reason.strip() if reason else ("gates passed" if kind == "promote" else "rollback; gates passed")
    move = _move_alias(
        c,
        store,
        name,
        version,
        alias,
        {
            "why": why,
            "forced": bool(failed) and force,
            "kind": kind,
            "failed_gates": tuple(failed),
            "policy": policy_source,
            "revalidated": revalidated,
        },
    )
    if force and reason:
        tag, why_forced = f"{TAG}forced.{alias}", reason.strip()
        with_retry(lambda: c.set_model_version_tag(name, version, tag, why_forced), what="record the reason")
    return move


def rollback(
    name: str,
    alias: str = "production",
    *,
    reason: str | None = None,
    force: bool = False,
    policy: str | Path | None = None,
    tracking_uri: str | None = None,
    data: str | Path | None = None,
) -> AliasMove:
    """Move `alias` back to the version it pointed at before its last move.

    Returns:
        The recorded `AliasMove` (kind "rollback").

    Raises:
        RegistryError: when the alias has no earlier version to return to.
        GateFailed: when that version fails the policy in force and `force` is not set.
    """
    store = resolve_store(tracking_uri)
    c = client(store)
    model = with_retry(lambda: c.get_registered_model(name), what=f"read {name}")
    current = (model.aliases or {}).get(alias)
    moves = [m for m in alias_moves(c, name) if m.alias == alias]
    previous = next(
        (m.from_version for m in reversed(moves) if m.to_version == str(current) and m.from_version), None
    )
    if current is None or previous is None:
        raise RegistryError(
            f"alias '{alias}' of '{name}' has no earlier version to roll back to; use `steerpatch promote {name} VERSION`"
        )
    return promote(
        name,
        previous,
        alias,
        force=force,
        reason=reason,
        policy=policy,
        tracking_uri=tracking_uri,
        kind="rollback",
        data=data,
    )
