"""Plugin fixtures: a small real open_clip CLIP (concept-clip's architecture, seeded random weights),
an SAE at its block 2, a patch and its validation report."""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

CLASSES = ["circle", "square", "star"]


@dataclass
class PatchFiles:
    patch: Path
    report: Path
    patch_obj: object
    sae_dir: Path


@pytest.fixture(scope="session")
def small_clip(tmp_path_factory):
    """concept-clip's architecture with seeded random weights, loaded through `local-dir:`."""
    import json

    import open_clip
    import torch
    from safetensors.torch import save_file

    from steerpatch.models import load_model
    from steerpatch.models.loading import concept_clip_config_path

    model_dir = tmp_path_factory.mktemp("small-clip")
    model_cfg = json.loads(concept_clip_config_path().read_text())
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(3)
        model = open_clip.CLIP(**model_cfg)
    save_file(model.state_dict(), model_dir / "open_clip_model.safetensors")
    config = {"model_cfg": model_cfg, "preprocess_cfg": {"size": model_cfg["vision_cfg"]["image_size"]}}
    (model_dir / "open_clip_config.json").write_text(json.dumps(config))
    return load_model(f"local-dir:{model_dir}")


@pytest.fixture(scope="session")
def vit_patch(tmp_path_factory, small_clip) -> PatchFiles:
    import torch

    from steerpatch.io import atomic_write_text
    from steerpatch.patch import Edit, HookRef, ModelRef, Patch, SAERef, save_patch
    from steerpatch.sae import SAE, SAEConfig, load_sae, save_sae
    from steerpatch.validate.metrics import ImageResults
    from steerpatch.validate.policy import Policy
    from steerpatch.validate.report import build_report

    root = tmp_path_factory.mktemp("plugin")
    gen = torch.Generator().manual_seed(0)
    d_in, d_sae = small_clip.model.visual.transformer.width, 32
    cfg = SAEConfig(
        d_in=d_in, d_sae=d_sae, architecture="standard", metadata={"block": 2, "token_scope": "all"}
    )
    tensors = {
        "W_enc": torch.randn(d_in, d_sae, generator=gen) * 0.05,
        "b_enc": torch.zeros(d_sae),
        "W_dec": torch.randn(d_sae, d_in, generator=gen),
        "b_dec": torch.zeros(d_in),
    }
    sae_dir = save_sae(SAE(cfg, tensors), root / "sae")
    sae = load_sae(sae_dir)
    patch = Patch.create(
        name="push-latent",
        version="1.0.0",
        rationale="add a latent direction strongly, so the output visibly moves",
        author="ada",
        model=ModelRef(id=small_clip.name, fingerprint=small_clip.fingerprint),
        sae=SAERef(location=str(sae_dir), fingerprint=sae.fingerprint, architecture="standard"),
        hook=HookRef(block=2),
        tokens="all",
        edits=[Edit(latent=5, op="add", value=4.0)],
    )
    patch_path = save_patch(patch, root / "patch.json")
    n = 30
    labels = np.arange(n) % 3
    probs = np.full((n, 3), 1 / 3)
    results = ImageResults(
        ids=[f"{i}.png" for i in range(n)],
        labels=labels,
        pred_before=labels,
        pred_after=labels,
        probs_before=probs,
        probs_after=probs,
        cos=np.full(n, 0.99),
        classes=CLASSES,
    )
    hashes = {
        "patch": patch.content_hash,
        "model": small_clip.fingerprint,
        "sae": sae.fingerprint,
        "dataset": hashlib.sha256(b"d").hexdigest(),
    }
    report = build_report(results, patch_ref=patch.ref, hashes=hashes, policy=Policy())
    report_path = atomic_write_text(root / "report.json", report.model_dump_json(indent=2))
    atomic_write_text(root / "report.html", "<html><body>report</body></html>")
    return PatchFiles(patch_path, report_path, patch, sae_dir)


def png_bytes(seed: int, size: int = 64) -> bytes:
    from PIL import Image

    rng = np.random.default_rng(seed)
    image = Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="session")
def make_png():
    """A function seed -> PNG bytes of a random 64x64 RGB image."""
    return png_bytes


@pytest.fixture(scope="session")
def classes() -> list[str]:
    return list(CLASSES)
