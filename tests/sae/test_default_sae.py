"""The SAE shipped for concept-clip: format, size, recorded quality, statistics, fit to the model."""

from __future__ import annotations

from steerpatch.sae import check_sae_fits, default_sae_path, load_latent_stats, load_quality


def test_shipped_sae_is_small_and_complete(default_sae):
    folder = default_sae_path()
    size = sum(p.stat().st_size for p in folder.iterdir())
    assert size <= 10 * 1024 * 1024
    for name in (
        "cfg.json",
        "sae_weights.safetensors",
        "README.md",
        "quality.json",
        "latent_stats.json",
        "latent_stats.safetensors",
    ):
        assert (folder / name).is_file(), name
    assert default_sae.architecture in ("standard", "jumprelu")
    hook = default_sae.require_hook()
    assert hook.tokens == "all"
    assert 8 * default_sae.d_in <= default_sae.d_sae <= 16 * default_sae.d_in


def test_shipped_sae_quality_bounds(default_sae):
    quality = load_quality(default_sae_path())
    assert quality is not None
    assert quality.fvu <= 0.10
    assert quality.dead_fraction <= 0.10
    assert quality.accuracy_drop_points is not None and quality.accuracy_drop_points <= 3.0


def test_shipped_sae_fits_the_shipped_model(default_sae, concept_model):
    check_sae_fits(default_sae, concept_model)
    assert default_sae.cfg.metadata["model_fingerprint"] == concept_model.fingerprint


def test_shipped_latent_stats_belong_to_the_shipped_sae(default_sae):
    stats = load_latent_stats(default_sae_path(), sae=default_sae)
    assert stats.firing_rate.shape == (default_sae.d_sae,)
    assert stats.n_images > 0 and len(stats.firing_rate_by_class) >= 6
    assert any(name.startswith("shortcut=") for name in stats.firing_rate_by_group)
