"""Token scopes: which positions of a vision block's (batch, tokens, width) output a scope selects.

Token 0 is the class token and tokens 1.. the patch grid. A scope is a name (`cls`, `patches`,
`all`) or a list of token indices. `select_tokens` is the one answer to "which tokens does this
scope pick out of n"; the SAE's slice, the steering engine's index and the ONNX graph's mask are
all read from it, and `parse_tokens` turns the CLI's text into a scope. No torch here: patches and
the CLI use it without loading a model.
"""

from __future__ import annotations

from collections.abc import Sequence

from steerpatch.errors import PatchError, shorten

SCOPES: tuple[str, ...] = ("cls", "patches", "all")
_SLICES = {"cls": slice(0, 1), "patches": slice(1, None), "all": slice(None)}


def select_tokens(tokens: str | Sequence[int], n_tokens: int | None = None) -> slice | list[int]:
    """The positions a token scope covers: cls = token 0, patches = tokens 1.., all, or explicit indices.

    Args:
        tokens: "cls", "patches", "all" or a list of token indices.
        n_tokens: tokens in the residual stream, class token included; None skips the check that
            explicit indices exist (named scopes fit any length).

    Returns:
        A slice for a named scope, else the list of indices, over the token axis.

    Raises:
        PatchError: for an unknown scope name, a negative index or one past the last token.

    Example:
        >>> select_tokens("patches", 50)
        slice(1, None, None)
        >>> select_tokens([0, 7], 50)
        [0, 7]
    """
    if isinstance(tokens, str):
        if tokens not in _SLICES:
            raise PatchError(
                f"token scope {tokens!r} is not one of cls, patches, all or a list of token indices"
            )
        return _SLICES[tokens]
    indices = [int(t) for t in tokens]
    negative = [t for t in indices if t < 0]
    if negative:
        raise PatchError(f"patch token indices [{shorten(negative)}] are negative; fix 'tokens' (0 is the class token)")
    if n_tokens is not None:
        past = [t for t in indices if t >= n_tokens]
        if past:
            raise PatchError(
                f"patch token indices [{shorten(past)}] are past the last token ({n_tokens - 1}) of this model; "
                "fix 'tokens'"
            )
    return indices


def parse_tokens(text: str) -> str | list[int]:
    """Parse a token scope from the command line: 'cls', 'patches', 'all', or indices such as '0,5,6'.

    Raises:
        PatchError: naming the text and the accepted forms.

    Example:
        >>> parse_tokens("0, 5,6")
        [0, 5, 6]
    """
    text = text.strip()
    if text in SCOPES:
        return text
    try:
        indices = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        indices = []
    if not indices or any(i < 0 for i in indices):
        raise PatchError(
            f"token scope {text!r} is not valid; use cls, patches, all, or indices such as 0,5,6"
        )
    return indices
