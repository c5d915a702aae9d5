"""Run the app with uvicorn on loopback, in the foreground (`serve`) or in a thread (`ServerThread`)."""

from __future__ import annotations

import socket
import threading
from typing import Any

HOST = "127.0.0.1"


def free_port(host: str = HOST) -> int:
    """A TCP port that is free on `host` right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


def _config(app: Any, port: int, host: str, log_level: str) -> Any:
    import uvicorn

    # one worker: the ONNX Runtime session already uses every core for each request
    return uvicorn.Config(app, host=host, port=port, log_level=log_level, access_log=False, workers=1)


def serve(source: Any, port: int = 8000, *, host: str = HOST, tracking_uri: str | None = None,
          poll_seconds: float = 5.0, max_body_bytes: int | None = None, log_level: str = "info") -> None:
    """Serve a compiled graph until interrupted.

    Args:
        source: a `.onnx` file or `NAME@ALIAS` (followed as it moves), or a `GraphSource`.
        port: TCP port on `host`.
        host: interface; loopback by default (nothing is exposed beyond this machine).
        tracking_uri: MLflow tracking URI for registry refs.
        poll_seconds: how often to check the alias.
        max_body_bytes: request size limit (default 16 MB).
        log_level: uvicorn's log level.

    Raises:
        OutputError / CompileError / RegistryError: when the graph cannot be loaded.
    """
    import uvicorn

    from steerpatch.serve.app import MAX_BODY_BYTES, create_app

    app = create_app(source, tracking_uri=tracking_uri, poll_seconds=poll_seconds,
                     max_body_bytes=max_body_bytes or MAX_BODY_BYTES)
    uvicorn.Server(_config(app, port, host, log_level)).run()


class ServerThread:
    """A real uvicorn server on a loopback port in a background thread (for tests, demos, benchmarks).

    Example:
        >>> with ServerThread(create_app("steered.onnx")) as server:  # doctest: +SKIP
        ...     httpx.get(server.url + "/health")
    """

    def __init__(self, app: Any, port: int | None = None, host: str = HOST) -> None:
        import uvicorn

        self.host, self.port = host, port or free_port(host)
        # uvicorn installs signal handlers only in the main thread, so it runs cleanly in this one
        self.server = uvicorn.Server(_config(app, self.port, host, "warning"))
        self.thread = threading.Thread(target=self.server.run, name="steerpatch-server", daemon=True)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout: float = 60.0) -> ServerThread:
        """Start and wait until the server accepts connections.

        Raises:
            RuntimeError: when it has not started within `timeout` seconds.
        """
        self.thread.start()
        ready = threading.Event()

        def watch() -> None:
            while self.thread.is_alive() and not self.server.started:
                ready.wait(0.01)
            ready.set()

        threading.Thread(target=watch, daemon=True).start()
        if not ready.wait(timeout) or not self.server.started:
            self.stop()
            raise RuntimeError(f"the server on {self.url} did not start within {timeout:.0f} s")
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)

    def __enter__(self) -> ServerThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
