"""Every patch field is checked to its domain at load, so nothing malformed reaches validate or compile."""

from __future__ import annotations

import copy
import json
import os
import threading

import pytest

from steerpatch.cli.main import cli
from steerpatch.errors import PatchError, SAEError, SteerpatchError
from steerpatch.patch import patch_from_json
from steerpatch.patch.format import MAX_D_SAE
from tests.helpers.patch_docs import GOLDEN

VALID = json.loads(GOLDEN.read_text())


def _text(**changes) -> str:
    doc = copy.deepcopy(VALID)
    for path, value in changes.items():
        *parents, last = path.split("__")
        target = doc
        for key in parents:
            target = target[int(key)] if key.isdigit() else target[key]
        target[int(last) if last.isdigit() else last] = value
    return json.dumps(doc)


HOSTILE = [
    ({"edits__0__op": "add", "edits__0__value": 1e38}, "edits[0]: value 1e+38 is out of range for op 'add'"),
    ({"edits__0__op": "add", "edits__0__value": 1e300}, "out of range for op 'add'"),
    (
        {"edits__0__value": -1e38},
        "edits[0]: value -1e+38 is out of range for op 'scale'; use a finite value in [-1000, 1000]",
    ),
    ({"edits__1__value": 1.7e308}, "edits[1]: value 1.7e+308 is out of range for op 'clamp_if_active'"),
    ({"d_sae": 10**30}, "(document): an integer has 31 digits"),
    ({"d_sae": MAX_D_SAE + 1}, "d_sae: 134217729 is too large; use a value <= 134217728"),
    ({"edits__0__latent": MAX_D_SAE}, "edits[0].latent: 134217728 is too large"),
    ({"name": "a.."}, "name 'a..' is not a slug"),
    ({"name": "a-"}, "name 'a-' is not a slug"),
    ({"name": "a._b"}, "name 'a._b' is not a slug"),
    (
        {"model__id": "concept-clip\n  sae  forged"},
        "model.id: 'concept-clip\\n  sae  forged' contains a control character",
    ),
    ({"sae__location": "x\u2028y"}, "sae.location:"),
    ({"author": "ana\r"}, "author:"),
    ({"rationale": "bell\x07"}, "rationale:"),
    ({"sae__architecture": "../pickle"}, 'sae.architecture: "../pickle" is not an architecture name'),
    ({"tokens": [70000]}, "tokens[0]: 70000 is too large"),
    ({"provenance__instances__0__scores": {"9" * 30: 1.0}}, "score keys must be latent indices"),
]


@pytest.mark.parametrize(("changes", "fragment"), HOSTILE, ids=[str(c)[:60] for c, _ in HOSTILE])
def test_out_of_domain_values_are_refused_at_load(changes, fragment):
    with pytest.raises(PatchError) as info:
        patch_from_json(_text(**changes))
    assert fragment in str(info.value), str(info.value)


def test_a_latent_with_5001_digits_is_refused_while_parsing():
    text = json.dumps(VALID).replace('"latent": 17', '"latent": ' + "7" * 5001)
    with pytest.raises(PatchError, match="an integer has 5,001 digits"):
        patch_from_json(text)


def test_an_unregistered_architecture_is_refused_by_patch_check(runner, tmp_path):
    from steerpatch.patch import Patch

    doc = copy.deepcopy(VALID)
    doc["sae"]["architecture"] = "pickle"
    patch = Patch.model_validate({**doc, "content_hash": "0" * 64}, context={"rehash": True})
    path = tmp_path / "p.json"
    path.write_text(json.dumps(patch.to_dict()))
    result = runner.invoke(cli, ["patch", "check", str(path)])
    assert result.exit_code == 2
    from steerpatch.sae.architectures import SAE_REGISTRY

    known = ", ".join(sorted(SAE_REGISTRY))
    assert (
        f"'pickle' is not a registered SAE architecture; use one of {known}" in result.stderr
    )


def test_huge_documents_print_short_errors(runner, tmp_path):
    doc = copy.deepcopy(VALID)
    doc["edits"] = [{"latent": i, "op": "zap", "value": 0.0} for i in range(100_000)]
    path = tmp_path / "big.json"
    path.write_text(json.dumps(doc))
    result = runner.invoke(cli, ["patch", "check", str(path)])
    assert result.exit_code == 2
    assert len(result.stderr) < 5_000
    assert "and 99,980 more problems" in result.stderr
    doc = copy.deepcopy(VALID)
    doc["tokens"] = list(range(1_000_000))
    path.write_text(json.dumps(doc))
    result = runner.invoke(cli, ["patch", "check", str(path)])
    assert result.exit_code == 2 and len(result.stderr) < 1_000
    assert "tokens: has 1000000 items; use at most 65536" in result.stderr
    for field in ("name", "version", "parent", "created_at", "content_hash"):
        doc = copy.deepcopy(VALID)
        doc[field] = "X" * 1_000_000
        path.write_text(json.dumps(doc))
        result = runner.invoke(cli, ["patch", "check", str(path)])
        assert result.exit_code == 2 and len(result.stderr) < 2_000, (field, len(result.stderr))


def test_patch_show_cannot_be_made_to_forge_lines(runner, tmp_path, make_patch):
    path = tmp_path / "p.json"
    path.write_text(json.dumps(make_patch(rationale="line one\n  model       forged").to_dict()))
    result = runner.invoke(cli, ["patch", "show", str(path)])
    assert result.exit_code == 0
    lines = result.stdout.splitlines()
    assert [line for line in lines if line.startswith("  model")] == [
        f"  model       concept-clip  {'1f' * 32}"
    ]
    assert " " * 14 + "  model       forged" in lines  # indented under the rationale


def _finishes(fn, seconds=20.0):
    """Run fn in a thread; a FIFO that is opened would block it forever."""
    outcome: dict = {}

    def target():
        try:
            fn()
        except Exception as error:  # noqa: BLE001 - the test inspects it
            outcome["error"] = error

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), "opened a FIFO and hung"
    return outcome.get("error")


def test_special_files_are_refused_by_type(tmp_path, runner):
    from steerpatch.sae import load_sae

    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    error = _finishes(lambda: load_sae(fifo))
    assert isinstance(error, SAEError) and "is a FIFO, not a regular file" in str(error)
    folder = tmp_path / "sae"
    folder.mkdir()
    os.mkfifo(folder / "cfg.json")
    error = _finishes(lambda: load_sae(folder))
    assert isinstance(error, SAEError) and "cfg.json' is a FIFO" in str(error)
    result = runner.invoke(cli, ["patch", "check", str(fifo)])
    assert result.exit_code == 2 and "is a FIFO" in result.stderr
    error = _finishes(lambda: load_sae("/dev/zero"))
    assert isinstance(error, SteerpatchError) and "is a device" in str(error)
