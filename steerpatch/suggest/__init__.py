"""Suggest: from one wrong prediction and an unlabelled pool, vetted candidate patches that generalise.

Example:
    >>> from steerpatch.suggest import suggest, write_suggestion  # doctest: +SKIP
    >>> found = suggest(loaded, sae, ["w/circle/test-00012.png"], "circle", "pool/")  # doctest: +SKIP
    >>> write_suggestion(found, "suggestions/")  # doctest: +SKIP
"""

from steerpatch.suggest.engine import METHOD, Suggestion, build_patch, suggest
from steerpatch.suggest.output import write_suggestion
from steerpatch.suggest.search import Candidate

__all__ = ["METHOD", "Candidate", "Suggestion", "build_patch", "suggest", "write_suggestion"]
