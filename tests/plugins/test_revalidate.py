"""Promotion to production re-runs validation on the dataset and refuses a report that is not this patch's result.

Uses a real (small, seeded) CLIP, a real SAE and a real image folder, so the re-run is the real validator.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from steerpatch.cli.main import cli
from steerpatch.errors import IntegrityError
from steerpatch.registry import alias_moves, promote, register_patch, resolve_store
from steerpatch.registry.store import client

CLASSES = ["circle", "square", "star"]  # the plugin fixtures' classes

@pytest.fixture()
def store_uri(tmp_path, monkeypatch) -> str:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_REGISTRY_URI", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}"


@pytest.fixture(scope="module")
def dataset(tmp_path_factory, make_png) -> Path:
    root = tmp_path_factory.mktemp("revalidate-data")
    for i in range(9):
        folder = root / CLASSES[i % 3]
        folder.mkdir(exist_ok=True)
        (folder / f"{i}.png").write_bytes(make_png(100 + i))
    return root


@pytest.fixture(scope="module")
def real_report(small_clip, vit_patch, dataset, tmp_path_factory):
    """The validator's own report of the patch on the dataset, written as `steerpatch validate` does."""
    from steerpatch.sae import load_sae
    from steerpatch.validate.policy import Policy
    from steerpatch.validate.report import write_report
    from steerpatch.validate.runner import Validator

    validator = Validator(small_clip, load_sae(vit_patch.sae_dir), dataset, classes=CLASSES, policy=Policy(),
                          progress=False)
    report = validator.validate(vit_patch.patch_obj, dose=False)
    # gates are not what this test is about: a policy every measured report passes
    out = tmp_path_factory.mktemp("revalidate-report")
    json_path, _ = write_report(report, out)
    return json_path


@pytest.fixture()
def open_policy(tmp_path) -> Path:
    path = tmp_path / "open.toml"
    path.write_text("format_version = 1\n[gates]\nmin_cos_mean = -1\nmax_right_to_wrong_rate = 1.0\n"
                    "max_class_accuracy_drop = 1.0\nmax_accuracy_drop = 1.0\nmin_target_fix_rate = -1\n"
                    "min_generalisation_fix_rate = -1\n")
    return path


def test_production_promotion_reruns_validation_and_records_it(vit_patch, real_report, dataset, store_uri,
                                                              open_policy, runner, small_clip):
    v = register_patch(vit_patch.patch, real_report, sae_path=vit_patch.sae_dir, tracking_uri=store_uri)
    assert json.loads(real_report.read_text())["results_digest"]
    result = runner.invoke(cli, ["promote", v.name, v.version, "--policy", str(open_policy), "--data", str(dataset),
                                 "--tracking-uri", store_uri])
    assert result.exit_code == 0, result.output
    assert "revalidation: same per-image results" in result.output
    (move,) = alias_moves(client(resolve_store(store_uri)), v.name)
    assert move.revalidated.startswith("same per-image results")


def test_a_consistent_report_of_other_results_is_refused_at_production(vit_patch, real_report, dataset, store_uri,
                                                                      open_policy, tmp_path):
    """Counts copied from elsewhere and kept consistent pass every check but the re-run."""
    forged = json.loads(real_report.read_text())
    # another run's digest: the report still agrees with itself, but not with the patch on this data
    forged["results_digest"] = "0" * 64
    path = tmp_path / "forged" / "report.json"
    path.parent.mkdir()
    path.write_text(json.dumps(forged))
    shutil.copyfile(real_report.with_suffix(".html"), path.with_suffix(".html"))
    v = register_patch(vit_patch.patch, path, sae_path=vit_patch.sae_dir, tracking_uri=store_uri)
    with pytest.raises(IntegrityError, match=rf"{v.name}@1: artifact 'report.json' has results_digest 0+, a fresh"):
        promote(v.name, 1, "production", policy=open_policy, data=dataset, tracking_uri=store_uri)
    assert client(resolve_store(store_uri)).get_registered_model(v.name).aliases == {}
    # staging is not in revalidate_aliases: the same version moves there, and without --data production says why
    assert promote(v.name, 1, "staging", policy=open_policy, tracking_uri=store_uri).revalidated is None
    move = promote(v.name, 1, "production", policy=open_policy, tracking_uri=store_uri)
    assert move.revalidated.startswith("not re-run: no dataset given")


def test_another_dataset_is_a_usage_error(vit_patch, real_report, dataset, store_uri, open_policy, tmp_path, runner,
                                          make_png):
    other = tmp_path / "other"
    shutil.copytree(dataset, other)
    (other / CLASSES[0] / "extra.png").write_bytes(make_png(999))
    v = register_patch(vit_patch.patch, real_report, sae_path=vit_patch.sae_dir, tracking_uri=store_uri)
    result = runner.invoke(cli, ["promote", v.name, v.version, "--policy", str(open_policy), "--data", str(other),
                                 "--tracking-uri", store_uri])
    assert result.exit_code == 2, result.output
    assert "pass the dataset the version was validated on" in result.output
