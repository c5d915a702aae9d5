"""The vision tower module: cut and resume equal open_clip's encode_image bit for bit, in either layout."""

from __future__ import annotations

import pytest
import torch

from steerpatch.errors import ModelError
from steerpatch.models.tower import (
    edit_block_output,
    encode_prefix,
    encode_suffix,
    is_batch_first,
    n_tokens,
    num_blocks,
    resblocks,
    residual_width,
    run_to_block,
    vision_tower,
    width_at_block,
)


def _pixels(loaded, n=3):
    gen = torch.Generator().manual_seed(1)
    return torch.randn(n, 3, loaded.image_size, loaded.image_size, generator=gen)


@pytest.mark.parametrize("which", ["concept_model", "vitb32"])
def test_prefix_then_suffix_equals_encode_image(request, which):
    loaded = request.getfixturevalue(which)
    pixels = _pixels(loaded, 2)
    with torch.no_grad():
        expected = loaded.model.encode_image(pixels)
        blocks = num_blocks(loaded.model)
        for block in sorted({0, blocks - 4}):
            hidden = encode_prefix(loaded.model, pixels, block)
            assert hidden.shape[:2] == (2, 1 + loaded.model.visual.grid_size[0] * loaded.model.visual.grid_size[1])
            assert torch.equal(encode_suffix(loaded.model, hidden, block), expected)


def test_out_of_range_block_is_refused(vitb32):
    with pytest.raises(ModelError, match="block 12 does not exist: this model.s vision tower has blocks 0..11"):
        encode_prefix(vitb32.model, _pixels(vitb32, 1), 12)


def _sequence_first(loaded):
    """A copy of the tower that runs its blocks (tokens, batch, width), as older open_clip towers do."""
    import copy

    tower = copy.deepcopy(loaded.model.visual).eval()
    tower.transformer.batch_first = False
    for block in tower.transformer.resblocks:
        block.attn.batch_first = False
    return tower


def test_a_sequence_first_tower_is_cut_and_resumed_batch_first(concept_model):
    pixels = _pixels(concept_model, 2)
    tower = _sequence_first(concept_model)
    assert is_batch_first(concept_model) and not is_batch_first(tower)
    with torch.no_grad():
        expected = tower(pixels)
        hidden = encode_prefix(tower, pixels, 1)
        assert hidden.shape == (2, n_tokens(concept_model), residual_width(concept_model))
        torch.testing.assert_close(hidden, encode_prefix(concept_model, pixels, 1), atol=1e-5, rtol=1e-5)
        assert torch.equal(encode_suffix(tower, hidden, 1), expected)
        assert torch.equal(run_to_block(tower, pixels, 1), hidden)


@pytest.mark.parametrize("layout", ["batch_first", "sequence_first"])
def test_edit_block_output_sees_and_returns_batch_first(concept_model, layout):
    tower = concept_model.model.visual if layout == "batch_first" else _sequence_first(concept_model)
    pixels = _pixels(concept_model, 3)
    seen = []

    def drop_cls(x):
        seen.append(x.shape)
        x = x.clone()
        x[:, 0] = 0.0
        return x

    with torch.no_grad():
        hidden = encode_prefix(tower, pixels, 2)
        with edit_block_output(tower, 2, drop_cls):
            steered = tower(pixels)
        dropped = hidden.clone()
        dropped[:, 0] = 0.0
        assert seen == [(3, n_tokens(tower), residual_width(tower))]
        assert torch.equal(steered, encode_suffix(tower, dropped, 2))
        assert not torch.equal(steered, tower(pixels))  # the hook is gone after the context
    assert len(resblocks(tower)[2]._forward_hooks) == 0


def test_the_tower_is_found_from_a_loaded_model_a_clip_or_itself(concept_model):
    visual = concept_model.model.visual
    assert vision_tower(concept_model) is vision_tower(concept_model.model) is vision_tower(visual) is visual
    grid = visual.grid_size
    assert n_tokens(concept_model) == 1 + grid[0] * grid[1]
    assert residual_width(concept_model) == width_at_block(concept_model, 3) == 64
    assert num_blocks(concept_model) == len(resblocks(concept_model)) == 4
    with pytest.raises(ModelError, match="Linear has no visual.transformer.resblocks"):
        vision_tower(torch.nn.Linear(2, 2))
    with pytest.raises(ModelError, match="block 4 does not exist"):
        width_at_block(concept_model, 4)
