"""Where the registry lives, and safe access to it from many processes at once.

With no `--tracking-uri` and no `MLFLOW_TRACKING_URI`, steerpatch uses an explicit sqlite database
and artifact root under `.steerpatch/registry/` of the checkout it runs from (or `~/.steerpatch/registry`
when installed elsewhere) — never the current directory, so running from another folder cannot scatter
stores around. `STEERPATCH_REGISTRY_DIR` moves that folder (the test suite uses it).

The store is not kept in the committed `registry/` folder: that one holds what is reviewed in git (the
promotion policy, the patch schema, vetted patches), the store is this machine's state. A checkout whose
`registry/mlflow.db` predates this keeps using it there, since MLflow records absolute artifact paths
and moving the files would break every version in it.

A sqlite store is one file that several processes write: every write is done under an exclusive
`fcntl` lock on `<db folder>/.lock`, and transient "database is locked" errors are retried with
backoff, so concurrent registrations serialise instead of failing.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from steerpatch.errors import RegistryError

T = TypeVar("T")

EXPERIMENT_NAME = "steerpatch"
STATE_DIR = ".steerpatch"  # git-ignored machine state: the default store lives in STATE_DIR/registry
_RETRIES = 8


@dataclass(frozen=True)
class Store:
    """A resolved MLflow location.

    Attributes:
        tracking_uri: where runs, experiments and logged models live.
        registry_uri: where registered models, versions and aliases live.
        artifact_root: artifact location for the steerpatch experiment, or None to let a server decide.
        lock_path: file locked around writes when the store is a local sqlite database, else None.
    """

    tracking_uri: str
    registry_uri: str
    artifact_root: str | None
    lock_path: Path | None


def default_registry_dir() -> Path:
    """The folder of the default local store: `<checkout>/.steerpatch/registry`, else `~/.steerpatch/registry`.

    `STEERPATCH_REGISTRY_DIR` overrides it; a checkout with an older store in `registry/mlflow.db`
    keeps that one (see the module docstring).

    Returns:
        An absolute folder path (not created here).
    """
    override = os.environ.get("STEERPATCH_REGISTRY_DIR")
    if override:
        return Path(override).expanduser().resolve()
    return store_dir_in(Path(__file__).resolve().parents[2])


def store_dir_in(checkout: Path) -> Path:
    """The default store folder when steerpatch runs from `checkout` (see `default_registry_dir`)."""
    if (checkout / "registry").is_dir() and (checkout / "pyproject.toml").is_file():  # a source checkout
        if (checkout / "registry" / "mlflow.db").is_file():
            return checkout / "registry"
        return checkout / STATE_DIR / "registry"
    return Path.home() / STATE_DIR / "registry"


def _sqlite_path(uri: str) -> Path | None:
    if not uri.startswith("sqlite:///"):
        return None
    # sqlite:////abs/file.db is absolute; sqlite:///file.db is relative, as the user wrote it
    return Path(uri[len("sqlite:///") :].split("?", 1)[0])


# URI schemes MLflow can keep a model registry in (a "+driver" suffix, as in postgresql+psycopg, is allowed)
DATABASE_SCHEMES = ("sqlite", "http", "https", "postgresql", "mysql", "mssql", "databricks", "databricks-uc", "uc")


def resolve_store(tracking_uri: str | None = None) -> Store:
    """Pick the tracking and registry URIs and the artifact root, in order of precedence.

    An explicit `tracking_uri` wins, then `MLFLOW_TRACKING_URI`, then the default sqlite store.
    `MLFLOW_REGISTRY_URI` overrides the registry side only.

    Args:
        tracking_uri: an MLflow tracking URI (`sqlite:///…`, `http://host:port`, …) or None.

    Returns:
        The resolved `Store`.

    Raises:
        RegistryError: for a local folder URI (MLflow's file store is not supported by steerpatch).
    """
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    artifact_root: str | None = None
    if not uri:
        folder = default_registry_dir()
        folder.mkdir(parents=True, exist_ok=True)
        uri = f"sqlite:///{folder / 'mlflow.db'}"
        artifact_root = (folder / "artifacts").as_uri()
    elif uri.startswith("file:") or "://" not in uri:
        raise RegistryError(
            f"tracking URI '{uri}' is a plain folder; expected sqlite:///PATH.db or http(s)://HOST:PORT "
            "(MLflow's file store is not supported); pass --tracking-uri sqlite:///…/mlflow.db"
        )
    elif uri.split("://", 1)[0].split("+", 1)[0] not in DATABASE_SCHEMES:
        raise RegistryError(
            f"tracking URI '{uri}' has an unsupported scheme; expected one of "
            f"{', '.join(s + '://' for s in DATABASE_SCHEMES)}, e.g. --tracking-uri http://127.0.0.1:5000"
        )
    db = _sqlite_path(uri)
    if db is not None:
        db = db.expanduser().resolve()
        db.parent.mkdir(parents=True, exist_ok=True)
        uri = f"sqlite:///{db}"
        # a sqlite store has no server to pick an artifact root: keep artifacts beside the database
        artifact_root = artifact_root or (db.parent / "artifacts").as_uri()
    registry_uri = os.environ.get("MLFLOW_REGISTRY_URI") or uri
    return Store(uri, registry_uri, artifact_root, db.parent / ".lock" if db is not None else None)


def resolve_tracking(tracking_uri: str | None = None) -> tuple[str, str, str | None]:
    """The `(tracking_uri, registry_uri, artifact_root)` steerpatch will use (see `resolve_store`)."""
    store = resolve_store(tracking_uri)
    return store.tracking_uri, store.registry_uri, store.artifact_root


@contextlib.contextmanager
def store_lock(store: Store) -> Iterator[None]:
    """Hold the store's exclusive write lock (a no-op for servers, which serialise writes themselves)."""
    if store.lock_path is None:
        yield
        return
    store.lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(store.lock_path, "a+") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _is_transient(error: BaseException) -> bool:
    text = str(error).lower()
    return "database is locked" in text or "database is busy" in text or "connection refused" in text


def with_retry(fn: Callable[[], T], *, what: str) -> T:
    """Call `fn`, retrying transient store errors with jittered exponential backoff.

    Args:
        fn: the operation; it must be safe to repeat after a transient failure.
        what: a few words naming the operation, for the final error.

    Returns:
        What `fn` returns.

    Raises:
        RegistryError: when the store stays busy after every retry.
    """
    delay = 0.05
    for attempt in range(_RETRIES):
        try:
            return fn()
        except Exception as error:  # noqa: BLE001 - MLflow raises many types for the same busy store
            if not _is_transient(error) or attempt == _RETRIES - 1:
                if _is_transient(error):
                    raise RegistryError(
                        f"the MLflow store stayed busy while trying to {what}; retry, or check "
                        "that no other program holds the database open"
                    ) from error
                raise
            time.sleep(delay * (1 + random.random()))
            delay *= 2
    raise AssertionError("unreachable")  # pragma: no cover


def quiet_mlflow() -> None:
    """Silence MLflow's info chatter (database migrations, URLs) so command output stays readable."""
    for name in ("mlflow", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)


def client(store: Store) -> Any:
    """An `mlflow.MlflowClient` bound to the store's tracking and registry URIs.

    The first use of a fresh sqlite database creates its tables; that happens under the store lock
    so that many processes starting at once do not race the migration.
    """
    quiet_mlflow()
    # MLflow draws a progress bar per download; our downloads are small and the bars drown the output
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    import mlflow

    def build() -> Any:
        c = mlflow.MlflowClient(tracking_uri=store.tracking_uri, registry_uri=store.registry_uri)
        if store.lock_path is not None:
            # touching both stores forces their (lazily created) schema into existence now
            c.search_experiments(max_results=1)
            c.search_registered_models(max_results=1)
        return c

    if store.lock_path is not None and not _schema_ready(store):
        with store_lock(store):
            # whoever held the lock before us may have created the tables meanwhile
            if not _schema_ready(store):
                c = with_retry(build, what="open the MLflow store")
                _mark_schema_ready(store)
                return c
    return with_retry(build, what="open the MLflow store")


def _schema_mark(store: Store) -> str | None:
    # the database file's inode: a database deleted and created anew is not taken for the old one
    db = _sqlite_path(store.tracking_uri)
    try:
        return f"schema-ready {db.name} {db.stat().st_ino}" if db is not None else None
    except FileNotFoundError:
        return None


def _schema_ready(store: Store) -> bool:
    """Whether this sqlite database's tables were created (recorded in the lock file once they are)."""
    mark = _schema_mark(store)
    try:
        lock = store.lock_path
        return mark is not None and lock is not None and mark in lock.read_text(encoding="utf-8").splitlines()
    except (FileNotFoundError, AttributeError):
        return False


def _mark_schema_ready(store: Store) -> None:
    mark = _schema_mark(store)
    if mark is not None and store.lock_path is not None and not _schema_ready(store):
        with open(store.lock_path, "a", encoding="utf-8") as handle:
            handle.write(mark + "\n")


@contextlib.contextmanager
def mlflow_uris(store: Store) -> Iterator[None]:
    """Point MLflow's process-wide URIs at `store` for the duration, then put back exactly what was there.

    Some MLflow store methods (creating a version from `models:/<id>`) look the logged model up
    through the process-wide tracking URI instead of their own client's; this keeps them pointed at
    the same store without leaking the setting (MLflow also writes it into `os.environ`).
    """
    import mlflow
    from mlflow.tracking._model_registry import utils as registry_utils
    from mlflow.tracking._tracking_service import utils as tracking_utils

    names = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")
    saved_env = {name: os.environ.get(name) for name in names}
    saved = (tracking_utils._tracking_uri, registry_utils._registry_uri)
    mlflow.set_tracking_uri(store.tracking_uri)
    mlflow.set_registry_uri(store.registry_uri)
    try:
        yield
    finally:
        tracking_utils._tracking_uri, registry_utils._registry_uri = saved
        for name, value in saved_env.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def experiment_id(c: Any, store: Store) -> str:
    """The id of the `steerpatch` experiment, created with the store's artifact root when missing."""
    from mlflow.exceptions import MlflowException

    found = c.get_experiment_by_name(EXPERIMENT_NAME)
    if found is not None:
        return found.experiment_id
    try:
        return c.create_experiment(EXPERIMENT_NAME, artifact_location=store.artifact_root)
    except MlflowException as error:
        # another process created it between our lookup and our create
        found = c.get_experiment_by_name(EXPERIMENT_NAME)
        if found is None:
            raise RegistryError(
                f"could not create the MLflow experiment '{EXPERIMENT_NAME}': {error}"
            ) from error
        return found.experiment_id
