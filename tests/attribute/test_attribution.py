"""Attribution on the default model: gradients, exact ablations, heatmaps and the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from steerpatch.attribute import attribute, encode_prefix, latent_grid
from steerpatch.attribute.heatmap import OVERLAY_SIZE, SCALE_HEIGHT
from steerpatch.attribute.scores import margin
from steerpatch.cli.main import cli
from steerpatch.errors import SteerpatchError
from steerpatch.patch import new_patch
from steerpatch.steer import steer


@pytest.fixture(scope="module")
def image_path(test_world):
    return sorted(test_world.glob("*/*.png"))[0]


@pytest.fixture(scope="module")
def classes(test_world):
    return sorted(p.name for p in test_world.iterdir() if p.is_dir())


@pytest.fixture(scope="module")
def result(concept_model, attr_sae, image_path, classes, tmp_path_factory):
    out = tmp_path_factory.mktemp("heat")
    return attribute(concept_model, attr_sae, image_path, target=classes[0], against=classes[1], classes=classes,
                     top_n=5, out_dir=out)


def _margin_with(concept_model, attr_sae, image_path, classes, edits):
    from steerpatch.models import build_zero_shot_head, preprocess_batch

    head = build_zero_shot_head(concept_model, classes)
    pixels = preprocess_batch(concept_model, [Image.open(image_path).convert("RGB")])
    patch = new_patch("probe", concept_model, attr_sae, edits, rationale="t", author="t")
    with torch.no_grad(), steer(concept_model, patch, attr_sae):
        return float(margin(head.logits(concept_model.model.encode_image(pixels)), 0, 1)[0])


def test_ranking_is_by_score_and_the_margin_is_the_models(result, concept_model, attr_sae, image_path, classes):
    scores = [row.score for row in result.latents]
    assert scores == sorted(scores, reverse=True) and len(scores) == 5
    assert result.margin == pytest.approx(_margin_with(concept_model, attr_sae, image_path, classes, []), abs=1e-4)
    assert sum(result.probabilities.values()) == pytest.approx(1.0)


def test_ablation_effect_is_exact(result, concept_model, attr_sae, image_path, classes):
    for row in result.latents[:2]:
        ablated = _margin_with(concept_model, attr_sae, image_path, classes, [(row.latent, "scale", 0.0)])
        assert row.ablation_effect == pytest.approx(ablated - result.margin, abs=1e-4)


def test_score_is_the_first_order_effect_of_scaling_the_latent(result, concept_model, attr_sae, image_path, classes):
    row = result.latents[0]
    eps = 1e-2
    nudged = _margin_with(concept_model, attr_sae, image_path, classes, [(row.latent, "scale", 1 - eps)])
    assert (result.margin - nudged) / eps == pytest.approx(row.score, rel=0.05, abs=1e-3)


def test_heatmap_overlays_follow_the_latent_over_patch_tokens(result, concept_model, attr_sae, image_path):
    from steerpatch.models import preprocess_batch

    row = result.latents[0]
    with Image.open(row.heatmap) as heat:
        assert heat.size == (OVERLAY_SIZE, OVERLAY_SIZE + SCALE_HEIGHT) and heat.mode == "RGB"
    pixels = preprocess_batch(concept_model, [Image.open(image_path).convert("RGB")])
    with torch.no_grad():
        hidden = encode_prefix(concept_model.model, pixels, 2)
        grid = latent_grid(concept_model.model, attr_sae, hidden, row.latent)
        direct = attr_sae.encode(hidden[0, 1:])[:, row.latent].reshape(grid.shape).numpy()
    assert grid.shape == tuple(concept_model.model.visual.grid_size)
    np.testing.assert_allclose(grid, direct, atol=1e-5)


def test_unknown_classes_are_refused(concept_model, attr_sae, image_path, classes):
    with pytest.raises(SteerpatchError, match="not one of the classes"):
        attribute(concept_model, attr_sae, image_path, target="dragon", classes=classes)
    with pytest.raises(SteerpatchError, match="no class list"):
        attribute(concept_model, attr_sae, image_path)


def test_cli_prints_a_ranked_table_and_json(runner, tmp_path, attr_sae, image_path, test_world):
    args = ["attribute", str(image_path), "--sae", attr_sae.location, "--data", str(test_world), "--top", "3",
            "--out", str(tmp_path / "png")]
    table = runner.invoke(cli, args)
    assert table.exit_code == 0, table.output
    assert "rank" in table.stdout and len(list((tmp_path / "png").glob("*.png"))) == 3
    as_json = runner.invoke(cli, [*args, "--json", "--no-ablate"])
    data = json.loads(as_json.stdout)
    assert [r["ablation_effect"] for r in data["latents"]] == [None] * 3
    bad = runner.invoke(cli, ["attribute", str(image_path), "--sae", attr_sae.location, "--classes", "a,b",
                              "--target", "zzz"])
    assert bad.exit_code == 2 and bad.stderr.startswith("Error: ")


def test_exemplars_and_groups_come_from_the_stored_statistics(concept_model, stats_sae, image_path, test_world):
    from steerpatch.data import load_dataset
    from steerpatch.sae import load_latent_stats

    data = load_dataset(test_world)
    result = attribute(concept_model, stats_sae, image_path, top_n=3, ablate=False, exemplar_data=data)
    stats = load_latent_stats(stats_sae.location)
    assert set(result.probabilities) == set(data.classes)  # classes read from the statistics
    for row in result.latents:
        assert row.exemplars == stats.top_images[row.latent][:8]
        if row.exemplars:
            assert sum(row.exemplar_attributes["background"].values()) == len(row.exemplars)
            top = row.top_groups[0]
            assert top.rate == pytest.approx(float(stats.firing_rate_by_group[top.group][row.latent]))
            assert top.lift >= 1.0
