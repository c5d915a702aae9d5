"""Mutation testing of the core modules, each against its own tests (run by `nox -s mutation`).

    python tests/mutation.py                      # every core module
    python tests/mutation.py policy parity        # some of them, by the short names below
    python tests/mutation.py --list               # the modules and the tests each is run against
    python tests/mutation.py --resume policy      # after adding tests: re-test changed code and the survivors

mutmut 3 mutates a copy of the package under `mutants/` of the directory it runs in and reads its
settings from that directory's `pyproject.toml`. Each module therefore gets a scratch directory,
`.mutation/<name>/`, with a copy of the package, the tests and a `pyproject.toml` that names only that
module and only its tests, so one module's run never runs (or waits for) the whole suite. A module's
score is killed / all its mutants (one that no test reaches counts as alive); the survivors are printed with their diffs and must be
killed by a test or explained in `tests/MUTANTS.md`.

The registry modules' tests use real MLflow stores. Each mutant is a fresh pytest session, so the run
builds the empty store's schema once (`STEERPATCH_TEST_MLFLOW_DB`) and lets the fixtures keep the stores
they register versions into (`STEERPATCH_TEST_STORE_CACHE`, see tests/registry/conftest.py) instead of
paying for both again per mutant.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRATCH = ROOT / ".mutation"
EXPLAINED = ROOT / "tests" / "MUTANTS.md"
# what the tests read besides the package: the repository policy and shipped patches, the plugin
COPY = ("steerpatch", "tests", "registry", "plugins")


@dataclass(frozen=True)
class Target:
    """One core module and the tests that are its own."""

    module: str
    tests: tuple[str, ...]


TARGETS: dict[str, Target] = {
    "delta": Target("steerpatch/steer/delta.py", ("tests/steer/test_steer_delta.py", "tests/steer/test_delta_bite.py")),
    "format": Target(
        "steerpatch/patch/format.py",
        ("tests/patch/test_patch_format.py", "tests/patch/test_patch_malformed.py", "tests/patch/test_format_bite.py"),
    ),
    "fields": Target(
        "steerpatch/patch/fields.py",
        ("tests/patch/test_patch_format.py", "tests/patch/test_patch_malformed.py", "tests/patch/test_format_bite.py"),
    ),
    "ops": Target("steerpatch/patch/ops.py", ("tests/patch/test_ops_bite.py",)),
    "metrics": Target(
        "steerpatch/validate/metrics.py", ("tests/validate/test_metrics.py", "tests/validate/test_metrics_bite.py")
    ),
    "policy": Target(
        "steerpatch/validate/policy.py", ("tests/validate/test_policy.py", "tests/validate/test_gates_bite.py")
    ),
    "report": Target(
        "steerpatch/validate/report.py",
        ("tests/validate/test_report.py", "tests/validate/test_report_bite.py", "tests/validate/test_gates_bite.py"),
    ),
    "gates": Target(
        "steerpatch/validate/gates.py",
        ("tests/validate/test_report.py", "tests/validate/test_report_bite.py", "tests/validate/test_gates_bite.py",
         "tests/validate/test_unmeasured.py"),
    ),
    "bundle": Target(
        "steerpatch/registry/bundle.py",
        ("tests/registry/test_bundle_bite.py", "tests/registry/test_manifest_bite.py"),
    ),
    "promotion": Target(
        "steerpatch/registry/promotion.py", ("tests/registry/test_promotion_bite.py",)
    ),
    "audit": Target("steerpatch/registry/audit.py", ("tests/registry/test_audit_bite.py",)),
    "parity": Target("steerpatch/compile/parity.py", ("tests/compile/test_parity_bite.py",)),
}


def _pyproject(target: Target, tests: list[str]) -> str:
    """The repository's pyproject with a `[tool.mutmut]` table for this one module appended."""
    text = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    selection = ", ".join(json.dumps(t) for t in tests)
    return (
        text
        + "\n[tool.mutmut]\n"
        + 'source_paths = ["steerpatch"]\n'
        + 'also_copy = ["registry", "plugins"]\n'
        + f"only_mutate = [{json.dumps(target.module)}]\n"
        + f"pytest_add_cli_args_test_selection = [{selection}]\n"
        # -p no:cacheprovider: the copies must not write into each other's caches
        + 'pytest_add_cli_args = ["-q", "-p", "no:cacheprovider", "-p", "no:randomly"]\n'
        + 'use_git_change_detection = false\n'
    )


def _prepare(name: str, target: Target) -> Path:
    """A fresh scratch copy for one module; returns its directory."""
    work = SCRATCH / name
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", ".pytest_cache", "mlflow.db*", "artifacts", ".lock")
    for part in COPY:
        shutil.copytree(ROOT / part, work / part, ignore=ignore, symlinks=True)
    tests = [t for t in target.tests if (ROOT / t).is_file()]
    (work / "pyproject.toml").write_text(_pyproject(target, tests), encoding="utf-8")
    return work


def _empty_store(work: Path) -> Path:
    """An empty MLflow sqlite store with its schema, built once for the run: each mutant's pytest session
    copies it (see `_initialised_db` in tests/registry/conftest.py) instead of migrating a new one (~8 s)."""
    db = work / "empty-store" / "mlflow.db"
    db.parent.mkdir(parents=True, exist_ok=True)
    code = "import sys; from steerpatch.registry.store import client, resolve_store; client(resolve_store(sys.argv[1]))"
    subprocess.run([sys.executable, "-c", code, f"sqlite:///{db}"], cwd=ROOT, check=True)
    return db


def _meta(work: Path, target: Target) -> dict[str, int | None]:
    meta = work / "mutants" / (target.module + ".meta")
    if not meta.is_file():
        return {}
    return json.loads(meta.read_text(encoding="utf-8"))["exit_code_by_key"]


def _diff(work: Path, target: Target, mutant: str) -> str:
    """The mutant's changed lines, `-old | +new`, read in-process (a `mutmut show` per mutant is slow)."""
    from mutmut.mutation.diff_apply import get_diff_for_mutant

    here = Path.cwd()
    os.chdir(work)
    try:
        diff = get_diff_for_mutant(mutant, path=target.module)
    finally:
        os.chdir(here)
    lines = [line for line in diff.splitlines() if line.startswith(("+", "-")) and not line.startswith(("+++", "---"))]
    return " | ".join(line[0] + line[1:].strip() for line in lines)


def explained(module: str) -> set[str]:
    """Mutant names (`x_fn__mutmut_N`) explained under the module's heading in tests/MUTANTS.md."""
    import re

    names: set[str] = set()
    section = None
    for line in EXPLAINED.read_text(encoding="utf-8").splitlines():
        if line.startswith("## "):
            section = line[3:].strip()
        elif section == module:
            names.update(re.findall(r"x\w*?__mutmut_\d+", line))
    return names


def _sync(name: str, target: Target) -> Path:
    """Bring an existing scratch copy up to date with the repository, keeping mutmut's results.

    mutmut then re-tests only the mutants of functions whose code changed and collects coverage for new
    tests; `run_one(resume=True)` re-runs the survivors against the new tests itself.
    """
    work = SCRATCH / name
    if not (work / "mutants").is_dir():
        return _prepare(name, target)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", ".pytest_cache", "mlflow.db*", "artifacts", ".lock")
    for part in COPY:
        # copy2 keeps the modification times mutmut compares to decide what to mutate again
        shutil.copytree(ROOT / part, work / part, ignore=ignore, symlinks=True, dirs_exist_ok=True)
    tests = [t for t in target.tests if (ROOT / t).is_file()]
    settings = _pyproject(target, tests)
    if (work / "pyproject.toml").read_text(encoding="utf-8") != settings:
        (work / "pyproject.toml").write_text(settings, encoding="utf-8")
    return work


def _mutmut(work: Path, target: Target, args: list[str], log: Path) -> int:
    env = dict(os.environ, OMP_NUM_THREADS="1", MLFLOW_DISABLE_TELEMETRY="true")
    if any(t.startswith("tests/registry/") for t in target.tests):
        db = work / "empty-store" / "mlflow.db"
        env["STEERPATCH_TEST_MLFLOW_DB"] = str(db if db.is_file() else _empty_store(work))
        # stores the registry fixtures register versions into, built by the first (stats) session
        env["STEERPATCH_TEST_STORE_CACHE"] = str(work / "store-cache")
    with log.open("a") as out:
        return subprocess.run(
            [sys.executable, "-m", "mutmut", "run", *args], cwd=work, env=env, stdout=out, stderr=subprocess.STDOUT
        ).returncode


def run_one(
    name: str, max_children: int, *, rerun: bool = True, resume: bool = False
) -> tuple[int, int, list[str]]:
    """Mutate one module (or, with rerun=False, read its last run; with resume=True, update the last run
    after tests or code changed); returns (killed, mutants, survivor lines)."""
    target = TARGETS[name]
    work = SCRATCH / name
    log = work / "mutmut.log"
    print(f"== {name}: {target.module} against {', '.join(target.tests)}", flush=True)
    returncode = 0
    if resume:
        from mutmut.stats import status_by_exit_code

        work = _sync(name, target)
        # the last run's survivors first, against today's tests; then whatever is left unchecked
        codes = _meta(work, target)
        alive = [k for k, c in sorted(codes.items()) if status_by_exit_code[c] in ("survived", "no tests")]
        if alive:
            returncode = _mutmut(work, target, ["--max-children", str(max_children), *alive], log)
        if returncode == 0:
            returncode = _mutmut(work, target, ["--max-children", str(max_children)], log)
    elif rerun:
        work = _prepare(name, target)
        log.unlink(missing_ok=True)
        returncode = _mutmut(work, target, ["--max-children", str(max_children)], log)
    codes = _meta(work, target)
    if returncode != 0 or not codes:
        print(f"   mutmut failed (exit {returncode}) or never ran; see {log}", flush=True)
        return 0, 0, []
    from mutmut.stats import status_by_exit_code

    status = {k: status_by_exit_code[c] for k, c in codes.items()}
    killed = sum(1 for s in status.values() if s in ("killed", "timeout", "caught by type check"))
    # a mutant no test reaches, or one whose run crashed, is not killed: it counts against the score
    alive = sorted(k for k, s in status.items() if s not in ("killed", "timeout", "caught by type check"))
    unchecked = [k for k in alive if status[k] == "not checked"]
    if unchecked:
        # an interrupted run: the score below counts these as alive; say how the checked ones fared
        checked = len(codes) - len(unchecked)
        print(f"   INCOMPLETE: {len(unchecked)} of {len(codes)} mutants not checked; killed {killed}/{checked} "
              f"checked ({100.0 * killed / max(checked, 1):.1f}%); `--resume {name}` checks the rest", flush=True)
        alive = [k for k in alive if status[k] != "not checked"]
    known = explained(target.module)
    short = {k: k.rsplit(".", 1)[-1] for k in alive}
    lines = [
        f"   {'explained ' if short[k] in known else 'UNEXPLAINED'} {k} [{status[k]}]: {_diff(work, target, k)}"
        for k in alive
    ]
    return killed, len(codes), lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("modules", nargs="*", help=f"short names ({', '.join(TARGETS)}); default: all")
    parser.add_argument("--list", action="store_true", help="list the modules and their tests, then stop")
    parser.add_argument("--max-children", type=int, default=2, help="parallel test processes (default 2)")
    parser.add_argument("--last", action="store_true", help="print the last run's scores and survivors, run nothing")
    parser.add_argument(
        "--resume", action="store_true",
        help="update the last run: re-test the mutants of changed code and every survivor, against today's tests",
    )
    args = parser.parse_args(argv)
    if args.list:
        for name, target in TARGETS.items():
            print(f"{name:10} {target.module:34} {' '.join(target.tests)}")
        return 0
    unknown = [m for m in args.modules if m not in TARGETS]
    if unknown:
        parser.error(f"unknown module {unknown[0]!r}; choose from {', '.join(TARGETS)}")
    rows = []
    for name in args.modules or list(TARGETS):
        killed, total, lines = run_one(name, args.max_children, rerun=not args.last, resume=args.resume)
        n_explained = sum(1 for line in lines if line.startswith("   explained"))
        score = 100.0 * killed / total if total else 0.0
        # the score once the survivors explained as equivalent or harmless leave the denominator
        net = 100.0 * killed / (total - n_explained) if total > n_explained else 0.0
        rows.append((name, killed, total, score, n_explained, len(lines) - n_explained, net))
        print(f"   score {score:5.1f}%  killed {killed}/{total}  explained {n_explained}  "
              f"unexplained {len(lines) - n_explained}  score without explained {net:5.1f}%", flush=True)
        for line in lines:
            print(line, flush=True)
    print("\nmodule      score  killed/mutants  explained  unexplained  without explained")
    for name, killed, total, score, n_explained, unexplained, net in rows:
        print(f"{name:10} {score:5.1f}%  {killed:6}/{total:<7}  {n_explained:9}  {unexplained:11}  {net:16.1f}%")
    return 0


if __name__ == "__main__":
    sys.exit(main())
