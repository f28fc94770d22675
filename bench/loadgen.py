"""Load generator for any OpenAI-compatible server: streaming chat, closed loop, concurrency sweep.

Per level it reports aggregate output tok/s, TTFT / inter-token / end-to-end latency percentiles, and
the server's peak RSS (the process tree of --pid). Output tokens come from the stream's usage when the
server sends it (stream_options.include_usage), else from the number of content chunks.

    python -m bench.loadgen --url http://127.0.0.1:8080/v1 --model llama2 --concurrency 1,4,16,32
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TypeVar

import httpx

from bench.prompts import build_prompts, request_prompt


@dataclass
class RequestResult:
    ok: bool
    output_tokens: int = 0
    ttft_s: float = 0.0
    e2e_s: float = 0.0
    itl_s: list[float] = field(default_factory=list)
    error: str = ""
    text: str = ""


@dataclass
class LevelResult:
    concurrency: int
    requests: int
    failures: int
    duration_s: float
    output_tokens: int
    output_tok_s: float
    ttft_p50_s: float
    ttft_p90_s: float
    itl_p50_ms: float
    itl_p90_ms: float
    e2e_p50_s: float
    e2e_p90_s: float
    peak_rss_mb: float
    first_error: str = ""


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def tree_rss_mb(pid: int) -> float:
    """RSS of a process and all its descendants, from /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
                ppid = int(stat.rsplit(")", 1)[1].split()[1])
                children.setdefault(ppid, []).append(int(entry))
            except (OSError, IndexError, ValueError):
                continue
    total_kb, stack = 0, [pid]
    while stack:
        p = stack.pop()
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total_kb += int(line.split()[1])
        except OSError:
            pass
        stack += children.get(p, [])
    return total_kb / 1024


async def one_request(
    client: httpx.AsyncClient, url: str, model: str, prompt: str, max_tokens: int, extra: dict | None = None
) -> RequestResult:
    """One streamed greedy chat request; ``extra`` adds body fields (e.g. ``response_format``)."""
    body = {
        "model": model,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
        **(extra or {}),
    }
    start = time.perf_counter()
    last = None
    result = RequestResult(ok=False)
    chunks = 0
    try:
        async with client.stream("POST", f"{url}/chat/completions", json=body) as response:
            if response.status_code != 200:
                result.error = f"HTTP {response.status_code}: {(await response.aread())[:200]!r}"
                return result
            async for line in response.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                data = json.loads(line[6:])
                if data.get("usage"):
                    result.output_tokens = data["usage"].get("completion_tokens") or 0
                for choice in data.get("choices") or []:
                    if (choice.get("delta") or {}).get("content"):
                        result.text += choice["delta"]["content"]
                        now = time.perf_counter()
                        chunks += 1
                        if last is None:
                            result.ttft_s = now - start
                        else:
                            result.itl_s.append(now - last)
                        last = now
    except httpx.HTTPError as exc:
        result.error = f"{type(exc).__name__}: {exc}"
        return result
    result.e2e_s = time.perf_counter() - start
    result.output_tokens = result.output_tokens or chunks
    result.ok = result.output_tokens > 0
    return result


T = TypeVar("T")


async def closed_loop(
    concurrency: int,
    num_requests: int,
    one: Callable[[httpx.AsyncClient, int], Awaitable[T]],
    pid: int | None,
    first_serial: int = 0,
    timeout_s: float = 1800,
) -> tuple[list[T], float, float]:
    """``concurrency`` clients each keep one request in flight until ``num_requests`` were sent.

    ``one(client, serial)`` sends request number ``serial`` and returns its result. Returns the
    results (in completion order), the duration in seconds and the peak RSS in MB of ``pid``'s
    process tree, sampled every 0.25 s.
    """
    results: list[T] = []
    next_index = 0
    peak_rss = 0.0
    done = asyncio.Event()

    async def sample_rss() -> None:
        nonlocal peak_rss
        while not done.is_set() and pid:
            peak_rss = max(peak_rss, tree_rss_mb(pid))
            await asyncio.sleep(0.25)

    async def worker(client: httpx.AsyncClient) -> None:
        nonlocal next_index
        while next_index < num_requests:
            serial = first_serial + next_index
            next_index += 1
            results.append(await one(client, serial))

    limits = httpx.Limits(max_connections=concurrency + 4, max_keepalive_connections=concurrency + 4)
    async with httpx.AsyncClient(timeout=httpx.Timeout(timeout_s, connect=10), limits=limits) as client:
        sampler = asyncio.create_task(sample_rss())
        start = time.perf_counter()
        await asyncio.gather(*[worker(client) for _ in range(concurrency)])
        duration = time.perf_counter() - start
        done.set()
        await sampler
    return results, duration, peak_rss


async def run_level(
    url: str,
    model: str,
    concurrency: int,
    num_requests: int,
    max_tokens: int,
    prompts: list[str],
    pid: int | None,
    first_serial: int = 0,
) -> LevelResult:
    async def one(client: httpx.AsyncClient, serial: int) -> RequestResult:
        return await one_request(client, url, model, request_prompt(prompts, serial), max_tokens)

    results, duration, peak_rss = await closed_loop(concurrency, num_requests, one, pid, first_serial)
    ok = [r for r in results if r.ok]
    tokens = sum(r.output_tokens for r in ok)
    itl = [x for r in ok for x in r.itl_s]
    return LevelResult(
        concurrency=concurrency,
        requests=len(results),
        failures=len(results) - len(ok),
        duration_s=round(duration, 2),
        output_tokens=tokens,
        output_tok_s=round(tokens / duration, 2),
        ttft_p50_s=round(percentile([r.ttft_s for r in ok], 0.5), 3),
        ttft_p90_s=round(percentile([r.ttft_s for r in ok], 0.9), 3),
        itl_p50_ms=round(percentile(itl, 0.5) * 1000, 1),
        itl_p90_ms=round(percentile(itl, 0.9) * 1000, 1),
        e2e_p50_s=round(percentile([r.e2e_s for r in ok], 0.5), 3),
        e2e_p90_s=round(percentile([r.e2e_s for r in ok], 0.9), 3),
        peak_rss_mb=round(peak_rss, 1),
        first_error=next((r.error for r in results if r.error), ""),
    )


def requests_for(concurrency: int, scale: float = 1.0) -> int:
    """Enough requests to reach steady state: twice the concurrency, at least 4."""
    return max(4, int(2 * concurrency * scale))


async def sweep(
    url: str, model: str, levels: list[int], max_tokens: int, pid: int | None, scale: float = 1.0, warmup: bool = True
) -> list[LevelResult]:
    prompts = build_prompts()
    if warmup:
        async with httpx.AsyncClient(timeout=600) as client:
            await one_request(client, url, model, prompts[0], 8)
    out = []
    serial = 0
    for c in levels:
        level = await run_level(url, model, c, requests_for(c, scale), max_tokens, prompts, pid, serial)
        serial += level.requests
        print(json.dumps(asdict(level)), flush=True)
        out.append(level)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", required=True, help="OpenAI base URL, e.g. http://127.0.0.1:8080/v1")
    parser.add_argument("--model", required=True)
    parser.add_argument("--concurrency", default="1,4,16,32")
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--pid", type=int, default=None, help="server process to measure RSS of")
    parser.add_argument("--scale", type=float, default=1.0, help="multiply the requests per level")
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON")
    args = parser.parse_args()
    levels = [int(x) for x in args.concurrency.split(",")]
    results = asyncio.run(sweep(args.url, args.model, levels, args.max_tokens, args.pid, args.scale))
    if args.out:
        args.out.write_text(json.dumps([asdict(r) for r in results], indent=2))


if __name__ == "__main__":
    main()
