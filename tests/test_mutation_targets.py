"""`nox -s mutation`'s module table and tests/MUTANTS.md stay in step with the repository."""

from __future__ import annotations

import re
from pathlib import Path

from tests.mutation import EXPLAINED, ROOT, TARGETS, _pyproject, explained


def test_every_target_module_and_test_file_exists():
    for name, target in TARGETS.items():
        assert (ROOT / target.module).is_file(), name
        missing = [t for t in target.tests if not (ROOT / t).is_file()]
        assert not missing, (name, missing)


def test_every_explained_section_names_a_target_module():
    sections = re.findall(r"^## (\S+)$", EXPLAINED.read_text(encoding="utf-8"), flags=re.M)
    assert sections and set(sections) <= {t.module for t in TARGETS.values()}
    assert "x_mcnemar_exact_p__mutmut_4" in explained("steerpatch/validate/metrics.py")
    assert "x_mcnemar_exact_p__mutmut_4" not in explained("steerpatch/validate/policy.py")


def test_the_scratch_config_mutates_one_module_against_its_tests():
    import tomllib

    target = TARGETS["policy"]
    config = tomllib.loads(_pyproject(target, list(target.tests)))["tool"]["mutmut"]
    assert config["only_mutate"] == ["steerpatch/validate/policy.py"]
    assert config["pytest_add_cli_args_test_selection"] == list(target.tests)
    assert config["source_paths"] == ["steerpatch"] and Path(ROOT / "registry").is_dir()
