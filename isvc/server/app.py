"""create_app(settings, engine): the predictor's HTTP app. No globals; everything comes in as arguments.

The engine is loaded before the app serves (``isvc serve`` binds its port only then); the app's
middleware, outermost first: ``isvc.http_errors.EdgeMiddleware`` (500s in the protocol's format,
the access log), then the edge limits of ``isvc.http_limits`` (body size and stall, strict JSON
bodies, cancel on client disconnect).
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from fastapi import FastAPI
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from isvc.engine.client import EngineClient
from isvc.http_errors import EdgeMiddleware
from isvc.http_limits import LimitRequests, RequestLimits
from isvc.server import errors
from isvc.server.generation_defaults import GenerationDefaults
from isvc.server.protocols import kserve_v1, kserve_v2
from isvc.server.protocols.encode import EncoderOptions
from isvc.server.protocols.openai import routes as openai_routes
from isvc.server.protocols.openai.pooling import OpenAIPooling
from isvc.server.protocols.openai.serving import OpenAIServing
from isvc.server.protocols.openai.tools import ToolSettings

logger = logging.getLogger(__name__)

ENGINE_DEATH_EXIT_DELAY_S = 2.0
"""After the engine dies: time for in-flight requests to get their 503 before the exit."""


@dataclass(frozen=True, slots=True)
class ServerSettings:
    model_name: str
    model_root: str
    enable_docs_url: bool = False
    log_requests: bool = True
    exit_on_engine_death: bool = True
    trust_request_chat_template: bool = False
    """Accept ``chat_template`` in chat requests (vLLM's --trust-request-chat-template)."""
    limits: RequestLimits = field(default_factory=RequestLimits)
    """Body size, read deadlines and JSON shape each request is held to."""
    encoder: EncoderOptions = field(default_factory=EncoderOptions)
    """KServe's encoder flags (special tokens, token types, probabilities or logits in V1/V2 answers)."""
    tools: ToolSettings = field(default_factory=ToolSettings)
    """vLLM's --enable-auto-tool-choice and --tool-call-parser."""
    chat_template: str | None = None
    """vLLM's --chat-template: a Jinja template (its text) replacing the model's."""
    reasoning_parser: str | None = None
    """vLLM's --reasoning-parser: deepseek_r1 or qwen3."""
    generation: GenerationDefaults = field(default_factory=GenerationDefaults)
    """vLLM's --generation-config: sampling defaults and the server-wide max_new_tokens."""


def create_app(settings: ServerSettings, engine: EngineClient) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
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

    serving = OpenAIServing(
        engine,
        settings.model_name,
        settings.model_root,
        trust_request_chat_template=settings.trust_request_chat_template,
        tools=settings.tools,
        chat_template=settings.chat_template,
        reasoning_parser=settings.reasoning_parser,
        generation=settings.generation,
    )
    pooling = OpenAIPooling(engine, settings.model_name, settings.encoder)
    openai_router = openai_routes.build_router(serving, pooling)
    app.include_router(openai_router, prefix="/openai/v1")
    app.include_router(kserve_v1.build_router(engine, settings.model_name, settings.encoder))
    app.include_router(openai_router, prefix="/v1")
    app.include_router(kserve_v2.build_router(engine, settings.model_name, settings.encoder))
    app.include_router(openai_routes.build_root_router(serving, pooling))

    @app.get("/")
    async def root() -> JSONResponse:
        if engine.dead:
            return JSONResponse({"status": "dead"}, status_code=503)
        return JSONResponse({"status": "alive"})

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    # add_middleware puts each one outside the ones added before it.
    app.add_middleware(
        LimitRequests,
        limits=settings.limits,
        json_bodies=True,  # every POST route of this server takes JSON
        cancel_on_disconnect=True,  # a client that leaves frees its engine work, streaming or not
    )
    app.add_middleware(EdgeMiddleware, log_requests=settings.log_requests)
    return app


def load_engine(engine: EngineClient, model_name: str) -> None:
    """Load the weights and run the warm-up step (blocking), before the server binds its port."""
    started = time.monotonic()
    engine.load()
    logger.info("model %s ready in %.1fs (weights loaded, warm-up step done)", model_name, time.monotonic() - started)


def _exit_soon(exc: BaseException) -> None:
    """The engine died: exit non-zero shortly, so the controller restarts the server."""
    logger.critical("the engine is dead (%s); exiting in %.0fs", exc, ENGINE_DEATH_EXIT_DELAY_S)
    threading.Timer(ENGINE_DEATH_EXIT_DELAY_S, os._exit, args=(1,)).start()
