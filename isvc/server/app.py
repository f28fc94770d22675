"""create_app(settings, engine): the predictor's HTTP app. No globals; everything comes in as arguments."""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from isvc.engine.async_engine import AsyncEngine
from isvc.server import errors
from isvc.server.protocols import kserve_v1, kserve_v2
from isvc.server.protocols.openai import routes as openai_routes
from isvc.server.protocols.openai.serving import OpenAIServing

logger = logging.getLogger(__name__)

ENGINE_DEATH_EXIT_DELAY_S = 2.0
"""After the engine dies: time for in-flight requests to get their 503 before the exit."""


@dataclass(frozen=True, slots=True)
class ServerSettings:
    model_name: str
    model_root: str
    enable_docs_url: bool = False
    log_requests: bool = True
    exit_on_load_failure: bool = True
    exit_on_engine_death: bool = True


def create_app(settings: ServerSettings, engine: AsyncEngine) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        task = asyncio.create_task(_load(engine, settings))
        yield
        task.cancel()
        await asyncio.to_thread(engine.shutdown)

    docs = settings.enable_docs_url
    app = FastAPI(
        title="isvc model server",
        lifespan=lifespan,
        docs_url="/docs" if docs else None,
        redoc_url=None,
        openapi_url="/openapi.json" if docs else None,
    )
    errors.install_handlers(app)
    if settings.exit_on_engine_death and engine.on_dead is None:
        engine.on_dead = _exit_soon

    serving = OpenAIServing(engine, settings.model_name, settings.model_root)
    openai_router = openai_routes.build_router(serving)
    app.include_router(openai_router, prefix="/openai/v1")
    app.include_router(kserve_v1.build_router(engine, settings.model_name))
    app.include_router(openai_router, prefix="/v1")
    app.include_router(kserve_v2.build_router(engine, settings.model_name))

    @app.get("/")
    async def root() -> JSONResponse:
        if engine.dead:
            return JSONResponse({"status": "dead"}, status_code=503)
        return JSONResponse({"status": "alive"})

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    if settings.log_requests:

        @app.middleware("http")
        async def access_log(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
            started = time.perf_counter()
            response = await call_next(request)
            logger.info(
                "%s %s %d %.1fms",
                request.method,
                request.url.path,
                response.status_code,
                (time.perf_counter() - started) * 1000,
            )
            return response

    return app


def _exit_soon(exc: BaseException) -> None:
    """The engine died: exit non-zero shortly, so the controller restarts the server."""
    logger.critical("the engine is dead (%s); exiting in %.0fs", exc, ENGINE_DEATH_EXIT_DELAY_S)
    threading.Timer(ENGINE_DEATH_EXIT_DELAY_S, os._exit, args=(1,)).start()


async def _load(engine: AsyncEngine, settings: ServerSettings) -> None:
    started = time.monotonic()
    try:
        await asyncio.to_thread(engine.load)
    except Exception as exc:
        engine.load_error = exc
        logger.error("failed to load the model: %s", exc, exc_info=not hasattr(exc, "http_status"))
        if settings.exit_on_load_failure:
            # A predictor that cannot load must exit so the controller restarts it and
            # the status shows why; staying up and answering 503 forever hides the cause.
            os._exit(1)
        return
    logger.info(
        "model %s ready in %.1fs (weights loaded, warm-up step done)", settings.model_name, time.monotonic() - started
    )
