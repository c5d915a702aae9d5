"""Writers of community SAE files from each format's documented layout, written without steerpatch.

saev: one JSON header line (schemas none, 1A/1B, 2..5 as saev's `nn.dump` wrote them), then
`torch.save(state_dict)` with W_enc (d_model, d_sae), b_enc, W_dec (d_sae, d_model), b_dec and, for
BatchTopK since late 2025, the scalar buffer `activation.threshold`.
ViT-Prisma: `config.json` (VisionModelSAERunnerConfig fields) + `weights.pt` (`torch.save(state_dict)`).
SAELens: `cfg.json` + `sae_weights.safetensors` (+ `activation_scaler.json`).

Run `python tests/helpers/format_writers.py` to rewrite the committed goldens in tests/sae/golden/.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

GOLDEN = Path(__file__).resolve().parents[1] / "sae" / "golden"
D_IN, D_SAE, K = 8, 16, 4


def weights(d_in: int = D_IN, d_sae: int = D_SAE, *, seed: int = 0, gated: bool = False,
            b_enc: float | None = None) -> dict[str, torch.Tensor]:
    """Seeded weights; `b_enc` set to a constant pushes every pre-activation below zero when very negative."""
    gen = torch.Generator().manual_seed(seed)
    out = {
        "W_enc": torch.randn(d_in, d_sae, generator=gen) / d_in**0.5,
        "b_enc": torch.randn(d_sae, generator=gen) * 0.1 if b_enc is None else torch.full((d_sae,), b_enc),
        "W_dec": torch.randn(d_sae, d_in, generator=gen) / d_sae**0.5,
        "b_dec": torch.randn(d_in, generator=gen) * 0.3,
    }
    if gated:
        out["b_gate"] = torch.randn(d_sae, generator=gen) * 0.1
        out["r_mag"] = torch.randn(d_sae, generator=gen) * 0.2
        out["b_mag"] = torch.randn(d_sae, generator=gen) * 0.1
    return out


def saev_header(schema: int | None, activation: str, d_in: int = D_IN, d_sae: int = D_SAE,
                top_k: int = K, variant: str = "A") -> dict:
    """A saev header as saev's dump wrote it for `schema` (1 has variants A and B)."""
    factor = d_sae // d_in
    params = {} if activation == "Relu" else {"top_k": top_k}
    if schema is None:
        return {"d_vit": d_in, "exp_factor": factor, "sparsity_coeff": 4e-4, "seed": 0, "n_reinit_samples": 0}
    if schema == 1 and variant == "A":
        cfg = {"d_vit": d_in, "exp_factor": factor, **params}
        return {"schema": 1, "cfg": cfg, "cls": activation, "commit": "unknown", "lib": "0.1.0"}
    activation_obj = {"cls": activation, "params": params}
    if schema == 1:
        cfg = {"d_vit": d_in, "exp_factor": factor, "activation": activation_obj}
        return {"schema": 1, "cfg": cfg, "cls": "SparseAutoencoderConfig", "commit": "unknown", "lib": "0.1.0"}
    if schema == 2:
        cfg = {"d_vit": d_in, "exp_factor": factor, "activation": activation_obj}
    elif schema == 3:
        cfg = {"d_model": d_in, "exp_factor": factor, "activation": activation_obj}
    else:
        if schema == 5:
            # schema 5 serialises nested dataclasses (sparsity, aux) inside params too
            activation_obj["params"] = {"key": activation.lower(), **params,
                                        "sparsity": {"cls": "NoSparsity", "params": {}}}
        cfg = {"d_model": d_in, "d_sae": d_sae, "activation": activation_obj, "normalize_w_dec": True}
    return {"schema": schema, "cfg": cfg, "commit": "unknown", "lib": "1.0.0"}


def write_saev(path: Path, header: dict, state: dict[str, torch.Tensor]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as handle:
        handle.write((json.dumps(header) + "\n").encode("utf-8"))
        torch.save(state, handle)
    return path


def prisma_config(architecture: str = "standard", activation: str = "relu", *, d_in: int = D_IN,
                  d_sae: int = D_SAE, layer: int = 5, subtype: str = "hook_resid_post",
                  normalize: str | None = "layer_norm", **extra) -> dict:
    """A ViT-Prisma config.json; normalize=None leaves the key out (ViT-Prisma's default applies)."""
    cfg = {
        "model_name": "open-clip:laion/CLIP-ViT-B-16-DataComp.XL-s13B-b90K",
        "hook_point_layer": layer,
        "layer_subtype": subtype,
        "architecture": architecture,
        "d_in": d_in,
        "expansion_factor": d_sae // d_in,
        "activation_fn_str": activation,
        "activation_fn_kwargs": {"k": K} if activation == "topk" else {},
        "cls_token_only": False,
        "use_patches_only": False,
        "b_dec_init_method": "geometric_median",
        "_dtype": "float32",
        **extra,
    }
    if normalize is not None:
        cfg["normalize_activations"] = normalize
    return cfg


def write_prisma(folder: Path, config: dict, state: dict[str, torch.Tensor]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    torch.save(state, folder / "weights.pt")
    return folder


def saelens_cfg(architecture: str = "standard", *, d_in: int = D_IN, d_sae: int = D_SAE,
                normalize: str = "none", hook: str = "blocks.5.hook_resid_post", **extra) -> dict:
    return {
        "architecture": architecture,
        "d_in": d_in,
        "d_sae": d_sae,
        "dtype": "float32",
        "device": "cpu",
        "apply_b_dec_to_input": True,
        "normalize_activations": normalize,
        "reshape_activations": "none",
        **extra,
        "metadata": {"model_name": "ViT-B-16", "hook_name": hook, "sae_lens_version": "6.5.0"},
    }


def write_saelens(folder: Path, cfg: dict, state: dict[str, torch.Tensor], scaler: float | None = None) -> Path:
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "cfg.json").write_text(json.dumps(cfg, indent=2) + "\n")
    save_file({k: v.contiguous() for k, v in state.items()}, str(folder / "sae_weights.safetensors"))
    if scaler is not None:
        (folder / "activation_scaler.json").write_text(json.dumps({"scaling_factor": scaler}))
    return folder


def _without(state: dict, *names: str) -> dict:
    return {k: v for k, v in state.items() if k not in names}


# name -> (kind, writer args); every golden the tests compare against its format's math
def golden_specs() -> dict[str, tuple]:
    w, wg = weights(), weights(seed=1, gated=True)
    negative = weights(seed=2, b_enc=-20.0)
    return {
        "saev-none-relu.pt": ("saev", saev_header(None, "Relu"), w),
        "saev-1a-topk.pt": ("saev", saev_header(1, "TopK"), w),
        "saev-1b-batchtopk.pt": ("saev", saev_header(1, "BatchTopK", variant="B"), w),
        "saev-2-relu.pt": ("saev", saev_header(2, "Relu"), w),
        "saev-3-topk.pt": ("saev", saev_header(3, "TopK"), w),
        "saev-4-batchtopk-threshold.pt": ("saev", saev_header(4, "BatchTopK"),
                                          {**w, "activation.threshold": torch.tensor(0.15)}),
        "saev-5-relu.pt": ("saev", saev_header(5, "Relu"), w),
        "saev-5-topk-negative.pt": ("saev", saev_header(5, "TopK"), negative),
        "saev-5-batchtopk.pt": ("saev", saev_header(5, "BatchTopK"),
                                {**w, "activation.threshold": torch.tensor(0.2)}),
        "saev-5-batchtopk-negative-theta.pt": ("saev", saev_header(5, "BatchTopK"),
                                               {**w, "activation.threshold": torch.tensor(-0.5)}),
        "prisma-standard-layer-norm": ("prisma", prisma_config(), w),
        "prisma-topk-default-norm": ("prisma", prisma_config(
            activation="topk", normalize=None, layer=6, subtype="hook_resid_pre", cls_token_only=True), w),
        "prisma-gated-constant-norm": ("prisma", prisma_config("gated", normalize="constant_norm_rescale"),
                                       {**wg, "b_enc": torch.zeros(D_SAE)}),
        "saelens-gated": ("saelens", saelens_cfg("gated"), _without(wg, "b_enc")),
        "saelens-expected-average": ("saelens", saelens_cfg(
            normalize="expected_average_only_in", hook="blocks.6.hook_resid_pre"), w, 0.37),
        "saelens-layer-norm-topk": ("saelens", saelens_cfg("topk", normalize="layer_norm", k=K), w),
        "saelens-constant-norm": ("saelens", saelens_cfg(normalize="constant_norm_rescale"), w),
        "saelens-finetuning-scale": ("saelens", saelens_cfg(finetuning_scaling_factor=True),
                                     {**w, "finetuning_scaling_factor": torch.rand(D_SAE, generator=torch.Generator().manual_seed(3)) + 0.5}),
    }


def write_golden(name: str, root: Path = GOLDEN) -> Path:
    kind, *args = golden_specs()[name]
    if kind == "saev":
        return write_saev(root / name, *args)
    if kind == "prisma":
        return write_prisma(root / name, *args)
    return write_saelens(root / name, *args)


if __name__ == "__main__":
    for golden in golden_specs():
        print(write_golden(golden))
