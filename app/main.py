"""The FastAPI application: `create_app(settings)` builds it; nothing is loaded at import time."""

from __future__ import annotations

import time
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.metrics import AppMetrics
from app.routes import admin, api, gallery, pages
from app.services.errors import ServiceError, UnknownWords
from app.services.images import ThumbnailCache
from app.services.search import SearchService
from app.services.served import ServedIndexes
from app.settings import Settings, get_settings
from indexer.db import session_factory

ROOT = Path(__file__).resolve().parent.parent


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        app.state.sessions = session_factory(settings.database_url)
        app.state.store = settings.vector_store()
        app.state.served = ServedIndexes(app.state.store, settings.default_index, settings.device,
                                          settings.backbone_runtime)
        app.state.search = SearchService(app.state.served, app.state.sessions, settings.max_query_chars,
                                         observe_timings=app.state.metrics.observe_stages,
                                         concurrency=settings.search_threads)
        app.state.thumbnails = ThumbnailCache(Path(settings.index_dir) / ".thumbnails")
        app.state.admin_jobs = {}
        yield

    app = FastAPI(title="imgsearch", version="0.1.0", lifespan=lifespan,
                  description="Cross-modal image-text search: text->image, image->text, image - word + word.")
    app.state.settings = settings
    app.state.metrics = AppMetrics()
    app.include_router(api.router)
    app.include_router(admin.router)
    app.include_router(gallery.router)
    app.include_router(pages.router)
    app.mount("/static", StaticFiles(directory=ROOT / "static"), name="static")
    _install_handlers(app)
    return app


def _install_handlers(app: FastAPI) -> None:
    @app.exception_handler(ServiceError)
    async def service_error(_: Request, error: ServiceError) -> JSONResponse:
        body = {"detail": error.message}
        if isinstance(error, UnknownWords):
            body["unknown_words"] = error.words
        return JSONResponse(body, status_code=error.status_code)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_: Request, error: RequestValidationError) -> JSONResponse:
        problems = [f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in error.errors()]
        return JSONResponse({"detail": "; ".join(problems), "errors": jsonable_encoder(error.errors())},
                            status_code=422)

    app.add_middleware(RequestMetrics, metrics=app.state.metrics)


class RequestMetrics:
    """Counts requests and times them per route template. A plain ASGI middleware: Starlette's
    `BaseHTTPMiddleware` costs about a millisecond a request, a fifth of the search budget."""

    def __init__(self, app: ASGIApp, metrics: AppMetrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started, status = time.perf_counter(), [500]

        async def send_and_note_status(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_note_status)
        finally:
            label = getattr(scope.get("route"), "path", "unmatched")
            self.metrics.requests.labels(label, str(status[0])).inc()
            self.metrics.latency.labels(label).observe(time.perf_counter() - started)
