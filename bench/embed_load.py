"""Closed-loop load for embedding and rerank servers over HTTP, and the in-process sentence-transformers ceiling.

Embeddings: each request embeds one document (``{"model", "input": "<doc>"}`` on the OpenAI
route), ``concurrency`` clients keep one request each in flight; a level reports documents per
second, p50/p99 request latency and the server's peak RSS (its process tree). Rerank: each
request scores one query against ``docs_per_query`` documents (the Cohere/Jina/vLLM body);
the level reports (query, document) pairs per second.
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx

from bench.loadgen import closed_loop, percentile


@dataclass
class Level:
    concurrency: int
    requests: int
    failures: int
    items: int
    """Documents embedded (embeddings) or pairs scored (rerank) by the successful requests."""
    duration_s: float
    items_s: float
    p50_ms: float
    p99_ms: float
    peak_rss_mb: float
    first_error: str = ""


Call = Callable[[httpx.AsyncClient, int], Awaitable[int]]
"""One request by its serial number; returns the items it handled (raises on failure)."""


def embed_call(url: str, model: str, docs: list[str]) -> Call:
    """POST ``url`` (an OpenAI embeddings route) with one document; checks one vector came back."""

    async def call(client: httpx.AsyncClient, serial: int) -> int:
        response = await client.post(url, json={"model": model, "input": docs[serial % len(docs)]})
        if response.status_code != 200:
            raise RuntimeError(f"HTTP {response.status_code}: {response.text[:200]}")
        data = response.json()["data"]
        if len(data) != 1 or not data[0]["embedding"]:
            raise RuntimeError(f"expected one vector, got {len(data)}")
        return 1

    return call


def rerank_call(url: str, model: str, requests: list[tuple[str, list[str]]]) -> Call:
    """POST ``url`` (a rerank route) with one query and its documents; checks every document was scored."""

    async def call(client: httpx.AsyncClient, serial: int) -> int:
        query, documents = requests[serial % len(requests)]
        body = {"model": model, "query": query, "documents": documents, "return_documents": False}
        response = await client.post(url, json=body)
        if response.status_code != 200:
            raise RuntimeError(f"HTTP {response.status_code}: {response.text[:200]}")
        results = response.json()["results"]
        if sorted(r["index"] for r in results) != list(range(len(documents))):
            raise RuntimeError(f"expected {len(documents)} scores, got {len(results)}")
        return len(documents)

    return call


async def run_level(call: Call, concurrency: int, num_requests: int, pid: int | None, first_serial: int = 0) -> Level:
    async def one(client: httpx.AsyncClient, serial: int) -> tuple[int, float] | str:
        """(items, latency) of one request, or its error."""
        start = time.perf_counter()
        try:
            handled = await call(client, serial)
        except (httpx.HTTPError, RuntimeError, ValueError, KeyError) as exc:
            return f"{type(exc).__name__}: {exc}"
        return handled, time.perf_counter() - start

    results, duration, peak_rss = await closed_loop(concurrency, num_requests, one, pid, first_serial, timeout_s=600)
    errors = [r for r in results if isinstance(r, str)]
    done = [r for r in results if not isinstance(r, str)]
    items = sum(handled for handled, _ in done)
    latencies = [latency for _, latency in done]
    return Level(
        concurrency=concurrency,
        requests=num_requests,
        failures=len(errors),
        items=items,
        duration_s=round(duration, 3),
        items_s=round(items / duration, 1) if duration else 0.0,
        p50_ms=round(percentile(latencies, 0.5) * 1000, 2),
        p99_ms=round(percentile(latencies, 0.99) * 1000, 2),
        peak_rss_mb=round(peak_rss, 1),
        first_error=errors[0] if errors else "",
    )


def requests_for(concurrency: int, scale: float = 1.0) -> int:
    """Enough requests for a steady state: 20 per client, at least 200."""
    return max(int(200 * scale), int(20 * concurrency * scale))


async def sweep(call: Call, levels: list[int], pid: int | None, scale: float = 1.0, warmup: int = 8) -> list[Level]:
    """A warm-up, then one level per concurrency; every request of the run has its own serial (input)."""
    async with httpx.AsyncClient(timeout=600) as client:
        for serial in range(warmup):
            await call(client, serial)
    out: list[Level] = []
    serial = warmup
    for concurrency in levels:
        level = await run_level(call, concurrency, requests_for(concurrency, scale), pid, serial)
        serial += level.requests
        print(json.dumps(asdict(level)), flush=True)
        out.append(level)
    return out


def in_process_ceiling(model_dir: Path, docs: list[str], batch_size: int = 64) -> dict[str, float]:
    """sentence-transformers in this process, ``batch_size`` documents per call: docs/s with no HTTP at all."""
    import resource

    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(model_dir), device="cpu", local_files_only=True)
    model.encode(docs[:batch_size], batch_size=batch_size)  # warm-up
    start = time.perf_counter()
    vectors = model.encode(docs, batch_size=batch_size)
    duration = time.perf_counter() - start
    assert len(vectors) == len(docs)
    return {
        "docs": len(docs),
        "duration_s": round(duration, 3),
        "docs_s": round(len(docs) / duration, 1),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }
