"""Per-service serving metrics from the predictors' Prometheus ``/metrics``, kept for the last minutes.

Each call to ``sample`` scrapes every ready replica at most every ``min_interval_s``; from the counters it
derives tokens/s between samples, and TTFT p50/p95 from the histogram's bucket increase over the window.
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict, deque
from dataclasses import dataclass, field
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

WINDOW_S = 300.0


@dataclass
class _Sample:
    t: float
    tokens: float = 0.0
    running: float = 0.0
    waiting: float = 0.0
    ttft: dict[float, float] = field(default_factory=dict)
    """Cumulative TTFT histogram: upper bound (s) -> count."""


def parse(text: str) -> _Sample:
    s = _Sample(time.time())
    for fam in text_string_to_metric_families(text):
        for m in fam.samples:
            if m.name in ("vllm:generation_tokens_total", "vllm:generation_tokens"):
                s.tokens += m.value
            elif m.name == "vllm:num_requests_running":
                s.running += m.value
            elif m.name == "vllm:num_requests_waiting":
                s.waiting += m.value
            elif m.name == "vllm:time_to_first_token_seconds_bucket":
                le = float(m.labels["le"])
                s.ttft[le] = s.ttft.get(le, 0.0) + m.value
    return s


def quantile(buckets: dict[float, float], q: float) -> float | None:
    """The ``q`` quantile of a cumulative histogram, interpolated within its bucket as Prometheus does."""
    bounds = sorted(buckets)
    if not bounds or buckets[bounds[-1]] <= 0:
        return None
    rank = q * buckets[bounds[-1]]
    lo, below = 0.0, 0.0
    for le in bounds:
        count = buckets[le]
        if count >= rank:
            if le == float("inf"):
                return lo
            return lo + (le - lo) * ((rank - below) / (count - below) if count > below else 1.0)
        lo, below = le, count
    return None


class MetricsSampler:
    def __init__(self, min_interval_s: float = 1.0, window_s: float = WINDOW_S) -> None:
        self.min_interval_s = min_interval_s
        self.window_s = window_s
        self.history: dict[str, deque[_Sample]] = defaultdict(deque)
        self.last = 0.0
        self.lock = asyncio.Lock()

    async def sample(self, targets: list[tuple[str, str, list[str]]]) -> dict[str, Any]:
        async with self.lock:
            now = time.time()
            if now - self.last >= self.min_interval_s:
                self.last = now
                await self._scrape(targets, now)
            return self.report()

    async def _scrape(self, targets: list[tuple[str, str, list[str]]], now: float) -> None:
        per_service: dict[str, list[str]] = defaultdict(list)
        for service, _rev, endpoints in targets:
            per_service[service] += endpoints
        async with httpx.AsyncClient(timeout=2.0) as client:

            async def one(url: str) -> _Sample | None:
                try:
                    r = await client.get(f"{url}/metrics")
                    return parse(r.text) if r.status_code == 200 else None
                except (httpx.HTTPError, ValueError):
                    return None

            for service, endpoints in per_service.items():
                got = [s for s in await asyncio.gather(*(one(e) for e in endpoints)) if s is not None]
                if not got:
                    continue
                total = _Sample(now, sum(s.tokens for s in got), sum(s.running for s in got),
                                sum(s.waiting for s in got))  # fmt: skip
                for s in got:
                    for le, c in s.ttft.items():
                        total.ttft[le] = total.ttft.get(le, 0.0) + c
                hist = self.history[service]
                hist.append(total)
                while hist and now - hist[0].t > self.window_s:
                    hist.popleft()
        for service in list(self.history):
            if service not in per_service:
                del self.history[service]

    def report(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for service, hist in self.history.items():
            points = []
            prev = None
            for s in hist:
                rate = max(0.0, (s.tokens - prev.tokens) / (s.t - prev.t)) if prev and s.t > prev.t else 0.0
                points.append({"t": round(s.t, 2), "tokens_per_s": round(rate, 2), "running": s.running,
                               "waiting": s.waiting})  # fmt: skip
                prev = s
            first, last = hist[0], hist[-1]
            window = {le: last.ttft.get(le, 0.0) - first.ttft.get(le, 0.0) for le in last.ttft}
            if len(hist) == 1 or not any(window.values()):
                window = dict(last.ttft)  # since the predictor started
            p50, p95 = quantile(window, 0.5), quantile(window, 0.95)
            out[service] = {
                "points": points,
                "tokens_per_s": points[-1]["tokens_per_s"],
                "running": last.running,
                "waiting": last.waiting,
                "ttft_p50_s": None if p50 is None else round(p50, 4),
                "ttft_p95_s": None if p95 is None else round(p95, 4),
                "window_s": round(last.t - first.t, 1),
            }
        return out
