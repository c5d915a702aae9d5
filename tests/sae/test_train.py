"""Training on the embedded default model, splicing, latent statistics and the model-fit check."""

from __future__ import annotations

import json

import pytest
import torch

from steerpatch.cli.main import cli
from steerpatch.errors import SAEError
from steerpatch.sae import (
    FitSettings,
    HookSpec,
    check_sae_fits,
    compute_latent_stats,
    load_latent_stats,
    load_sae,
    run_to_block,
    save_latent_stats,
    save_sae,
    splice,
    train_sae,
)

BLOCK = 2


@pytest.fixture(scope="module")
def dataset(test_world):
    from steerpatch.data import load_dataset

    return load_dataset(test_world)


@pytest.fixture(scope="module")
def trained(concept_model, dataset):
    settings = FitSettings(
        d_sae=256, steps=400, batch_size=1024, l1_coefficient=0.5, resample_every=100, resample_until=0.5
    )
    return train_sae(
        concept_model,
        dataset,
        block=BLOCK,
        tokens="all",
        settings=settings,
        max_images=300,
        eval_fraction=0.2,
        progress=False,
    )


@pytest.mark.slow
def test_training_reaches_the_fvu_bound(trained, concept_model):
    quality = trained.quality
    assert quality.fvu <= 0.10, quality
    assert quality.dead_fraction <= 0.10, quality
    assert quality.n_eval_images == 60 and quality.n_eval_tokens == 60 * 65
    assert quality.accuracy_clean is not None and quality.accuracy_drop_points <= 10, quality
    sae = trained.sae
    assert sae.hook == HookSpec(block=BLOCK, tokens="all")
    assert sae.cfg.metadata["model_fingerprint"] == concept_model.fingerprint
    assert sae.cfg.metadata["hook_name"] == f"visual.transformer.resblocks.{BLOCK}"


def test_splice_replaces_only_the_tokens_in_scope(trained, concept_model, dataset):
    from steerpatch.models import preprocess_batch

    pixels = preprocess_batch(concept_model, [dataset.load_image(i) for i in range(2)])
    clean = run_to_block(concept_model.model, pixels, BLOCK + 1)
    with splice(concept_model.model, trained.sae, BLOCK, "cls"):
        patched_cls = run_to_block(concept_model.model, pixels, BLOCK)
    x = run_to_block(concept_model.model, pixels, BLOCK)
    assert torch.allclose(patched_cls[:, 1:], x[:, 1:])
    assert torch.allclose(patched_cls[:, 0], trained.sae(x[:, 0]), atol=1e-5)
    with splice(concept_model.model, trained.sae, BLOCK, "all"):
        spliced = run_to_block(concept_model.model, pixels, BLOCK + 1)
    assert not torch.allclose(spliced, clean)
    assert torch.allclose(run_to_block(concept_model.model, pixels, BLOCK + 1), clean)  # hook removed


def test_latent_stats_round_trip(trained, concept_model, dataset, tmp_path):
    save_sae(trained.sae, tmp_path / "sae")
    sae = load_sae(tmp_path / "sae")
    small = dataset.subset([item.id for item in dataset.items[:96]])
    stats = compute_latent_stats(concept_model, sae, small, top_k=5, progress=False)
    save_latent_stats(stats, tmp_path / "sae", dataset_root=str(small.root))
    back = load_latent_stats(tmp_path / "sae", sae=sae)
    assert back.n_images == 96 and back.sae_fingerprint == sae.fingerprint
    assert torch.allclose(back.firing_rate, stats.firing_rate)
    assert set(back.firing_rate_by_class) == set(small.classes)
    assert "shortcut=aligned" in back.firing_rate_by_group or "background=water" in back.firing_rate_by_group
    # a class's rate times its size, summed over classes, is the overall count
    total = sum(back.firing_rate_by_class[c] * back.class_sizes[c] for c in back.class_sizes)
    assert torch.allclose(total, back.firing_rate * 96, atol=1e-4)
    busiest = int(back.firing_rate.argmax())
    ids = {item.id for item in small.items}
    assert 0 < len(back.top_images[busiest]) <= 5 and set(back.top_images[busiest]) <= ids
    assert torch.all(back.top_values[busiest][:-1] >= back.top_values[busiest][1:])
    assert back.top_images == stats.top_images
    other = trained.sae
    with torch.no_grad():
        other.b_dec[0] += 1.0
    with pytest.raises(SAEError, match="were computed for SAE"):
        load_latent_stats(tmp_path / "sae", sae=other)
    with torch.no_grad():
        other.b_dec[0] -= 1.0


def test_check_sae_fits(trained, concept_model, make_sae):
    from steerpatch.models import width_at_block

    width = width_at_block(concept_model.model, 1)
    check_sae_fits(trained.sae, concept_model)
    with pytest.raises(SAEError, match=f"SAE d_in=6 does not match the model's width {width} at block 1"):
        check_sae_fits(make_sae("standard"), concept_model)
    with pytest.raises(SAEError, match="block 9 does not exist"):
        check_sae_fits(make_sae("standard", d_in=width, block=9), concept_model)
    with pytest.raises(SAEError, match="records no hook block"):
        check_sae_fits(make_sae("standard", d_in=width, block=None), concept_model)


@pytest.mark.slow
def test_cli_train_stats_info(runner, test_world, tmp_path):
    out = tmp_path / "cli-sae"
    args = [
        "sae",
        "train",
        "--block",
        "1",
        "--arch",
        "topk",
        "--k",
        "8",
        "--latents",
        "128",
        "--tokens",
        "cls",
        "--data",
        str(test_world),
        "--steps",
        "40",
        "--batch-size",
        "64",
        "--max-images",
        "120",
        "--json",
        str(out),
    ]
    result = runner.invoke(cli, args)
    assert result.exit_code == 0, result.output
    data = json.loads(result.output[result.output.index("{") :])
    assert data["architecture"] == "topk" and data["d_sae"] == 128 and data["hook"]["tokens"] == "cls"
    assert data["quality"]["n_eval_images"] == 12 and data["quality"]["mean_l0"] <= 8
    assert (out / "cfg.json").exists() and (out / "README.md").exists() and (out / "quality.json").exists()
    assert (
        "steerpatch sae train --model concept-clip --block 1 --arch topk" in (out / "README.md").read_text()
    )
    result = runner.invoke(cli, ["sae", "stats", str(out), "--data", str(test_world), "--top-k", "3"])
    assert result.exit_code == 0, result.output
    assert (out / "latent_stats.safetensors").exists() and (out / "latent_stats.json").exists()
    result = runner.invoke(cli, ["sae", "info", str(out)])
    assert "quality: FVU" in result.output and "latent statistics: present" in result.output
    again = runner.invoke(cli, args)
    assert again.exit_code == 2 and "already exists and is not empty" in again.output


def test_cli_train_bad_input(runner, test_world, tmp_path):
    base = ["sae", "train", "--latents", "64", "--data", str(test_world), str(tmp_path / "o")]
    result = runner.invoke(cli, ["sae", "train", "--block", "17", *base[2:]])
    assert result.exit_code == 2 and "block 17 does not exist" in result.output
    result = runner.invoke(cli, ["sae", "train", "--block", "1", "--arch", "gated", *base[2:]])
    assert result.exit_code == 2 and "'gated' is not one of 'standard', 'topk', 'jumprelu'" in result.output
    result = runner.invoke(cli, ["sae", "train", "--block", "1", "--latents", "0", *base[4:]])
    assert result.exit_code == 2 and "--latents 0 must be a positive integer" in result.output
    assert not (tmp_path / "o").exists()
