"""What an SAE is, as SAELens's `cfg.json` describes it, plus where it hooks into a CLIP vision tower.

The on-disk config is SAELens's (a foreign format we read and write faithfully), so unknown top-level
keys of older SAELens versions are folded into `metadata` instead of being refused or dropped.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from steerpatch.errors import SAEError
from steerpatch.sae.architectures import get_architecture
from steerpatch.tokens import SCOPES

TokenScope = Literal["cls", "patches", "all"]
TOKEN_SCOPES: tuple[str, ...] = SCOPES  # the scope names an SAE hook may carry (`steerpatch.tokens`)
SUPPORTED_DTYPES: tuple[str, ...] = ("float32", "float16", "bfloat16", "float64")
HOOK_NAME_TEMPLATE = "visual.transformer.resblocks.{block}"


class SAEConfig(BaseModel):
    """The fields of SAELens's `cfg.json` that change the math, plus free-form `metadata`.

    Example:
        >>> SAEConfig(d_in=128, d_sae=2048, architecture="standard").apply_b_dec_to_input
        True
    """

    model_config = ConfigDict(extra="forbid")

    d_in: int = Field(gt=0)  # width of the activations the SAE reads
    d_sae: int = Field(gt=0)  # number of latents
    architecture: str = "standard"  # a key of steerpatch.sae.architectures.ARCHITECTURES
    dtype: str = "float32"  # storage dtype of the weights on disk
    apply_b_dec_to_input: bool = True  # subtract b_dec before encoding (SAELens default)
    normalize_activations: str = "none"  # a key of steerpatch.sae.normalization.NORMALIZATIONS
    norm_scaling_factor: float | None = None  # expected_average_only_in: the dataset-wide input factor
    reshape_activations: str = "none"  # only "none" is supported
    k: int | None = None  # topk: latents kept per token
    rescale_acts_by_decoder_norm: bool = False  # topk: rank pre-activations scaled by ||W_dec[i]||
    metadata: dict[str, Any] = Field(default_factory=dict)  # hook_name, block, token_scope, model_name, ...

    def to_saelens_dict(self) -> dict[str, Any]:
        """The dict written to `cfg.json`: SAELens field names, architecture-specific fields only when used."""
        spec = get_architecture(self.architecture)
        out: dict[str, Any] = {
            "architecture": self.architecture,
            "d_in": self.d_in,
            "d_sae": self.d_sae,
            "dtype": self.dtype,
            "device": "cpu",
            "apply_b_dec_to_input": self.apply_b_dec_to_input,
            "normalize_activations": self.normalize_activations,
            "reshape_activations": self.reshape_activations,
        }
        for key in spec.cfg_keys:
            out[key] = getattr(self, key)
        out["metadata"] = dict(self.metadata)
        return out


@dataclass(frozen=True)
class HookSpec:
    """Where the SAE reads: the residual output of vision block `block`, restricted to `tokens`."""

    block: int
    tokens: str = "all"

    @property
    def hook_name(self) -> str:
        return HOOK_NAME_TEMPLATE.format(block=self.block)


def hook_metadata(block: int, tokens: str) -> dict[str, Any]:
    """The metadata keys that record a hook, in the form `hook_from_metadata` reads back."""
    check_token_scope(tokens)
    return {"hook_name": HOOK_NAME_TEMPLATE.format(block=block), "block": int(block), "token_scope": tokens}


def check_token_scope(tokens: str) -> str:
    """Refuse a token scope other than cls, patches or all.

    Raises:
        SAEError: naming the value and the accepted ones.
    """
    if tokens not in TOKEN_SCOPES:
        raise SAEError(f"token scope {tokens!r} is not supported; use one of {', '.join(TOKEN_SCOPES)}")
    return tokens


def hook_from_metadata(metadata: dict[str, Any]) -> HookSpec | None:
    """Read the hook from `block`/`hook_name`/`token_scope` metadata; None when nothing says where.

    Raises:
        SAEError: if `block` and `hook_name` disagree or the token scope is unknown.
    """
    from steerpatch.sae.hooks import block_for_hook

    block = metadata.get("block")
    hook_name = metadata.get("hook_name")
    from_name = block_for_hook(hook_name) if isinstance(hook_name, str) else None
    if block is None:
        block = from_name if from_name is not None else metadata.get("hook_layer")
    if block is None:
        return None
    if isinstance(block, bool) or not isinstance(block, int) or block < 0:
        raise SAEError(
            f"metadata block {block!r} is not a non-negative integer; fix 'block' in cfg.json metadata"
        )
    if from_name is not None and from_name != block:
        raise SAEError(
            f"metadata block {block} disagrees with hook_name {hook_name!r}; make them name the same block"
        )
    tokens = check_token_scope(str(metadata.get("token_scope", "all")))
    return HookSpec(block=block, tokens=tokens)


def config_from_saelens(raw: dict[str, Any], *, source: str) -> SAEConfig:
    """Build an `SAEConfig` from a parsed SAELens `cfg.json`, old or new.

    Args:
        raw: the parsed JSON object.
        source: the file it came from, for messages.

    Returns:
        The config; legacy top-level provenance keys land in `metadata`.

    Raises:
        SAEError: for a missing d_in/d_sae, wrong types, or unsupported options.
    """
    if not isinstance(raw, dict):
        raise SAEError(
            f"{source} holds {type(raw).__name__}, expected a JSON object with d_in, d_sae, architecture"
        )
    raw = dict(raw)
    metadata = dict(raw.pop("metadata", None) or {})
    if not isinstance(metadata, dict):
        raise SAEError(f"{source}: metadata must be a JSON object, got {type(metadata).__name__}")
    fields: dict[str, Any] = {}
    architecture = raw.pop("architecture", None)
    activation_fn = raw.pop("activation_fn_str", raw.pop("activation_fn", None))
    activation_kwargs = raw.pop("activation_fn_kwargs", None) or {}
    if architecture is None:
        # SAELens before v6 spelled topk as an activation of the standard architecture
        architecture = "topk" if activation_fn == "topk" else "standard"
    if architecture == "standard" and activation_fn == "topk":
        architecture = "topk"
    if architecture == "topk" and "k" not in raw and "k" in activation_kwargs:
        raw["k"] = activation_kwargs["k"]
    fields["architecture"] = architecture
    for key in SAEConfig.model_fields:
        if key in raw and key not in ("metadata", "architecture"):
            fields[key] = raw.pop(key)
    if raw.pop("finetuning_scaling_factor", False):
        # the per-latent decoder scale lives in the weights file; the loader folds it into W_dec
        metadata["finetuning_scaling_factor"] = True
    raw.pop("device", None)  # where SAELens last ran it; meaningless here
    for key, value in raw.items():
        # anything else is provenance (model_name, hook_name, ...) or a training setting: keep it
        metadata.setdefault(key, value)
    fields["metadata"] = metadata
    if isinstance(fields.get("dtype"), str) and fields["dtype"].startswith("torch."):
        fields["dtype"] = fields["dtype"][len("torch.") :]  # older SAELens wrote "torch.float32"
    for key in ("d_in", "d_sae"):
        if key not in fields:
            raise SAEError(f"{source} has no '{key}'; add the integer '{key}' to cfg.json")
    try:
        cfg = SAEConfig(**fields)
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise SAEError(
            f"{source}: field '{where}' = {first.get('input')!r} is invalid ({first['msg']}); fix it in cfg.json"
        ) from None
    return validate_config(cfg, source=source)


def validate_config(cfg: SAEConfig, *, source: str) -> SAEConfig:
    """Check the options this package can compute exactly; refuse the rest with the fix.

    Raises:
        SAEError: unknown architecture, unsupported normalization/reshape/dtype, a bad k.
    """
    from steerpatch.sae.normalization import get_normalization

    spec = get_architecture(cfg.architecture)
    get_normalization(cfg.normalize_activations, source=source)
    factor = cfg.norm_scaling_factor
    if factor is not None:
        if cfg.normalize_activations != "expected_average_only_in":
            raise SAEError(
                f"{source}: norm_scaling_factor={factor} is only used with normalize_activations="
                f"'expected_average_only_in', not {cfg.normalize_activations!r}; remove it"
            )
        if not (factor > 0 and factor != float("inf")):
            raise SAEError(f"{source}: norm_scaling_factor={factor} must be a positive finite number; fix it")
    if cfg.reshape_activations != "none":
        raise SAEError(
            f"{source}: reshape_activations={cfg.reshape_activations!r} is not supported; "
            'only residual-stream SAEs with reshape_activations="none" can be used'
        )
    if cfg.dtype not in SUPPORTED_DTYPES:
        raise SAEError(
            f"{source}: dtype {cfg.dtype!r} is not supported; use one of {', '.join(SUPPORTED_DTYPES)}"
        )
    spec.check_config(cfg, source=source)
    try:
        hook_from_metadata(cfg.metadata)
    except SAEError as error:
        raise SAEError(f"{source}: {error}") from None
    return cfg
