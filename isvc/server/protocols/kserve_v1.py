"""KServe V1 protocol: POST /v1/models/{name}:predict with {"instances": [...]}.

GET /v1/models and /v1/models/{name} are shared with the OpenAI routes (same paths),
whose bodies carry the V1 fields too.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from isvc.engine.async_engine import AsyncEngine
from isvc.errors import InvalidRequest, NotFound
from isvc.server.protocols.generate import generate_texts, params_from


def build_router(engine: AsyncEngine, model_name: str) -> APIRouter:
    router = APIRouter()

    @router.post("/v1/models/{name}:predict")
    async def predict(name: str, request: Request) -> JSONResponse:
        if name != model_name:
            raise NotFound(f"Model with name {name} does not exist.")
        body = await _json(request)
        instances = body.get("instances")
        if not isinstance(instances, list):
            raise InvalidRequest('Expected "instances" to be a list', param="instances")
        prompts = [_instance_text(x) for x in instances]
        texts = await generate_texts(engine, prompts, params_from(body.get("parameters")))
        return JSONResponse({"predictions": texts})

    return router


def _instance_text(x: Any) -> str:
    if isinstance(x, str):
        return x
    if isinstance(x, dict):
        for key in ("text", "prompt", "text_input"):
            if isinstance(x.get(key), str):
                return x[key]
    raise InvalidRequest('each instance must be a string or {"text": ...}', param="instances")


async def _json(request: Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except ValueError as exc:
        raise InvalidRequest("the request body is not valid JSON") from exc
    if not isinstance(body, dict):
        raise InvalidRequest("the request body must be a JSON object")
    return body
