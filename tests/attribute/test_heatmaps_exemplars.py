"""Heatmaps are distinct per latent and carry their colour scale; exemplars are written without --data."""

from __future__ import annotations

import numpy as np
from matplotlib import colormaps
from PIL import Image

from steerpatch.attribute.exemplars import WorldExemplars, exemplar_source
from steerpatch.attribute.heatmap import OVERLAY_SIZE, SCALE_HEIGHT, overlay, write_overlay
from steerpatch.cli.main import cli


def test_a_silent_latent_gets_its_own_captioned_heatmap(tmp_path, test_world):
    image = Image.open(sorted(test_world.glob("*/*.png"))[0]).convert("RGB")
    silent = np.zeros((8, 8), dtype=np.float32)
    # why two heatmaps used to be byte-identical: a latent silent on every patch token leaves the bare image
    bare = np.asarray(image.resize((OVERLAY_SIZE, OVERLAY_SIZE), Image.Resampling.NEAREST))
    assert np.array_equal(np.asarray(overlay(image, silent)), bare)
    a = write_overlay(image, silent, tmp_path / "a.png", label="latent 3", cls_value=1.5).read_bytes()
    b = write_overlay(image, silent, tmp_path / "b.png", label="latent 4", cls_value=1.5).read_bytes()
    assert a != b


def test_the_colour_scale_runs_from_cold_to_hot_under_the_overlay(tmp_path, test_world):
    image = Image.open(sorted(test_world.glob("*/*.png"))[0]).convert("RGB")
    grid = np.zeros((8, 8), dtype=np.float32)
    grid[2, 3] = 0.4  # one weak cell: still visible
    path = write_overlay(image, grid, tmp_path / "h.png", label="latent 7")
    with Image.open(path) as heat:
        pixels = np.asarray(heat.convert("RGB")).astype(int)
    assert pixels.shape == (OVERLAY_SIZE + SCALE_HEIGHT, OVERLAY_SIZE, 3)
    bar = pixels[OVERLAY_SIZE + 30]
    cold, hot = [(np.array(colormaps["inferno"](v)[:3]) * 255).astype(int) for v in (0.0, 1.0)]
    assert np.abs(bar[8] - cold).max() <= 2 and np.abs(bar[OVERLAY_SIZE - 9] - hot).max() <= 2
    cell = pixels[2 * 32 + 16, 3 * 32 + 16]
    base = np.asarray(image.resize((OVERLAY_SIZE, OVERLAY_SIZE), Image.Resampling.NEAREST)).astype(int)
    assert np.abs(cell - base[2 * 32 + 16, 3 * 32 + 16]).max() > 60  # the hot cell stands out


def test_world_exemplars_render_the_images_the_world_writer_wrote(test_world):
    world = WorldExemplars("test", 12)
    for item in world.items[:6]:
        written = np.asarray(Image.open(test_world / item.id).convert("RGB"))
        assert np.array_equal(np.asarray(world.load_image(item)), written)
        assert item.attributes["background"] in {"water", "grass", "sand", "plain"}


def test_attribute_out_writes_exemplars_without_data(runner, tmp_path, stats_sae, test_world):
    image = sorted(test_world.glob("*/*.png"))[0]
    args = [
        "attribute",
        str(image),
        "--sae",
        stats_sae.location,
        "--top",
        "2",
        "--no-ablate",
        "--classes",
        "circle,square,star,triangle,hexagon,cross",
    ]
    plain = runner.invoke(cli, [*args, "--out", str(tmp_path / "plain")])
    assert plain.exit_code == 0, plain.output
    montages = sorted(p.name for p in (tmp_path / "plain").glob("exemplars-latent*.png"))
    assert len(montages) == 2
    given = runner.invoke(cli, [*args, "--out", str(tmp_path / "given"), "--data", str(test_world)])
    assert given.exit_code == 0, given.output
    for name in montages:  # the same images as from the folder they were measured on
        assert (tmp_path / "plain" / name).read_bytes() == (tmp_path / "given" / name).read_bytes()


def test_no_exemplar_source_for_ids_that_are_not_the_world(stats_sae):
    from steerpatch.sae import load_latent_stats

    stats = load_latent_stats(stats_sae.location)
    stats.top_images = {0: ["photos/cat.jpg"]}
    assert exemplar_source(stats) is None
