"""One rule finds a patch's SAE: the steering engine, compile and the registry bundle agree on it."""

from __future__ import annotations

from pathlib import Path

import pytest

from steerpatch.errors import PatchError, SAEError

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def shipped():
    """The vetted patch: it names the embedded SAE by the relative path `steerpatch/zoo/concept-clip-sae`."""
    from steerpatch.patch import load_patch

    return load_patch(ROOT / "registry" / "patches" / "water-shortcut.json")


@pytest.fixture(scope="module")
def look_alike(default_sae, tmp_path_factory) -> Path:
    """Another SAE of the same shape (shifted decoder bias), saved as a folder."""
    from steerpatch.sae import SAE, save_sae

    tensors = default_sae.state_tensors()
    tensors["b_dec"] = tensors["b_dec"] + 0.5
    other = SAE(default_sae.cfg, tensors, location="look-alike")
    assert other.fingerprint != default_sae.fingerprint
    return save_sae(other, tmp_path_factory.mktemp("saes") / "look-alike")


def _found(patch, concept_model, *, stored=None, path=None) -> dict[str, str]:
    """The fingerprint of the SAE each caller uses for `patch` when none is passed as an object."""
    from steerpatch.compile.compiler import find_sae
    from steerpatch.registry.bundle import _resolve_sae
    from steerpatch.steer import steer

    found = {"compile": find_sae(patch, stored).fingerprint, "bundle": _resolve_sae(patch, path).fingerprint}
    with steer(concept_model, patch) as session:
        found["steer"] = session.saes[0].fingerprint
    return found


def test_a_patch_naming_the_embedded_sae_finds_it_from_any_folder(shipped, concept_model, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the recorded relative location does not exist from here
    fingerprint = shipped.sae.fingerprint
    assert _found(shipped, concept_model) == {"compile": fingerprint, "bundle": fingerprint, "steer": fingerprint}


def test_another_sae_at_the_recorded_location_is_passed_over_by_every_caller(shipped, concept_model, look_alike):
    moved = shipped.with_changes(sae={**shipped.sae.model_dump(), "location": str(look_alike)})
    fingerprint = shipped.sae.fingerprint  # the shipped default has it; the look-alike at the location does not
    assert _found(moved, concept_model) == {"compile": fingerprint, "bundle": fingerprint, "steer": fingerprint}


def test_the_stored_copy_comes_first_then_the_explicit_path_is_taken_as_given(shipped, look_alike, tmp_path):
    from steerpatch.registry.bundle import _resolve_sae
    from steerpatch.sae import load_sae
    from steerpatch.steer import load_patch_sae

    other = load_sae(look_alike).fingerprint
    made_on_it = shipped.with_changes(sae={**shipped.sae.model_dump(), "location": str(tmp_path / "gone"),
                                           "fingerprint": other})  # fmt: skip
    assert load_patch_sae(made_on_it, stored=look_alike).fingerprint == other
    with pytest.raises(PatchError, match="does not exist"):
        load_patch_sae(made_on_it)  # without the stored copy nothing has its fingerprint
    # an explicit path is the caller's choice: steering checks it later (with --allow-fingerprint-mismatch) ...
    assert load_patch_sae(shipped, path=look_alike).fingerprint == other
    # ... and a bundle, which must carry the patch's own SAE, refuses it
    with pytest.raises(SAEError, match=f"has fingerprint {other} but patch {shipped.ref} was made for"):
        _resolve_sae(shipped, look_alike)


def test_every_caller_refuses_an_sae_it_cannot_find_with_the_same_message(shipped, concept_model, look_alike):
    lost = shipped.with_changes(sae={**shipped.sae.model_dump(), "location": str(look_alike),
                                     "fingerprint": "ab" * 32})  # fmt: skip
    messages = set()
    for caller in ("compile", "bundle", "steer"):
        with pytest.raises(PatchError) as info:
            _only(caller, lost, concept_model)
        messages.add(str(info.value))
    [message] = messages
    assert f"SAE fingerprint mismatch: it names the SAE '{look_alike}'" in message
    assert "ab" * 32 in message and "--sae PATH" in message and "does not exist" not in message


def _only(caller: str, patch, concept_model) -> None:
    from steerpatch.compile.compiler import find_sae
    from steerpatch.registry.bundle import _resolve_sae
    from steerpatch.steer import steer

    if caller == "compile":
        find_sae(patch, None)
    elif caller == "bundle":
        _resolve_sae(patch, None)
    else:
        with steer(concept_model, patch):
            pass
