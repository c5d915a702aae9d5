"""`steerpatch sae info` on community SAEs, and hook names mapped to open_clip blocks."""

from __future__ import annotations

import json

import pytest

from steerpatch.cli.main import cli
from steerpatch.errors import SAEError
from steerpatch.sae.hooks import block_for_hook
from tests.helpers.format_writers import GOLDEN


def _info(runner, *args: str) -> dict:
    result = runner.invoke(cli, ["sae", "info", *args, "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def test_info_reports_saev_conventions_and_the_hook(runner):
    desc = _info(runner, str(GOLDEN / "saev-1a-topk.pt"), "--block", "7", "--tokens", "cls")
    assert desc["format"] == "saev" and desc["architecture"] == "topk_raw" and desc["k"] == 4
    assert (desc["d_in"], desc["d_sae"]) == (8, 16)
    conv = desc["conventions"]
    assert conv["b_dec_subtracted"] is True and conv["b_dec_convention"] == "detected from header schema 1"
    assert conv["normalization"] == "none" and conv["compile_mode"] == "exact"
    assert desc["hook"] == {"block": 7, "tokens": "cls", "hook_name": "visual.transformer.resblocks.7"}
    flipped = _info(runner, str(GOLDEN / "saev-1a-topk.pt"), "--no-apply-b-dec")
    assert flipped["conventions"]["b_dec_subtracted"] is False
    assert flipped["fingerprint"] != desc["fingerprint"]


def test_info_reports_prisma_normalisation_and_mapped_hook(runner):
    desc = _info(runner, str(GOLDEN / "prisma-topk-default-norm"))
    assert desc["format"] == "vit-prisma"
    assert desc["conventions"]["normalization"] == "layer_norm"
    assert desc["source_hook_name"] == "blocks.6.hook_resid_pre"
    assert desc["hook"]["block"] == 5 and desc["hook"]["tokens"] == "cls"
    gated = _info(runner, str(GOLDEN / "saelens-gated"))
    assert gated["architecture"] == "gated" and gated["conventions"]["compile_mode"] == "sparse"
    scaled = _info(runner, str(GOLDEN / "saelens-expected-average"))
    assert scaled["conventions"]["norm_scaling_factor"] == pytest.approx(0.37)


def test_info_refuses_the_b_dec_flag_for_formats_that_record_it(runner):
    result = runner.invoke(cli, ["sae", "info", str(GOLDEN / "saelens-gated"), "--apply-b-dec"])
    assert result.exit_code == 2
    assert "records its b_dec convention; --apply-b-dec/--no-apply-b-dec only applies to saev" in result.output


@pytest.mark.parametrize(("name", "block"), [
    ("blocks.8.hook_resid_post", 8),
    ("blocks.8.hook_resid_pre", 7),
    ("visual.transformer.resblocks.8", 8),
    ("transformer.resblocks.0", 0),
])
def test_residual_hooks_map_to_block_outputs(name, block):
    assert block_for_hook(name) == block


@pytest.mark.parametrize("name", [
    "blocks.8.hook_resid_mid", "blocks.8.attn.hook_z", "blocks.8.hook_mlp_out", "blocks.8.ln2.hook_normalized",
    "blocks.0.hook_resid_pre", "ln_final.hook_normalized",
])
def test_other_hooks_are_refused_with_what_is_supported(name):
    with pytest.raises(SAEError, match=r"supported: visual\.transformer\.resblocks\.L, blocks\.L\.hook_resid_post"):
        block_for_hook(name)
