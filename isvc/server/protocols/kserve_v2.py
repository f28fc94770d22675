"""Open Inference Protocol (KServe V2): server/model metadata, health, and /infer with a BYTES text input.

A generative model answers ``text_output``; an encoder task answers ``output-0`` shaped as
KServe's huggingfaceserver shapes it (``isvc.server.protocols.kserve_tasks``).
"""

from __future__ import annotations

import math
import uuid
from typing import Annotated, Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from isvc import __version__
from isvc.engine.client import EngineClient
from isvc.errors import InvalidRequest, NotFound, NotReady
from isvc.server.protocols import kserve_tasks
from isvc.server.protocols.encode import EncoderOptions
from isvc.server.protocols.generate import generate_texts, params_from


class InferInput(BaseModel):
    name: str
    shape: list[Annotated[int, Field(ge=0)]]
    datatype: str
    data: list[Any]
    parameters: dict[str, Any] | None = None


class InferRequest(BaseModel):
    id: str | None = None
    inputs: list[InferInput] = Field(min_length=1)
    parameters: dict[str, Any] | None = None


def build_router(engine: EngineClient, model_name: str, encoder: EncoderOptions | None = None) -> APIRouter:
    router = APIRouter(prefix="/v2")
    options = encoder or EncoderOptions()

    def check(name: str) -> None:
        if name != model_name:
            raise NotFound(f"Model with name {name} does not exist.")

    @router.get("")
    async def server_metadata() -> dict[str, Any]:
        return {"name": "isvc", "version": __version__, "extensions": []}

    @router.get("/health/live")
    async def live() -> JSONResponse:
        return JSONResponse({"live": not engine.dead}, status_code=503 if engine.dead else 200)

    @router.get("/health/ready")
    async def ready() -> JSONResponse:
        return JSONResponse({"ready": engine.ready}, status_code=200 if engine.ready else 503)

    @router.get("/models/{name}")
    async def model_metadata(name: str) -> dict[str, Any]:
        check(name)
        info = engine.model_info if engine.ready else None
        if info is None or info.task.generative:
            inputs = [{"name": "text_input", "datatype": "BYTES", "shape": [-1]}]
            outputs = [{"name": "text_output", "datatype": "BYTES", "shape": [-1]}]
        else:
            inputs = [{"name": "input-0", "datatype": "BYTES", "shape": [-1]}]
            outputs = [kserve_tasks.output_metadata(info.task, info.embedding_dim, options)]
        metadata: dict[str, Any] = {"name": name, "versions": [], "platform": "isvc-huggingface"}
        if info is not None:
            metadata["parameters"] = {"task": info.task.value}
        return {**metadata, "inputs": inputs, "outputs": outputs}

    @router.get("/models/{name}/ready")
    async def model_ready(name: str) -> JSONResponse:
        check(name)
        return JSONResponse({"name": name, "ready": engine.ready}, status_code=200 if engine.ready else 503)

    @router.post("/models/{name}/infer")
    async def infer(name: str, body: InferRequest) -> dict[str, Any]:
        check(name)
        if not engine.ready and not engine.dead:  # a dead engine answers EngineDeadError below
            raise NotReady("the model is still loading", retry_after_s=5)
        text_inputs = [i for i in body.inputs if i.datatype == "BYTES"]
        if not text_inputs:
            raise InvalidRequest(
                "expected a BYTES input holding the prompt text (e.g. name text_input)", param="inputs"
            )
        prompts = _prompts(text_inputs[0])
        if not engine.model_info.task.generative:
            result = await kserve_tasks.predict(engine, prompts, options)
            return {
                "model_name": name,
                "model_version": None,
                "id": body.id or str(uuid.uuid4()),
                "parameters": {},
                "outputs": [t.as_json() for t in (result.tensor, *result.extra)],
            }
        texts = await generate_texts(
            engine,
            prompts,
            params_from({**(body.parameters or {}), **(text_inputs[0].parameters or {})}),
            param="inputs.data",
        )
        return {
            "model_name": name,
            "model_version": None,
            "id": body.id or str(uuid.uuid4()),
            "parameters": {},
            "outputs": [{"name": "text_output", "datatype": "BYTES", "shape": [len(texts)], "data": texts}],
        }

    return router


def _prompts(tensor: InferInput) -> list[str]:
    """The prompts of a BYTES tensor: its data flattened (row-major, as the protocol allows nesting)."""
    data: list[Any] = []
    stack = [iter(tensor.data)]
    while stack:  # flatten without recursion: nesting depth is the client's choice
        for item in stack[-1]:
            if isinstance(item, list):
                stack.append(iter(item))
                break
            data.append(item)
        else:
            stack.pop()
    if math.prod(tensor.shape) != len(data):
        raise InvalidRequest(
            f"input {tensor.name}: shape {tensor.shape} holds {math.prod(tensor.shape)} elements "
            f"but data has {len(data)}",
            param="inputs.shape",
        )
    if not all(isinstance(x, str) for x in data):
        raise InvalidRequest(f"input {tensor.name}: BYTES data must be strings (the prompt text)", param="inputs.data")
    return data
