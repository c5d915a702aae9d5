"""Importing steerpatch, and asking the CLI for help, must not load heavy libraries."""

from __future__ import annotations

import json
import subprocess
import sys

HEAVY = ("torch", "mlflow", "onnx", "onnxruntime", "open_clip", "fastapi", "pyspark")


def _loaded_after(code: str) -> list[str]:
    probe = f"{code}\nimport sys, json\nprint(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def test_import_is_light():
    assert _loaded_after("import steerpatch") == []


def test_cli_help_is_light():
    code = (
        "import contextlib, io\n"
        "from steerpatch.cli.main import cli\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        "    try:\n"
        "        cli(['--help'], prog_name='steerpatch')\n"
        "    except SystemExit:\n"
        "        pass"
    )
    assert _loaded_after(code) == []


def test_help_lists_the_workflow(runner):
    from steerpatch.cli.main import cli

    result = runner.invoke(cli, ["--help"])
    assert result.exit_code == 0
    for name in ("demo", "attribute", "patch", "validate", "register", "promote", "compile", "serve", "studio"):
        assert f"  {name} " in result.output


def test_unknown_public_name_raises():
    import pytest

    import steerpatch

    with pytest.raises(AttributeError, match="no_such_thing"):
        steerpatch.no_such_thing  # noqa: B018


def test_public_names_resolve_whatever_was_imported_first():
    """`steered` and `attribute_latents` stay callables even after their subpackages are imported."""
    code = (
        "import steerpatch, steerpatch.steer, steerpatch.attribute\n"
        "assert callable(steerpatch.steered) and callable(steerpatch.attribute_latents)\n"
        "assert all(getattr(steerpatch, n) is not None for n in steerpatch.__all__)\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
