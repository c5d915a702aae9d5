"""Loading models by spec: shipped default, random-init architectures, checkpoints, prefixes, errors."""

from __future__ import annotations

import open_clip
import pytest
import torch
from safetensors.torch import save_file

from steerpatch.errors import ModelError
from steerpatch.models import CONCEPT_CLIP, load_model, resblocks, width_at_block, zoo_dir
from steerpatch.models.loading import read_checkpoint


def test_concept_clip_is_a_real_open_clip_model_registered_by_config(concept_model):
    assert isinstance(concept_model.model, open_clip.CLIP)
    assert CONCEPT_CLIP in open_clip.list_models()
    assert concept_model.image_size == 64 and not concept_model.model.training
    assert len(resblocks(concept_model.model)) == 4 and width_at_block(concept_model.model, 2) == 64
    header = read_checkpoint(zoo_dir() / "concept-clip.safetensors")
    assert set(header) == set(concept_model.model.state_dict())
    tokens = concept_model.tokenizer(["a photo of a star"])
    assert tokens.shape == (1, 24)


def test_shipped_weights_are_small():
    weights = zoo_dir() / "concept-clip.safetensors"
    assert weights.stat().st_size <= 25 * 1024 * 1024


def test_random_init_vit_b_32_is_deterministic(vitb32):
    assert isinstance(vitb32.model, open_clip.CLIP)
    assert vitb32.image_size == 224 and len(resblocks(vitb32.model)) == 12
    assert width_at_block(vitb32.model, 5) == 768
    again = load_model("ViT-B-32")
    assert again.fingerprint == vitb32.fingerprint
    pixels = torch.zeros(1, 3, 224, 224)
    with torch.no_grad():
        assert vitb32.model.encode_image(pixels).shape == (1, 512)


def test_random_init_does_not_disturb_the_callers_rng():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    load_model("ViT-S-32")
    assert torch.equal(torch.rand(3), expected)


def test_checkpoint_path_round_trip(tmp_path, concept_model):
    state = {k: v.clone() for k, v in concept_model.model.state_dict().items()}
    st = tmp_path / "copy.safetensors"
    save_file(state, str(st))
    pt = tmp_path / "copy.pt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, pt)
    for path in (st, pt):
        loaded = load_model(CONCEPT_CLIP, pretrained=str(path))
        assert loaded.fingerprint == concept_model.fingerprint


def test_unknown_name_lists_close_names():
    with pytest.raises(ModelError) as info:
        load_model("ViT-B-23")
    message = str(info.value)
    assert "'ViT-B-23'" in message and "ViT-B-32" in message and "\n" not in message
    with pytest.raises(ModelError, match="concept-clip"):
        load_model("concept-clp")


@pytest.mark.parametrize("content", [b"", b"garbage bytes, not a checkpoint"])
@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_corrupt_weight_file_is_one_line(tmp_path, content, suffix):
    bad = tmp_path / f"bad{suffix}"
    bad.write_bytes(content)
    with pytest.raises(ModelError) as info:
        load_model(CONCEPT_CLIP, pretrained=str(bad))
    assert str(bad) in str(info.value) and "\n" not in str(info.value)


def test_missing_and_mismatched_weights(tmp_path):
    with pytest.raises(ModelError, match="does not exist"):
        load_model(CONCEPT_CLIP, pretrained=str(tmp_path / "nope.safetensors"))
    wrong = tmp_path / "wrong.safetensors"
    save_file({"visual.proj": torch.zeros(3, 3)}, str(wrong))
    with pytest.raises(ModelError, match="do not fit"):
        load_model(CONCEPT_CLIP, pretrained=str(wrong))
    with pytest.raises(ModelError, match="neither a checkpoint file nor a tag"):
        load_model("ViT-B-32", pretrained="not-a-tag")


def test_uncached_pretrained_tag_names_what_was_looked_for(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    with pytest.raises(ModelError) as info:
        load_model("ViT-B-32", pretrained="openai")
    message = str(info.value)
    assert "ViT-B-32" in message and "openai" in message and "checkpoint" in message and "\n" not in message


def test_hf_hub_offline_and_local_dir_errors(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    with pytest.raises(ModelError) as info:
        load_model("hf-hub:someone/not-cached-clip")
    assert "someone/not-cached-clip" in str(info.value) and str(tmp_path / "cache") in str(info.value)
    with pytest.raises(ModelError, match="open_clip_config.json"):
        load_model(f"local-dir:{tmp_path}")


def test_local_dir_loads_an_exported_model(tmp_path, concept_model):
    import json

    config = json.loads((zoo_dir() / "concept-clip.json").read_text())
    (tmp_path / "open_clip_config.json").write_text(json.dumps({"model_cfg": config, "preprocess_cfg": {}}))
    save_file(dict(concept_model.model.state_dict()), str(tmp_path / "open_clip_model.safetensors"))
    loaded = load_model(f"local-dir:{tmp_path}")
    assert isinstance(loaded.model, open_clip.CLIP)
    assert loaded.fingerprint == concept_model.fingerprint and loaded.image_size == 64
