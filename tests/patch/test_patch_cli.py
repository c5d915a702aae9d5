"""`steerpatch patch ...` end to end on a random-init ViT-B-32 and a random SAE saved to disk."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from steerpatch.cli.main import cli
from steerpatch.patch import load_patch
from tests.helpers.patch_docs import GOLDEN

BLOCK = 8


def _random_sae(seed: int):
    import torch

    from steerpatch.sae import SAE, SAEConfig
    from steerpatch.sae.config import hook_metadata

    gen = torch.Generator().manual_seed(seed)
    cfg = SAEConfig(d_in=768, d_sae=128, architecture="topk", k=8, metadata=hook_metadata(BLOCK, "all"))
    tensors = {
        "W_enc": torch.randn(768, 128, generator=gen) / 28,
        "b_enc": torch.zeros(128),
        "W_dec": torch.randn(128, 768, generator=gen) / 12,
        "b_dec": torch.zeros(768),
    }
    return SAE(cfg, tensors)


@pytest.fixture(scope="module")
def sae_dirs(tmp_path_factory) -> tuple[Path, Path]:
    from steerpatch.sae import save_sae

    root = tmp_path_factory.mktemp("saes")
    return save_sae(_random_sae(0), root / "sae"), save_sae(_random_sae(1), root / "other-sae")


@pytest.fixture(scope="module")
def made(sae_dirs, tmp_path_factory) -> Path:
    """A patch created by `patch new` against ViT-B-32 (random init) and the first SAE."""
    from click.testing import CliRunner

    out = tmp_path_factory.mktemp("made") / "drop-3.json"
    args = ["patch", "new", "--name", "drop-3", "--model", "ViT-B-32", "--sae", str(sae_dirs[0]),
            "--edit", "3:scale:0", "--edit", "7:clamp:1.5", "--rationale", "test", "--author", "ana",
            "--tokens", "patches", "--out", str(out)]  # fmt: skip
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert f"wrote drop-3@1.0.0 to {out}" in result.stdout
    return out


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> list[Path]:
    from PIL import Image

    root = tmp_path_factory.mktemp("images")
    paths = []
    for i, colour in enumerate([(200, 30, 30), (20, 90, 220)]):
        path = root / f"img{i}.png"
        Image.new("RGB", (96, 80), colour).save(path)
        paths.append(path)
    return paths


def test_new_binds_to_model_and_sae(made, vitb32, sae_dirs):
    from steerpatch.sae import load_sae

    patch = load_patch(made)
    sae = load_sae(sae_dirs[0])
    assert patch.model.id == "ViT-B-32" and patch.model.fingerprint == vitb32.fingerprint
    assert (patch.sae.fingerprint, patch.sae.architecture, patch.d_sae) == (sae.fingerprint, "topk", 128)
    assert patch.sae.location == str(sae_dirs[0])
    assert (patch.hook.block, patch.tokens, patch.author) == (BLOCK, "patches", "ana")
    assert [(e.latent, e.op, e.value) for e in patch.edits] == [(3, "scale", 0.0), (7, "clamp", 1.5)]


@pytest.mark.parametrize(
    ("edit", "fragment"),
    [("300:scale:0", "edits[0].latent: 300 is out of range for an SAE with d_sae=128"),
     ("3-scale-0", "is not of the form LATENT:OP:VALUE"),
     ("3:shrink:0", "needs latent >= 0, a known op"),
     ("3:scale:nan", "a finite value")],
)  # fmt: skip
def test_new_refuses_bad_edits(runner, sae_dirs, tmp_path, edit, fragment):
    out = tmp_path / "p.json"
    args = ["patch", "new", "--name", "x", "--model", "ViT-B-32", "--sae", str(sae_dirs[0]),
            "--edit", edit, "--rationale", "r", "--out", str(out)]  # fmt: skip
    result = runner.invoke(cli, args)
    assert result.exit_code == 2
    assert fragment in result.stderr
    assert not out.exists()


def test_new_without_author_records_the_current_user(runner, sae_dirs, tmp_path, monkeypatch):
    monkeypatch.setenv("STEERPATCH_USER", "grace")  # the same rule as the studio and `register`
    out = tmp_path / "p.json"
    args = ["patch", "new", "--name", "x", "--model", "ViT-B-32", "--sae", str(sae_dirs[0]),
            "--edit", "3:scale:0", "--rationale", "r", "--out", str(out)]  # fmt: skip
    result = runner.invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert load_patch(out).author == "grace"


def test_new_refuses_to_overwrite(runner, made, sae_dirs):
    before = made.read_bytes()
    args = ["patch", "new", "--name", "drop-3", "--model", "ViT-B-32", "--sae", str(sae_dirs[0]),
            "--edit", "1:scale:0", "--rationale", "r", "--out", str(made)]  # fmt: skip
    result = runner.invoke(cli, args)
    assert result.exit_code == 2 and "already exists" in result.stderr
    assert made.read_bytes() == before


def test_show(runner, made):
    result = runner.invoke(cli, ["patch", "show", str(made)])
    assert result.exit_code == 0
    assert result.stdout.startswith("drop-3@1.0.0  (")
    assert "latent      3  scale            0" in result.stdout
    result = runner.invoke(cli, ["patch", "show", "--json", str(made)])
    assert json.loads(result.stdout) == json.loads(made.read_text())


def test_check_valid_and_against_an_sae(runner, made, sae_dirs):
    result = runner.invoke(cli, ["patch", "check", str(made)])
    assert result.exit_code == 0 and "drop-3.json: valid (drop-3@1.0.0" in result.stdout
    assert runner.invoke(cli, ["patch", "check", str(made), "--sae", str(sae_dirs[0])]).exit_code == 0
    result = runner.invoke(cli, ["patch", "check", str(made), "--sae", str(sae_dirs[1]), "--json"])
    assert result.exit_code == 2
    assert "sae fingerprint mismatch" in json.loads(result.stdout)["problems"][0]


def test_check_rehash_repairs_only_the_hash(runner, tmp_path):
    path = tmp_path / "p.json"
    doc = json.loads(GOLDEN.read_text())
    doc["rationale"] = "edited by hand"
    path.write_text(json.dumps(doc))
    assert runner.invoke(cli, ["patch", "check", str(path)]).exit_code == 2
    result = runner.invoke(cli, ["patch", "check", "--rehash", str(path)])
    assert result.exit_code == 0 and "rehashed" in result.stdout
    assert load_patch(path).rationale == "edited by hand"
    doc["name"] = "Not A Slug"
    path.write_text(json.dumps(doc))
    result = runner.invoke(cli, ["patch", "check", "--rehash", str(path)])
    assert result.exit_code == 2 and "name: name 'Not A Slug' is not a slug" in result.stderr
    assert json.loads(path.read_text())["name"] == "Not A Slug"  # untouched


def test_bump_diff_and_compose(runner, made, tmp_path):
    bumped = tmp_path / "b.json"
    result = runner.invoke(cli, ["patch", "bump", str(made), "--part", "minor", "--edit", "7:clamp:0.5",
                                 "--remove-latent", "3", "--edit", "9:add:1", "--out", str(bumped)])  # fmt: skip
    assert result.exit_code == 0, result.output
    new = load_patch(bumped)
    assert (new.version, new.parent) == ("1.1.0", "drop-3@1.0.0")
    assert [(e.latent, e.value) for e in new.edits] == [(7, 0.5), (9, 1.0)]

    result = runner.invoke(cli, ["patch", "diff", str(made), str(bumped)])
    assert result.exit_code == 0
    lines = result.stdout.splitlines()
    assert "- edit latent 3: scale 0" in lines and "+ edit latent 9: add 1" in lines
    assert "~ edit latent 7: clamp 1.5 -> clamp 0.5" in lines
    data = json.loads(runner.invoke(cli, ["patch", "diff", "--json", str(made), str(bumped)]).stdout)
    assert data["metadata"]["parent"] == {"a": None, "b": "drop-3@1.0.0"}

    composed = tmp_path / "c.json"
    result = runner.invoke(
        cli, ["patch", "compose", str(made), str(bumped), "--name", "both", "--out", str(composed)]
    )
    assert result.exit_code == 2
    assert "latent 7: drop-3@1.0.0 sets clamp 1.5 and drop-3@1.1.0 sets clamp 0.5" in result.stderr
    assert not composed.exists()
    result = runner.invoke(cli, ["patch", "compose", str(made), str(bumped), "--name", "both", "--resolve", "last",
                                 "--out", str(composed)])  # fmt: skip
    assert result.exit_code == 0, result.output
    both = load_patch(composed)
    assert {e.latent: e.value for e in both.edits} == {3: 0.0, 7: 0.5, 9: 1.0}
    assert both.provenance.composed_from == ["drop-3@1.0.0", "drop-3@1.1.0"]


def test_bump_default_output_sits_beside_the_input(runner, made, tmp_path):
    copy = tmp_path / "drop-3.json"
    copy.write_bytes(made.read_bytes())
    result = runner.invoke(cli, ["patch", "bump", str(copy)])
    assert result.exit_code == 0
    assert load_patch(tmp_path / "drop-3-1.0.1.json").parent == "drop-3@1.0.0"


def test_schema(runner, tmp_path):
    result = runner.invoke(cli, ["patch", "schema"])
    assert result.exit_code == 0
    schema = json.loads(result.stdout)
    assert schema["title"] == "steerpatch patch" and "edits" in schema["properties"]
    out = tmp_path / "schema.json"
    assert runner.invoke(cli, ["patch", "schema", "--out", str(out)]).exit_code == 0
    assert json.loads(out.read_text()) == schema


def test_apply_prints_before_and_after(runner, made, images):
    args = ["patch", "apply", str(made), *map(str, images), "--classes", "red,blue,green", "--top-k", "2"]
    result = runner.invoke(cli, [*args, "--verbose"])
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert out.startswith("drop-3@1.0.0 on ViT-B-32 (block 8, tokens patches)")
    assert out.count("  before: ") == 2 and out.count("  after:  ") == 2
    assert out.splitlines()[1] == str(images[0])
    rows = json.loads(runner.invoke(cli, [*args, "--json"]).stdout)["images"]
    changed = [r["image"] for r in rows if r["before"][0][0] != r["after"][0][0]]
    assert f"top-1 prediction changed on {len(changed)} of 2 images" in out
    # without --verbose: the header, the summary and one line per changed image only
    short = runner.invoke(cli, args).stdout.splitlines()
    assert short[1] == f"top-1 prediction changed on {len(changed)} of 2 images"
    assert [line.split(":")[0].strip() for line in short[2:]] == changed
    assert "before:" not in "\n".join(short)


def test_apply_refuses_another_sae_unless_overridden(runner, made, images, sae_dirs):
    args = ["patch", "apply", str(made), str(images[0]), "--classes", "red,blue", "--sae", str(sae_dirs[1])]
    result = runner.invoke(cli, args)
    assert result.exit_code == 2
    assert "sae fingerprint mismatch" in result.stderr and load_patch(made).sae.fingerprint in result.stderr
    result = runner.invoke(cli, [*args, "--allow-fingerprint-mismatch", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    [override] = data["overrides"]
    assert override["kind"] == "sae" and override["expected"] == load_patch(made).sae.fingerprint
    [row] = data["images"]
    assert {c for c, _ in row["before"]} == {c for c, _ in row["after"]} == {"red", "blue"}
    assert sum(p for _, p in row["after"]) == pytest.approx(1.0, abs=1e-5)


def test_apply_bad_image(runner, made, tmp_path):
    bad = tmp_path / "not-an-image.png"
    bad.write_text("hello")
    result = runner.invoke(cli, ["patch", "apply", str(made), str(bad), "--classes", "a,b"])
    assert result.exit_code == 2 and "cannot be decoded" in result.stderr
