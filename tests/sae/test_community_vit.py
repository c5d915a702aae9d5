"""Community SAEs on real random-init open_clip towers: steer, compile to ONNX, parity.

An SAE of each format sits at a middle block of ViT-B-16 (and one of ViT-L-14). The engine's
steered model must move the embedding, and the exported graph must reproduce it in ONNX Runtime
within the parity gate's 1e-4, measured with the gate's own `compare`. Parity runs on 2 images to stay
fast on CPU (the full `compile_patch` gate over 64 ViT-B-16 inputs takes ~10 minutes on one thread).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from steerpatch.compile import create_session
from steerpatch.compile.compiler import build_graph
from steerpatch.compile.export import export_graph, serialize
from steerpatch.compile.parity import compare, onnx_outputs, torch_reference
from steerpatch.models import encode_images, load_model
from steerpatch.patch import new_patch
from steerpatch.sae import load_sae
from tests.helpers.format_writers import (
    prisma_config,
    saelens_cfg,
    saev_header,
    weights,
    write_prisma,
    write_saelens,
    write_saev,
)

EDITS = ["1:scale:0", "5:clamp:3.0", "9:clamp_if_active:0.5", "12:add:2.0"]


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _write(kind: str, folder: Path, d_in: int, block: int) -> tuple[Path, dict]:
    """An SAE of `kind` over width d_in at `block`, written in its format's layout."""
    d_sae = 2 * d_in
    state = weights(d_in, d_sae, seed=5)
    if kind == "saev-5-topk":
        return write_saev(folder / "sae.pt", saev_header(5, "TopK", d_in, d_sae, top_k=32), state), {"block": block}
    if kind == "saev-1-relu":
        return write_saev(folder / "sae.pt", saev_header(1, "Relu", d_in, d_sae), state), {"block": block}
    if kind == "prisma-layer-norm":
        return write_prisma(folder, prisma_config(d_in=d_in, d_sae=d_sae, layer=block), state), {}
    if kind == "prisma-gated":
        gated = weights(d_in, d_sae, seed=5, gated=True)
        cfg = prisma_config("gated", d_in=d_in, d_sae=d_sae, layer=block + 1, subtype="hook_resid_pre")
        return write_prisma(folder, cfg, gated), {}
    if kind == "saelens-expected-average":
        cfg = saelens_cfg(d_in=d_in, d_sae=d_sae, normalize="expected_average_only_in",
                          hook=f"blocks.{block}.hook_resid_post")
        return write_saelens(folder, cfg, state, scaler=0.05), {}
    raise ValueError(kind)


def _steer_and_compile(model, kind: str, folder: Path, block: int, tokens: str) -> None:
    path, overrides = _write(kind, folder, model.model.visual.transformer.width, block)
    sae = load_sae(path, **overrides)
    assert sae.hook.block == block
    patch = new_patch(f"{kind}-fix", model, sae, EDITS, rationale="test", author="tests", tokens=tokens)
    pixels = torch.randn(2, 3, model.image_size, model.image_size, generator=torch.Generator().manual_seed(3))
    steered = torch_reference(model, patch, sae, None, pixels)
    with torch.no_grad():
        plain = encode_images(model, pixels).numpy()
    assert np.abs(steered["embedding"] - plain).max() > 1e-3  # the patch really steers
    module, mode, _, _ = build_graph(model, patch, sae, None)
    assert mode == sae.spec.compile_mode[0]
    session = create_session(serialize(export_graph(module, model.image_size, module.output_names)))
    parity = compare(steered, onnx_outputs(session, pixels), tolerance=1e-4, inputs="random")
    assert parity.passed, parity


@pytest.fixture(scope="module")
def vitb16():
    return load_model("ViT-B-16")


@pytest.mark.parametrize(("kind", "tokens"), [
    ("saev-5-topk", "patches"),
    ("saev-1-relu", "cls"),
    ("prisma-gated", "all"),
    ("saelens-expected-average", "patches"),
    ("prisma-layer-norm", "patches"),
])
def test_vit_b16_each_format_steers_and_compiles(vitb16, kind, tokens, tmp_path):
    _steer_and_compile(vitb16, kind, tmp_path, block=6, tokens=tokens)


def test_vit_l14_prisma_layer_norm_steers_and_compiles(tmp_path):
    model = load_model("ViT-L-14")
    _steer_and_compile(model, "prisma-layer-norm", tmp_path, block=12, tokens="cls")
