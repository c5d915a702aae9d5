"""Where the served graph comes from: a file, or a registry alias that is followed as it moves.

A `GraphSource` holds the current ONNX Runtime session. For `NAME@ALIAS` a background thread asks the
registry every few seconds which graph the alias points at; when it moved, the new graph is
downloaded, checked against the registry's record (`steerpatch.registry.graphs.download_graph`:
manifest, graph hash, patch hash, model fingerprint, the patch version it came from), opened, and
swapped in under a lock, so requests always see one whole verified graph. Verification happens only
here, at load and reload: requests never pay for it. A failed or refused reload keeps the previous
good graph serving and is reported by `/health`.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from steerpatch.errors import CompileError, OutputError

log = logging.getLogger("steerpatch.serve")


@dataclass(frozen=True)
class LoadedGraph:
    """One opened graph and what is known about it.

    Attributes:
        session: the `onnxruntime.InferenceSession`.
        info: the `GraphInfo` record from the graph's metadata.
        path: the local `.onnx` file.
        registry: the `GraphVersion` it was resolved to, or None for a file.
        loaded_at: ISO 8601 UTC time it was opened.
    """

    session: Any
    info: Any
    path: Path
    registry: Any = None
    loaded_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))

    @property
    def output_names(self) -> list[str]:
        return [o.name for o in self.session.get_outputs()]

    def describe(self) -> dict[str, Any]:
        """The `/metadata` document: the graph's record plus where and when it was loaded."""
        return {
            "graph": self.info.model_dump(mode="json"),
            "patch_hash": self.info.patch_hash,
            "patch_ref": self.info.patch_ref,
            "patch_version": self.registry.patch_version if self.registry else None,
            "model_version": self.registry.version if self.registry else None,
            "registry": self.registry.to_dict() if self.registry else None,
            "file": str(self.path),
            "loaded_at": self.loaded_at,
            "providers": self.session.get_providers(),
        }


def open_graph(path: str | Path, registry: Any = None, providers: list[str] | None = None,
               threads: int | None = None) -> LoadedGraph:
    """Open a compiled graph file and read its steerpatch metadata (`threads`: see `create_session`).

    Raises:
        OutputError: when the file is missing; CompileError when it was not written by `steerpatch compile`.
    """
    from steerpatch.compile.metadata import GraphInfo
    from steerpatch.compile.runtime import create_session, session_metadata

    path = Path(path)
    if not path.is_file():
        raise OutputError(f"graph file '{path}' does not exist; compile one with `steerpatch compile PATCH --out FILE`")
    try:
        session = create_session(path, providers, threads=threads)
    except Exception as error:  # noqa: BLE001 - ORT raises its own types for invalid graphs
        raise CompileError(f"'{path}' is not a loadable ONNX graph: {str(error).splitlines()[0][:200]}") from error
    try:
        info = GraphInfo.from_props(session_metadata(session))
    except (KeyError, ValueError) as error:
        raise CompileError(
            f"'{path}' has no steerpatch metadata; serve graphs written by `steerpatch compile`"
        ) from error
    return LoadedGraph(session, info, path, registry)


class GraphSource:
    """The graph being served, from a file or following `NAME@ALIAS` in the registry.

    Args:
        source: a `.onnx` file, or `NAME@ALIAS|NAME@VERSION` of a compiled graph or of a patch model.
        tracking_uri: MLflow tracking URI for registry refs.
        poll_seconds: how often the background thread checks the alias.
        providers: ONNX Runtime providers; default: best installed.
        threads: intra-op threads of its sessions (`steerpatch.serve.batching.ort_threads`); default ONNX Runtime's.

    Raises:
        OutputError / CompileError / RegistryError: when the first graph cannot be loaded.
    """

    def __init__(self, source: str | Path, *, tracking_uri: str | None = None, poll_seconds: float = 5.0,
                 providers: list[str] | None = None, threads: int | None = None) -> None:
        from steerpatch.refs import is_registry_ref

        self.source = str(source)
        self.tracking_uri = tracking_uri
        self.poll_seconds = poll_seconds
        self.providers = providers
        self.threads = threads
        self.follows = is_registry_ref(self.source)
        self.reloads = 0
        self.last_error: str | None = None
        self.last_check: str | None = None
        self._lock = threading.Lock()
        self._reloaded = threading.Condition()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._dirs: list[Path] = []
        self._current = self._fetch() if self.follows else open_graph(self.source, providers=providers, threads=threads)

    @property
    def current(self) -> LoadedGraph:
        with self._lock:
            return self._current

    def _fetch(self, graph: Any = None) -> LoadedGraph:
        from steerpatch.registry.graphs import download_graph, resolve_graph

        graph = graph or resolve_graph(self.source, tracking_uri=self.tracking_uri)
        folder = Path(tempfile.mkdtemp(prefix="steerpatch-serve-"))
        try:
            loaded = open_graph(download_graph(graph, folder, tracking_uri=self.tracking_uri), graph, self.providers,
                                self.threads)
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        self._dirs.append(folder)
        return loaded

    def check(self) -> bool:
        """Ask the registry where the alias points; load and swap in the graph when it moved.

        Returns:
            True when a new graph was swapped in.
        """
        if not self.follows:
            return False
        from steerpatch.registry.graphs import resolve_graph

        self.last_check = datetime.now(UTC).isoformat(timespec="seconds")
        try:
            graph = resolve_graph(self.source, tracking_uri=self.tracking_uri)
            current = self.current.registry
            if (graph.name, graph.version) == (current.name, current.version):
                self.last_error = None
                return False
            loaded = self._fetch(graph)
        except Exception as error:  # noqa: BLE001 - keep serving the old graph whatever went wrong
            message = str(error).splitlines()[0][:300]
            if message != self.last_error:  # a refused version is retried every poll; say so once
                log.warning("reload of %s failed, still serving the previous graph: %s", self.source, message)
            self.last_error = message
            return False
        with self._lock:
            old, self._current = self._current, loaded
        with self._reloaded:
            self.reloads += 1
            self._reloaded.notify_all()
        self.last_error = None
        log.warning("%s moved: now serving %s version %s (was %s)", self.source, graph.name, graph.version,
                    old.registry.version if old.registry else "?")
        self._forget(old)
        return True

    def wait_for_reloads(self, count: int, timeout: float) -> bool:
        """Block until `count` reloads have happened (True) or `timeout` seconds pass (False)."""
        with self._reloaded:
            return self._reloaded.wait_for(lambda: self.reloads >= count, timeout)

    def _forget(self, old: LoadedGraph) -> None:
        folder = next((d for d in self._dirs if d in old.path.parents), None)
        if folder is not None:
            self._dirs.remove(folder)
            shutil.rmtree(folder, ignore_errors=True)

    def _poll(self) -> None:
        while not self._stop.wait(self.poll_seconds):
            self.check()

    def start(self) -> None:
        """Start following the alias in a daemon thread (no-op for files)."""
        if self.follows and self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._poll, name="steerpatch-alias-poll", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        """Stop the polling thread and remove downloaded graphs."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None
        for folder in self._dirs:
            shutil.rmtree(folder, ignore_errors=True)
        self._dirs.clear()

    def health(self) -> dict[str, Any]:
        """Liveness plus the follow state, for `/health`."""
        current = self.current
        return {
            "status": "ok",
            "source": self.source,
            "follows_alias": self.follows,
            "model_version": current.registry.version if current.registry else None,
            "patch_hash": current.info.patch_hash,
            "reloads": self.reloads,
            "last_check": self.last_check,
            "last_error": self.last_error,
        }
