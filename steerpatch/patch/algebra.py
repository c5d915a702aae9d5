"""Patch algebra: compose patches into one, diff two patches, bump a patch to a new version."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from steerpatch.errors import PatchError
from steerpatch.patch.format import Edit, Patch, check_version, utc_now

Resolution = Literal["first", "last"]
BumpPart = Literal["major", "minor", "patch"]

# Fields that must agree for patches to share one hook (so one patch can express them all).
_BINDING = ("model.fingerprint", "sae.fingerprint", "hook.block", "tokens")
_METADATA = (
    "format_version", "name", "version", "rationale", "author", "created_at", "parent",
    "model", "sae", "hook", "tokens", "d_sae",
)  # fmt: skip


def _get(patch: Patch, dotted: str) -> Any:
    value: Any = patch
    for part in dotted.split("."):
        value = getattr(value, part)
    return value


def compose(
    patches: Sequence[Patch],
    *,
    name: str,
    version: str = "1.0.0",
    resolve: Resolution | None = None,
    rationale: str | None = None,
    author: str | None = None,
    created_at: str | None = None,
) -> Patch:
    """Stack patches that share a model, SAE, hook block and token scope into one patch.

    Args:
        patches: the patches, in stacking order.
        name: name of the composed patch.
        version: its version.
        resolve: what to do when two patches edit the same latent: None refuses, "first" keeps the
            earliest patch's edit, "last" the latest's.
        rationale: defaults to the parts' rationales.
        author: defaults to the parts' authors.
        created_at: defaults to now.

    Returns:
        A new patch whose provenance lists the parts in `composed_from`.

    Raises:
        PatchError: if the patches disagree on model, SAE, block or tokens, or edit one latent twice
            without a resolution (naming both patches).
    """
    if not patches:
        raise PatchError("compose needs at least one patch")
    first = patches[0]
    problems = [
        f"{p.ref} has {key} {_get(p, key)!r} but {first.ref} has {_get(first, key)!r}"
        for p in patches[1:]
        for key in _BINDING
        if _get(p, key) != _get(first, key)
    ]
    if problems:
        raise PatchError(
            "cannot compose patches bound to different models, SAEs, blocks or token scopes", problems
        )
    chosen: dict[int, tuple[Edit, Patch]] = {}
    conflicts: list[str] = []
    for patch in patches:
        for edit in patch.edits:
            if edit.latent in chosen:
                kept, owner = chosen[edit.latent]
                if resolve is None:
                    conflicts.append(
                        f"latent {edit.latent}: {owner.ref} sets {kept.op} {kept.value:g} and "
                        f"{patch.ref} sets {edit.op} {edit.value:g}"
                    )
                    continue
                if resolve == "first":
                    continue
            chosen[edit.latent] = (edit, patch)
    if conflicts:
        raise PatchError(
            "patches edit the same latent; choose a resolution (resolve='first' or 'last', "
            "CLI --resolve first|last) or remove one edit",
            conflicts,
        )
    d_saes = {p.d_sae for p in patches if p.d_sae is not None}
    instances = [i.model_dump(mode="json") for p in patches for i in p.provenance.instances]
    notes = [f"{p.ref}: {p.provenance.note}" for p in patches if p.provenance.note]
    return Patch.create(
        name=name,
        version=version,
        rationale=rationale
        if rationale is not None
        else " | ".join(f"{p.ref}: {p.rationale}" for p in patches),
        author=author if author is not None else ", ".join(dict.fromkeys(p.author for p in patches)),
        created_at=created_at or utc_now(),
        parent=None,
        model=first.model.model_dump(mode="json"),
        sae=first.sae.model_dump(mode="json"),
        hook=first.hook.model_dump(mode="json"),
        tokens=first.tokens,
        d_sae=min(d_saes) if d_saes else None,
        edits=[e.model_dump(mode="json") for e, _ in chosen.values()],
        provenance={
            "instances": instances,
            "note": "\n".join(notes),
            "composed_from": [p.ref for p in patches],
        },
    )


def next_version(version: str, part: BumpPart = "patch") -> str:
    """The next semantic version: '1.2.3' -> '1.2.4' (patch), '1.3.0' (minor), '2.0.0' (major).

    Pre-release and build suffixes are dropped.
    """
    core = check_version(version).split("+")[0].split("-")[0]
    major, minor, micro = (int(x) for x in core.split("."))
    if part == "major":
        return f"{major + 1}.0.0"
    if part == "minor":
        return f"{major}.{minor + 1}.0"
    if part == "patch":
        return f"{major}.{minor}.{micro + 1}"
    raise PatchError(f"bump part {part!r} is not one of major, minor, patch")


def merge_edits(base: Iterable[Edit], updates: Iterable[Edit] = (), remove: Iterable[int] = ()) -> list[Edit]:
    """Edits of `base` with `updates` replacing or adding edits by latent, and `remove` latents dropped.

    Raises:
        PatchError: if a latent to remove is not edited in `base`.
    """
    merged = {e.latent: e for e in base}
    missing = [latent for latent in remove if latent not in merged]
    if missing:
        raise PatchError(f"latent(s) {missing} are not edited by this patch, so they cannot be removed")
    for latent in remove:
        del merged[latent]
    for edit in updates:
        merged[edit.latent] = edit
    return list(merged.values())


def bump(
    patch: Patch,
    part: BumpPart = "patch",
    *,
    version: str | None = None,
    edits: Iterable[Edit] | None = None,
    rationale: str | None = None,
    author: str | None = None,
    created_at: str | None = None,
) -> Patch:
    """A new version of `patch` whose parent is `patch`.

    Args:
        patch: the current version.
        part: which part of the version to increase (ignored when `version` is given).
        version: an explicit new version; must differ from the current one.
        edits: replacement edits (see `merge_edits`); the old ones are kept when None.
        rationale: replacement rationale.
        author: replacement author.
        created_at: defaults to now.

    Returns:
        The bumped, re-hashed patch.

    Raises:
        PatchError: if the new version equals the old one or a field is invalid.
    """
    new_version = version if version is not None else next_version(patch.version, part)
    if new_version == patch.version:
        raise PatchError(f"bump: version {new_version} is the current version; choose a higher one")
    changes: dict[str, Any] = {
        "version": new_version,
        "parent": patch.ref,
        "created_at": created_at or utc_now(),
    }
    if edits is not None:
        changes["edits"] = [e.model_dump(mode="json") for e in edits]
    if rationale is not None:
        changes["rationale"] = rationale
    if author is not None:
        changes["author"] = author
    return patch.with_changes(**changes)


@dataclass
class PatchDiff:
    """What changed from patch `a` to patch `b`.

    Attributes:
        a, b: the refs compared.
        metadata: changed fields -> (value in a, value in b), as JSON values.
        added: edits of latents only `b` has.
        removed: edits of latents only `a` has.
        changed: latent -> (edit in a, edit in b) where op or value differ.
        provenance_changed: whether the provenance differs.
    """

    a: str
    b: str
    metadata: dict[str, tuple[Any, Any]] = field(default_factory=dict)
    added: list[Edit] = field(default_factory=list)
    removed: list[Edit] = field(default_factory=list)
    changed: dict[int, tuple[Edit, Edit]] = field(default_factory=dict)
    provenance_changed: bool = False

    @property
    def identical(self) -> bool:
        """True when nothing but possibly the hash-free order of edits differs."""
        return not (self.metadata or self.added or self.removed or self.changed or self.provenance_changed)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (the `--json` output of `steerpatch patch diff`)."""
        return {
            "a": self.a,
            "b": self.b,
            "identical": self.identical,
            "metadata": {k: {"a": va, "b": vb} for k, (va, vb) in self.metadata.items()},
            "edits": {
                "added": [e.model_dump(mode="json") for e in self.added],
                "removed": [e.model_dump(mode="json") for e in self.removed],
                "changed": [
                    {"latent": k, "a": ea.model_dump(mode="json"), "b": eb.model_dump(mode="json")}
                    for k, (ea, eb) in self.changed.items()
                ],
            },
            "provenance_changed": self.provenance_changed,
        }

    def to_text(self) -> str:
        """A readable, line-per-change summary."""
        if self.identical:
            return f"{self.a} and {self.b} are identical"
        lines = [f"--- {self.a}", f"+++ {self.b}"]
        for key, (va, vb) in self.metadata.items():
            lines.append(f"~ {key}: {_compact(va)} -> {_compact(vb)}")
        lines += [f"- edit latent {e.latent}: {e.op} {e.value:g}" for e in self.removed]
        lines += [f"+ edit latent {e.latent}: {e.op} {e.value:g}" for e in self.added]
        lines += [
            f"~ edit latent {k}: {ea.op} {ea.value:g} -> {eb.op} {eb.value:g}"
            for k, (ea, eb) in self.changed.items()
        ]
        if self.provenance_changed:
            lines.append("~ provenance changed")
        return "\n".join(lines)


def _compact(value: Any) -> str:
    return json.dumps(value, sort_keys=True, ensure_ascii=False)


def diff_patches(a: Patch, b: Patch) -> PatchDiff:
    """Compare two patches field by field and edit by edit (edits are matched by latent).

    Args:
        a: the old patch.
        b: the new patch.

    Returns:
        A PatchDiff; `identical` is True when the documents have the same content.
    """
    da, db = a.to_dict(), b.to_dict()
    result = PatchDiff(a=a.ref, b=b.ref)
    result.metadata = {k: (da[k], db[k]) for k in _METADATA if da[k] != db[k]}
    edits_a = {e.latent: e for e in a.edits}
    edits_b = {e.latent: e for e in b.edits}
    result.removed = [e for k, e in edits_a.items() if k not in edits_b]
    result.added = [e for k, e in edits_b.items() if k not in edits_a]
    result.changed = {
        k: (edits_a[k], edits_b[k]) for k in edits_a if k in edits_b and edits_a[k] != edits_b[k]
    }
    result.provenance_changed = da["provenance"] != db["provenance"]
    return result
