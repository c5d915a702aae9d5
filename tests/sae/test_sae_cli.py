"""`steerpatch sae info|train|stats` through click's CliRunner."""

from __future__ import annotations

import json

import torch
from safetensors.torch import save_file

from steerpatch.cli.main import cli
from steerpatch.cli.sae import ARCHITECTURES, READ_ARCHITECTURES
from steerpatch.sae import SAE_REGISTRY, save_sae


def test_cli_choices_follow_the_registry():
    from steerpatch.sae.architectures import trainable_architectures

    assert sorted(READ_ARCHITECTURES) == sorted(SAE_REGISTRY)
    assert sorted(ARCHITECTURES) == list(trainable_architectures())


def test_info_text_and_json(runner, make_sae, tmp_path):
    sae = make_sae("topk")
    save_sae(sae, tmp_path / "s")
    result = runner.invoke(cli, ["sae", "info", str(tmp_path / "s")])
    assert result.exit_code == 0, result.output
    assert "architecture: topk (k=3)" in result.output
    assert "block 1, tokens all" in result.output
    assert sae.fingerprint in result.output
    assert "quality: not recorded" in result.output
    result = runner.invoke(cli, ["sae", "info", str(tmp_path / "s"), "--json"])
    data = json.loads(result.output)
    assert data["architecture"] == "topk" and data["d_in"] == 6 and data["d_sae"] == 10
    assert data["hook"] == {"block": 1, "tokens": "all", "hook_name": "visual.transformer.resblocks.1"}
    assert data["fingerprint"] == sae.fingerprint and data["quality"] is None


def test_info_plain_safetensors_with_arch(runner, make_sae, tmp_path):
    sae = make_sae("standard")
    save_file(sae.state_tensors(), str(tmp_path / "w.safetensors"))
    result = runner.invoke(cli, ["sae", "info", str(tmp_path / "w.safetensors")])
    assert result.exit_code == 2
    assert result.output.startswith("Error: ") and "pass --arch" in result.output
    result = runner.invoke(
        cli, ["sae", "info", str(tmp_path / "w.safetensors"), "--arch", "standard", "--json"]
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["format"] == "safetensors" and data["hook"] is None


def test_info_refuses_a_pickle(runner, tmp_path):
    torch.save({"W_enc": torch.zeros(2, 2)}, tmp_path / "w.safetensors")
    result = runner.invoke(cli, ["sae", "info", str(tmp_path / "w.safetensors"), "--arch", "standard"])
    assert result.exit_code == 2
    assert "torch zip/pickle archive" in result.output
    assert "Traceback" not in result.output
