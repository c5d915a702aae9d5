"""Community SAE files load exactly as their own libraries compute them.

Each golden in tests/sae/golden/ was written from its format's documented layout (tests/helpers/format_writers.py);
the reference math below is each library's documented encode/decode, written out independently of
steerpatch: saev (raw TopK, BatchTopK's inference threshold, both b_dec conventions), ViT-Prisma
(layer_norm default, gated) and SAELens (normalize_activations, finetuning_scaling_factor).
"""

from __future__ import annotations

import json

import pytest
import torch

from steerpatch.errors import SAEError
from steerpatch.patch.format import Edit
from steerpatch.sae import load_sae
from steerpatch.steer.delta import edits_delta
from tests.helpers.format_writers import (
    GOLDEN,
    K,
    golden_specs,
    prisma_config,
    weights,
    write_golden,
    write_prisma,
    write_saev,
)

TOL = 1e-5
X = torch.randn(6, 8, generator=torch.Generator().manual_seed(11)) * 3 + 1.5  # off-centre, so norms matter


def _tensors(name: str) -> dict[str, torch.Tensor]:
    spec = golden_specs()[name]
    return {k: v.float() for k, v in spec[2].items()}


# --- the libraries' math, written out ----------------------------------------------------------


def _topk_mask(h: torch.Tensor, k: int) -> torch.Tensor:
    return torch.zeros_like(h).scatter(-1, h.topk(k, dim=-1).indices, 1.0)


def saev_math(name: str, x: torch.Tensor, *, subtract: bool):
    """saev: h = (x [- b_dec]) @ W_enc + b_enc; Relu / raw TopK / BatchTopK threshold; f @ W_dec + b_dec."""
    _, header, _ = golden_specs()[name]
    t = _tensors(name)
    h = (x - t["b_dec"] if subtract else x) @ t["W_enc"] + t["b_enc"]
    cfg = header.get("cfg", header)
    activation = header.get("cls") if header.get("cls") not in (None, "SparseAutoencoderConfig") else (
        cfg["activation"]["cls"] if "activation" in cfg else "Relu"
    )
    if activation == "Relu":
        f = torch.relu(h)
    elif activation == "BatchTopK" and "activation.threshold" in t:
        theta = float(t["activation.threshold"])
        f = torch.where(h > max(theta, 0.0), h, torch.zeros_like(h))
    else:  # TopK, and BatchTopK before saev stored an inference threshold: per-sample top-k, no ReLU
        f = h * _topk_mask(h, K)
    return f, f @ t["W_dec"] + t["b_dec"], h


def norm_math(kind: str, x: torch.Tensor):
    """SAELens / ViT-Prisma run-time normalisation: (x_in, map back)."""
    if kind == "layer_norm":
        mu = x.mean(dim=-1, keepdim=True)
        std = (x - mu).std(dim=-1, keepdim=True)
        return (x - mu) / (std + 1e-5), lambda y: y * std + mu
    if kind == "constant_norm_rescale":
        coeff = x.shape[-1] ** 0.5 / x.norm(dim=-1, keepdim=True)
        return x * coeff, lambda y: y / coeff
    return x, lambda y: y


def lens_math(name: str, x: torch.Tensor):
    """SAELens / ViT-Prisma: normalise, x - b_dec, encode by architecture, decode, de-normalise."""
    _, cfg, _, *scaler = golden_specs()[name]
    t = _tensors(name)
    norm = cfg.get("normalize_activations", "layer_norm")  # ViT-Prisma's default
    if norm == "expected_average_only_in":
        # SAELens folds the dataset factor s into the weights, then runs without normalisation
        s = scaler[0]
        t = {**t, "W_enc": t["W_enc"] * s, "W_dec": t["W_dec"] / s, "b_dec": t["b_dec"] / s}
        norm = "none"
    x_in, back = norm_math(norm, x)
    sae_in = x_in - t["b_dec"]
    if cfg["architecture"] == "gated":
        gate = sae_in @ t["W_enc"] + t["b_gate"]
        mag = sae_in @ (t["W_enc"] * t["r_mag"].exp()) + t["b_mag"]
        f = (gate > 0).float() * torch.relu(mag)
    else:
        h = sae_in @ t["W_enc"] + t["b_enc"]
        topk = cfg.get("architecture") == "topk" or cfg.get("activation_fn_str") == "topk"
        f = torch.relu(h) * _topk_mask(h, K) if topk else torch.relu(h)
    # SAELens decodes (f * finetuning_scaling_factor) @ W_dec: one unit of latent j adds scale_j * W_dec[j]
    W = t["W_dec"] * t["finetuning_scaling_factor"][:, None] if cfg.get("finetuning_scaling_factor") else t["W_dec"]
    return f, back(f @ W + t["b_dec"]), (back, W, t["b_dec"])


SAEV = {  # golden -> the b_dec convention of the saev version that wrote that schema
    "saev-none-relu.pt": True,
    "saev-1a-topk.pt": True,
    "saev-1b-batchtopk.pt": True,
    "saev-2-relu.pt": False,
    "saev-3-topk.pt": False,
    "saev-4-batchtopk-threshold.pt": False,
    "saev-5-relu.pt": False,
    "saev-5-topk-negative.pt": False,
    "saev-5-batchtopk.pt": False,
    "saev-5-batchtopk-negative-theta.pt": False,
}
LENS = [name for name in golden_specs() if not name.startswith("saev")]


def test_goldens_are_what_the_documented_layout_writes(tmp_path):
    for name in golden_specs():
        fresh = load_sae(write_golden(name, tmp_path))
        committed = load_sae(GOLDEN / name)
        assert committed.fingerprint == fresh.fingerprint, name


@pytest.mark.parametrize("name", sorted(SAEV))
def test_saev_matches_saevs_math(name):
    sae = load_sae(GOLDEN / name)
    f, x_hat, _ = saev_math(name, X, subtract=SAEV[name])
    assert (sae.encode(X) - f).abs().max() <= TOL
    assert (sae(X) - x_hat).abs().max() <= TOL
    assert sae.cfg.apply_b_dec_to_input is SAEV[name]
    assert sae.cfg.metadata["b_dec_convention"].startswith("detected from header schema")
    # the other convention really differs, so the detection matters
    _, other, _ = saev_math(name, X, subtract=not SAEV[name])
    assert (sae(X) - other).abs().max() > 1e-3


def test_saev_topk_keeps_negative_pre_activations():
    name = "saev-5-topk-negative.pt"
    sae = load_sae(GOLDEN / name)
    f, _, h = saev_math(name, X, subtract=False)
    assert (h.topk(K, dim=-1).values < 0).all()  # every kept value is negative: a ReLU would zero them all
    z = sae.encode(X)
    assert ((z < 0).sum(-1) == K).all()
    assert (z - f).abs().max() <= TOL


@pytest.mark.parametrize("subtract", [True, False])
def test_saev_b_dec_flag_overrides_the_header(subtract):
    name = "saev-5-relu.pt"
    sae = load_sae(GOLDEN / name, apply_b_dec_to_input=subtract)
    _, x_hat, _ = saev_math(name, X, subtract=subtract)
    assert (sae(X) - x_hat).abs().max() <= TOL
    assert sae.cfg.metadata["b_dec_convention"] == "set by --apply-b-dec/--no-apply-b-dec"


@pytest.mark.parametrize("name", LENS)
def test_prisma_and_saelens_match_their_math(name):
    sae = load_sae(GOLDEN / name)
    f, x_hat, _ = lens_math(name, X)
    assert (sae.encode(X) - f).abs().max() <= TOL
    assert (sae(X) - x_hat).abs().max() <= TOL
    assert (sae.decode(sae.encode(X), X) - x_hat).abs().max() <= TOL


def test_prisma_defaults_and_hook_mapping():
    sae = load_sae(GOLDEN / "prisma-topk-default-norm" / "weights.pt")
    assert sae.cfg.normalize_activations == "layer_norm"  # not in config.json: ViT-Prisma's default
    assert sae.architecture == "topk" and sae.cfg.k == K
    assert (sae.hook.block, sae.hook.tokens) == (5, "cls")  # blocks.6.hook_resid_pre = output of block 5
    assert sae.cfg.metadata["source_format"] == "vit-prisma"


def _delta_reference(name: str, x: torch.Tensor, edits: list[Edit]) -> torch.Tensor:
    """x' - x = back(decode_n(z') + adds) - back(decode_n(z)), with the format's own decoder."""
    f, x_hat, (back, W, b_dec) = lens_math(name, x)
    changed, added = f.clone(), torch.zeros_like(x)
    for e in edits:
        if e.op == "scale":
            changed[..., e.latent] = f[..., e.latent] * e.value
        elif e.op == "clamp":
            changed[..., e.latent] = e.value
        else:  # add: value units of latent e.latent's decoder direction
            added = added + e.value * W[e.latent]
    return back(changed @ W + b_dec + added) - x_hat


@pytest.mark.parametrize("name", LENS)
def test_steering_delta_is_exact_under_normalisation(name):
    sae = load_sae(GOLDEN / name)
    z = sae.encode(X)
    on = int(z[0].argmax())
    edits = [Edit(latent=on, op="scale", value=0.0), Edit(latent=3, op="clamp", value=2.0),
             Edit(latent=7, op="add", value=1.5)]
    got = edits_delta(sae, X, edits)
    want = _delta_reference(name, X, edits)
    assert (got - want).abs().max() <= 1e-4
    assert want.abs().max() > 1e-2  # the edits really move the stream
    assert edits_delta(sae, X, []) is None  # an empty patch is the identity


# --- bad input: one line, naming the file, the field and the fix --------------------------------


def _one_line(error: pytest.ExceptionInfo) -> str:
    text = str(error.value)
    assert "\n" not in text
    return text


def test_unknown_saev_schema(tmp_path):
    path = write_saev(tmp_path / "sae.pt", {"schema": 9, "cfg": {}}, weights())
    with pytest.raises(SAEError) as error:
        load_sae(path)
    assert str(path) in _one_line(error) and "field 'schema' = 9 is unknown (known: none, 1, 2, 3, 4, 5)" in str(error.value)


def test_saev_header_disagreeing_with_weights(tmp_path):
    from tests.helpers.format_writers import saev_header

    path = write_saev(tmp_path / "sae.pt", saev_header(5, "Relu", d_sae=32), weights())
    with pytest.raises(SAEError) as error:
        load_sae(path)
    assert "saev header d_sae = 32 but W_enc has shape (8, 16)" in _one_line(error)


class _PrismaCfg:  # stands for ViT-Prisma's pickled config object
    d_in = 8


def test_prisma_pickled_config_names_the_conversion(tmp_path, capsys):
    folder = write_prisma(tmp_path / "legacy", prisma_config(), weights())
    torch.save({"cfg": _PrismaCfg(), "state_dict": weights()}, folder / "weights.pt")
    with pytest.raises(SAEError) as error:
        load_sae(folder)
    text = _one_line(error)
    assert "weights.pt" in text and "weights-only" in text
    assert "torch.save(sae.state_dict(), 'weights.pt')" in text


@pytest.mark.parametrize(("change", "message"), [
    ({"layer_subtype": "hook_mlp_out"}, "hook 'blocks.5.hook_mlp_out' is not the residual stream between blocks"),
    ({"layer_subtype": "ln2.hook_normalized"}, "supported: visual.transformer.resblocks.L, blocks.L.hook_resid_post"),
    ({"expansion_factor": 4}, "tensor W_enc has shape (8, 16) but cfg d_in=8, d_sae=32"),
    ({"activation_fn_str": "tanh-relu"}, "field 'activation_fn_str' = 'tanh-relu' is not supported"),
    ({"normalize_activations": "batch_norm"}, "normalize_activations='batch_norm' is not supported"),
    ({"is_transcoder": True}, "field 'is_transcoder' is true"),
])
def test_bad_prisma_folders(tmp_path, change, message):
    folder = write_prisma(tmp_path / "bad", {**prisma_config(), **change}, weights())
    with pytest.raises(SAEError) as error:
        load_sae(folder)
    assert message in _one_line(error)


def test_saelens_finetuning_flag_without_tensor(tmp_path):
    from tests.helpers.format_writers import saelens_cfg, write_saelens

    folder = write_saelens(tmp_path / "f", saelens_cfg(finetuning_scaling_factor=True), weights())
    with pytest.raises(SAEError) as error:
        load_sae(folder)
    assert "finetuning_scaling_factor=true but the weights have no finetuning_scaling_factor tensor" in _one_line(error)


def test_saelens_scaler_file_must_be_a_number(tmp_path):
    from tests.helpers.format_writers import saelens_cfg, write_saelens

    folder = write_saelens(tmp_path / "s", saelens_cfg(normalize="expected_average_only_in"), weights())
    (folder / "activation_scaler.json").write_text(json.dumps({"scaling_factor": "big"}))
    with pytest.raises(SAEError) as error:
        load_sae(folder)
    assert "activation_scaler.json: scaling_factor = 'big' must be a number" in _one_line(error)


def test_normalised_sae_round_trips_through_saelens_folder(tmp_path):
    from steerpatch.sae import save_sae

    sae = load_sae(GOLDEN / "saelens-expected-average")
    again = load_sae(save_sae(sae, tmp_path / "copy"))
    assert again.cfg.norm_scaling_factor == pytest.approx(0.37)
    assert again.fingerprint == sae.fingerprint
    assert (again(X) - sae(X)).abs().max() == 0
