"""The patch model folder `build_bundle` writes, read back file by file, and every refusal on the way.

No store is needed: `build_bundle` writes the folder MLflow later logs, so these run in well under a second
each (the mutation run of `steerpatch/registry/bundle.py` executes them once per mutant).
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import pytest

import steerpatch
from steerpatch.errors import IntegrityError, PatchError, RegistryError, SAEError
from steerpatch.io import sha256_file
from steerpatch.registry.bundle import (
    build_bundle,
    check_manifest,
    check_report_consistent,
    check_report_matches,
    classes_from_report,
    report_dict,
    write_manifest,
)
from tests.helpers.bundle import BUNDLE_FILES

CLASSES = ["circle", "square", "star"]  # the class names the registry fixtures report

FILES = set(BUNDLE_FILES)


def _tree(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}


def test_the_bundle_holds_exactly_its_files_with_their_contents(workspace, tmp_path):
    from mlflow.models import Model

    cand = workspace.candidate(scale=0.5)
    dest = tmp_path / "deep" / "model"  # parents are created
    bundle = build_bundle(dest, cand.patch, cand.report)

    assert _tree(dest) == FILES
    assert bundle.path == dest
    assert bundle.patch.content_hash == cand.patch_obj.content_hash
    assert bundle.report == json.loads(json.dumps(bundle.report)) and bundle.report["verdict"] == "pass"
    assert bundle.report["hashes"]["patch"] == cand.patch_obj.content_hash
    assert bundle.manifest_sha256 == hashlib.sha256((dest / "MANIFEST.json").read_bytes()).hexdigest()
    # patch, report and its HTML twin are copied byte for byte
    for name, source in (("patch.json", cand.patch), ("report.json", cand.report),
                         ("report.html", cand.report.parent / "report.html")):
        assert (dest / name).read_bytes() == source.read_bytes()
    reference = json.loads((dest / "sae/reference.json").read_text())
    assert (dest / "sae/reference.json").read_text() == json.dumps(reference, indent=2)
    assert reference == {
        "format_version": 1,
        "fingerprint": workspace.sae.fingerprint,
        "architecture": "standard",
        "location": str(workspace.sae_dir),
        "d_in": 8,
        "d_sae": 16,
        "weights": "full",
        "edited_latents": [3],
    }
    assert (dest / "classes.json").read_text() == json.dumps({"format_version": 1, "classes": CLASSES}, indent=2)
    assert (dest / "requirements.txt").read_text() == f"steerpatch=={steerpatch.__version__}\n"
    python = ".".join(map(str, sys.version_info[:3]))
    assert (dest / "python_env.yaml").read_text() == f"python: {python}\ndependencies:\n- -r requirements.txt\n"
    from steerpatch.sae import load_sae

    assert load_sae(dest / "sae").fingerprint == workspace.sae.fingerprint

    model = Model.load(str(dest / "MLmodel"))
    assert model.flavors["steerpatch"] == {
        "steerpatch_version": steerpatch.__version__,
        "bundle_format": 1,
        "patch": "patch.json",
        "sae": "sae",
        "report": "report.json",
        "classes": "classes.json",
        "manifest": "MANIFEST.json",
        "patch_hash": cand.patch_obj.content_hash,
    }
    pyfunc = model.flavors["python_function"]
    assert pyfunc["loader_module"] == "mlflow_steerpatch" and pyfunc["data"] == "."
    assert pyfunc["env"]["virtualenv"] == "python_env.yaml"
    assert [p.name for p in model.signature.params.params] == ["steered"]
    assert model.signature.params.params[0].default is True

    manifest = json.loads((dest / "MANIFEST.json").read_text())
    assert (dest / "MANIFEST.json").read_text() == json.dumps(manifest, indent=2)
    assert manifest["format_version"] == 1 and manifest["algorithm"] == "sha256"
    assert manifest["files"] == {name: sha256_file(dest / name) for name in sorted(FILES - {"MANIFEST.json"})}
    assert check_manifest(dest, manifest_sha256=bundle.manifest_sha256) == len(FILES) - 1


def test_an_existing_signature_is_kept(workspace, tmp_path):
    from mlflow.models import Model, ModelSignature
    from mlflow.types.schema import ParamSchema, ParamSpec

    cand = workspace.candidate()
    given = Model(signature=ModelSignature(params=ParamSchema([ParamSpec("other", "integer", 3)])))
    build_bundle(tmp_path / "m", cand.patch, cand.report, mlflow_model=given)
    model = Model.load(str(tmp_path / "m" / "MLmodel"))
    assert [p.name for p in model.signature.params.params] == ["other"]


def test_the_html_is_rendered_when_none_lies_beside_the_report(workspace, tmp_path):
    cand = workspace.candidate()
    (cand.report.parent / "report.html").unlink()
    dest = tmp_path / "m"
    build_bundle(dest, cand.patch, cand.report)
    assert _tree(dest) == FILES  # the scratch `.report` folder is gone
    assert "water-shortcut@1.0.0" in (dest / "report.html").read_text()


def test_the_html_twin_with_the_reports_own_name_wins(workspace, tmp_path):
    cand = workspace.candidate()
    renamed = cand.report.with_name("run.json")
    cand.report.rename(renamed)
    renamed.with_suffix(".html").write_text("<html>twin</html>")
    build_bundle(tmp_path / "m", cand.patch, renamed)
    assert (tmp_path / "m" / "report.html").read_text() == "<html>twin</html>"


def test_a_non_empty_folder_is_refused_and_left_alone(workspace, tmp_path):
    cand = workspace.candidate()
    dest = tmp_path / "m"
    dest.mkdir()
    (dest / "keep.txt").write_text("x")
    with pytest.raises(RegistryError, match=r"^model folder '.*m' is not empty; choose a new folder$"):
        build_bundle(dest, cand.patch, cand.report)
    assert _tree(dest) == {"keep.txt"}


def test_explicit_classes_win(workspace, tmp_path):
    cand = workspace.candidate()
    build_bundle(tmp_path / "a", cand.patch, cand.report, classes=["x", "y"])
    assert json.loads((tmp_path / "a" / "classes.json").read_text())["classes"] == ["x", "y"]


def test_classes_from_report():
    assert classes_from_report({"classes": ["b", 1]}) == ["b", "1"]
    assert classes_from_report({"classes": [], "per_class": {"z": 1, "a": 2}}) == ["a", "z"]
    assert classes_from_report({"classes_accuracy": {"z": 1, "a": 2}}) == ["a", "z"]
    assert classes_from_report({"classes": "ab", "per_class": {}}) is None
    assert classes_from_report({"per_class": ["b", "a"]}) is None
    assert classes_from_report({}) is None


def test_report_dict_takes_a_model_or_a_mapping(workspace):
    from steerpatch.validate.report import load_report

    cand = workspace.candidate()
    report = load_report(cand.report)
    assert report_dict(report) == json.loads(cand.report.read_text())
    assert report_dict((("a", 1),)) == {"a": 1}


def test_the_sae_is_found_given_or_refused(workspace, tmp_path):
    cand = workspace.candidate()
    # given explicitly (the patch's recorded location is gone)
    moved = tmp_path / "moved-sae"
    workspace.sae_dir.rename(moved)
    build_bundle(tmp_path / "a", cand.patch, cand.report, sae_path=moved)
    assert json.loads((tmp_path / "a" / "sae/reference.json").read_text())["fingerprint"] == workspace.sae.fingerprint
    # not given, and neither the recorded location nor the shipped default SAE is it (steerpatch's one
    # SAE resolver, `load_patch_sae`, names the missing location and the SAE it found instead)
    from steerpatch.sae import default_sae_path, load_sae

    other = default_sae_path()
    with pytest.raises(PatchError) as info:
        build_bundle(tmp_path / "b", cand.patch, cand.report)
    assert str(info.value) == (
        f"patch water-shortcut@1.0.0: its SAE '{workspace.sae_dir}' does not exist; pass the SAE "
        f"explicitly (--sae PATH) ('{other.resolve()}' has fingerprint {load_sae(other).fingerprint}, not the "
        f"patch's {workspace.sae.fingerprint}: an SAE fingerprint mismatch)"
    )
    # given, but another SAE
    with pytest.raises(SAEError) as info:
        build_bundle(tmp_path / "c", cand.patch, cand.report, sae_path=other)
    assert str(info.value) == (
        f"SAE '{other}' has fingerprint {load_sae(other).fingerprint} but patch water-shortcut@1.0.0 was made "
        f"for {workspace.sae.fingerprint}; pass the SAE the patch was made with"
    )
    # given, but missing: the recorded location is not tried instead
    moved.rename(workspace.sae_dir)
    with pytest.raises(SAEError, match=r"SAE path '.*nowhere' does not exist"):
        build_bundle(tmp_path / "d", cand.patch, cand.report, sae_path=tmp_path / "nowhere")


def test_a_report_for_another_patch_names_every_differing_hash(workspace):
    cand = workspace.candidate()
    patch = cand.patch_obj
    hashes = {"patch": "p" * 64, "model": patch.model.fingerprint, "sae": "s" * 64}
    with pytest.raises(RegistryError) as info:
        check_report_matches(patch, {"hashes": hashes}, report_path="r.json")
    assert info.value.problems == [
        f"hashes.patch is {'p' * 64!r} but the patch has {patch.content_hash!r}",
        f"hashes.sae is {'s' * 64!r} but the patch has {patch.sae.fingerprint!r}",
    ]
    assert str(info.value).splitlines()[0] == (
        "report 'r.json' was not computed for patch water-shortcut@1.0.0; re-run `steerpatch validate` on this "
        "patch and register with the new report"
    )
    with pytest.raises(RegistryError) as info:
        check_report_matches(patch, {"hashes": None})
    assert len(info.value.problems) == 3 and str(info.value).startswith("report 'report' was not computed")
    check_report_matches(
        patch, {"hashes": {"patch": patch.content_hash, "model": patch.model.fingerprint, "sae": patch.sae.fingerprint}}
    )


def test_a_report_contradicting_its_counts_is_an_integrity_error(workspace):
    from steerpatch.validate.report import load_report

    cand = workspace.candidate()
    report = load_report(cand.report)
    check_report_consistent(cand.patch_obj, report)
    edited = report.model_copy(update={"verdict": "fail"})
    with pytest.raises(IntegrityError) as info:
        check_report_consistent(cand.patch_obj, edited, report_path="r.json")
    assert str(info.value).startswith("report 'r.json' for water-shortcut@1.0.0 contradicts itself (")
    assert "it was edited after `steerpatch validate` wrote it: re-run validation" in str(info.value)
    assert info.value.exit_code == 1


def test_manifest_refusals_name_the_model(tmp_path):
    root = tmp_path / "m"
    root.mkdir()
    (root / "a.txt").write_text("a")
    with pytest.raises(IntegrityError) as info:
        check_manifest(root)
    assert str(info.value) == "model has no MANIFEST.json; it was not written by steerpatch or was stripped"
    for text in ("not json", '{"format_version": 1}', "[1]"):
        (root / "MANIFEST.json").write_text(text)
        with pytest.raises(IntegrityError) as info:
            check_manifest(root, what="m@2")
        assert str(info.value) == (
            "m@2: artifact 'MANIFEST.json' is not a valid manifest; the stored model was changed after registration"
        )
    (root / "MANIFEST.json").write_bytes(b"\xff")  # not UTF-8: refused the same way
    with pytest.raises(IntegrityError, match="is not a valid manifest"):
        check_manifest(root)


def test_the_manifest_skips_only_mlflows_download_marker(tmp_path):
    root = tmp_path / "m"
    (root / "sub").mkdir(parents=True)
    (root / "a.txt").write_text("a")
    (root / "sub" / "b.txt").write_text("b")
    digest = write_manifest(root)
    assert digest == sha256_file(root / "MANIFEST.json")
    assert list(json.loads((root / "MANIFEST.json").read_text())["files"]) == ["a.txt", "sub/b.txt"]
    (root / "registered_model_meta").write_text("name: x")  # MLflow adds it to a models:/ download
    assert check_manifest(root, manifest_sha256=digest) == 2
    (root / "sub" / "registered_model_meta").write_text("x")  # only at the top
    with pytest.raises(IntegrityError) as info:
        check_manifest(root)
    assert info.value.problems == ["sub/registered_model_meta: not in MANIFEST.json (added after registration)"]
    assert str(info.value).splitlines()[0] == "model: artifact 'sub/registered_model_meta' does not match its recorded hash"


def test_a_file_name_with_colons_is_named_whole(tmp_path):
    root = tmp_path / "m"
    root.mkdir()
    (root / "a: b.txt").write_text("a")
    write_manifest(root)
    (root / "a: b.txt").write_text("changed")
    with pytest.raises(IntegrityError) as info:
        check_manifest(root)
    assert str(info.value).splitlines()[0] == "model: artifact 'a: b.txt' does not match its recorded hash"


def test_the_shipped_sae_is_found_when_the_recorded_location_is_gone(workspace, tmp_path):
    from steerpatch.patch import Edit, HookRef, ModelRef, Patch, SAERef, save_patch
    from steerpatch.sae import default_sae_path, load_sae

    shipped = load_sae(default_sae_path())
    patch = Patch.create(
        name="zoo", version="1.0.0", rationale="r", author="ada",
        model=ModelRef(id="concept-clip", fingerprint=workspace.model_fingerprint),
        sae=SAERef(location=str(tmp_path / "gone"), fingerprint=shipped.fingerprint, architecture=shipped.architecture),
        hook=HookRef(block=int(shipped.cfg.metadata.get("block", 0))), tokens="all",
        edits=[Edit(latent=1, op="scale", value=0.0)],
    )
    folder = tmp_path / "zoo"
    folder.mkdir()
    patch_path = save_patch(patch, folder / "patch.json")
    report = workspace.write_report(patch, folder)
    build_bundle(tmp_path / "m", patch_path, report)
    assert json.loads((tmp_path / "m" / "sae/reference.json").read_text())["fingerprint"] == shipped.fingerprint


def test_a_report_naming_another_patch_or_contradicting_itself_is_refused_by_path(workspace, tmp_path):
    from steerpatch.registry.evidence import consistency_problems
    from steerpatch.validate.report import load_report

    cand = workspace.candidate()
    report = json.loads(cand.report.read_text())
    report["patch"] = "water-shortcut@9.9.9"
    report["accuracy"]["after"] = 0.5
    cand.report.write_text(json.dumps(report))
    problems = consistency_problems(load_report(cand.report), cand.patch_obj)
    assert len(problems) >= 2 and any("water-shortcut@9.9.9" in p for p in problems)
    with pytest.raises(IntegrityError) as info:
        build_bundle(tmp_path / "m", cand.patch, cand.report)
    assert str(info.value).splitlines()[0] == (
        f"report '{cand.report}' for water-shortcut@1.0.0 contradicts itself ({problems[0]}); it was edited "
        "after `steerpatch validate` wrote it: re-run validation"
    )
    assert info.value.problems == problems[1:]
    with pytest.raises(IntegrityError, match=r"^report 'report' for water-shortcut@1.0.0 contradicts itself"):
        check_report_consistent(cand.patch_obj, load_report(cand.report))


def test_a_report_for_another_patch_is_refused_by_path(workspace, tmp_path):
    cand = workspace.candidate()
    other = workspace.candidate(version="2.0.0", scale=0.25)
    with pytest.raises(RegistryError, match=rf"^report '{other.report}' was not computed for patch water-shortcut@1.0.0"):
        build_bundle(tmp_path / "m", cand.patch, other.report)
