"""Plain text generation for the KServe V1/V2 protocols (no chat template, like KServe's text_generation task)."""

from __future__ import annotations

import uuid
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from isvc.engine.client import EngineClient
from isvc.engine.params import SamplingParams
from isvc.errors import InvalidRequest
from isvc.server.jobs import Job, check_fits_queue, run_jobs
from isvc.server.protocols.bounds import INT64_MAX, Seed, Stop, Temperature, TopK, TopP
from isvc.server.protocols.encode import require_generative
from isvc.server.protocols.preprocess import encode_all


class GenerateParameters(BaseModel):
    """KServe's ``parameters`` for text generation, bounded as the OpenAI fields are."""

    model_config = ConfigDict(extra="forbid")

    max_tokens: int | None = Field(default=None, ge=1, le=INT64_MAX)
    max_new_tokens: int | None = Field(default=None, ge=1, le=INT64_MAX)
    """The transformers spelling of max_tokens."""
    temperature: Temperature = 0.0
    top_p: TopP = 1.0
    top_k: TopK = 0
    seed: Seed | None = None
    stop: Stop | None = None


def params_from(parameters: Any) -> GenerateParameters:
    """Validate a request's parameters; a bad name, type or value is a 400 naming the parameter."""
    if parameters is None:
        return GenerateParameters()
    if not isinstance(parameters, dict):
        raise InvalidRequest("parameters must be an object", param="parameters")
    try:
        return GenerateParameters.model_validate(parameters)
    except ValidationError as exc:
        error = exc.errors()[0]
        name = ".".join(str(p) for p in ("parameters", *error["loc"][:1]))
        if error["type"] == "extra_forbidden":
            known = sorted(GenerateParameters.model_fields)
            raise InvalidRequest(f"unknown parameter {name}; supported: {known}", param=name) from None
        raise InvalidRequest(f"{name}: {error['msg']}", param=name) from None


async def generate_texts(
    engine: EngineClient, prompts: list[str], parameters: GenerateParameters, param: str = "instances"
) -> list[str]:
    require_generative(engine, "text generation")
    if not prompts or not all(isinstance(p, str) for p in prompts):
        raise InvalidRequest("expected one or more text prompts", param=param)
    check_fits_queue(engine, len(prompts), param=param)
    tokenizer = engine.tokenizer
    encoded = await encode_all(tokenizer, prompts)
    wanted = parameters.max_tokens if parameters.max_tokens is not None else parameters.max_new_tokens
    stop = parameters.stop or ()
    jobs = []
    for i, ids in enumerate(encoded):
        n = engine.check_request(ids, 64 if wanted is None else wanted)
        jobs.append(
            Job(
                i,
                ids,
                SamplingParams(
                    max_tokens=n,
                    temperature=parameters.temperature,
                    top_p=parameters.top_p,
                    top_k=parameters.top_k,
                    seed=parameters.seed,
                    stop=(stop,) if isinstance(stop, str) else tuple(stop),
                ),
            )
        )
    engine.check_capacity(len(jobs))
    texts = [""] * len(prompts)
    async for index, out in run_jobs(engine, f"gen-{uuid.uuid4().hex}", jobs):
        texts[index] += out.text
    return texts
