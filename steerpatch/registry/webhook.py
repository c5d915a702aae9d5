"""Promotion that deploys itself: an MLflow registry webhook receiver that compiles promoted patches.

MLflow (>= 3.3, SQL-backed tracking server) POSTs `model_version_alias.created` events to a URL,
signed with HMAC-SHA256 over `<delivery id>.<timestamp>.<body>` (header `X-MLflow-Signature:
v1,<base64>`). `WebhookReceiver` checks the signature and the event before doing anything; when a
patch version gets the watched alias (`production`) it compiles that exact version (parity-gated, the
compile refuses a version that does not verify), registers the graph and moves the graph's alias, so
every `steerpatch serve NAME-onnx@production` process reloads.

Deployments run one at a time on a worker thread: MLflow waits for the HTTP answer only seconds, a
compile can take longer, so the receiver answers 202 once the event is checked and queued.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from steerpatch.errors import RegistryError, SteerpatchError

SIGNATURE_HEADER = "X-MLflow-Signature"
TIMESTAMP_HEADER = "X-MLflow-Timestamp"
DELIVERY_HEADER = "X-MLflow-Delivery-Id"
EVENT = ("model_version_alias", "created")
MAX_BODY_BYTES = 64 * 1024
MAX_AGE_S = 300  # older (or future) deliveries are refused: a captured request cannot be replayed later
SECRET_ENV = "STEERPATCH_WEBHOOK_SECRET"


class Rejected(ValueError):
    """A delivery that is refused; `status` is the HTTP status to answer with."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def sign(secret: str, delivery_id: str, timestamp: str, body: str) -> str:
    """MLflow's webhook signature of a delivery: `v1,<base64 HMAC-SHA256>`."""
    digest = hmac.new(secret.encode(), f"{delivery_id}.{timestamp}.{body}".encode(), hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def check_delivery(secret: str, headers: Any, body: bytes, *, now: float | None = None) -> dict[str, str]:
    """Verify a delivery's signature, age and event; return its `{name, alias, version}`.

    Args:
        secret: the shared webhook secret.
        headers: the request headers (a mapping, case-insensitive lookups as `http.client` gives).
        body: the raw request body.
        now: the current Unix time (tests pass a fixed one).

    Raises:
        Rejected: 401 for a missing or wrong signature or a stale timestamp, 400 for a body that is
            not the `model_version_alias.created` event.
    """
    delivery, stamp, signature = (headers.get(h) or "" for h in (DELIVERY_HEADER, TIMESTAMP_HEADER, SIGNATURE_HEADER))
    if not (delivery and stamp and signature):
        raise Rejected(401, f"missing {SIGNATURE_HEADER}, {TIMESTAMP_HEADER} or {DELIVERY_HEADER}; install the webhook with a secret")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise Rejected(400, "body is not UTF-8 JSON") from None
    if not hmac.compare_digest(sign(secret, delivery, stamp, text), signature):
        raise Rejected(401, "signature does not match; the webhook's secret differs from this receiver's")
    if not stamp.isdigit() or abs((now if now is not None else time.time()) - int(stamp)) > MAX_AGE_S:
        raise Rejected(401, f"timestamp {stamp!r} is more than {MAX_AGE_S} s from now; refusing a replay")
    try:
        doc = json.loads(text)
    except json.JSONDecodeError:
        raise Rejected(400, "body is not JSON") from None
    if not isinstance(doc, dict) or (doc.get("entity"), doc.get("action")) != EVENT:
        event = f"{doc.get('entity')}.{doc.get('action')}" if isinstance(doc, dict) else type(doc).__name__
        raise Rejected(400, f"event {event!r} is not handled; subscribe the webhook to {'.'.join(EVENT)} only")
    data = doc.get("data")
    if not isinstance(data, dict) or not all(isinstance(data.get(k), str) and data.get(k) for k in ("name", "alias", "version")):
        raise Rejected(400, "event data must hold string name, alias and version")
    if not data["version"].isdigit():
        raise Rejected(400, f"version {data['version']!r} is not a version number")
    return {k: data[k] for k in ("name", "alias", "version")}


@dataclass
class Deployment:
    """What the receiver did with one accepted event."""

    name: str
    alias: str
    version: str
    status: str = "queued"  # queued | skipped | deployed | failed
    detail: str = ""
    graph: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def deploy_version(
    name: str, version: str, alias: str, *, tracking_uri: str, policy: str | None = None
) -> dict[str, Any]:
    """Compile patch version `name@version` (parity-gated), register the graph and point its `alias` at it.

    The alias may have been set outside `steerpatch promote` (the MLflow UI, say), so the version is
    verified and its gates re-derived from the report's counts first, as `promote` does; a version
    whose move to `alias` was forced with a recorded reason is deployed as forced.

    Args:
        name: the registered patch model.
        version: the version number from the event (never the alias: it may have moved on since).
        alias: the alias it received; the graph's alias of the same name is moved.
        tracking_uri: the MLflow tracking server.
        policy: the policy TOML in force; None: the default.

    Returns:
        The registered graph (`GraphVersion.to_dict()`).

    Raises:
        GateFailed: the version fails the policy and was not forced.
        SteerpatchError: the version does not verify, fails parity, or the store refuses.
    """
    import tempfile
    from pathlib import Path

    from steerpatch.compile import compile_patch, register_graph
    from steerpatch.errors import GateFailed
    from steerpatch.registry.promotion import failed_gates_of, verified_evidence
    from steerpatch.registry.register import TAG
    from steerpatch.registry.store import client, resolve_store, with_retry

    store = resolve_store(tracking_uri)
    c = client(store)
    mv = with_retry(lambda: c.get_model_version(name, version), what=f"read {name}@{version}")
    with tempfile.TemporaryDirectory(prefix="steerpatch-webhook-") as tmp:
        _, report, _ = verified_evidence(c, store, mv, Path(tmp))
    failed, source = failed_gates_of(report, policy, alias)
    if failed and not (mv.tags or {}).get(f"{TAG}forced.{alias}"):
        raise GateFailed(
            f"{name}@{version} got alias {alias} outside `steerpatch promote` but fails {', '.join(failed)} "
            f"under {source}; not deployed (promote a passing version, or `promote --force --reason`)"
        )
    result = compile_patch(f"{name}@{version}", tracking_uri=tracking_uri, progress=False)
    return register_graph(result, alias=alias, tracking_uri=tracking_uri).to_dict()


def is_patch_model(name: str, version: str, *, tracking_uri: str) -> bool:
    """Whether `name@version` is a registered patch (not a compiled graph or another model)."""
    from steerpatch.registry.integrity import GRAPH_KIND
    from steerpatch.registry.register import TAG
    from steerpatch.registry.store import client, resolve_store, with_retry

    c = client(resolve_store(tracking_uri))
    mv = with_retry(lambda: c.get_model_version(name, version), what=f"read {name}@{version}")
    tags = mv.tags or {}
    return bool(tags.get(TAG + "patch_ref")) and tags.get(TAG + "kind") != GRAPH_KIND


class WebhookReceiver:
    """Checks deliveries and deploys promoted patch versions on one worker thread.

    Args:
        secret: the webhook's HMAC secret.
        tracking_uri: the MLflow server the events come from (compiles read it, graphs go to it).
        alias: the patch alias that triggers a deployment (and the graph alias that is moved).
        policy: the policy TOML a version must pass before it is deployed; None: the default.
        deploy: the deployment step (default `deploy_version`).
    """

    def __init__(self, secret: str, *, tracking_uri: str, alias: str = "production", policy: str | None = None,
                 deploy: Callable[..., dict[str, Any]] | None = None, log: Callable[[str], None] = print):
        if not secret:
            raise RegistryError(f"no webhook secret; set {SECRET_ENV} to the secret given to `webhook install`")
        self.secret, self.tracking_uri, self.alias, self.policy = secret, tracking_uri, alias, policy
        self.deploy = deploy or deploy_version
        self.log = log
        self.deployments: list[Deployment] = []
        self._queue: queue.Queue[Deployment | None] = queue.Queue()
        self._done = threading.Condition()
        self._worker = threading.Thread(target=self._run, name="steerpatch-webhook-deploy", daemon=True)
        self._worker.start()

    def accept(self, headers: Any, body: bytes) -> Deployment:
        """Check one delivery and queue it (raises `Rejected`; nothing is done for a rejected one)."""
        event = check_delivery(self.secret, headers, body)
        job = Deployment(name=event["name"], alias=event["alias"], version=event["version"])
        if event["alias"] != self.alias:
            job.status, job.detail = "skipped", f"alias {event['alias']!r} is not {self.alias!r}"
        with self._done:
            self.deployments.append(job)
        if job.status == "queued":
            self._queue.put(job)
        return job

    def _run(self) -> None:
        while (job := self._queue.get()) is not None:
            try:
                if not is_patch_model(job.name, job.version, tracking_uri=self.tracking_uri):
                    job.status, job.detail = "skipped", "not a steerpatch patch version"
                else:
                    job.graph = self.deploy(job.name, job.version, self.alias, tracking_uri=self.tracking_uri,
                                            policy=self.policy)
                    job.status = "deployed"
                    job.detail = f"{job.graph.get('name')} version {job.graph.get('version')} is {self.alias}"
            except SteerpatchError as error:
                job.status, job.detail = "failed", str(error).splitlines()[0]
            except Exception as error:  # noqa: BLE001 - one bad deployment must not stop the receiver
                job.status, job.detail = "failed", f"{type(error).__name__}: {error}".splitlines()[0]
            self.log(f"{job.name}@{job.version} ({job.alias}): {job.status} {job.detail}")
            with self._done:
                self._done.notify_all()

    def wait_for(self, predicate: Callable[[list[Deployment]], bool], timeout: float) -> bool:
        """Wait until `predicate(self.deployments)` holds after a delivery settles; True if it does."""
        with self._done:
            return self._done.wait_for(lambda: predicate(self.deployments), timeout=timeout)

    def close(self) -> None:
        self._queue.put(None)
        self._worker.join(timeout=5)


def make_server(receiver: WebhookReceiver, host: str = "127.0.0.1", port: int = 0) -> ThreadingHTTPServer:
    """An HTTP server that hands POST / to `receiver` and shows `GET /deployments`."""

    class Handler(BaseHTTPRequestHandler):
        def _answer(self, status: int, doc: dict[str, Any]) -> None:
            body = json.dumps(doc).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_POST(self) -> None:  # noqa: N802 - http.server's name
            length = self.headers.get("Content-Length", "")
            if not length.isdigit() or int(length) > MAX_BODY_BYTES:
                self._answer(413 if length.isdigit() else 411, {"error": f"body must be at most {MAX_BODY_BYTES} bytes"})
                return
            try:
                job = receiver.accept(self.headers, self.rfile.read(int(length)))
            except Rejected as error:
                self._answer(error.status, {"error": str(error)})
                return
            self._answer(202, job.to_dict())

        def do_GET(self) -> None:  # noqa: N802
            if self.path != "/deployments":
                self._answer(404, {"error": "GET /deployments or POST /"})
                return
            self._answer(200, {"deployments": [d.to_dict() for d in receiver.deployments]})

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - http.server's signature
            receiver.log(f"{self.address_string()} {format % args}")

    return ThreadingHTTPServer((host, port), Handler)


def install_webhook(url: str, secret: str, *, tracking_uri: str | None = None, name: str = "steerpatch-deploy") -> Any:
    """Create the MLflow webhook that sends `model_version_alias.created` to `url`, signed with `secret`.

    Raises:
        RegistryError: (exit 2) for a store without webhooks (a file store, a direct sqlite file:
            deliveries come from a tracking server), or no secret.
    """
    from steerpatch.registry.store import client, resolve_store, with_retry

    store = resolve_store(tracking_uri)
    scheme = store.registry_uri.split(":", 1)[0].lower()
    if scheme not in ("http", "https"):
        kind = "a file store" if scheme in ("file", "") or "://" not in store.registry_uri else f"a direct {scheme} database"
        raise RegistryError(
            f"registry {store.registry_uri} is {kind}: MLflow sends webhooks only from a tracking server with a "
            f"SQL backend (MLflow >= 3.3); start `mlflow server --backend-store-uri sqlite:///…` and pass its http:// URI"
        )
    if not secret:
        raise RegistryError(f"no webhook secret; set {SECRET_ENV} (the receiver needs the same one)")
    if not url.startswith(("http://", "https://")):
        raise RegistryError(f"webhook URL {url!r} is not http(s); pass the receiver's URL, e.g. http://host:8900/")
    c = client(store)
    return with_retry(
        lambda: c.create_webhook(name, url, events=[".".join(EVENT)], secret=secret,
                                 description="steerpatch: compile and deploy a patch version promoted to production"),
        what="create the webhook",
    )
