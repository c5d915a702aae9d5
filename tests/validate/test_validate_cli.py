"""`steerpatch validate` through the real CLI group: exit codes, JSON keys, files, bad input."""

from __future__ import annotations

import json

from steerpatch.cli.main import cli


def _policy(tmp_path, text):
    path = tmp_path / "policy.toml"
    path.write_text(text)
    return str(path)


def test_pass_exits_0_and_writes_json_and_html(runner, tmp_path, patch_file, small_world):
    policy = _policy(tmp_path, "[gates]\nmax_right_to_wrong_rate = 1\nmax_class_accuracy_drop = 1\n"
                               "max_accuracy_drop = 1\nmin_cos_mean = 0\nmin_generalisation_fix_rate = -1\n")
    out = tmp_path / "report"
    result = runner.invoke(cli, ["validate", patch_file, "--data", str(small_world), "--group-by", "shortcut",
                                 "--same-failure", "shortcut=conflicting", "--policy", policy, "--json",
                                 "--out", str(out), "--quiet", "--no-dose"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["verdict"] == "pass" and data["failed_gates"] == []
    assert data["n"] == 40
    assert set(data["groups"]) == {"aligned", "conflicting", "none"}
    # the values are the library's: the same validation run in Python gives the same report
    from steerpatch.validate import validate_patch

    expected = validate_patch(patch_file, small_world, group_by="shortcut", same_failure={"shortcut": "conflicting"},
                              policy=policy, progress=False, dose=False).model_dump(mode="json")
    for report in (data, expected):
        report.pop("duration_s")
    assert data == expected
    assert sum(g["n"] for g in data["groups"].values()) == 40
    assert json.loads((out / "report.json").read_text()) | {"duration_s": 0} == data | {"duration_s": 0}
    assert (out / "report.html").read_text().startswith("<!doctype html>")


def test_fail_exits_1_and_names_the_gate(runner, tmp_path, patch_file, small_world):
    policy = _policy(tmp_path, "[gates]\nmin_cos_mean = 1.0\nmax_right_to_wrong_rate = 1\n"
                               "max_class_accuracy_drop = 1\nmax_accuracy_drop = 1\n")
    result = runner.invoke(cli, ["validate", patch_file, "--data", str(small_world), "--policy", policy,
                                 "--quiet", "--no-dose"])
    assert result.exit_code == 1, result.output
    assert "FAIL" in result.stdout and "min_cos_mean" in result.stdout


def test_bad_input_exits_2_with_one_line(runner, tmp_path, patch_file, small_world):
    cases = [
        (["validate", patch_file, "--data", str(small_world), "--classes", "circle,square"], "['circle', 'square']"),
        (["validate", str(tmp_path / "missing.json"), "--data", str(small_world)], "missing.json"),
        (["validate", patch_file, "--data", str(small_world), "--targets", "a.png", "--targets", "shortcut=none"],
         "--targets"),
        (["validate", patch_file, "--data", str(small_world), "--policy", _policy(tmp_path, "[gates]\nbogus = 1\n")],
         "gates.bogus"),
    ]
    for args, value in cases:
        result = runner.invoke(cli, [*args, "--quiet"])
        assert result.exit_code == 2, (args, result.output)
        assert result.stdout == "", (args, result.output)
        # one line; a document's problems follow it, one "  - " line each
        lines = result.stderr.splitlines()
        assert lines[0].startswith("Error: "), (args, result.stderr)
        assert all(line.startswith("  - ") for line in lines[1:]), (args, result.stderr)
        assert value in result.stderr, (args, result.stderr)
        assert "Traceback" not in result.output


def test_target_specs_parse_to_ids_filters_or_a_folder(tmp_path):
    import pytest

    from steerpatch.cli.validate import parse_set
    from steerpatch.errors import SteerpatchError

    ids_file = tmp_path / "targets.txt"
    ids_file.write_text("star/a.png\n\ncircle/b.png\n")
    assert parse_set((), "targets") is None
    assert parse_set(("star/x.png", str(ids_file)), "targets") == ["star/x.png", "star/a.png", "circle/b.png"]
    assert parse_set(("shortcut=conflicting", "background=water"), "same-failure") == {
        "shortcut": "conflicting", "background": "water"}
    assert parse_set((str(tmp_path),), "targets") == str(tmp_path)
    with pytest.raises(SteerpatchError, match="one folder alone"):
        parse_set((str(tmp_path), "x.png"), "targets")
