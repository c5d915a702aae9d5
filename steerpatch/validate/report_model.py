"""The validation report as a strict, versioned pydantic document, and the parts it is made of.

`report.py` builds one from per-image results; `gates.py` judges it against a policy; `html.py`
renders it.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class BeforeAfter(_Strict):
    before: float | None  # accuracy without the patch (None for an empty set)
    after: float | None  # accuracy with the patch
    n: int


class WorstGroup(BeforeAfter):
    name: str


class Flips(_Strict):
    right_to_wrong: int
    wrong_to_right: int
    right_to_wrong_rate: float  # of all n images
    wrong_to_right_rate: float
    mcnemar_p: float  # exact two-sided test that the two flip counts differ by chance


class FlipMatrix(_Strict):
    classes: list[str]
    counts: list[list[int]]  # counts[i][j]: predicted class i before, j after


class FixSet(_Strict):
    n: int
    wrong_before: int
    fixed: int  # wrong before, right after
    broken: int  # right before, wrong after
    ids_fixed: list[str] = Field(default_factory=list)


class Drift(_Strict):
    cos_mean: float  # mean cosine(original, patched embedding)
    cos_p5: float  # 5th percentile
    cos_min: float
    histogram: dict[str, list[float]]  # edges, counts


class BlastRadius(_Strict):
    fraction: float  # predicted share of images an edit touches
    by_class: dict[str, float]
    by_group: dict[str, float]
    latents: dict[str, float]  # firing rate per edited latent
    source: Literal["latent_stats", "dataset"]


class DosePoint(_Strict):
    strength: float  # 0 = unpatched, 1 = the patch as written
    accuracy: float | None
    right_to_wrong: int
    wrong_to_right: int
    cos_mean: float
    kl_mean: float
    groups: dict[str, float | None] = Field(default_factory=dict)


class GateResult(_Strict):
    name: str
    threshold: float
    value: float | None  # None: nothing to measure (no targets given, say); the gate then holds
    passed: bool
    measured: bool = True  # False when value is None: reported as "not measured"


class Hashes(_Strict):
    patch: str
    model: str
    sae: str
    dataset: str


class FloorBaseline(_Strict):
    worst_group: float | None  # mean over draws of the worst group accuracy with random latents
    accuracy: float
    draws: int
    worst_group_draws: list[float | None]


class CeilingBaseline(_Strict):
    worst_group: float | None  # worst group accuracy of the DFR re-fit on the evaluation half
    accuracy: float
    before_worst_group: float | None  # the zero-shot head's worst group on the same half
    n_fit: int
    n_eval: int
    method: str


class Baselines(_Strict):
    """A floor and a ceiling to read the patch's numbers against (see `steerpatch.validate.baselines`)."""

    floor: FloorBaseline | None
    ceiling: CeilingBaseline | None


class BlastRadiusEstimate(_Strict):
    """The share of changed predictions, estimated from a sample before the full run, and then observed."""

    predicted: float
    low: float  # 95% interval of the estimate
    high: float
    observed: float
    sample: int  # images run to make the estimate
    touched: float  # share of images the edits change at the hook at all
    method: str


class ValidationReport(_Strict):
    """A patch's validation on one labelled held-out dataset.

    Example:
        >>> report = load_report("registry/patches/water/report.json")  # doctest: +SKIP
        >>> report.verdict, report.flips.right_to_wrong  # doctest: +SKIP
        ('pass', 3)
    """

    format_version: Literal[1] = 1
    verdict: Literal["pass", "fail"]
    failed_gates: list[str]
    gates: list[GateResult]
    patch: str  # name@version
    engine: str
    n: int  # images evaluated (decodable)
    n_undecodable: int
    undecodable: list[str]  # their ids
    classes: list[str]
    accuracy: BeforeAfter
    per_class: dict[str, BeforeAfter]
    group_by: str | None
    groups: dict[str, BeforeAfter]
    worst_group: WorstGroup | None  # lowest accuracy after the patch
    flips: Flips
    flip_matrix: FlipMatrix
    target_fix_rate: float | None
    targets: FixSet | None
    generalisation_fix_rate: float | None
    same_failure: FixSet | None
    drift: Drift
    kl_mean: float  # mean KL(before || after) of the class distributions, nats
    blast_radius_predicted: BlastRadius | None
    blast_radius_observed: float  # share of images whose predicted class changed
    dose_response: list[DosePoint]
    hashes: Hashes
    policy: dict[str, Any]  # source file and the gates in force
    overrides: list[dict[str, str]] = Field(default_factory=list)  # fingerprint mismatches allowed explicitly
    duration_s: float
    unmeasured_gates: list[str] = Field(default_factory=list)  # active gates with nothing to measure
    # sha256 of the per-image outcomes (see `results_digest`); lets a re-run be compared exactly.
    # None in reports written before it existed.
    results_digest: str | None = None
    baselines: Baselines | None = None  # floor and ceiling, when the report is grouped
    gap_closed: float | None = None  # (worst group after - before) / (ceiling - before)
    blast_radius: BlastRadiusEstimate | None = None  # sample-based prediction beside the observed share
    # "exact", or e.g. "jpeg-draft-2x": JPEGs decoded at reduced scale (`--fast-decode`), pixels approximate
    decoding: str = "exact"
