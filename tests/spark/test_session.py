"""Finding Java and pyspark, and the session the engine runs on."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from steerpatch.errors import MissingDependencyError
from steerpatch.spark.session import find_java, is_local, parse_java_version


@pytest.mark.parametrize(
    ("text", "major"),
    [
        ('openjdk version "17.0.15" 2025-04-15', 17),
        ('java version "1.8.0_392"', 8),
        ('openjdk version "21" 2023-09-19', 21),
        ("no version here", None),
    ],
)
def test_parse_java_version(text, major):
    assert parse_java_version(text) == major


def test_finds_the_installed_java():
    java, major = find_java()
    assert java.name == "java"
    assert major >= 17


def test_missing_java_on_path_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.delenv("JAVA_HOME", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(MissingDependencyError, match="no `java` is on the PATH"):
        find_java()


def test_bad_java_home_is_a_clear_error(tmp_path):
    with pytest.raises(MissingDependencyError, match="JAVA_HOME is .* does not exist"):
        find_java(str(tmp_path))


def test_old_java_is_refused(tmp_path):
    fake = tmp_path / "bin" / "java"
    fake.parent.mkdir()
    fake.write_text('#!/bin/sh\necho \'java version "1.8.0_392"\' >&2\n')
    fake.chmod(0o755)
    with pytest.raises(MissingDependencyError, match="Java 8, Spark 4 needs Java 17"):
        find_java(str(tmp_path))


def test_local_masters():
    assert is_local("local[2]") and is_local("local") and is_local("local-cluster[2,1,1024]")
    assert not is_local("spark://host:7077") and not is_local("yarn")


def test_engine_spark_without_pyspark_says_how_to_install(tmp_path):
    # pyspark hidden in a fresh interpreter: the import fails as it does where the extra is missing
    code = (
        "import sys, json\n"
        "sys.modules['pyspark'] = None\n"
        "from click.testing import CliRunner\n"
        "from steerpatch.cli.main import cli\n"
        f"r = CliRunner().invoke(cli, ['score', 'any.onnx', '--data', {str(tmp_path)!r}, "
        f"'--engine', 'spark', '--out', {str(tmp_path / 'o.parquet')!r}])\n"
        "print(json.dumps([r.exit_code, r.output]))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    exit_code, output = json.loads(out.strip().splitlines()[-1])
    assert exit_code == 2
    assert "pip install 'steerpatch[spark]'" in output


def test_session_is_local_private_and_small(spark):
    # the fixture passes no master and no settings: these are the library's defaults
    conf = spark.sparkContext.getConf()
    assert spark.sparkContext.master == "local[2]"
    assert spark.sparkContext.appName == "steerpatch-tests"
    assert conf.get("spark.ui.enabled") == "false"
    assert conf.get("spark.ui.showConsoleProgress") == "false"
    assert conf.get("spark.driver.host") == "127.0.0.1"
    assert conf.get("spark.driver.bindAddress") == "127.0.0.1"
    assert spark.conf.get("spark.sql.shuffle.partitions") == "2"


def test_session_is_reused(spark):
    from steerpatch.spark import spark_session

    assert spark_session() is spark
    assert spark_session("local[2]") is spark


def test_the_engine_imports_nothing_heavy():
    code = (
        "import sys, json, steerpatch.spark, steerpatch.cli.score\n"
        "print(json.dumps([m for m in ('pyspark', 'torch', 'onnxruntime', 'mlflow') if m in sys.modules]))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert json.loads(out.strip().splitlines()[-1]) == []
