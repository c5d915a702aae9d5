"""The HTTP API over a compiled graph: `/predict`, `/health`, `/metadata`.

`/predict` takes one of
  - multipart/form-data with the image file in the field `file`,
  - JSON `{"image": "<base64 image file>"}`,
  - JSON `{"tensor": [...]}` with preprocessed pixels, shaped (3, S, S) or (B, 3, S, S),
  - a raw body with an `image/*` content type,
and returns the class probabilities (with a zero-shot head) and the embedding of each image.
Every bad payload gets a 4xx with `{"error": "..."}`; a body over the size limit is refused with 413
before it is read in full.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from steerpatch.serve.preprocess import ImageRejected, image_to_pixels

MAX_BODY_BYTES = 16 * 1024 * 1024
MAX_BATCH = 64


class BadPayload(ValueError):
    """A request the server refuses; carries its HTTP status."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


class BodyLimit:
    """ASGI middleware: refuse request bodies over `max_bytes` with 413, declared or streamed."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            await _too_large(scope, receive, send, self.max_bytes)
            return
        chunks, size = [], 0
        while True:
            message = await receive()
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
    response = JSONResponse(
        {"error": f"request body is over the {limit} byte limit; send a smaller image or fewer tensors"},
        status_code=413,
    )
    await response(scope, receive, send)


def _tensor_pixels(value: Any, size: int, max_batch: int) -> np.ndarray:
    try:
        array = np.asarray(value, dtype=np.float32)
    except (ValueError, TypeError) as error:
        raise BadPayload(f"'tensor' must be a nested list of numbers with a regular shape ({error})", 422) from error
    if array.ndim == 3:
        array = array[None]
    expected = (3, size, size)
    if array.ndim != 4 or tuple(array.shape[1:]) != expected:
        raise BadPayload(
            f"'tensor' has shape {list(array.shape)}; expected {list(expected)} or [batch, {', '.join(map(str, expected))}] "
            "(preprocessed pixels)",
            422,
        )
    if not 1 <= array.shape[0] <= max_batch:
        raise BadPayload(f"'tensor' holds {array.shape[0]} images; send between 1 and {max_batch}", 422)
    if not np.isfinite(array).all():
        raise BadPayload("'tensor' holds NaN or infinite values; send finite pixels", 422)
    return np.ascontiguousarray(array)


def _b64_image(value: Any, spec: Any, max_pixels: int) -> np.ndarray:
    if not isinstance(value, str):
        raise BadPayload("'image' must be a base64 string of an image file", 422)
    try:
        data = base64.b64decode(value.split(",", 1)[-1] if value.startswith("data:") else value, validate=True)
    except (binascii.Error, ValueError) as error:
        raise BadPayload(f"'image' is not valid base64 ({error})") from error
    return image_to_pixels(data, spec, max_pixels=max_pixels)


async def read_pixels(request: Request, spec: Any, *, max_batch: int, max_pixels: int) -> np.ndarray:
    """Turn any accepted `/predict` payload into a (B, 3, S, S) float32 batch.

    Raises:
        BadPayload: 400/413/415/422 naming what was wrong with the request.
    """
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    try:
        if content_type == "multipart/form-data":
            try:
                form = await request.form(max_files=1, max_fields=8)
            except Exception as error:  # noqa: BLE001 - the multipart parser raises several types
                raise BadPayload(f"the multipart body could not be parsed ({error})") from error
            upload = form.get("file")
            if upload is None or isinstance(upload, str):
                raise BadPayload("multipart uploads must carry the image in the field 'file'", 422)
            return image_to_pixels(await upload.read(), spec, max_pixels=max_pixels)
        if content_type.startswith("image/"):
            return image_to_pixels(await request.body(), spec, max_pixels=max_pixels)
        if content_type in ("application/json", ""):
            try:
                payload = json.loads(await request.body())
            except (json.JSONDecodeError, UnicodeDecodeError) as error:
                raise BadPayload(f"the body is not valid JSON ({error})") from error
            if not isinstance(payload, dict) or ("image" in payload) == ("tensor" in payload):
                raise BadPayload('send a JSON object with exactly one of "image" (base64) or "tensor" (pixels)', 422)
            if "tensor" in payload:
                return _tensor_pixels(payload["tensor"], spec.image_size, max_batch)
            return _b64_image(payload["image"], spec, max_pixels)
    except ImageRejected as error:
        raise BadPayload(str(error), error.status) from error
    raise BadPayload(
        f"content type '{content_type}' is not accepted; use multipart/form-data (field 'file'), "
        "application/json ({\"image\": ...} or {\"tensor\": ...}) or image/*",
        415,
    )


def predictions(graph: Any, pixels: np.ndarray) -> dict[str, Any]:
    """Run the graph and shape its outputs as the `/predict` response."""
    names = graph.output_names
    outputs = dict(zip(names, graph.session.run(names, {"pixels": pixels}), strict=True))
    classes = graph.info.classes
    items = []
    for i in range(len(pixels)):
        item: dict[str, Any] = {"embedding": outputs["embedding"][i].tolist()}
        if "probs" in outputs:
            probs = outputs["probs"][i]
            item["label"] = classes[int(np.argmax(probs))]
            item["probs"] = dict(zip(classes, (float(p) for p in probs), strict=True))
        items.append(item)
    return {
        "classes": classes,
        "predictions": items,
        "patch_hash": graph.info.patch_hash,
        "model_version": graph.registry.version if graph.registry else None,
    }


def create_app(source: Any, *, max_body_bytes: int = MAX_BODY_BYTES, max_batch: int = MAX_BATCH,
               max_pixels: int = 64_000_000, follow: bool = True, tracking_uri: str | None = None,
               poll_seconds: float = 5.0) -> FastAPI:
    """The FastAPI app serving a compiled graph.

    Args:
        source: a `GraphSource`, a `.onnx` file, or `NAME@ALIAS` (followed as it moves).
        max_body_bytes: request bodies above this get 413.
        max_batch: most images one `{"tensor": ...}` request may carry.
        max_pixels: images with more pixels are refused (413) before decoding.
        follow: start the alias-polling thread with the app (ignored for files).
        tracking_uri: MLflow tracking URI for registry refs.
        poll_seconds: how often to check the alias.

    Returns:
        The app; `app.state.source` is the `GraphSource`.

    Example:
        >>> app = create_app("steered.onnx")  # doctest: +SKIP
        >>> uvicorn.run(app, host="127.0.0.1", port=8000)  # doctest: +SKIP
    """
    from contextlib import asynccontextmanager

    from steerpatch.serve.source import GraphSource

    graphs = source if isinstance(source, GraphSource) else GraphSource(
        source, tracking_uri=tracking_uri, poll_seconds=poll_seconds
    )

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        if follow:
            graphs.start()
        try:
            yield
        finally:
            graphs.stop()

    app = FastAPI(title="steerpatch", summary="A steered CLIP image encoder in ONNX Runtime", lifespan=lifespan)
    app.state.source = graphs
    app.add_middleware(BodyLimit, max_bytes=max_body_bytes)

    @app.exception_handler(BadPayload)
    async def _bad_payload(_request: Request, error: BadPayload) -> JSONResponse:
        return JSONResponse({"error": str(error)}, status_code=error.status)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return graphs.health()

    @app.get("/metadata")
    async def metadata() -> dict[str, Any]:
        return graphs.current.describe()

    @app.post("/predict")
    async def predict(request: Request) -> dict[str, Any]:
        graph = graphs.current  # one graph for the whole request, even if the alias moves meanwhile
        pixels = await read_pixels(request, graph.info.preprocessing, max_batch=max_batch, max_pixels=max_pixels)
        return await run_in_threadpool(predictions, graph, pixels)

    return app

