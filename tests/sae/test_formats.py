"""SAE files: SAELens folders written by hand, saev files, plain safetensors, round trips, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from steerpatch.errors import OutputError, SAEError
from steerpatch.sae import SAE_REGISTRY, load_sae, save_sae


def _write_saelens(folder: Path, cfg: dict, tensors: dict[str, torch.Tensor]) -> Path:
    folder.mkdir(parents=True)
    (folder / "cfg.json").write_text(json.dumps(cfg))
    save_file(tensors, str(folder / "sae_weights.safetensors"))
    return folder


def _tensors(d_in: int = 4, d_sae: int = 6, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "W_enc": torch.randn(d_in, d_sae, generator=g),
        "b_enc": torch.randn(d_sae, generator=g),
        "W_dec": torch.randn(d_sae, d_in, generator=g),
        "b_dec": torch.randn(d_in, generator=g),
    }


@pytest.mark.parametrize("architecture", sorted(SAE_REGISTRY))
def test_round_trip_every_architecture(architecture, make_sae, tmp_path):
    sae = make_sae(architecture)
    save_sae(sae, tmp_path / "sae", extra_files={"README.md": "# card\n"})
    back = load_sae(tmp_path / "sae")
    assert back.architecture == architecture
    assert back.fingerprint == sae.fingerprint
    assert back.cfg.metadata == sae.cfg.metadata
    assert back.hook == sae.hook and back.hook.block == 1
    for name, tensor in sae.state_tensors().items():
        assert torch.equal(back.state_tensors()[name], tensor), name
    x = torch.randn(5, sae.d_in)
    assert torch.equal(back.encode(x), sae.encode(x))
    assert (tmp_path / "sae" / "README.md").read_text() == "# card\n"
    cfg = json.loads((tmp_path / "sae" / "cfg.json").read_text())
    assert cfg["architecture"] == architecture and cfg["d_in"] == sae.d_in and cfg["d_sae"] == sae.d_sae


def test_save_refuses_non_empty_folder(make_sae, tmp_path):
    (tmp_path / "sae").mkdir()
    (tmp_path / "sae" / "x").write_text("keep me")
    with pytest.raises(OutputError, match="not empty"):
        save_sae(make_sae("standard"), tmp_path / "sae")
    assert (tmp_path / "sae" / "x").read_text() == "keep me"


def test_hand_written_saelens_v6_folder_loads(tmp_path):
    cfg = {
        "architecture": "jumprelu",
        "d_in": 4,
        "d_sae": 6,
        "dtype": "float32",
        "device": "cuda",
        "apply_b_dec_to_input": False,
        "normalize_activations": "none",
        "reshape_activations": "none",
        "metadata": {
            "model_name": "ViT-B-32",
            "hook_name": "visual.transformer.resblocks.3",
            "sae_lens_version": "6.5.0",
            "token_scope": "cls",
        },
    }
    tensors = {**_tensors(), "threshold": torch.full((6,), 0.25)}
    sae = load_sae(_write_saelens(tmp_path / "f", cfg, tensors))
    assert (sae.architecture, sae.d_in, sae.d_sae) == ("jumprelu", 4, 6)
    assert sae.hook.block == 3 and sae.hook.tokens == "cls"
    assert sae.cfg.metadata["model_name"] == "ViT-B-32"
    assert sae.cfg.apply_b_dec_to_input is False
    x = torch.randn(3, 4)
    pre = x @ tensors["W_enc"] + tensors["b_enc"]
    assert torch.allclose(sae.encode(x), pre.relu() * (pre > 0.25))
    assert sae.location == str(tmp_path / "f")


def test_legacy_saelens_topk_config_loads(tmp_path):
    cfg = {
        "d_in": 4,
        "d_sae": 6,
        "dtype": "torch.float16",
        "activation_fn_str": "topk",
        "activation_fn_kwargs": {"k": 2},
        "hook_name": "visual.transformer.resblocks.0",
        "hook_layer": 0,
        "model_name": "m",
        "context_size": 50,
        "apply_b_dec_to_input": True,
    }
    tensors = {k: v.half() for k, v in _tensors().items()}
    sae = load_sae(_write_saelens(tmp_path / "f", cfg, tensors) / "cfg.json")
    assert sae.architecture == "topk" and sae.cfg.k == 2 and sae.cfg.dtype == "float16"
    assert sae.cfg.metadata["context_size"] == 50 and sae.hook.block == 0
    assert int((sae.encode(torch.randn(3, 4)) > 0).sum(-1).max()) <= 2


def _write_saev(path: Path, header: dict, state: dict) -> Path:
    with open(path, "wb") as handle:
        handle.write((json.dumps(header) + "\n").encode())
        torch.save(state, handle)
    return path


class _Evil:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_saev_refuses_arbitrary_pickles(tmp_path, capsys):
    path = tmp_path / "sae.pt"
    with open(path, "wb") as handle:
        handle.write(b'{"schema": 1, "cls": "Relu", "cfg": {}}\n')
        torch.save({"W_enc": _Evil()}, handle)
    with pytest.raises(SAEError, match="weights-only"):
        load_sae(path)
    assert "must never run" not in capsys.readouterr().out


def test_plain_safetensors_needs_arch(tmp_path):
    path = tmp_path / "w.safetensors"
    save_file(_tensors(), str(path))
    with pytest.raises(SAEError, match="--arch"):
        load_sae(path)
    sae = load_sae(path, architecture="topk", k=3, block=2)
    assert (sae.architecture, sae.cfg.k, sae.hook.block, sae.hook.tokens) == ("topk", 3, 2, "all")
    with pytest.raises(SAEError, match="needs 'k'"):
        load_sae(path, architecture="topk")
    with pytest.raises(SAEError, match="lacks tensor"):
        load_sae(path, architecture="jumprelu")


BASE_CFG = {
    "architecture": "standard",
    "d_in": 4,
    "d_sae": 6,
    "dtype": "float32",
    "apply_b_dec_to_input": True,
    "normalize_activations": "none",
    "reshape_activations": "none",
    "metadata": {},
}


@pytest.mark.parametrize(
    ("cfg_change", "tensor_change", "message"),
    [
        (
            {"architecture": "sparsemax"},
            {},
            "unknown SAE architecture 'sparsemax'; known architectures: gated, jumprelu, standard, topk, topk_raw",
        ),
        ({"architecture": "gated"}, {}, "lacks tensor(s) b_gate, r_mag, b_mag needed by architecture 'gated'"),
        ({"d_sae": 7}, {}, "W_enc has shape (4, 6) but cfg d_in=4, d_sae=7"),
        ({}, {"b_dec": None}, "lacks tensor(s) b_dec"),
        ({}, {"W_dec": torch.full((6, 4), float("nan"))}, "W_dec holds 24 NaN or inf"),
        ({}, {"b_enc": torch.tensor([1.0, float("inf"), 0, 0, 0, 0])}, "b_enc holds 1 NaN or inf"),
        (
            {"normalize_activations": "batch_norm"},
            {},
            "normalize_activations='batch_norm' is not supported; use one of constant_norm_rescale, "
            "expected_average_only_in, layer_norm, none",
        ),
        (
            {"metadata": {"hook_name": "blocks.3.hook_mlp_out"}},
            {},
            "hook 'blocks.3.hook_mlp_out' is not the residual stream between blocks",
        ),
        (
            {"metadata": {"hook_name": "blocks.0.hook_resid_pre"}},
            {},
            "is the embedding output before block 0",
        ),
        ({"reshape_activations": "hook_z"}, {}, "reshape_activations='hook_z' is not supported"),
        ({"architecture": "topk", "k": 99}, {}, "k=99 must be between 1 and d_sae=6"),
        ({"d_in": "four"}, {}, "field 'd_in' = 'four' is invalid"),
        ({}, {"extra": torch.zeros(3)}, "has tensor(s) extra that architecture 'standard' does not use"),
        (
            {"metadata": {"block": 2, "hook_name": "visual.transformer.resblocks.3"}},
            {},
            "disagrees with hook_name",
        ),
        ({"metadata": {"block": 1, "token_scope": "middle"}}, {}, "token scope 'middle' is not supported"),
    ],
)
def test_bad_saelens_folders(tmp_path, cfg_change, tensor_change, message):
    tensors = _tensors()
    for name, value in tensor_change.items():
        if value is None:
            tensors.pop(name)
        else:
            tensors[name] = value
    folder = _write_saelens(tmp_path / "bad", {**BASE_CFG, **cfg_change}, tensors)
    with pytest.raises(SAEError) as info:
        load_sae(folder)
    text = str(info.value)
    assert message in text
    assert "\n" not in text


def test_pickle_where_safetensors_expected(tmp_path):
    folder = tmp_path / "f"
    folder.mkdir()
    (folder / "cfg.json").write_text(json.dumps(BASE_CFG))
    torch.save(_tensors(), folder / "sae_weights.safetensors")
    with pytest.raises(SAEError, match="is not a safetensors file \\(it is a torch zip/pickle archive\\)"):
        load_sae(folder)


def test_unrecognised_paths(tmp_path):
    with pytest.raises(SAEError, match="does not exist"):
        load_sae(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(SAEError, match="neither cfg.json"):
        load_sae(tmp_path / "empty")
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"\x80\x04junk")
    with pytest.raises(SAEError, match="Python pickle"):
        load_sae(junk)
    bad_json = tmp_path / "badjson"
    bad_json.mkdir()
    (bad_json / "cfg.json").write_text("{not json")
    with pytest.raises(SAEError, match="not valid JSON"):
        load_sae(bad_json)
