"""`steerpatch register|promote|history|diff|verify|audit`: the MLflow registry from the command line.

Named, like every CLI module, after the package it fronts (`steerpatch.registry`).
"""

from __future__ import annotations

import json
from typing import Any

import click

tracking_option = click.option(
    "--tracking-uri",
    default=None,
    metavar="URI",
    help="MLflow tracking URI (sqlite:///…, http://host:port). Default: $MLFLOW_TRACKING_URI, else .steerpatch/registry/mlflow.db.",
)
json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")


def _echo_json(data: object) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=True))


@click.command()
@click.argument("patch_file", metavar="PATCH", type=click.Path(exists=True, dir_okay=False))
@click.option(
    "--report", "report_file", required=True, type=click.Path(exists=True), help="Validation report JSON."
)
@click.option(
    "--sae", "sae_path", type=click.Path(exists=True), default=None, help="SAE folder, if moved since."
)
@click.option(
    "--data", "data_source", default=None, metavar="LOCATION",
    help="Where the held-out data lives; recorded as the source of the MLflow dataset the metrics link to.",
)
@tracking_option
@json_option
def register(
    patch_file: str, report_file: str, sae_path: str | None, data_source: str | None, tracking_uri: str | None,
    as_json: bool,
) -> None:
    """Log PATCH with its validation REPORT as an MLflow model and register a new version."""
    from steerpatch.registry import register_patch

    version = register_patch(
        patch_file, report_file, sae_path=sae_path, tracking_uri=tracking_uri, dataset_source=data_source
    )
    if as_json:
        _echo_json(version.to_dict())
        return
    done = "already registered (same patch and report)" if version.existing else "registered"
    click.echo(
        f"{done} {version.patch_ref} as {version.name} version {version.version} "
        f"(verdict {version.verdict})\nmodel URI: {version.model_uri}"
    )


@click.command()
@click.argument("name")
@click.argument("version", required=False)
@click.option("--alias", default="production", show_default=True, help="Alias to move.")
@click.option(
    "--rollback", "do_rollback", is_flag=True, help="Move the alias back to where it pointed before."
)
@click.option("--force", is_flag=True, help="Move even if gates fail (needs --reason).")
@click.option("--reason", default=None, help="Why; recorded with the move.")
@click.option(
    "--policy", type=click.Path(exists=True, dir_okay=False), default=None, help="Policy TOML in force."
)
@click.option(
    "--data", type=click.Path(exists=True, file_okay=False), default=None,
    help="Dataset the version was validated on; validation is re-run on it (policy [promotion]: production by default).",
)
@click.option(
    "--revalidate/--no-revalidate", default=None,
    help="Re-run validation on --data and refuse on any difference. Default: as the policy says for ALIAS.",
)
@tracking_option
@json_option
def promote(
    name: str,
    version: str | None,
    alias: str,
    do_rollback: bool,
    force: bool,
    reason: str | None,
    policy: str | None,
    data: str | None,
    revalidate: bool | None,
    tracking_uri: str | None,
    as_json: bool,
) -> None:
    """Point ALIAS of NAME at VERSION if its validation passes the policy in force (exit 1 if not)."""
    from steerpatch.registry import promote as promote_version
    from steerpatch.registry import rollback

    if do_rollback == (version is not None):
        raise click.UsageError("give either VERSION or --rollback (not both)")
    if version is None:
        move = rollback(name, alias, reason=reason, force=force, policy=policy, tracking_uri=tracking_uri, data=data)
    else:
        move = promote_version(
            name, version, alias, force=force, reason=reason, policy=policy, tracking_uri=tracking_uri,
            data=data, revalidate=revalidate,
        )
    if as_json:
        _echo_json({"name": name, **move.to_dict()})
        return
    origin = f"v{move.from_version}" if move.from_version else "(new)"
    forced = f"  FORCED past {', '.join(move.failed_gates)}" if move.forced else ""
    click.echo(f"{name}: {alias} {origin} -> v{move.to_version}  ({move.why}){forced}")
    if move.revalidated:
        click.echo(f"revalidation: {move.revalidated}")


@click.command()
@click.argument("name")
@click.option("--metrics", "with_metrics", is_flag=True, help="Also show each version's MLflow metrics.")
@tracking_option
@json_option
def history(name: str, with_metrics: bool, tracking_uri: str | None, as_json: bool) -> None:
    """Show NAME's versions (verdicts, parents) and every alias move (who, when, why)."""
    from steerpatch.registry import format_history
    from steerpatch.registry import history as read_history

    data = read_history(name, tracking_uri=tracking_uri, metrics=with_metrics)
    if as_json:
        _echo_json(data)
    else:
        click.echo(format_history(data))


@click.command()
@click.argument("ref_a", metavar="NAME@A")
@click.argument("ref_b", metavar="NAME@B")
@tracking_option
@json_option
def diff(ref_a: str, ref_b: str, tracking_uri: str | None, as_json: bool) -> None:
    """Compare two registered versions: patch edits and metadata, verdicts and metrics."""
    from steerpatch.registry import diff_versions, format_diff

    data = diff_versions(ref_a, ref_b, tracking_uri=tracking_uri)
    if as_json:
        _echo_json({k: v for k, v in data.items() if k != "patch_text"})
    else:
        click.echo(format_diff(data))


@click.command()
@click.argument("ref", metavar="NAME@VERSION")
@tracking_option
@json_option
def verify(ref: str, tracking_uri: str | None, as_json: bool) -> None:
    """Check a registered version and its compiled graphs against the registry's record; exit 1 if anything differs."""
    from steerpatch.errors import IntegrityError
    from steerpatch.registry import verify_version

    patches: list[dict[str, Any]] = []
    try:
        result = verify_version(ref, tracking_uri=tracking_uri, on_patch=patches.append)
    except IntegrityError as error:
        if patches:  # a multi-patch graph: each patch's outcome, then (on stderr) the one-line reason
            if as_json:
                _echo_json({"ref": ref, "ok": False, "error": str(error), "patches": patches})
            else:
                click.echo("\n".join(_patch_line(outcome) for outcome in patches))
        raise
    if as_json:
        _echo_json(result)
    else:
        graphs = ", ".join(f"{g['name']}@{g['version']}" for g in result["graphs"])
        click.echo(
            f"{result['name']}@{result['version']}: {result['files']} files match their recorded SHA-256"
            + (f"; compiled graphs verified: {graphs}" if graphs else "")
        )
        for outcome in result.get("patches", []):
            click.echo(_patch_line(outcome))


def _patch_line(outcome: dict[str, Any]) -> str:
    """One patch of a multi-patch graph as `verify` shows it: index, ref, hash prefix, outcome."""
    head = f"  patch_index {outcome['index']}  {outcome['patch_ref']}  {outcome['patch_hash'][:12]}  "
    linked = f"{outcome['patch_model']}@{outcome['patch_version']}"
    if outcome["status"] == "unregistered":
        return head + "not checked (compiled from a file, no registered patch version)"
    return head + ("ok" if outcome["status"] == "ok" else "FAILED") + f" ({linked})"


@click.command()
@click.argument("name")
@click.option(
    "--policy", type=click.Path(exists=True, dir_okay=False), default=None, help="Policy TOML moves are re-checked against."
)
@tracking_option
@json_option
def audit(name: str, policy: str | None, tracking_uri: str | None, as_json: bool) -> None:
    """Verify every version, compiled graph and alias move of NAME; exit 1 listing anything that does not."""
    from steerpatch.registry import audit_model, format_audit

    data = audit_model(name, policy=policy, tracking_uri=tracking_uri)
    if as_json:
        _echo_json(data)
    else:
        click.echo(format_audit(data))
    if data["problems"]:
        raise SystemExit(1)
