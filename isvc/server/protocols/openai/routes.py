"""OpenAI routes, mounted under both /openai/v1 (KServe) and /v1 (vLLM and the OpenAI default)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse

from isvc.engine import metrics
from isvc.server.protocols.openai.schema import ChatCompletionRequest, CompletionRequest
from isvc.server.errors import guarded_stream
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
    async def completions(body: CompletionRequest, request: Request):  # type: ignore[no-untyped-def]
        if body.stream:
            events = await serving.completion_stream(body)
            metrics.REQUESTS.labels("completions", "stream").inc()
            return StreamingResponse(guarded_stream(events), media_type="text/event-stream", headers=SSE_HEADERS)
        response = await serving.completion(body)
        metrics.REQUESTS.labels("completions", "ok").inc()
        return JSONResponse(response.model_dump())

    @router.post("/chat/completions")
    async def chat_completions(body: ChatCompletionRequest, request: Request):  # type: ignore[no-untyped-def]
        if body.stream:
            events = await serving.chat_stream(body)
            metrics.REQUESTS.labels("chat", "stream").inc()
            return StreamingResponse(guarded_stream(events), media_type="text/event-stream", headers=SSE_HEADERS)
        response = await serving.chat(body)
        metrics.REQUESTS.labels("chat", "ok").inc()
        return JSONResponse(response.model_dump())

    return router
