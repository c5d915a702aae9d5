"""Developer sessions. They run in the active environment (the README's `.venv`), so nothing is installed twice.

    nox -s tests       # system packages the suite needs (Chromium, a JDK), then the whole suite
    nox -s lint        # ruff
    nox -s typecheck   # mypy on the package
    nox -s demo        # the main job on the embedded default
    nox -s bench       # benchmarks, printed as ratios measured side by side
    nox -s mutation    # mutmut over the core modules, each against its own tests (slow; not in CI)
"""

from __future__ import annotations

import sys

import nox

nox.options.default_venv_backend = "none"
nox.options.sessions = ["tests"]


@nox.session
def tests(session: nox.Session) -> None:
    """Install missing system packages, then run the full test suite."""
    session.run("bash", ".ci/system-deps.sh", external=True)
    session.run(sys.executable, "-m", "pytest", *session.posargs, external=True)


@nox.session
def lint(session: nox.Session) -> None:
    """Ruff over the package, plugins, tests and benchmarks."""
    session.run(sys.executable, "-m", "ruff", "check", "steerpatch", "plugins", "tests", "bench", external=True)


@nox.session
def typecheck(session: nox.Session) -> None:
    """Mypy over the package and the MLflow plugin."""
    session.run(sys.executable, "-m", "mypy", "steerpatch", "plugins/mlflow_steerpatch", external=True)


@nox.session
def demo(session: nox.Session) -> None:
    """The main job: `steerpatch demo` on the embedded default."""
    session.run(sys.executable, "-m", "steerpatch.cli.main", "demo", *session.posargs, external=True)


@nox.session
def bench(session: nox.Session) -> None:
    """Every benchmark in bench/, each printing its measured ratios."""
    for script in ("bench/bench_validate.py", "bench/bench_validate_memory.py", "bench/bench_serve.py",
                   "bench/bench_serve_multi.py", "bench/bench_reliability.py", "bench/bench_studio.py",
                   "bench/bench_spark.py", "bench/bench_suggest.py"):
        session.run(sys.executable, script, *session.posargs, external=True)


@nox.session
def mutation(session: nox.Session) -> None:
    """Mutation testing of the core modules, each against its own tests: score per module and survivors.

    `nox -s mutation -- policy parity` runs some modules; `nox -s mutation -- --list` names them.
    """
    session.run(sys.executable, "tests/mutation.py", *session.posargs, external=True)
