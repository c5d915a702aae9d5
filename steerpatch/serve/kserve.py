"""The Open Inference Protocol (KServe v2) REST API beside `/predict`, so KServe and Seldon clients work.

    GET  /v2                                   server metadata
    GET  /v2/health/live, /v2/health/ready     200 when live / ready
    GET  /v2/models/{name}[/versions/{v}]      model metadata: inputs, outputs, versions
    GET  /v2/models/{name}[/versions/{v}]/ready
    POST /v2/models/{name}[/versions/{v}]/infer

`{name}` is the served model name (routed like an un-pinned `/predict`: default or canary, or the
alias pinned by the `X-Steerpatch-Alias` header) or an alias label (pinned to it); `{v}` is an alias
label; a header or `?alias=` naming another alias than the path is a 400 (send one alias). Inputs:
`pixels` (FP32, [B, 3, S, S], data flat row-major or nested) and, for a multi-patch graph,
`patch_index` (INT64, [B] or [1]). Errors are `{"error": "..."}` as the protocol specifies.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from steerpatch.errors import shown_value
from steerpatch.serve.payload import BadPayload, parse_json

PLATFORM = "onnxruntime_onnx"


def answer_headers(answer: Any) -> dict[str, str]:
    """Response headers naming who answered: alias, model version, patch hash."""
    headers = {"x-steerpatch-alias": answer.alias}
    if answer.model_version is not None:
        headers["x-steerpatch-model-version"] = str(answer.model_version)
    if (patch_hash := answer.patch_hash()) is not None:
        headers["x-steerpatch-patch-hash"] = patch_hash
    return headers


def model_metadata(name: str, alias: str, graph: Any) -> dict[str, Any]:
    """The protocol's model metadata response for the graph an alias serves."""
    info = graph.info
    size = info.preprocessing.image_size
    inputs = [{"name": "pixels", "datatype": "FP32", "shape": [-1, 3, size, size]}]
    if info.patch_count:
        inputs.append({"name": "patch_index", "datatype": "INT64", "shape": [-1]})
    outputs = [{"name": o.name, "datatype": "FP32", "shape": [-1, *o.shape[1:]]} for o in graph.session.get_outputs()]
    version = graph.registry.version if graph.registry else None
    return {
        "name": name,
        "versions": [alias] + ([version] if version else []),
        "platform": PLATFORM,
        "inputs": inputs,
        "outputs": outputs,
        "parameters": {"alias": alias, "model_version": version, "patch_hash": info.patch_hash,
                       "patches": [e.patch_hash for e in info.patches] if info.patches else None,
                       "classes": info.classes},
    }


def _tensor(entry: Any, datatype: str, dtype: Any, per_row: tuple[int, ...], max_rows: int) -> np.ndarray:
    name = entry.get("name")
    if entry.get("datatype") != datatype:
        raise BadPayload(f"input {name!r} has datatype {entry.get('datatype')!r}; send {datatype}", 422)
    shape = entry.get("shape")
    if not isinstance(shape, list) or not all(isinstance(d, float) and d == int(d) and d >= 0 for d in shape):
        raise BadPayload(f"input {name!r} needs 'shape', a list of non-negative integers", 422)
    shape = [int(d) for d in shape]
    if len(shape) != 1 + len(per_row) or shape[1:] != list(per_row) or not 1 <= shape[0] <= max_rows:
        raise BadPayload(f"input {name!r} has shape {shape}; expected [B, {', '.join(map(str, per_row))}]".replace(", ]", "]")
                         + f" with 1 <= B <= {max_rows}", 422)
    try:
        with np.errstate(over="ignore", invalid="ignore"):
            array = np.asarray(entry.get("data"), dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise BadPayload(f"input {name!r}: 'data' must be numbers, flat or nested ({error})", 422) from error
    if array.size != int(np.prod(shape)):
        raise BadPayload(f"input {name!r}: 'data' holds {array.size} values; shape {shape} needs {int(np.prod(shape))}",
                         422)
    if not np.isfinite(array).all():
        raise BadPayload(f"input {name!r} holds NaN or infinite values", 422)
    return np.ascontiguousarray(array.reshape(shape).astype(dtype))


def infer_inputs(body: bytes, graph: Any, limits: Any) -> tuple[np.ndarray, Any, dict[str, Any]]:
    """An inference request body -> (pixels, patch_index values or None, the request document).

    Raises:
        BadPayload: 4xx naming the problem (unknown input, wrong datatype or shape, too much data).
    """
    size = graph.info.preprocessing.image_size
    per_image = 3 * size * size
    doc = parse_json(body, max_depth=limits.max_json_depth, max_elements=limits.max_batch * (per_image + 1) + 64)
    inputs = doc.get("inputs") if isinstance(doc, dict) else None
    if not isinstance(inputs, list) or not inputs or not all(isinstance(i, dict) for i in inputs):
        raise BadPayload("an inference request needs 'inputs', a list of tensors {name, shape, datatype, data}", 422)
    known = {"pixels", "patch_index"} if graph.info.patch_count else {"pixels"}
    by_name = {entry.get("name"): entry for entry in inputs}
    unknown = sorted(str(n) for n in by_name if n not in known)
    if unknown or "pixels" not in by_name:
        raise BadPayload(f"inputs {unknown or ['(none named pixels)']} are not this model's; its inputs: "
                         f"{', '.join(sorted(known))}", 422)
    pixels = _tensor(by_name["pixels"], "FP32", np.float32, (3, size, size), limits.max_batch)
    index = None
    if "patch_index" in by_name:
        index = _tensor(by_name["patch_index"], "INT64", np.int64, (), max(len(pixels), 1)).tolist()
    return pixels, index, doc


def infer_response(name: str, answer: Any, doc: dict[str, Any]) -> dict[str, Any]:
    """The protocol's inference response: the requested outputs (all by default), flat row-major."""
    requested = doc.get("outputs")
    names = list(answer.outputs)
    if isinstance(requested, list) and requested:
        wanted = [o.get("name") if isinstance(o, dict) else None for o in requested]
        missing = [str(w) for w in wanted if w not in answer.outputs]
        if missing:
            raise BadPayload(f"outputs {missing} are not this model's; its outputs: {', '.join(names)}", 422)
        names = wanted
    outputs = [
        {"name": n, "datatype": "FP32", "shape": list(answer.outputs[n].shape),
         "data": answer.outputs[n].astype(np.float32).reshape(-1).tolist()}
        for n in names
    ]
    response: dict[str, Any] = {
        "model_name": name,
        "model_version": answer.model_version or answer.alias,
        "outputs": outputs,
        "parameters": {"alias": answer.alias, "patch_hash": answer.patch_hash(), "patch_hashes": answer.patch_hashes(),
                       "classes": answer.graph.info.classes},
    }
    if isinstance(doc.get("id"), str):
        response["id"] = doc["id"]
    return response


def add_v2_routes(app: FastAPI, fleet: Any, inference: Any, pick: Callable[[Request], tuple[str, Any]],
                  decode: Callable[[Any], Awaitable[Any]], limits: Any) -> None:
    """Add the Open Inference Protocol routes to the app (see the module docstring)."""
    from steerpatch.serve.fleet import ALIAS_HEADER, ALIAS_QUERY, pinned_alias
    from steerpatch.serve.inference import check_patch_index

    def select(request: Request, name: str, version: str | None) -> tuple[str, Any]:
        pinned = version if version is not None else (name if name != fleet.name else None)
        if name != fleet.name and name not in fleet.sources:
            raise BadPayload(f"model {shown_value(name)} is not served here; models: {', '.join([fleet.name, *fleet.sources])}", 404)
        if pinned is None:
            return pick(request)
        if version is not None and name != fleet.name and version != name:
            raise BadPayload(f"model {shown_value(name)} has no version {shown_value(version)}; "
                             f"use /v2/models/{fleet.name}/versions/{name}", 404)
        if pinned not in fleet.sources:
            raise BadPayload(f"version {shown_value(pinned)} of {shown_value(name)} is not served; "
                             f"versions: {', '.join(fleet.sources)}", 404)
        # a header or ?alias= naming another alias than the path is a conflict, as on /predict
        pinned_alias(request.headers.getlist(ALIAS_HEADER), request.query_params.getlist(ALIAS_QUERY), path=pinned)
        request.state.alias = pinned
        return pinned, fleet.sources[pinned].current

    @app.get("/v2")
    async def server_metadata() -> dict[str, Any]:
        import steerpatch

        return {"name": "steerpatch", "version": steerpatch.__version__, "extensions": []}

    @app.get("/v2/health/live")
    async def live() -> dict[str, Any]:
        return {"live": True}

    @app.get("/v2/health/ready")
    async def ready() -> dict[str, Any]:
        return {"ready": True}

    @app.get("/v2/models/{name}")
    @app.get("/v2/models/{name}/versions/{version}")
    async def metadata(request: Request, name: str, version: str | None = None) -> dict[str, Any]:
        alias, graph = select(request, name, version)
        return model_metadata(name, alias, graph)

    @app.get("/v2/models/{name}/ready")
    @app.get("/v2/models/{name}/versions/{version}/ready")
    async def model_ready(request: Request, name: str, version: str | None = None) -> dict[str, Any]:
        select(request, name, version)
        return {"name": name, "ready": True}

    @app.post("/v2/models/{name}/infer")
    @app.post("/v2/models/{name}/versions/{version}/infer")
    async def infer(request: Request, name: str, version: str | None = None) -> JSONResponse:
        alias, graph = select(request, name, version)
        body = await request.body()
        pixels, requested, doc = await decode(lambda: infer_inputs(body, graph, limits))
        index = check_patch_index(graph, requested, len(pixels))
        answer = await inference.answer(alias, graph, pixels, index)
        return JSONResponse(infer_response(name, answer, doc), headers=answer_headers(answer))
