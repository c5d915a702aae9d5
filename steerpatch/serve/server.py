"""Run the app with uvicorn on loopback, in the foreground (`serve`) or in a thread (`ServerThread`).

The listening socket is bound before anything is printed or loaded (`bind_socket`), so a taken port
is one clean error, and the printed URL already accepts connections. Connections that never finish
sending their request headers are closed after `HEADER_TIMEOUT_S`.
"""

from __future__ import annotations

import socket
import threading
from typing import Any

from steerpatch.errors import OutputError

HOST = "127.0.0.1"
HEADER_TIMEOUT_S = 10.0


def free_port(host: str = HOST) -> int:
    """A TCP port that is free on `host` right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


def bind_socket(port: int = 0, host: str = HOST) -> socket.socket:
    """A listening TCP socket on `host:port` (port 0 picks a free one).

    Binding before the server starts means the URL can be printed, and connected to, at once:
    early connections wait in the backlog until the server accepts them.

    Raises:
        OutputError: if the port is taken or cannot be bound (exit code 2).

    Example:
        >>> sock = bind_socket(0)
        >>> url_of(sock).startswith("http://127.0.0.1:")
        True
        >>> sock.close()
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # accepted connections inherit this: without it a small JSON answer written in two parts waits
    # for the client's delayed ACK (~40 ms)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        sock.bind((host, port))
    except OSError as error:
        sock.close()
        raise OutputError(
            f"cannot listen on {host}:{port} ({error.strerror}); pass another --port, or --port 0 for a free one"
        ) from None
    sock.listen(128)
    return sock


def url_of(sock: socket.socket) -> str:
    """The http URL a bound socket serves, with a trailing slash."""
    host, port = sock.getsockname()[:2]
    return f"http://{host}:{port}/"


def http_protocol(header_timeout: float = HEADER_TIMEOUT_S) -> type:
    """uvicorn's HTTP protocol class with a deadline for the first request's headers (for `uvicorn.Config(http=...)`).

    httptools' C parser when it is installed (`pip install httptools`; it parses a request several
    times faster than h11, which matters for small inference requests), else h11.
    """
    base: type
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol as base
    except ImportError:
        from uvicorn.protocols.http.h11_impl import H11Protocol as base

    class HeaderTimeoutProtocol(base):  # type: ignore[valid-type,misc]
        """uvicorn's HTTP protocol, closing connections that send no complete request in time.

        uvicorn times out idle keep-alive connections but not a first request whose headers trickle
        in byte by byte; without this each such connection is held forever.
        """

        def connection_made(self, transport: Any) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._header_timer = self.loop.call_later(header_timeout, self._headers_overdue)

        def _headers_overdue(self) -> None:
            if self.cycle is None and not self.transport.is_closing():  # no request has started yet
                self.transport.close()

        def connection_lost(self, exc: Exception | None) -> None:
            self._header_timer.cancel()
            super().connection_lost(exc)

    return HeaderTimeoutProtocol


def _config(app: Any, port: int, host: str, log_level: str, header_timeout: float = HEADER_TIMEOUT_S) -> Any:
    import uvicorn

    # one worker: the ONNX Runtime session already uses every core for each request; loop "auto" is
    # uvloop when it is installed
    return uvicorn.Config(app, host=host, port=port, log_level=log_level, access_log=False, workers=1,
                          http=http_protocol(header_timeout), timeout_keep_alive=5, loop="auto")


def serve(source: Any, port: int = 8000, *, host: str = HOST, tracking_uri: str | None = None,
          poll_seconds: float = 5.0, max_body_bytes: int | None = None, log_level: str = "info",
          docs: bool = False, sock: socket.socket | None = None, batch_wait_ms: float | None = 2.0) -> None:
    """Serve a compiled graph until interrupted.

    Args:
        source: a `.onnx` file or `NAME@ALIAS` (followed as it moves), a `GraphSource`, or a `Fleet`.
        port: TCP port on `host`.
        host: interface; loopback by default (nothing is exposed beyond this machine).
        tracking_uri: MLflow tracking URI for registry refs.
        poll_seconds: how often to check the alias.
        max_body_bytes: request size limit (default 16 MB).
        log_level: uvicorn's log level.
        docs: serve the interactive API docs.
        sock: an already bound socket (`bind_socket`); default binds `host:port` now.
        batch_wait_ms: dynamic batching's gathering window; None runs each request alone.

    Raises:
        OutputError: the port is taken. CompileError / RegistryError: the graph cannot be loaded.
        KeyboardInterrupt: after a clean shutdown on Ctrl-C.
    """
    import uvicorn

    from steerpatch.serve.app import MAX_BODY_BYTES, create_app

    sock = sock or bind_socket(port, host)
    app = create_app(source, tracking_uri=tracking_uri, poll_seconds=poll_seconds,
                     max_body_bytes=max_body_bytes or MAX_BODY_BYTES, docs=docs, batch_wait_ms=batch_wait_ms)
    bound_host, bound_port = sock.getsockname()[:2]
    uvicorn.Server(_config(app, bound_port, bound_host, log_level)).run(sockets=[sock])


class ServerThread:
    """A real uvicorn server on a loopback port in a background thread (for tests, demos, benchmarks).

    Example:
        >>> with ServerThread(create_app("steered.onnx")) as server:  # doctest: +SKIP
        ...     httpx.get(server.url + "/health")
    """

    def __init__(self, app: Any, port: int | None = None, host: str = HOST,
                 header_timeout: float = HEADER_TIMEOUT_S) -> None:
        import uvicorn

        self.host, self.port = host, port or free_port(host)
        # uvicorn installs signal handlers only in the main thread, so it runs cleanly in this one
        self.server = uvicorn.Server(_config(app, self.port, host, "warning", header_timeout))
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
