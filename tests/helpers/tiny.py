"""Helpers shared by the compile, serve and registry tests: a tiny real open_clip CLIP (concept-clip's
architecture, seeded random weights), random SAEs of every registered architecture, and patches."""

from __future__ import annotations

from pathlib import Path

from tests.helpers.steer import architectures

__all__ = ["BLOCK", "CLASSES", "D_SAE", "EDITS", "architectures", "fresh_store", "make_patch", "random_sae", "tiny_model"]

CLASSES = ["circle", "square", "star"]
D_SAE = 300  # no dimension of the tiny model has this size, so its tensors are recognisable
BLOCK = 2
EDITS = ["3:scale:0", "7:clamp:2.0", "11:clamp_if_active:0.5", "13:add:1.5", "17:scale:3"]


def tiny_model(folder: Path):
    """concept-clip's open_clip architecture with seeded random weights, as an open_clip `local-dir:`."""
    import json

    import open_clip
    import torch
    from safetensors.torch import save_file

    from steerpatch.models import load_model
    from steerpatch.models.loading import concept_clip_config_path

    model_dir = folder / "tiny-clip"
    if not model_dir.is_dir():
        model_dir.mkdir(parents=True)
        model_cfg = json.loads(concept_clip_config_path().read_text())
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(1)
            model = open_clip.CLIP(**model_cfg)
        save_file(model.state_dict(), model_dir / "open_clip_model.safetensors")
        config = {"model_cfg": model_cfg, "preprocess_cfg": {"size": model_cfg["vision_cfg"]["image_size"]}}
        (model_dir / "open_clip_config.json").write_text(json.dumps(config))
    return load_model(f"local-dir:{model_dir}")


def random_sae(architecture: str, d_in: int, folder: Path, *, seed: int = 0, **cfg):
    """A random SAE saved in SAELens format and loaded back (so it has a real location)."""
    import torch

    from steerpatch.sae import SAE, SAEConfig, load_sae, save_sae

    gen = torch.Generator().manual_seed(seed)
    from steerpatch.sae import get_architecture

    spec = get_architecture(architecture)
    if "k" in spec.required_cfg:
        cfg.setdefault("k", 16)
    config = SAEConfig(d_in=d_in, d_sae=D_SAE, architecture=architecture,
                       metadata={"block": BLOCK, "token_scope": "all"}, **cfg)
    tensors = {
        "W_enc": torch.randn(d_in, D_SAE, generator=gen) / d_in**0.5,
        "b_enc": torch.randn(D_SAE, generator=gen) * 0.1,
        "W_dec": torch.randn(D_SAE, d_in, generator=gen) / d_in**0.5 * 4,
        "b_dec": torch.randn(d_in, generator=gen) * 0.1,
    }
    if architecture == "jumprelu":
        tensors["threshold"] = torch.rand(D_SAE, generator=gen) * 0.1
    for name in spec.extra_tensors:  # gated: b_gate, r_mag, b_mag
        tensors.setdefault(name, torch.randn(D_SAE, generator=gen) * 0.1)
    path = folder / f"sae-{architecture}-{seed}"
    save_sae(SAE(config, tensors), path)
    return load_sae(path)


def make_patch(model, sae, edits=EDITS, **kw):
    from steerpatch.patch import new_patch

    kw.setdefault("rationale", "test")
    kw.setdefault("author", "tests")
    return new_patch(kw.pop("name", "tiny-fix"), model, sae, edits, **kw)


_TEMPLATE: dict[str, Path] = {}


def fresh_store(folder: Path) -> str:
    """A sqlite MLflow URI in `folder`, copied from a once-per-process migrated template.

    Creating MLflow's schema takes many seconds; copying a migrated database takes milliseconds.
    """
    import os
    import shutil
    import tempfile

    if "db" not in _TEMPLATE:
        from steerpatch.registry.store import client, resolve_store

        template = Path(tempfile.mkdtemp(prefix=f"steerpatch-template-{os.getpid()}-")) / "mlflow.db"
        client(resolve_store(f"sqlite:///{template}"))
        _TEMPLATE["db"] = template
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(_TEMPLATE["db"], folder / "mlflow.db")
    return f"sqlite:///{folder / 'mlflow.db'}"
