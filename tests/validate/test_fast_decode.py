"""`--fast-decode`: JPEGs decoded at reduced scale agree with exact decoding, and are never taken for it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from steerpatch.cli.main import cli

PHOTOS = 24
PATCH = str(Path(__file__).resolve().parents[2] / "registry" / "patches" / "water-shortcut.json")


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """The memory benchmark's generated 1024x768 JPEG photos, with their manifest."""
    import bench_validate_memory

    root = tmp_path_factory.mktemp("fast-decode") / "photos"
    bench_validate_memory.make_photos(root, PHOTOS, 1)
    return root


def test_fast_decode_agrees_with_exact_decoding(concept_model, photos):
    import torch

    from steerpatch.data import iter_image_batches, load_dataset
    from steerpatch.models import build_zero_shot_head

    data = load_dataset(photos)

    def pixels(fast: bool):
        size = concept_model.image_size if fast else None
        return torch.cat([b.pixels for b in iter_image_batches(data, concept_model.preprocess, batch_size=8,
                                                                workers=0, fast_decode=size)])

    exact, fast = pixels(False), pixels(True)
    with Image.open(data.items[0].path) as image:  # the default path is open_clip's transform of the full image
        assert torch.equal(exact[0], concept_model.preprocess(image.convert("RGB")))
    # measured: 0.030 (two grey levels) here and over 1,000 such photos; decoding at 1/8 scale (no
    # floor: 128x96 for a 64-pixel model) gives 0.088 here and 0.117 over 400, at 1/2 scale 0.015 here
    difference = float((fast - exact).abs().max())
    assert 0 < difference <= 0.05
    head = build_zero_shot_head(concept_model, data.classes)
    with torch.no_grad():
        before, after = (head.logits(concept_model.model.encode_image(x)).argmax(-1) for x in (exact, fast))
    # measured 24 of 24 here and 99.6% over 1,000 photos: at most one prediction of 24 may move. (The
    # 1/8-scale decoding also keeps 24 of 24 here: on 24 photos top-1 is too coarse, the pixel bound bites.)
    assert int((before == after).sum()) >= PHOTOS - 1


def test_validate_fast_decode_is_recorded_and_cached_apart(runner, tmp_path, photos):
    from steerpatch.pixels import FAST_DECODING

    cache = tmp_path / "cache"
    args = ["validate", PATCH, "--data", str(photos), "--quiet", "--no-dose", "--cache-dir", str(cache)]
    exact = runner.invoke(cli, [*args, "--json"])
    fast = runner.invoke(cli, [*args, "--fast-decode", "--out", str(tmp_path / "out")])
    assert exact.exit_code in (0, 1) and fast.exit_code in (0, 1), exact.output + fast.output
    exact_report = json.loads(exact.stdout)
    fast_report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert (exact_report["decoding"], fast_report["decoding"]) == ("exact", FAST_DECODING)
    assert f"decoded {FAST_DECODING}: approximate pixels" in fast.stdout
    assert f"decoding <code>{FAST_DECODING}</code> (approximate pixels)" in (tmp_path / "out" / "report.html").read_text()
    # the approximate activations are an entry of their own, never the exact one reused (or overwritten)
    entries = sorted(p.name for p in cache.iterdir() if p.is_dir() and not p.name.startswith("."))
    assert len(entries) == 2 and entries[1] == f"{entries[0]}-{FAST_DECODING}"
    assert fast_report["drift"] != exact_report["drift"]
    assert fast_report["n"] == exact_report["n"] == PHOTOS


def test_fast_decode_is_refused_where_images_are_decoded_elsewhere(runner, photos, concept_model, concept_sae):
    from steerpatch.errors import SteerpatchError
    from steerpatch.validate import Validator

    result = runner.invoke(cli, ["validate", PATCH, "--data", str(photos), "--engine", "spark", "--fast-decode"])
    assert result.exit_code == 2 and "--fast-decode" in result.output and len(result.output.strip().splitlines()) == 1

    class Remote:  # a scorer of another engine: it decodes the images itself
        engine = "remote"

    with pytest.raises(SteerpatchError, match="'remote' engine decodes its own"):
        Validator(concept_model, concept_sae, photos, scorer=Remote(), fast_decode=True)


def test_fast_decode_needs_a_dataset_not_a_loading_function(photos):
    from steerpatch.data import iter_image_batches, load_dataset

    data = load_dataset(photos)
    batches = iter_image_batches(data.load_image, lambda image: image, items=data.items[:1], fast_decode=64)
    with pytest.raises(TypeError, match="fast_decode needs an ImageDataset"):
        next(batches)
