"""The split forward pass equals open_clip's own encode_image, bit for bit, at every block."""

from __future__ import annotations

import pytest
import torch

from steerpatch.errors import ModelError
from steerpatch.models.tower import encode_prefix, encode_suffix, num_blocks


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
    with pytest.raises(ModelError, match="out of range"):
        encode_prefix(vitb32.model, _pixels(vitb32, 1), 12)
