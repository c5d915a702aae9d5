"""The policy file: defaults, the packaged copy, and refusal of typos and bad values."""

from __future__ import annotations

import pytest

from steerpatch.errors import SteerpatchError
from steerpatch.validate.policy import PACKAGED_POLICY, REPO_POLICY, Policy, load_policy


def test_repo_policy_is_the_default_and_matches_the_packaged_copy():
    policy = load_policy()
    assert policy.source == str(REPO_POLICY)
    assert REPO_POLICY.read_text() == PACKAGED_POLICY.read_text()
    assert policy.gates.max_right_to_wrong_rate == 0.02
    assert policy.data.on_undecodable == "skip"


def test_policy_model_defaults_equal_the_shipped_file():
    shipped = load_policy(PACKAGED_POLICY).model_dump(exclude={"source", "unmeasured"})
    assert shipped == Policy().model_dump(exclude={"source", "unmeasured"})
    # a policy file that says nothing about unmeasured gates blocks nothing; the shipped one blocks production
    assert Policy().unmeasured.blocks == []
    assert load_policy(PACKAGED_POLICY).unmeasured.blocks == ["production"]


def test_negative_threshold_switches_a_gate_off(tmp_path):
    path = tmp_path / "p.toml"
    path.write_text("[gates]\nmin_cos_mean = -1\nmax_right_to_wrong_rate = 0.1\n")
    active = load_policy(path).gates.active()
    assert "min_cos_mean" not in active
    assert active["max_right_to_wrong_rate"] == 0.1


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("[gates]\nmax_right_to_wrong_rat = 0.1\n", "max_right_to_wrong_rat"),
        ("[data]\non_undecodable = \"ignore\"\n", "on_undecodable"),
        ("[gates\n", "not valid TOML"),
        ("format_version = 2\n", "format_version"),
        ("[dose_response]\nstrengths = [0.0, nan]\n", "strengths"),
    ],
)
def test_bad_policy_files_name_the_problem(tmp_path, text, needle):
    path = tmp_path / "p.toml"
    path.write_text(text)
    with pytest.raises(SteerpatchError, match=needle) as info:
        load_policy(path)
    assert info.value.exit_code == 2


def test_missing_policy_file_is_a_clear_error(tmp_path):
    with pytest.raises(SteerpatchError, match="does not exist"):
        load_policy(tmp_path / "nope.toml")
