"""OpenAI routes, mounted under both /openai/v1 (KServe) and /v1 (vLLM and the OpenAI default)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel

from isvc.engine import metrics
from isvc.server.errors import guarded_stream
from isvc.server.protocols.openai.schema import ChatCompletionRequest, CompletionRequest
from isvc.server.protocols.openai.serving import OpenAIServing

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def build_router(serving: OpenAIServing) -> APIRouter:
    router = APIRouter()

    @router.get("/models")
    async def list_models() -> JSONResponse:
        card = serving.model_card().model_dump()
        # KServe V1 clients read "models" from GET /v1/models; OpenAI clients read "data".
        return JSONResponse({"object": "list", "data": [card], "models": [serving.model_name]})

    @router.get("/models/{name}")
    async def get_model(name: str) -> JSONResponse:
        serving.check_model(name)
        card = serving.model_card().model_dump()
        # The same path is KServe V1's model status: keep its fields beside OpenAI's.
        return JSONResponse({**card, "name": name, "ready": serving.engine.ready})

    @router.post("/completions")
    async def completions(body: CompletionRequest) -> Response:
        return await _respond("completions", body, serving.completion_stream, serving.completion)

    @router.post("/chat/completions")
    async def chat_completions(body: ChatCompletionRequest) -> Response:
        return await _respond("chat", body, serving.chat_stream, serving.chat)

    return router


async def _respond(
    route: str,
    body: Any,
    stream: Callable[[Any], Awaitable[AsyncIterator[str]]],
    unary: Callable[[Any], Awaitable[BaseModel]],
) -> Response:
    """SSE when the request asks for a stream, else one JSON body."""
    if body.stream:
        events = await stream(body)  # validation errors surface here, before the first byte
        metrics.REQUESTS.labels(route, "stream").inc()
        return StreamingResponse(guarded_stream(events), media_type="text/event-stream", headers=SSE_HEADERS)
    response = await unary(body)
    metrics.REQUESTS.labels(route, "ok").inc()
    return JSONResponse(response.model_dump())
