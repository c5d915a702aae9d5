"""`NAME@SELECTOR`: one parser for patch refs, registry refs, the compile CLI and the server fleet."""

from __future__ import annotations

import pytest

from steerpatch.errors import RegistryError
from steerpatch.refs import alias_of, is_registry_ref, parse_ref, ref_of_model_uri, split_ref


def test_the_selector_follows_the_last_at():
    assert split_ref("concept-clip.water@production") == ("concept-clip.water", "production")
    assert split_ref("a@b@2") == ("a@b", "2")
    assert split_ref("@1.0.0") == ("", "1.0.0") and split_ref("water@") == ("water", "")
    assert split_ref("water.json") is None


@pytest.mark.parametrize("bad", ["water", "@production", "water@", ""])
def test_a_registry_ref_needs_both_sides(bad):
    with pytest.raises(RegistryError, match=f"'{bad}' is not a registry reference; use NAME@VERSION or NAME@ALIAS"):
        parse_ref(bad)


def test_aliases_versions_and_files(tmp_path):
    assert [alias_of(r) for r in ("m@production", "m@3", "m@latest", "m@", "m")] == ["production", None, None, None, None]
    existing = tmp_path / "graph@v1.onnx"
    existing.write_bytes(b"")
    assert is_registry_ref("m@production") and not is_registry_ref(str(existing)) and not is_registry_ref("a b@c")


def test_every_caller_reads_a_ref_the_same_way(tmp_path):
    from pydantic_core import PydanticCustomError

    from steerpatch.cli.compile import _alias_of
    from steerpatch.patch.format import check_ref
    from steerpatch.registry import parse_ref as registry_parse_ref
    from steerpatch.serve.fleet import _model_name

    assert registry_parse_ref("concept-clip.water@production") == ("concept-clip.water", "production")
    assert _model_name("concept-clip.water@production") == "concept-clip.water"
    assert _model_name(str(tmp_path / "steered.onnx")) == "steered"
    assert (_alias_of("concept-clip.water@production"), _alias_of("concept-clip.water@2")) == ("production", None)
    assert check_ref("water-shortcut@1.0.0") == "water-shortcut@1.0.0"
    with pytest.raises(PydanticCustomError, match="is not a patch reference"):
        check_ref("water-shortcut")
    with pytest.raises(PydanticCustomError, match="not a semantic version"):
        check_ref("water-shortcut@production")  # a patch's own ref names a version, never an alias


def test_mlflow_model_uris_name_refs():
    assert ref_of_model_uri("models:/concept-clip.water/3") == "concept-clip.water@3"
    assert ref_of_model_uri("models:/concept-clip.water@production/") == "concept-clip.water@production"
    assert ref_of_model_uri("models:/concept-clip.water") is None and ref_of_model_uri("water@1") is None
