"""Run several engine requests for one HTTP request (n > 1, a list of prompts) and merge their outputs."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

from isvc.engine.client import EngineClient
from isvc.engine.outputs import RequestOutput
from isvc.engine.params import SamplingParams
from isvc.errors import InvalidRequest


@dataclass(slots=True)
class Job:
    index: int
    prompt_ids: list[int]
    params: SamplingParams


async def run_jobs(engine: EngineClient, request_id: str, jobs: list[Job]) -> AsyncIterator[tuple[int, RequestOutput]]:
    """Yield (choice index, output delta) as they come, across all jobs; cancelling aborts them all."""
    if len(jobs) == 1:
        job = jobs[0]
        async for out in engine.generate(request_id, job.prompt_ids, job.params):
            yield job.index, out
        return
    queue: asyncio.Queue[tuple[int, RequestOutput | BaseException | None]] = asyncio.Queue()

    async def pump(job: Job) -> None:
        try:
            async for out in engine.generate(
                f"{request_id}-{job.index}-{uuid.uuid4().hex[:6]}", job.prompt_ids, job.params
            ):
                await queue.put((job.index, out))
            await queue.put((job.index, None))
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # delivered to the consumer, which raises it
            await queue.put((job.index, exc))

    tasks = [asyncio.create_task(pump(job)) for job in jobs]
    try:
        remaining = len(jobs)
        while remaining:
            index, item = await queue.get()
            if item is None:
                remaining -= 1
            elif isinstance(item, BaseException):
                raise item
            else:
                yield index, item
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def check_fits_queue(engine: EngineClient, num_jobs: int, param: str) -> None:
    """Refuse a request that needs more engine requests than the queue ever holds.

    The queue's 429/503 + Retry-After says "try again shortly"; for a request larger than the
    whole queue that is never true, and a client honouring Retry-After would retry forever.
    """
    limit = engine.max_queue
    if num_jobs > limit:
        raise InvalidRequest(
            f"this request needs {num_jobs} generations but the server queues at most {limit} at once "
            f"(max_queue {limit}); send at most {limit} prompts x n per request",
            param=param,
        )
