"""Per-service serving metrics from the predictors' Prometheus ``/metrics``, sampled for the life of the gateway.

``MetricsSampler.running()`` (the console's lifespan, which the gateway's lifespan enters) scrapes every ready
replica every ``interval_s`` and keeps ``window_s`` of history; ``report()`` only reads that history, so the
Metrics page shows the last minutes as soon as it opens.

Counters are kept per replica (service, revision, index) and turned into increases between two scrapes the way
Prometheus' ``rate()`` does: a value below the previous one, or a new ``process_start_time_seconds``, is a
restart, and the new value is the increase since it. A replica's first scrape is only its baseline. Increases
are summed per service afterwards, so a restart, or a replica coming or going, gives no negative or spiky point.
Each point's TTFT p50/p95 comes from the TTFT histogram's increase over the trailing ``ttft_window_s``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections import defaultdict, deque
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from isvc.controlplane.store import Store

logger = logging.getLogger(__name__)

INTERVAL_S = 2.0
WINDOW_S = 300.0
TTFT_WINDOW_S = 60.0
TIMEOUT_S = 1.5
"""A replica that has not answered its scrape by then is left out of that point (and never holds up the others)."""

_TOKENS = ("vllm:generation_tokens_total", "vllm:generation_tokens")
_RUNNING = "vllm:num_requests_running"
_WAITING = "vllm:num_requests_waiting"
_TTFT_BUCKET = "vllm:time_to_first_token_seconds_bucket"
_STARTED = "process_start_time_seconds"
_WANTED = (*_TOKENS, _RUNNING, _WAITING, _TTFT_BUCKET, _STARTED)


@dataclass(frozen=True, slots=True)
class Target:
    """One ready replica to scrape."""

    service: str
    """``namespace/name``"""
    revision: str
    index: int
    url: str
    """``http://127.0.0.1:PORT``, without ``/metrics``."""

    @property
    def key(self) -> tuple[str, str, int]:
        return self.service, self.revision, self.index


Targets = tuple[set[str], list[Target]]
"""Every service that exists (history of the others is dropped), and the ready replicas to scrape."""


@dataclass
class Scrape:
    """What one ``/metrics`` answer holds, summed over its label sets (model names, engines)."""

    tokens: float = 0.0
    running: float = 0.0
    waiting: float = 0.0
    ttft: dict[float, float] = field(default_factory=dict)
    """The cumulative TTFT histogram: upper bound (s) -> count."""
    started: float | None = None
    """``process_start_time_seconds``: a new value is a restart even if the counters have grown past the old ones."""


def parse(text: str) -> Scrape:
    """The series read here, summed over their label sets (other lines, comments included, are skipped: a
    predictor's exposition is ~16 KB, and parsing all of it on the gateway's event loop costs ten times as much)."""
    lines = [line for line in text.splitlines() if line.startswith(_WANTED)]
    s = Scrape()
    for fam in text_string_to_metric_families("\n".join(lines) + "\n"):
        for m in fam.samples:
            if m.name in _TOKENS:
                s.tokens += m.value
            elif m.name == _RUNNING:
                s.running += m.value
            elif m.name == _WAITING:
                s.waiting += m.value
            elif m.name == _TTFT_BUCKET:
                le = float(m.labels["le"])
                s.ttft[le] = s.ttft.get(le, 0.0) + m.value
            elif m.name == _STARTED:
                s.started = m.value
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


def increase(prev: Scrape, cur: Scrape) -> Scrape:
    """The counters' increase from ``prev`` to ``cur`` of one replica; after a restart (a counter went down, or
    the process start time changed) that is ``cur`` itself, as Prometheus' ``rate()`` takes it."""
    restarted = (
        (cur.started is not None and prev.started is not None and cur.started != prev.started)
        or cur.tokens < prev.tokens
        or any(cur.ttft.get(le, 0.0) < count for le, count in prev.ttft.items())
    )
    if restarted:
        return Scrape(cur.tokens, ttft=dict(cur.ttft))
    return Scrape(cur.tokens - prev.tokens, ttft={le: c - prev.ttft.get(le, 0.0) for le, c in cur.ttft.items()})


def _add(into: dict[float, float], buckets: dict[float, float]) -> None:
    for le, count in buckets.items():
        into[le] = into.get(le, 0.0) + count


def _rounded(q: float | None) -> float | None:
    return None if q is None else round(q, 4)


@dataclass
class _Seen:
    t: float
    scrape: Scrape


@dataclass
class _Point:
    t: float
    tokens_per_s: float | None
    """None when every replica in it was scraped for the first time (no rate yet)."""
    running: float
    waiting: float
    replicas: int
    ttft: dict[float, float]
    """The TTFT histogram's increase since the previous point, summed over the service's replicas."""


def targets(store: Store) -> Targets:
    """The services in the Store, and the replicas the controller has found ready (those with a port)."""
    services = {f"{s.namespace}/{s.name}" for s in store.services()}
    ready = [
        Target(f"{r.namespace}/{r.service}", r.revision, r.idx, r.endpoint) for r in store.replicas() if r.endpoint
    ]
    return services, ready


class StoreTargets:
    """``targets`` of the control plane in ``root``, read on one Store kept open while the sampler runs.

    The sampler reads it from ``asyncio.to_thread`` and never twice at once, so one connection serves every
    tick (``Store`` opens it with ``check_same_thread=False``); the lock keeps ``close`` from closing it under a
    read that a cancelled tick left running in its thread.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self._store: Store | None = None
        self._lock = threading.Lock()

    def __call__(self) -> Targets:
        with self._lock:
            if self._store is None:
                self._store = Store(self.root)
            return targets(self._store)

    def close(self) -> None:
        with self._lock:
            if self._store is not None:
                self._store.close()
                self._store = None


class MetricsSampler:
    """Scrapes the targets ``source`` returns (called in a thread) every ``interval_s`` while ``running()``."""

    def __init__(
        self,
        source: Callable[[], Targets],
        *,
        interval_s: float = INTERVAL_S,
        window_s: float = WINDOW_S,
        ttft_window_s: float = TTFT_WINDOW_S,
        timeout_s: float = TIMEOUT_S,
    ) -> None:
        self.source = source
        self.interval_s = interval_s
        self.window_s = window_s
        self.ttft_window_s = ttft_window_s
        self.timeout_s = timeout_s
        self._replicas: dict[tuple[str, str, int], _Seen] = {}
        self._points: dict[str, deque[_Point]] = defaultdict(deque)
        self._last_error = ""
        self._report: dict[str, Any] | None = None
        """``report()`` as of the last ``record`` (pages poll it more often than it changes)."""

    # ---- sampling ----
    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """Sample in a task on this event loop until the block ends (the gateway's lifespan)."""
        async with httpx.AsyncClient(timeout=self.timeout_s, trust_env=False) as client:
            task = asyncio.create_task(self._run(client), name="isvc-console-metrics")
            try:
                yield
            finally:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
                close = getattr(self.source, "close", None)
                if close is not None:
                    await asyncio.to_thread(close)

    async def _run(self, client: httpx.AsyncClient) -> None:
        while True:
            started = time.monotonic()
            try:
                await self.tick(client)
                self._last_error = ""
            except Exception as exc:  # it runs as long as the gateway: say so once, and try again next tick
                error = f"{type(exc).__name__}: {exc}"
                if error != self._last_error:
                    logger.warning("console metrics: a sampling round failed (%s)", error)
                self._last_error = error
            await asyncio.sleep(max(0.0, self.interval_s - (time.monotonic() - started)))

    async def tick(self, client: httpx.AsyncClient, now: float | None = None) -> None:
        """One round: every ready replica scraped at once, each within ``timeout_s``; ``now`` is the points' time."""
        services, ready = await asyncio.to_thread(self.source)
        now = time.time() if now is None else now
        got = await asyncio.gather(*(self._scrape(client, t) for t in ready))
        self.record(now, services, [(t, s) for t, s in zip(ready, got, strict=True) if s is not None])

    async def _scrape(self, client: httpx.AsyncClient, target: Target) -> Scrape | None:
        try:
            r = await asyncio.wait_for(client.get(f"{target.url}/metrics"), self.timeout_s)
            return parse(r.text) if r.status_code == 200 else None
        except Exception as exc:  # any replica's odd answer (a custom container's) skips it, not the whole round
            logger.debug("console metrics: %s/metrics: %s", target.url, exc)
            return None

    def record(self, now: float, services: set[str], scraped: Iterable[tuple[Target, Scrape]]) -> None:
        """Add a point at ``now`` for each service with a replica in ``scraped``; forget what is gone or too old."""
        by_service: dict[str, list[tuple[Target, Scrape]]] = defaultdict(list)
        for target, scrape in scraped:
            by_service[target.service].append((target, scrape))
        for service, got in by_service.items():
            rate: float | None = None
            ttft: dict[float, float] = {}
            for target, scrape in got:
                prev = self._replicas.get(target.key)
                self._replicas[target.key] = _Seen(now, scrape)
                if prev is None or now <= prev.t:
                    continue  # a baseline: its counters hold everything since the process started
                inc = increase(prev.scrape, scrape)
                rate = (rate or 0.0) + inc.tokens / (now - prev.t)
                _add(ttft, inc.ttft)
            running, waiting = sum(s.running for _, s in got), sum(s.waiting for _, s in got)
            self._points[service].append(_Point(now, rate, running, waiting, len(got), ttft))
        cutoff = now - self.window_s
        for key, seen in list(self._replicas.items()):
            if key[0] not in services or seen.t < cutoff:
                del self._replicas[key]
        for service, points in list(self._points.items()):
            while points and points[0].t < cutoff:
                points.popleft()
            if not points or service not in services:
                del self._points[service]
        self._report = None

    # ---- reading ----
    def report(self) -> dict[str, Any]:
        """Per service: its points (oldest first) and the latest values; TTFT p50/p95 over the points' window,
        or, when no first token was timed in it, over each replica's whole life, saying so in ``ttft_scope``."""
        if self._report is None:
            self._report = self._make_report()
        return self._report

    def _make_report(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for service, hist in sorted(self._points.items()):
            points, trailing, window = [], deque[_Point](), dict[float, float]()
            for p in hist:
                trailing.append(p)
                _add(window, p.ttft)
                while trailing[0].t <= p.t - self.ttft_window_s:
                    _add(window, {le: -count for le, count in trailing.popleft().ttft.items()})
                points.append({
                    "t": round(p.t, 2), "replicas": p.replicas, "running": p.running, "waiting": p.waiting,
                    "tokens_per_s": None if p.tokens_per_s is None else round(max(0.0, p.tokens_per_s), 2),
                    "ttft_p50_s": _rounded(quantile(window, 0.5)), "ttft_p95_s": _rounded(quantile(window, 0.95)),
                })  # fmt: skip
            first, last = hist[0], hist[-1]
            ttft: dict[float, float] = {}
            for p in hist:
                _add(ttft, p.ttft)
            scope: str | None = "window"
            if quantile(ttft, 0.5) is None:
                ttft = {}
                for key, seen in self._replicas.items():
                    if key[0] == service and seen.t == last.t:
                        _add(ttft, seen.scrape.ttft)
                scope = "since_start" if quantile(ttft, 0.5) is not None else None
            out[service] = {
                "points": points,
                "tokens_per_s": points[-1]["tokens_per_s"],
                "running": last.running,
                "waiting": last.waiting,
                "replicas": last.replicas,
                "ttft_p50_s": _rounded(quantile(ttft, 0.5)),
                "ttft_p95_s": _rounded(quantile(ttft, 0.95)),
                "ttft_count": ttft.get(float("inf"), 0.0),
                "ttft_scope": scope,
                "window_s": round(last.t - first.t, 1),
                "ttft_window_s": self.ttft_window_s,
                "interval_s": self.interval_s,
            }
        return out
