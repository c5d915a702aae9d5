"""The HTTP API over compiled graphs: `/predict`, `/health`, `/metadata`, `/metrics`, and `/v2` (KServe).

A server answers for one or more aliases (`steerpatch.serve.fleet`): a request pins one with the
header `X-Steerpatch-Alias` or the query parameter `alias`, else it goes to the default (or the
canary, for its share). A multi-patch graph's rows pick their patch with `patch_index` (query
parameter or header `X-Steerpatch-Patch-Index`). Concurrent requests are batched into one ONNX
Runtime call (`steerpatch.serve.batching`). Every answer names its alias, model version and patch hash.

`/predict` takes one of
  - multipart/form-data with the image file in the field `file`,
  - JSON `{"image": "<base64 image file>"}`,
  - JSON `{"tensor": [...]}` with preprocessed pixels, shaped (3, S, S) or (B, 3, S, S),
  - a raw body with an `image/*` content type,
and returns the class probabilities (with a zero-shot head) and the embedding of each image.

Every refusal is a 4xx with one body shape, `{"error": "..."}`, routing's 404/405 included. Limits
hold before the work they guard: the body size while it streams in, a deadline for the whole body
and for each silence within it, JSON depth and number length on the text, tensor shape on the
lists, and image size on the header (see `steerpatch.serve.payload`). Parsing, decoding and
inference run in a bounded worker pool, so the event loop, and `/health`, stay responsive while a
large image decodes.
"""

from __future__ import annotations

import asyncio
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from steerpatch.serve.batching import DEFAULT_MAX_ROWS, DEFAULT_WAIT_MS, Batcher, ort_threads
from steerpatch.serve.kserve import add_v2_routes, answer_headers
from steerpatch.serve.payload import (
    MAX_BATCH,
    BadPayload,
    PayloadLimits,
    image_pixels,
    json_pixels,
    small_image,
)
from steerpatch.serve.preprocess import MAX_PIXELS, ImageLimits

MAX_BODY_BYTES = 16 * 1024 * 1024
BODY_TIMEOUT_S = 30.0  # the whole body must arrive within this
IDLE_TIMEOUT_S = 10.0  # and no silence within it may last longer
# decoding and inference both use the cores; a few workers keep a queue from growing without bound
WORKERS = max(1, min(4, os.cpu_count() or 1))
MAX_WAITING = 64  # requests queued for a worker beyond this get 503 at once
# images declaring at most this many pixels are decoded on the event loop: a thumbnail decodes in
# well under a millisecond, less than the thread hop (and the GIL hand-offs) the pool would cost
INLINE_PIXELS = 96 * 96

__all__ = ["MAX_BATCH", "MAX_BODY_BYTES", "BadPayload", "BodyLimit", "create_app", "predictions"]


def error_response(message: str, status: int, headers: dict[str, str] | None = None) -> JSONResponse:
    """The one error body every refusal uses: `{"error": "<one line>"}`."""
    return JSONResponse({"error": message}, status_code=status, headers=headers)


class BodyLimit:
    """ASGI middleware: read the whole request body under a size limit and two deadlines.

    Bodies over `max_bytes` (declared or streamed) get 413; a body not complete within
    `body_timeout` seconds, or silent for `idle_timeout` seconds, gets 408 and the connection closes.
    """

    def __init__(self, app: ASGIApp, max_bytes: int, body_timeout: float = BODY_TIMEOUT_S,
                 idle_timeout: float = IDLE_TIMEOUT_S) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.body_timeout = body_timeout
        self.idle_timeout = idle_timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            await _too_large(scope, receive, send, self.max_bytes)
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.body_timeout
        chunks, size = [], 0
        while True:
            wait = min(self.idle_timeout, deadline - loop.time())
            try:
                # asyncio.timeout, not wait_for: on 3.11 wait_for wraps every receive in a new task
                async with asyncio.timeout(max(wait, 0.0)):
                    message = await receive()
            except TimeoutError:
                await _timed_out(scope, receive, send, self.body_timeout, self.idle_timeout)
                return
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                await _too_large(scope, receive, send, self.max_bytes)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        sent = False

        async def replay() -> Message:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


async def _too_large(scope: Scope, receive: Receive, send: Send, limit: int) -> None:
    response = error_response(
        f"request body is over the {limit} byte limit; send a smaller image or fewer tensors", 413,
        headers={"connection": "close"},
    )
    await response(scope, receive, send)


async def _timed_out(scope: Scope, receive: Receive, send: Send, whole: float, idle: float) -> None:
    response = error_response(
        f"the request body did not arrive in time (whole body within {whole:g} s, no pause over {idle:g} s); "
        "send it in one go",
        408,
        headers={"connection": "close"},  # the rest of a half-sent body must not be read as a request
    )
    await response(scope, receive, send)


def predictions(graph: Any, pixels: np.ndarray, patch_index: np.ndarray | None = None) -> dict[str, Any]:
    """Run the graph once and shape its outputs as the `/predict` response (no routing, no batching)."""
    from steerpatch.serve.batching import run_graph
    from steerpatch.serve.inference import Answer
    from steerpatch.serve.inference import predictions as shape

    return shape(Answer("default", graph, run_graph(graph, pixels, patch_index), patch_index))


async def read_payload(request: Request) -> tuple[str, bytes]:
    """The body's kind ("image" or "json") and bytes; multipart is unpacked to its `file` field.

    Raises:
        BadPayload: 400/415/422 for a body that is none of the accepted forms.
    """
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type == "multipart/form-data":
        try:
            form = await request.form(max_files=1, max_fields=8)
        except Exception as error:  # noqa: BLE001 - the multipart parser raises several types
            raise BadPayload(f"the multipart body could not be parsed ({error})") from error
        upload = form.get("file")
        if upload is None or isinstance(upload, str):
            raise BadPayload("multipart uploads must carry the image in the field 'file'", 422)
        return "image", await upload.read()
    if content_type.startswith("image/"):
        return "image", await request.body()
    if content_type in ("application/json", ""):
        return "json", await request.body()
    raise BadPayload(
        f"content type '{content_type}' is not accepted; use multipart/form-data (field 'file'), "
        "application/json ({\"image\": ...} or {\"tensor\": ...}) or image/*",
        415,
    )


def _request_patch_index(request: Request) -> Any:
    value = request.query_params.get("patch_index", request.headers.get("x-steerpatch-patch-index"))
    if value is None:
        return None
    try:
        return [int(part) for part in value.split(",")]
    except ValueError:
        raise BadPayload(f"patch_index {value!r} is not an integer (or comma-separated integers, one per row)",
                         422) from None


def create_app(source: Any, *, max_body_bytes: int = MAX_BODY_BYTES, max_batch: int = MAX_BATCH,
               max_pixels: int = MAX_PIXELS, image_limits: ImageLimits | None = None, follow: bool = True,
               tracking_uri: str | None = None, poll_seconds: float = 5.0, docs: bool = False,
               workers: int = WORKERS, body_timeout: float = BODY_TIMEOUT_S,
               idle_timeout: float = IDLE_TIMEOUT_S, batch_wait_ms: float | None = DEFAULT_WAIT_MS,
               max_batch_rows: int = DEFAULT_MAX_ROWS) -> FastAPI:
    """The FastAPI app serving compiled graphs.

    Args:
        source: a `Fleet` of aliases, a `GraphSource`, a `.onnx` file, or `NAME@ALIAS` (followed as it moves).
        max_body_bytes: request bodies above this get 413.
        max_batch: most images one `{"tensor": ...}` request may carry.
        max_pixels: images with more pixels are refused (413) before decoding.
        image_limits: side and aspect-ratio limits too (its `max_pixels` is replaced by `max_pixels`).
        follow: start the alias-polling thread with the app (ignored for files).
        tracking_uri: MLflow tracking URI for registry refs.
        poll_seconds: how often to check the alias.
        docs: serve `/docs`, `/redoc` and `/openapi.json` (off: a production server shows no playground).
        workers: threads that parse, decode and run the graph.
        body_timeout: seconds the whole request body may take (408 after).
        idle_timeout: seconds the body may pause (408 after).
        batch_wait_ms: how long a request waits for others to share its ONNX Runtime call; None turns
            dynamic batching off (each request runs alone in the worker pool).
        max_batch_rows: a gathered batch runs at once when it holds this many rows.

    Returns:
        The app; `app.state.fleet` is the `Fleet`, `app.state.source` its default alias's `GraphSource`,
        `app.state.metrics` the `ServeMetrics`.

    Example:
        >>> app = create_app("steered.onnx")  # doctest: +SKIP
        >>> uvicorn.run(app, host="127.0.0.1", port=8000)  # doctest: +SKIP
    """
    from contextlib import asynccontextmanager

    from steerpatch.serve.fleet import ALIAS_HEADER, ALIAS_QUERY, Fleet, pinned_alias
    from steerpatch.serve.inference import Inference, check_patch_index
    from steerpatch.serve.inference import predictions as shape_predictions
    from steerpatch.serve.metrics import CountRequests, ServeMetrics
    from steerpatch.serve.source import GraphSource

    if isinstance(source, Fleet):
        fleet = source
    else:
        fleet = Fleet.single(source if isinstance(source, GraphSource) else GraphSource(
            source, tracking_uri=tracking_uri, poll_seconds=poll_seconds,
            threads=ort_threads(workers),
        ))
    graphs = fleet.sources[fleet.default]
    metrics = ServeMetrics()
    base = image_limits or ImageLimits()
    limits = PayloadLimits(
        max_batch=max_batch,
        image=ImageLimits(max_pixels=max_pixels, max_side=base.max_side, max_aspect=base.max_aspect),
    )
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="steerpatch-predict")
    batcher = None
    if batch_wait_ms is not None:
        batcher = Batcher(batch_wait_ms, max_batch_rows, observe=metrics.batch_rows.observe, lanes=workers)
    inference = Inference(fleet, pool, metrics, batcher)
    waiting = 0

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        if batcher is not None:
            batcher.start()
        if follow:
            fleet.start()
        try:
            yield
        finally:
            fleet.stop()
            if batcher is not None:
                batcher.stop()
            pool.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(
        title="steerpatch", summary="A steered CLIP image encoder in ONNX Runtime", lifespan=lifespan,
        docs_url="/docs" if docs else None, redoc_url="/redoc" if docs else None,
        openapi_url="/openapi.json" if docs else None,
    )
    app.state.fleet = fleet
    app.state.source = graphs
    app.state.limits = limits
    app.state.metrics = metrics
    app.state.inference = inference
    app.add_middleware(BodyLimit, max_bytes=max_body_bytes, body_timeout=body_timeout, idle_timeout=idle_timeout)

    # outermost, so 413/408 refusals are counted too
    app.add_middleware(CountRequests, metrics=metrics)

    def pick(request: Request) -> tuple[str, Any]:
        """The alias that answers this request and its current graph (one graph for the whole request)."""
        pinned = pinned_alias(request.headers.getlist(ALIAS_HEADER), request.query_params.getlist(ALIAS_QUERY))
        alias = fleet.route(pinned)
        request.state.alias = alias
        return alias, fleet.sources[alias].current

    async def decode(work: Any, inline: bool = False) -> Any:
        nonlocal waiting
        if inline:
            return work()
        if waiting >= MAX_WAITING:
            raise BadPayload(f"the server is busy ({waiting} requests waiting); retry shortly", 503)
        waiting += 1
        try:
            return await asyncio.get_running_loop().run_in_executor(pool, work)
        finally:
            waiting -= 1

    @app.exception_handler(BadPayload)
    async def _bad_payload(_request: Request, error: BadPayload) -> JSONResponse:
        return error_response(str(error), error.status)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
        return error_response(f"{request.method} {request.url.path}: {error.detail}", error.status_code,
                              headers=getattr(error, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, error: RequestValidationError) -> JSONResponse:
        first = error.errors()[0] if error.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()))
        return error_response(f"invalid request: {where}: {first.get('msg', 'bad value')}", 422)

    @app.exception_handler(Exception)
    async def _unexpected(_request: Request, error: Exception) -> JSONResponse:
        return error_response(f"internal error ({type(error).__name__}); see the server log", 500)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        body = graphs.health()
        if len(fleet.sources) > 1 or fleet.canary or fleet.shadow:
            body["routing"] = fleet.describe()
        return body

    @app.get("/metadata")
    async def metadata(request: Request) -> dict[str, Any]:
        alias, graph = pick(request)
        return {**graph.describe(), "alias": alias}

    @app.get("/metrics")
    async def prometheus() -> Response:
        body, content_type = metrics.render()
        return Response(body, media_type=content_type)

    @app.post("/predict")
    async def predict(request: Request) -> JSONResponse:
        alias, graph = pick(request)
        requested = _request_patch_index(request)
        kind, body = await read_payload(request)
        spec = graph.info.preprocessing

        def work() -> np.ndarray:
            return image_pixels(body, spec, limits.image) if kind == "image" else json_pixels(body, spec, limits)

        pixels = await decode(work, inline=kind == "image" and small_image(body, INLINE_PIXELS))
        index = check_patch_index(graph, requested, len(pixels))
        answer = await inference.answer(alias, graph, pixels, index)
        return JSONResponse(shape_predictions(answer), headers=answer_headers(answer))

    add_v2_routes(app, fleet, inference, pick, decode, limits)
    return app
