"""One token-scope function: the SAE's slice, the engine's index and the graph's mask all select the same tokens."""

from __future__ import annotations

import pytest

from steerpatch.errors import PatchError, SAEError
from steerpatch.tokens import parse_tokens, select_tokens

N = 10
EXPECTED = {"cls": [0], "patches": list(range(1, N)), "all": list(range(N))}


@pytest.mark.parametrize("scope", ["cls", "patches", "all", (0, 5, 6), (9,)])
def test_slice_index_and_mask_select_the_same_tokens(scope):
    import torch

    from steerpatch.compile.graph import token_mask
    from steerpatch.sae.activations import token_slice
    from steerpatch.steer import token_index

    tokens = scope if isinstance(scope, str) else list(scope)
    expected = EXPECTED.get(scope, tokens) if isinstance(scope, str) else tokens
    positions = torch.arange(N)
    assert positions[select_tokens(tokens, N)].tolist() == expected
    assert positions[token_index(tokens, N)].tolist() == expected
    assert torch.nonzero(token_mask(tokens, N)).flatten().tolist() == expected
    if isinstance(scope, str):
        assert positions[token_slice(scope)].tolist() == expected


def test_scopes_that_select_nothing_real_are_refused():
    from steerpatch.compile.graph import token_mask
    from steerpatch.sae.activations import token_slice

    with pytest.raises(PatchError, match=r"token indices \[10, 12\] are past the last token \(9\)"):
        token_mask([0, 10, 12], N)
    with pytest.raises(PatchError, match=r"token indices \[-1\] are negative"):
        select_tokens([3, -1], N)
    with pytest.raises(PatchError, match="token scope 'first' is not one of cls, patches, all"):
        select_tokens("first", N)
    with pytest.raises(SAEError, match="token scope 'first' is not supported"):
        token_slice("first")
    assert select_tokens([40]) == [40]  # no length given: indices are not bounded


def test_the_command_line_text_parses_to_a_scope():
    assert parse_tokens(" patches ") == "patches"
    assert parse_tokens("0, 5,6") == [0, 5, 6]
    for bad in ("", "first", "1,-2", "1;2"):
        with pytest.raises(PatchError, match="use cls, patches, all, or indices such as 0,5,6"):
            parse_tokens(bad)
