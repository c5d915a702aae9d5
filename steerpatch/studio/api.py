"""The studio's HTTP surface: one static page and a JSON API over a `Workbench`.

Every bad request gets a JSON body `{"error": "<one line>"}` with a 4xx status, so the page can show
the message; nothing a user sends can stop the server. Only loopback `Host` names are answered and
every POST needs the session token the page is served with (`steerpatch.studio.guard`); request
bodies are size- and time-limited, and uploads are checked from their header before decoding, by the
same code the model server uses.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from fastapi import FastAPI, File, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from steerpatch.errors import OutputError, SteerpatchError
from steerpatch.serve.app import BodyLimit
from steerpatch.studio import latents, lifecycle, tryon
from steerpatch.studio.guard import TOKEN_PLACEHOLDER, StudioGuard, new_token
from steerpatch.studio.imaging import MAX_UPLOAD_BYTES, StudioInputError, decode_upload, png_bytes
from steerpatch.studio.index import CORRECTNESS
from steerpatch.studio.suggesting import MAX_BUDGET, Suggester
from steerpatch.studio.workbench import Workbench

STATIC_DIR = Path(__file__).parent / "static"
log = logging.getLogger("steerpatch.studio")


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid")


class EditIn(_Request):
    latent: int
    op: str
    value: float


class SteerIn(_Request):
    key: str
    edits: list[EditIn] = Field(default_factory=list)
    tokens: str | None = None


class TryOnIn(SteerIn):
    n_near: int = Field(default=20, ge=1, le=200)
    n_other: int = Field(default=40, ge=0, le=400)


class SaveIn(SteerIn):
    name: str
    rationale: str
    author: str | None = None
    scores: dict[str, float] = Field(default_factory=dict)


class SuggestIn(_Request):
    key: str
    label: str
    budget: int = Field(default=24, ge=1, le=MAX_BUDGET)
    refine: int = Field(default=8, ge=0, le=MAX_BUDGET)


def _edits(body: SteerIn) -> list[dict[str, Any]]:
    return [e.model_dump() for e in body.edits]


def _status(error: SteerpatchError) -> int:
    if isinstance(error, StudioInputError):
        return error.status
    if isinstance(error, OutputError):
        return 409
    return 400


def create_app(bench: Workbench, *, allow_hosts: tuple[str, ...] = (), token: str | None = None) -> FastAPI:
    """Build the studio's FastAPI app over a workbench.

    Args:
        bench: the loaded model, SAE and dataset to work on.
        allow_hosts: `Host` names answered besides 127.0.0.1, localhost and ::1.
        token: the session token POSTs must carry (default: a fresh random one); the page at `/` embeds it.

    Returns:
        The app, with the token at `app.state.token`; serve it with uvicorn on 127.0.0.1.

    Example:
        >>> app = create_app(Workbench(loaded, sae, dataset))  # doctest: +SKIP
        >>> uvicorn.run(app, host="127.0.0.1", port=8765)  # doctest: +SKIP
    """
    app = FastAPI(title="steerpatch studio", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.bench = bench
    suggester = Suggester(bench)
    app.state.token = token = token or new_token()
    # an upload plus multipart framing; the guard runs first, so a foreign Host is refused unread
    app.add_middleware(BodyLimit, max_bytes=MAX_UPLOAD_BYTES + 64 * 1024)
    app.add_middleware(StudioGuard, token=token, allow_hosts=tuple(allow_hosts))
    page = (STATIC_DIR / "index.html").read_text(encoding="utf-8").replace(TOKEN_PLACEHOLDER, token)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    @app.exception_handler(SteerpatchError)
    async def _steerpatch_error(request: Request, error: SteerpatchError) -> JSONResponse:
        return JSONResponse({"error": str(error)}, status_code=_status(error))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
        return JSONResponse({"error": f"{request.url.path}: {error.detail}"}, status_code=error.status_code)

    @app.exception_handler(RequestValidationError)
    async def _bad_request(request: Request, error: RequestValidationError) -> JSONResponse:
        first = error.errors()[0] if error.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        return JSONResponse({"error": f"invalid request: {where}: {first.get('msg', 'bad value')}"}, status_code=422)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, error: Exception) -> JSONResponse:
        log.exception("studio request failed")
        return JSONResponse({"error": f"internal error ({type(error).__name__}: {error})"}, status_code=500)

    @app.get("/", include_in_schema=False)
    def index() -> HTMLResponse:
        return HTMLResponse(page, headers={"cache-control": "no-store"})  # the token is per session

    @app.get("/api/info")
    def info() -> dict[str, Any]:
        return bench.info()

    @app.get("/api/items")
    def items(
        label: str | None = None,
        group: str | None = None,
        correct: str = "all",
        offset: int = Query(0, ge=0),
        limit: int = Query(60, ge=1, le=500),
    ) -> dict[str, Any]:
        if correct not in CORRECTNESS:
            raise StudioInputError(f"correct={correct!r} is unknown; use one of: {', '.join(CORRECTNESS)}", 422)
        if label and label not in bench.classes:
            raise StudioInputError(f"class {label!r} is unknown; use one of: {', '.join(bench.classes)}", 422)
        rows = bench.index.rows(label=label or None, group=group or None, correctness=correct)
        page = rows[offset : offset + limit]
        return {"total": len(rows), "offset": offset, "items": [bench.index.describe(i, bench.classes) for i in page]}

    @app.get("/api/image/{key}")
    def image(key: str) -> Response:
        if key.startswith("d") and key[1:].isdecimal() and int(key[1:]) < len(bench.dataset):
            return FileResponse(bench.dataset[int(key[1:])].path)
        return Response(png_bytes(bench.instance(key).image), media_type="image/png")

    @app.post("/api/upload")
    async def upload(file: UploadFile = File(...)) -> dict[str, Any]:
        data = await file.read(MAX_UPLOAD_BYTES + 1)

        def analyse() -> dict[str, Any]:
            # off the event loop: decoding and the forward pass must not stall the other requests
            return bench.describe(bench.add_upload(decode_upload(data, file.filename or "upload")))

        return await run_in_threadpool(analyse)

    @app.get("/api/instance/{key}")
    def instance(key: str, k: int = Query(5, ge=1, le=50)) -> dict[str, Any]:
        return bench.describe(bench.instance(key), k=k)

    @app.get("/api/attribution/{key}")
    def attribution(key: str, target: str | None = None, n: int = Query(8, ge=1, le=64)) -> dict[str, Any]:
        return latents.attribution(bench, key, target=target, n=n)

    @app.get("/api/heatmap/{key}/{latent}")
    def heatmap(key: str, latent: int) -> Response:
        return Response(latents.heatmap_png(bench, key, latent), media_type="image/png")

    @app.get("/api/exemplars/{latent}")
    def exemplars(latent: int, n: int = Query(6, ge=1, le=32)) -> dict[str, Any]:
        return {"latent": latent, "exemplars": latents.exemplars(bench, latent, n=n)}

    @app.post("/api/steer")
    def steer(body: SteerIn) -> dict[str, Any]:
        return bench.steer(body.key, _edits(body), body.tokens)

    @app.post("/api/tryon")
    def try_on(body: TryOnIn) -> dict[str, Any]:
        return tryon.try_on(bench, body.key, _edits(body), body.tokens, n_near=body.n_near, n_other=body.n_other)

    @app.post("/api/patches")
    def save(body: SaveIn) -> dict[str, Any]:
        return lifecycle.save_draft(
            bench, body.key, _edits(body), name=body.name, rationale=body.rationale, author=body.author,
            tokens=body.tokens, scores=body.scores,
        )

    @app.post("/api/patches/{name}/validate")
    def validate(name: str) -> dict[str, Any]:
        return lifecycle.validate_saved(bench, name)

    @app.post("/api/patches/{name}/register")
    def register(name: str) -> dict[str, Any]:
        return lifecycle.register_saved(bench, name)

    @app.post("/api/suggest")
    def suggest(body: SuggestIn) -> dict[str, Any]:
        return suggester.start(body.key, body.label, budget=body.budget, refine=body.refine).view()

    @app.get("/api/suggest/{job_id}")
    def suggestion(job_id: str) -> dict[str, Any]:
        return suggester.job(job_id).view()

    @app.get("/api/suggest/{job_id}/plot.png", include_in_schema=False)
    def suggestion_plot(job_id: str) -> FileResponse:
        return FileResponse(suggester.plot(job_id), media_type="image/png")

    @app.get("/reports/{name}/report.html", include_in_schema=False)
    def report(name: str) -> FileResponse:
        lifecycle.patch_path(bench, name)  # refuses names that are not slugs, so no path escapes
        path = lifecycle.report_dir(bench, name) / "report.html"
        if not path.is_file():
            raise StudioInputError(f"patch '{name}' has no report yet; validate it first", 404)
        return FileResponse(path, media_type="text/html")

    return app
