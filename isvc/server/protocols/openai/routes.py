"""OpenAI routes, mounted under both /openai/v1 (KServe) and /v1 (vLLM and the OpenAI default).

Also vLLM's routes outside that prefix: ``/tokenize``, ``/detokenize``, ``/classify``, and rerank and score
(``/rerank``, ``/v2/rerank``, ``/score``) for the clients that call them there (Jina's and Cohere's
use ``/v1/rerank`` and ``/v2/rerank``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from fastapi import APIRouter
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ValidationError

from isvc.engine import metrics
from isvc.server.errors import guarded_stream
from isvc.server.protocols.openai.pooling import OpenAIPooling
from isvc.server.protocols.openai.schema import (
    ChatCompletionRequest,
    ClassificationRequest,
    CompletionRequest,
    DetokenizeRequest,
    EmbeddingRequest,
    RerankRequest,
    ScoreRequest,
    TokenizeChatRequest,
    TokenizeCompletionRequest,
)
from isvc.server.protocols.openai.serving import OpenAIServing

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def build_router(serving: OpenAIServing, pooling: OpenAIPooling) -> APIRouter:
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

    @router.post("/embeddings")
    async def embeddings(body: EmbeddingRequest) -> JSONResponse:
        return _ok("embeddings", await pooling.embeddings(body))

    add_score_routes(router, pooling)
    return router


def add_score_routes(router: APIRouter, pooling: OpenAIPooling, rerank_paths: tuple[str, ...] = ("/rerank",)) -> None:
    """vLLM's rerank, score and classify, under the router's prefix (``/v1/rerank``, ``/v1/score``...)."""

    async def rerank(body: RerankRequest) -> JSONResponse:
        return _ok("rerank", await pooling.rerank(body))

    async def score(body: ScoreRequest) -> JSONResponse:
        return _ok("score", await pooling.score(body))

    async def classify(body: ClassificationRequest) -> JSONResponse:
        return _ok("classify", await pooling.classify(body))

    for path in rerank_paths:
        router.add_api_route(path, rerank, methods=["POST"], name=f"rerank {path}")
    router.add_api_route("/score", score, methods=["POST"], name="score")
    router.add_api_route("/classify", classify, methods=["POST"], name="classify")


def build_root_router(serving: OpenAIServing, pooling: OpenAIPooling) -> APIRouter:
    """vLLM's routes outside /v1: ``/tokenize``, ``/detokenize``, ``/rerank``, ``/v2/rerank`` (Cohere's v2
    client), ``/score``, ``/classify``."""
    router = APIRouter()

    @router.post("/tokenize")
    async def tokenize(body: dict[str, Any]) -> JSONResponse:
        # chat messages or a prompt; chosen by hand so a bad body's error names its field, not a union branch
        kind = TokenizeChatRequest if "messages" in body else TokenizeCompletionRequest
        try:
            request = kind.model_validate(body)
        except ValidationError as exc:
            raise RequestValidationError(exc.errors()) from None
        return _ok("tokenize", (await serving.tokenize(request)).model_dump())

    @router.post("/detokenize")
    async def detokenize(body: DetokenizeRequest) -> JSONResponse:
        return _ok("detokenize", (await serving.detokenize(body)).model_dump())

    add_score_routes(router, pooling, rerank_paths=("/rerank", "/v2/rerank"))
    return router


def _ok(route: str, body: dict[str, Any]) -> JSONResponse:
    metrics.REQUESTS.labels(route, "ok").inc()
    return JSONResponse(body)


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
