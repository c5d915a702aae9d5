"""Validation: what a patch fixes, what else it changes, and whether it passes the promotion gates.

Example:
    >>> from steerpatch.validate import validate_patch, write_report  # doctest: +SKIP
    >>> report = validate_patch("patch.json", "world/test", group_by="shortcut")  # doctest: +SKIP
    >>> write_report(report, "out/")  # doctest: +SKIP
"""

from steerpatch.validate.cache import ActivationCache, CachedActivations, compute_activations
from steerpatch.validate.candidate import at_strength, results_from_features, score_patch
from steerpatch.validate.metrics import ImageResults, mcnemar_exact_p
from steerpatch.validate.policy import Policy, default_policy_path, load_policy
from steerpatch.validate.report import (
    ValidationReport,
    build_report,
    judge,
    load_report,
    measurements,
    write_report,
)
from steerpatch.validate.runner import Validator, validate_patch

__all__ = [
    "ActivationCache",
    "CachedActivations",
    "ImageResults",
    "Policy",
    "ValidationReport",
    "Validator",
    "at_strength",
    "build_report",
    "compute_activations",
    "default_policy_path",
    "judge",
    "load_policy",
    "load_report",
    "mcnemar_exact_p",
    "measurements",
    "results_from_features",
    "score_patch",
    "validate_patch",
    "write_report",
]
