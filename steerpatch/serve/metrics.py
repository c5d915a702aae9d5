"""The server's Prometheus metrics, all named `steerpatch_*`, in a registry of the app's own.

Each app gets its own `CollectorRegistry`, so two servers in one process (tests, benchmarks) never
share or double-register counters. `GET /metrics` renders it with `prometheus_client`.
"""

from __future__ import annotations

import time
from typing import Any

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)
DRIFT_BUCKETS = (1e-6, 1e-5, 1e-4, 1e-3, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0)
NO_ALIAS = "-"  # requests refused before an alias was chosen (an unknown alias, a body over the limit)


class ServeMetrics:
    """Counters and histograms of one server.

    Attributes:
        requests: `steerpatch_requests_total{alias,route,status}`, every inference request answered.
        errors: `steerpatch_errors_total{alias,route,status}`, those answered 4xx/5xx.
        latency: `steerpatch_request_seconds{alias,route}`, time from request to response.
        batch_rows: `steerpatch_batch_rows`, rows per ONNX Runtime call.
        shadow_requests / shadow_disagreements: `steerpatch_shadow_{requests,disagreements}_total{alias}`,
            rows compared with the shadow alias and those whose top-1 class differs.
        shadow_drift: `steerpatch_shadow_probability_drift{alias}`, max |p_default - p_shadow| per row.
        shadow_errors: `steerpatch_shadow_errors_total{alias}`, shadow runs that failed (never the answer).
    """

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Histogram

        self.registry = CollectorRegistry(auto_describe=True)
        labels = ("alias", "route", "status")
        self.requests = Counter("steerpatch_requests", "Inference requests answered", labels, registry=self.registry)
        self.errors = Counter("steerpatch_errors", "Inference requests answered with 4xx/5xx", labels,
                              registry=self.registry)
        self.latency = Histogram("steerpatch_request_seconds", "Inference request latency", ("alias", "route"),
                                 buckets=LATENCY_BUCKETS, registry=self.registry)
        self.batch_rows = Histogram("steerpatch_batch_rows", "Rows per ONNX Runtime call", buckets=BATCH_BUCKETS,
                                    registry=self.registry)
        self.shadow_requests = Counter("steerpatch_shadow_requests", "Rows compared with the shadow alias",
                                       ("alias",), registry=self.registry)
        self.shadow_disagreements = Counter("steerpatch_shadow_disagreements",
                                            "Rows whose top-1 class differs between default and shadow",
                                            ("alias",), registry=self.registry)
        self.shadow_drift = Histogram("steerpatch_shadow_probability_drift",
                                      "Max absolute probability difference default vs shadow, per row",
                                      ("alias",), buckets=DRIFT_BUCKETS, registry=self.registry)
        self.shadow_errors = Counter("steerpatch_shadow_errors", "Shadow runs that failed", ("alias",),
                                     registry=self.registry)

    def record(self, alias: str, route: str, status: int, seconds: float) -> None:
        """Count one answered inference request."""
        self.requests.labels(alias, route, str(status)).inc()
        if status >= 400:
            self.errors.labels(alias, route, str(status)).inc()
        self.latency.labels(alias, route).observe(seconds)

    def render(self) -> tuple[bytes, str]:
        """(body, content type) of the Prometheus text exposition."""
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self.registry), CONTENT_TYPE_LATEST

    def value(self, name: str, **labels: Any) -> float:
        """One sample's current value (0 when absent), e.g. `value("steerpatch_requests_total", alias="a", ...)`."""
        result = self.registry.get_sample_value(name, {k: str(v) for k, v in labels.items()})
        return float(result or 0.0)


def scrape(text: str, name: str, **labels: str) -> float:
    """Sum of the samples of `name` in `/metrics` text whose labels include `labels` (prometheus_client's parser).

    Example:
        >>> scrape('steerpatch_requests_total{alias="a",route="predict",status="200"} 3.0\n', "steerpatch_requests_total")
        3.0
    """
    from prometheus_client.parser import text_string_to_metric_families

    return sum(sample.value for family in text_string_to_metric_families(text) for sample in family.samples
               if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()))


def inference_route(method: str, path: str) -> str | None:
    """The metrics' route label of an inference request (`predict`, `v2-infer`), None for every other request."""
    if method != "POST":
        return None
    if path == "/predict":
        return "predict"
    return "v2-infer" if path.startswith("/v2/") and path.endswith("/infer") else None


class CountRequests:
    """ASGI middleware: count every inference request with its alias, status and latency.

    A plain ASGI wrapper rather than FastAPI's `@app.middleware("http")`, which runs each request in
    a task group with in-memory streams, a cost every request paid. The routes leave the alias they
    chose in `request.state.alias` (the scope's `state`); a refusal before routing counts as `NO_ALIAS`.

    Args:
        app: the ASGI app (installed outermost, so 413/408 refusals are counted too).
        metrics: the `ServeMetrics`.
    """

    def __init__(self, app: Any, metrics: ServeMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        route = inference_route(scope.get("method", ""), scope.get("path", "")) if scope["type"] == "http" else None
        if route is None:
            await self.app(scope, receive, send)
            return
        state = scope.setdefault("state", {})
        started = time.perf_counter()
        status = 500

        async def watch(message: Any) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, watch)
        finally:
            self.metrics.record(state.get("alias", NO_ALIAS), route, status, time.perf_counter() - started)
