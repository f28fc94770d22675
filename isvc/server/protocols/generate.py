"""Plain text generation for the KServe V1/V2 protocols (no chat template, like KServe's text_generation task)."""

from __future__ import annotations

import uuid
from typing import Any

from isvc.engine.async_engine import AsyncEngine
from isvc.engine.params import SamplingParams
from isvc.errors import InvalidRequest
from isvc.server.jobs import Job, run_jobs

_KNOWN = {"max_tokens", "max_new_tokens", "temperature", "top_p", "top_k", "seed", "stop"}


def params_from(parameters: dict[str, Any] | None) -> dict[str, Any]:
    parameters = dict(parameters or {})
    unknown = set(parameters) - _KNOWN
    if unknown:
        raise InvalidRequest(f"unknown parameters {sorted(unknown)}; supported: {sorted(_KNOWN)}", param="parameters")
    return parameters


async def generate_texts(engine: AsyncEngine, prompts: list[str], parameters: dict[str, Any]) -> list[str]:
    if not prompts or not all(isinstance(p, str) for p in prompts):
        raise InvalidRequest("expected one or more text prompts", param="instances")
    tokenizer = engine.tokenizer
    max_tokens = parameters.get("max_tokens", parameters.get("max_new_tokens", 64))
    stop = parameters.get("stop") or ()
    jobs = []
    for i, prompt in enumerate(prompts):
        ids = tokenizer.encode(prompt)
        n = engine.check_request(ids, int(max_tokens))
        jobs.append(
            Job(
                i,
                ids,
                SamplingParams(
                    max_tokens=n,
                    temperature=float(parameters.get("temperature", 0.0)),
                    top_p=float(parameters.get("top_p", 1.0)),
                    top_k=int(parameters.get("top_k", 0)),
                    seed=parameters.get("seed"),
                    stop=(stop,) if isinstance(stop, str) else tuple(stop),
                ),
            )
        )
    engine.check_capacity(len(jobs))
    texts = [""] * len(prompts)
    async for index, out in run_jobs(engine, f"gen-{uuid.uuid4().hex}", jobs):
        texts[index] += out.text
    return texts
