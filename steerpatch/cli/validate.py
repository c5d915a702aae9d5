"""`steerpatch validate`: measure a patch's fixes and ripple effects on held-out data, and gate it.

Exit codes: 0 the verdict is pass, 1 it is fail, 2 the input was bad.
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from steerpatch.errors import SteerpatchError

ENGINES = ("local", "spark")


class ByteSize(click.ParamType):
    """A size such as 512MiB, 2GB or 0, as bytes."""

    name = "SIZE"

    def convert(self, value, param, ctx):
        if isinstance(value, int):
            return value
        from steerpatch.disk import parse_size

        try:
            return parse_size(str(value))
        except ValueError as error:
            self.fail(str(error), param, ctx)


def parse_set(values: tuple[str, ...], what: str):
    """Turn --targets/--same-failure values into what `validate_patch` takes.

    Each value is a dataset folder, a text file of item ids (one per line), an `attr=value` filter,
    or an item id. Values of one option must be of one kind.

    Raises:
        SteerpatchError: for mixed kinds or more than one folder.
    """
    if not values:
        return None
    folders = [v for v in values if Path(v).is_dir()]
    if folders:
        if len(values) > 1:
            raise SteerpatchError(f"--{what} got a folder and other values {list(values)}; pass one folder alone")
        return folders[0]
    filters = [v for v in values if "=" in v and not Path(v).is_file()]
    if filters:
        if len(filters) != len(values):
            raise SteerpatchError(f"--{what} mixes attr=value filters with ids {list(values)}; use one kind")
        return dict(v.split("=", 1) for v in filters)
    ids: list[str] = []
    for value in values:
        path = Path(value)
        if path.is_file() and path.suffix in (".txt", ".ids", ".lst"):
            ids.extend(line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip())
        else:
            ids.append(value)
    return ids


def summary(report) -> str:
    def pct(value):
        return "-" if value is None else f"{100 * value:.1f}%"

    lines = [
        f"{report.patch}: {report.verdict.upper()}"
        + (f"  (failed: {', '.join(report.failed_gates)})" if report.failed_gates else "")
        + (f"  (not measured: {', '.join(report.unmeasured_gates)})" if report.unmeasured_gates else ""),
        f"  images            {report.n}" + (f" ({report.n_undecodable} undecodable, skipped)" if report.n_undecodable else "")
        + (f" (decoded {report.decoding}: approximate pixels)" if report.decoding != "exact" else ""),
        f"  accuracy          {pct(report.accuracy.before)} -> {pct(report.accuracy.after)}",
    ]
    for name, group in report.groups.items():
        lines.append(f"  {report.group_by}={name:<12} {pct(group.before)} -> {pct(group.after)}  (n={group.n})")
    flips = report.flips
    lines.append(
        f"  flips             right->wrong {flips.right_to_wrong} ({pct(flips.right_to_wrong_rate)}), "
        f"wrong->right {flips.wrong_to_right}, McNemar p={flips.mcnemar_p:.3g}"
    )
    if report.targets is not None:
        lines.append(f"  target fix rate   {pct(report.target_fix_rate)} ({report.targets.fixed}/{report.targets.wrong_before})")
    if report.same_failure is not None:
        lines.append(
            f"  generalisation    {pct(report.generalisation_fix_rate)} "
            f"({report.same_failure.fixed}/{report.same_failure.wrong_before})"
        )
    blast = report.blast_radius_predicted
    lines.append(
        f"  drift             cos mean {report.drift.cos_mean:.4f}, p5 {report.drift.cos_p5:.4f}, KL {report.kl_mean:.4g}"
    )
    estimate = report.blast_radius
    if estimate is not None:  # the sample-based estimate made before the run; the stats bound is an upper bound
        lines.append(
            f"  blast radius      predicted {pct(estimate.predicted)} [{pct(estimate.low)}, {pct(estimate.high)}] "
            f"from {estimate.sample} images, observed {pct(report.blast_radius_observed)}"
        )
    else:
        lines.append(
            f"  blast radius      predicted {pct(blast.fraction) if blast else '-'}, "
            f"observed {pct(report.blast_radius_observed)}"
        )
    if report.baselines is not None and report.baselines.floor and report.baselines.ceiling:
        gap = "-" if report.gap_closed is None else f"{report.gap_closed:.2f}"
        lines.append(
            f"  baselines         worst group: random latents {pct(report.baselines.floor.worst_group)}, "
            f"last-layer re-fit with group labels {pct(report.baselines.ceiling.worst_group)}; gap closed {gap}"
        )
    for gate in report.gates:
        value = "n/a" if gate.value is None else f"{gate.value:.4g}"
        state = "not measured" if not gate.measured else "ok" if gate.passed else "FAIL"
        lines.append(f"  gate {gate.name:<28} {value:>8} vs {gate.threshold:<8.4g} {state}")
    if report.unmeasured_gates:
        lines.append(
            "  not measured      " + ", ".join(report.unmeasured_gates)
            + " (pass --targets / --same-failure; the policy may refuse promotion without them)"
        )
    return "\n".join(lines)


@click.command()
@click.argument("patch_path", metavar="PATCH", type=click.Path(dir_okay=False))
@click.option("--data", required=True, type=click.Path(file_okay=False), help="Labelled held-out image folder.")
@click.option("--targets", multiple=True, help="Failing instances the patch is for: ids, an ids .txt file, or a folder. Repeatable.")
@click.option("--same-failure", "same_failure", multiple=True, help="Other instances of the failure: attr=value, ids, an ids .txt file, or a folder.")
@click.option("--group-by", default=None, help="Manifest attribute to report accuracy per value of, e.g. shortcut.")
@click.option("--policy", "policy_path", default=None, type=click.Path(dir_okay=False), help="Policy TOML (default: registry/policy.toml).")
@click.option("--classes", default=None, help="Comma-separated class prompts (default: the data's class folders).")
@click.option("--sae", "sae_path", default=None, help="SAE folder (default: the one the patch records).")
@click.option("--model", "model_spec", default=None, help="Model spec (default: the one the patch records).")
@click.option("--engine", type=click.Choice(ENGINES), default="local", show_default=True, help="Where images are scored.")
@click.option("--spark-master", default=None, help="Spark master URL for --engine spark.")
@click.option("--no-dose", is_flag=True, help="Skip the dose-response curve.")
@click.option("--cache-dir", default=None, type=click.Path(file_okay=False), help="Keep hook activations here between runs.")
@click.option("--cache-memory", default="1GiB", show_default=True, type=ByteSize(),
              help="Hook activations held in memory; beyond it they spill to --cache-dir (or a temporary folder).")
@click.option("--fast-decode", is_flag=True,
              help="Decode JPEGs at reduced scale (1/2-1/8, kept well above the model input size): several times faster "
                   "on large photos, pixels approximate (recorded in the report). Local engine only.")
@click.option("--rehash", is_flag=True, help="Re-read every image for the dataset fingerprint (ignore the file-hash memo).")
@click.option("--allow-fingerprint-mismatch", is_flag=True, help="Validate a patch made for other weights (recorded).")
@click.option("--out", "out_dir", default=None, type=click.Path(file_okay=False), help="Write report.json and report.html here.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def validate(
    patch_path, data, targets, same_failure, group_by, policy_path, classes, sae_path, model_spec, engine,
    spark_master, no_dose, cache_dir, allow_fingerprint_mismatch, out_dir, as_json, quiet,
    cache_memory=1 << 30, rehash=False, fast_decode=False,
) -> None:
    """Validate PATCH on held-out data: fixes, flips, drift, blast radius, dose-response; gate it by policy.

    Exit 0 when the verdict is pass, 1 when it is fail, 2 on bad input.
    """
    from steerpatch.disk import check_cache_dir
    from steerpatch.patch import load_patch
    from steerpatch.preflight import preflight

    # cheap checks first: an unwritable cache folder, a bad patch, model name or SAE width are refused
    # before torch is imported or any work starts
    if fast_decode and engine != "local":
        raise SteerpatchError(f"--fast-decode decodes images on this machine; --engine {engine} decodes its own "
                              "exactly: drop --fast-decode or use --engine local")
    if cache_dir and engine == "local":
        check_cache_dir(cache_dir)
    patch = load_patch(patch_path)
    if not Path(data).is_dir():
        raise SteerpatchError(f"--data '{data}' is not a folder; pass the labelled image folder (DIR/<class>/<image>)")
    preflight(
        patch, model_spec=model_spec, sae_path=sae_path, allow_fingerprint_mismatch=allow_fingerprint_mismatch
    )
    from steerpatch.validate import ActivationCache, load_policy, write_report

    # an unwritable or full cache folder is refused before any model or image work
    cache = ActivationCache(cache_dir, memory_budget=cache_memory) if engine == "local" else None
    policy = load_policy(policy_path)
    target_set = parse_set(targets, "targets")
    same_set = parse_set(same_failure, "same-failure")
    class_list = [c.strip() for c in classes.split(",") if c.strip()] if classes else None
    from steerpatch.data import load_dataset
    from steerpatch.models import load_model
    from steerpatch.sae import load_sae

    dataset = load_dataset(data)
    common = dict(
        model=load_model(model_spec) if model_spec else None,  # None: the model the patch records
        sae=load_sae(sae_path) if sae_path else None,
        targets=target_set, same_failure=same_set, group_by=group_by, policy=policy, classes=class_list,
        progress=not quiet, dose=not no_dose, allow_fingerprint_mismatch=allow_fingerprint_mismatch,
    )
    if engine == "spark":
        from steerpatch.spark import validate_on_spark

        report = validate_on_spark(patch, dataset, master=spark_master, **common)
    else:
        if spark_master:
            raise SteerpatchError(f"--spark-master {spark_master} needs --engine spark; add it or drop the master")
        from steerpatch.validate import validate_patch

        report = validate_patch(patch, dataset, cache=cache, rehash=rehash, fast_decode=fast_decode, **common)
    if out_dir:
        json_path, html_path = write_report(report, out_dir)
    if as_json:
        click.echo(json.dumps(report.model_dump(mode="json"), indent=2))
    else:
        click.echo(summary(report))
        if out_dir:
            click.echo(f"wrote {json_path} and {html_path}")
    click.get_current_context().exit(0 if report.verdict == "pass" else 1)
