"""KServe V1 protocol: POST /v1/models/{name}:predict with {"instances": [...]}.

A generative model continues each instance's text; an encoder task answers per instance as
KServe's huggingfaceserver does (``isvc.server.protocols.kserve_tasks``). A cross-encoder reads
``{"text": query, "text_pair": document}`` instances (transformers' text-classification input).

GET /v1/models and /v1/models/{name} are shared with the OpenAI routes (same paths),
whose bodies carry the V1 fields too. Like KServe, :predict reads its body as JSON whatever
its content-type (``curl -d @input.json`` sends a form type); the edge has checked it is JSON.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Annotated, Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from pydantic import BaseModel, Field

from isvc.engine.client import EngineClient
from isvc.errors import InvalidRequest, NotFound
from isvc.server.protocols import kserve_tasks
from isvc.server.protocols.bounds import one_of
from isvc.server.protocols.encode import EncoderOptions
from isvc.server.protocols.generate import GenerateParameters, generate_texts


class TextInstance(BaseModel):
    text: str | None = None
    prompt: str | None = None
    text_input: str | None = None
    text_pair: str | None = None
    """The second text of a pair, for rerank and sequence_classification models."""


class PredictRequest(BaseModel):
    instances: list[Annotated[str | TextInstance, one_of('a string or {"text": ...}')]] = Field(
        description='prompts: strings or {"text": ...}'
    )
    parameters: GenerateParameters | None = None


class _AnyContentType(APIRoute):
    """A route whose body is read as JSON whatever content-type the client sent (FastAPI reads only JSON types)."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def as_json(request: Request) -> Response:
            headers = [(k, v) for k, v in request.scope["headers"] if k != b"content-type"]
            scope = {**request.scope, "headers": [*headers, (b"content-type", b"application/json")]}
            return await handler(Request(scope, request.receive))

        return as_json


def build_router(engine: EngineClient, model_name: str, encoder: EncoderOptions | None = None) -> APIRouter:
    router = APIRouter(route_class=_AnyContentType)
    options = encoder or EncoderOptions()

    @router.post("/v1/models/{name}:predict")
    async def predict(name: str, body: PredictRequest) -> JSONResponse:
        if name != model_name:
            raise NotFound(f"Model with name {name} does not exist.")
        prompts = [_instance_text(x) for x in body.instances]
        if not engine.model_info.task.generative:
            pairs = [x.text_pair for x in body.instances if isinstance(x, TextInstance) and x.text_pair is not None]
            if pairs and len(pairs) != len(prompts):
                raise InvalidRequest("either every instance has a text_pair or none has", param="instances")
            result = await kserve_tasks.predict(engine, prompts, options, pairs=pairs or None)
            answer: dict[str, object] = {"predictions": result.values}
            if result.extra:  # KServe puts the offset mapping beside the predictions
                answer["outputs"] = [t.as_json() for t in result.extra]
            return JSONResponse(answer)
        texts = await generate_texts(engine, prompts, body.parameters or GenerateParameters())
        return JSONResponse({"predictions": texts})

    return router


def _instance_text(x: str | TextInstance) -> str:
    if isinstance(x, str):
        return x
    for text in (x.text, x.prompt, x.text_input):
        if text is not None:
            return text
    raise InvalidRequest('each instance must be a string or {"text": ...}', param="instances")
