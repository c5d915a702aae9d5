"""The promotion policy: gate thresholds a validation report must meet, read from a TOML file.

`registry/policy.toml` at the repository root is the default; a packaged copy of the same file is the
fallback when steerpatch runs outside a checkout. Unknown keys are an error, so a typo in a gate name
cannot silently switch the gate off.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from steerpatch.errors import SteerpatchError

PACKAGED_POLICY = Path(__file__).with_name("default_policy.toml")
REPO_POLICY = Path(__file__).resolve().parents[2] / "registry" / "policy.toml"


class Gates(BaseModel):
    """Thresholds; a negative value or None switches a gate off."""

    model_config = ConfigDict(extra="forbid")

    max_right_to_wrong_rate: float | None = 0.02  # right->wrong flips / n
    max_class_accuracy_drop: float | None = 0.05  # worst per-class accuracy drop
    max_accuracy_drop: float | None = 0.0  # overall accuracy drop
    min_target_fix_rate: float | None = 1.0  # targets fixed / targets wrong before
    min_generalisation_fix_rate: float | None = 0.25  # same-failure fixed / wrong before
    min_cos_mean: float | None = 0.80  # mean cosine(original, patched embedding)

    def active(self) -> dict[str, float]:
        """The gates that are switched on, by name."""
        return {k: v for k, v in self.model_dump().items() if v is not None and v >= 0}

    def metric_thresholds(self) -> dict[str, dict[str, float | bool]]:
        """The active gates in MLflow's vocabulary: metric name -> `MetricThreshold` arguments.

        Every gate is a threshold on one metric the registry logs (`GATE_METRICS`); `max_` gates are
        upper bounds (greater_is_better False), `min_` gates lower bounds.

        Example:
            >>> Gates().metric_thresholds()["right_to_wrong_rate"]
            {'threshold': 0.02, 'greater_is_better': False}
        """
        return {
            GATE_METRICS[name]: {"threshold": value, "greater_is_better": not name.startswith("max_")}
            for name, value in self.active().items()
        }


# gate name -> the MLflow metric it bounds (the registry logs these names on every patch version)
GATE_METRICS: dict[str, str] = {
    "max_right_to_wrong_rate": "right_to_wrong_rate",
    "max_class_accuracy_drop": "worst_class_accuracy_drop",
    "max_accuracy_drop": "accuracy_drop",
    "min_target_fix_rate": "target_fix_rate",
    "min_generalisation_fix_rate": "generalisation_fix_rate",
    "min_cos_mean": "cos_drift_mean",
}


class DataPolicy(BaseModel):
    """How a run treats images it cannot read."""

    model_config = ConfigDict(extra="forbid")

    on_undecodable: Literal["skip", "fail"] = "skip"
    max_undecodable_rate: float = Field(default=0.01, ge=0, le=1)


class DosePolicy(BaseModel):
    """Strengths at which the dose-response curve is measured."""

    model_config = ConfigDict(extra="forbid")

    strengths: list[float] = Field(default_factory=lambda: [0.0, 0.25, 0.5, 0.75, 1.0])

    @field_validator("strengths")
    @classmethod
    def _finite_sorted(cls, value: list[float]) -> list[float]:
        if any(v != v or abs(v) == float("inf") for v in value):
            raise ValueError("strengths must be finite numbers")
        return sorted(set(value))


class UnmeasuredPolicy(BaseModel):
    """What a gate that could not be measured (no --targets given, say) means for promotion."""

    model_config = ConfigDict(extra="forbid")

    # aliases that an unmeasured active gate blocks; a policy file without [unmeasured] blocks none,
    # the shipped registry/policy.toml blocks "production"
    blocks: list[str] = Field(default_factory=list)


class PromotionPolicy(BaseModel):
    """What promotion does beyond re-deriving the gates from a report's counts."""

    model_config = ConfigDict(extra="forbid")

    # moving one of these aliases re-runs validation when the dataset is given, and refuses on any difference
    revalidate_aliases: list[str] = Field(default_factory=lambda: ["production"])


class Policy(BaseModel):
    """A whole policy file.

    Example:
        >>> Policy().gates.max_right_to_wrong_rate
        0.02
    """

    model_config = ConfigDict(extra="forbid")

    format_version: Literal[1] = 1
    gates: Gates = Field(default_factory=Gates)
    data: DataPolicy = Field(default_factory=DataPolicy)
    dose_response: DosePolicy = Field(default_factory=DosePolicy)
    unmeasured: UnmeasuredPolicy = Field(default_factory=UnmeasuredPolicy)
    promotion: PromotionPolicy = Field(default_factory=PromotionPolicy)
    source: str | None = None  # the file it was read from; filled in by load_policy


def default_policy_path() -> Path:
    """The policy used when none is named: the repository's, else the packaged copy."""
    return REPO_POLICY if REPO_POLICY.is_file() else PACKAGED_POLICY


def load_policy(path: str | Path | None = None) -> Policy:
    """Read a policy TOML file.

    Args:
        path: the file; None means `registry/policy.toml` in the checkout, else the packaged default.

    Returns:
        The parsed policy, with `source` set to the file it came from.

    Raises:
        SteerpatchError: if the file is missing, not TOML, or has unknown keys or bad values (all listed).

    Example:
        >>> load_policy().gates.active()["max_right_to_wrong_rate"]  # doctest: +SKIP
        0.02
    """
    file = Path(path) if path is not None else default_policy_path()
    if not file.is_file():
        raise SteerpatchError(f"policy file '{file}' does not exist; pass an existing TOML file to --policy")
    try:
        raw = tomllib.loads(file.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise SteerpatchError(f"policy file '{file}' is not valid TOML ({error}); fix the syntax") from None
    try:
        policy = Policy.model_validate(raw)
    except ValidationError as error:
        problems = [f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in error.errors()]
        raise SteerpatchError(f"policy file '{file}' has {len(problems)} problem(s); fix them", problems) from None
    return policy.model_copy(update={"source": str(file)})
