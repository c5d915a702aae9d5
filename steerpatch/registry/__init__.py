"""The MLflow registry: register validated patches and their compiled graphs, promote them through gates,
audit and verify them.

This is the only core package that imports mlflow (inside functions, so importing it stays cheap).

    v = register_patch("water.json", "out/report.json")        # -> RegisteredVersion
    promote(v.name, v.version, "production")                    # GateFailed unless the report passes
    history(v.name); diff_versions(f"{v.name}@1", f"{v.name}@2"); verify_version(f"{v.name}@2")
    audit_model(v.name)["problems"]                             # [] when every version and move verifies
    patch, folder = resolve_patch_ref(f"{v.name}@production")
    register_graph(compile_patch(f"{v.name}@production"), alias="production")  # graphs.py: NAME-onnx
"""

from steerpatch.refs import parse_ref
from steerpatch.registry.artifacts import resolve_patch_ref
from steerpatch.registry.audit import (
    audit_model,
    diff_versions,
    format_audit,
    format_diff,
    format_history,
    history,
    verify_version,
)
from steerpatch.registry.bundle import FLAVOR_NAME, build_bundle, check_manifest, write_manifest
from steerpatch.registry.promotion import AliasMove, alias_moves, promote, recheck_report, rollback
from steerpatch.registry.register import RegisteredVersion, register_patch, registered_name
from steerpatch.registry.store import default_registry_dir, resolve_store, resolve_tracking

__all__ = [
    "FLAVOR_NAME",
    "AliasMove",
    "RegisteredVersion",
    "alias_moves",
    "audit_model",
    "build_bundle",
    "check_manifest",
    "default_registry_dir",
    "diff_versions",
    "format_audit",
    "format_diff",
    "format_history",
    "history",
    "parse_ref",
    "promote",
    "recheck_report",
    "register_patch",
    "registered_name",
    "resolve_patch_ref",
    "resolve_store",
    "resolve_tracking",
    "rollback",
    "verify_version",
    "write_manifest",
]
