"""The console's metrics sampler against real HTTP: predictors' ``/metrics`` served on loopback.

Each fake predictor serves the exposition a real SmolLM2 predictor gave (``predictor_metrics.txt``, from
``isvc serve``'s ``/metrics`` after three completions) with its values rewritten between scrapes: that is how a
restart (counters back near zero) or a replica coming and going is shown to the sampler, faults a real
``isvc up`` does not make on demand. The end-to-end check (history without the page open) is in
tests/controlplane/test_console.py, the chart in tests/console/test_console_browser.py.
"""

from __future__ import annotations

import asyncio
import re
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from isvc.console.metrics import MetricsSampler, Scrape, StoreTargets, Target, Targets, increase, parse
from isvc.controlplane.store import Store

CAPTURED = (Path(__file__).parent / "predictor_metrics.txt").read_text()
SERVICE = "kserve-test/llama2-7b-chat"
REVISION = "llama2-7b-chat-predictor-00001"
STARTED = 1_796_694_039.49


def exposition(
    tokens: float, ttfts: list[float], *, running: int = 0, waiting: int = 0, started: float = STARTED
) -> str:
    """The captured exposition with these values: ``ttfts`` are the TTFTs (s) observed since the process started."""

    def bucket(m: re.Match[str]) -> str:
        le = float(m.group(2))
        return f"{m.group(1)} {float(sum(1 for x in ttfts if x <= le))}"

    text = re.sub(r'^(vllm:time_to_first_token_seconds_bucket\{[^}]*le="([^"]+)"[^}]*\}) \S+$', bucket, CAPTURED,
                  flags=re.M)  # fmt: skip
    for name, value in (("vllm:generation_tokens_total", tokens), ("vllm:num_requests_running", running),
                        ("vllm:num_requests_waiting", waiting), ("vllm:time_to_first_token_seconds_count", len(ttfts)),
                        ("process_start_time_seconds", started)):  # fmt: skip
        text, n = re.subn(rf"^({re.escape(name)}(\{{[^}}]*\}})?) \S+$", rf"\g<1> {float(value)!r}", text, flags=re.M)
        assert n == 1, name
    return text


class Predictors:
    """Fake predictors on one loopback HTTP server: ``GET /<name>/metrics`` answers ``texts[name]``, after
    ``delays[name]`` seconds; a name without a text is a 404."""

    def __init__(self) -> None:
        self.texts: dict[str, str] = {}
        self.delays: dict[str, float] = {}
        self.scrapes: list[str] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                name = self.path.strip("/").removesuffix("/metrics")
                outer.scrapes.append(name)
                time.sleep(outer.delays.get(name, 0.0))
                body = outer.texts.get(name)
                self.send_response(200 if body is not None else 404)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                data = (body or "").encode()
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def target(self, name: str, service: str = SERVICE, revision: str = REVISION, index: int = 0) -> Target:
        return Target(service, revision, index, f"http://127.0.0.1:{self.server.server_address[1]}/{name}")

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


@pytest.fixture
def predictors() -> Iterator[Predictors]:
    p = Predictors()
    try:
        yield p
    finally:
        p.close()


class Source:
    """What the sampler reads from the Store, set by the test."""

    def __init__(self, *targets: Target) -> None:
        self.targets = list(targets)
        self.services: set[str] | None = None
        self.closed = False

    def __call__(self) -> Targets:
        return (self.services if self.services is not None else {t.service for t in self.targets}), self.targets

    def close(self) -> None:
        self.closed = True


async def ticks(sampler: MetricsSampler, steps: list[dict[str, str]], predictors: Predictors, t0: float = 1000.0,
                every_s: float = 2.0) -> None:  # fmt: skip
    """One tick per step, ``every_s`` apart, with the predictors serving that step's texts."""
    async with httpx.AsyncClient(timeout=sampler.timeout_s, trust_env=False) as client:
        for i, texts in enumerate(steps):
            predictors.texts = texts
            await sampler.tick(client, now=t0 + i * every_s)


def rates(report: dict[str, Any]) -> list[float | None]:
    return [p["tokens_per_s"] for p in report["points"]]


def test_the_captured_exposition_parses_and_is_rewritten() -> None:
    s = parse(CAPTURED)
    assert (s.tokens, s.running, s.waiting, s.started) == (24.0, 0.0, 0.0, STARTED)
    assert s.ttft[0.04] == 3.0 and s.ttft[float("inf")] == 3.0 and s.ttft[0.02] == 0.0
    s = parse(exposition(7, [0.03, 0.3, 0.3], running=2, waiting=1, started=5.0))
    assert (s.tokens, s.running, s.waiting, s.started) == (7.0, 2.0, 1.0, 5.0)
    assert (s.ttft[0.02], s.ttft[0.04], s.ttft[0.25], s.ttft[0.5]) == (0.0, 1.0, 1.0, 3.0)


def test_increase_treats_any_decrease_or_a_new_start_time_as_a_reset() -> None:
    before = Scrape(100.0, ttft={0.1: 5.0, float("inf"): 6.0}, started=1.0)
    grown = Scrape(130.0, ttft={0.1: 7.0, float("inf"): 9.0}, started=1.0)
    assert increase(before, grown) == Scrape(30.0, ttft={0.1: 2.0, float("inf"): 3.0})
    # counters back near zero: the new value is what happened since the restart
    reset = Scrape(4.0, ttft={0.1: 1.0, float("inf"): 1.0}, started=None)
    assert increase(before, reset) == Scrape(4.0, ttft={0.1: 1.0, float("inf"): 1.0})
    # only the histogram went down (no tokens were counted before): still one process, one reset
    assert increase(before, Scrape(120.0, ttft={0.1: 1.0, float("inf"): 1.0})).tokens == 120.0
    # a restarted process that has already passed the old values: its start time tells
    restarted = Scrape(150.0, ttft={0.1: 8.0, float("inf"): 9.0}, started=2.0)
    assert increase(before, restarted) == Scrape(150.0, ttft={0.1: 8.0, float("inf"): 9.0})


async def test_a_restart_gives_the_tokens_since_it_not_a_negative_or_zero_rate(predictors: Predictors) -> None:
    sampler = MetricsSampler(Source(predictors.target("r0", index=0), predictors.target("r1", index=1)))
    old = [0.03] * 100  # r0 served these before the gateway started
    await ticks(sampler, [
        {"r0": exposition(1000, old), "r1": exposition(500, [])},
        {"r0": exposition(1040, old + [0.03] * 10), "r1": exposition(520, [0.03] * 2)},
        # r0 restarted: 8 tokens and 2 first tokens (slow ones, 0.3 s) since; r1 goes on
        {"r0": exposition(8, [0.3] * 2, started=STARTED + 30), "r1": exposition(540, [0.03] * 2)},
        {"r0": exposition(28, [0.3] * 2, started=STARTED + 30), "r1": exposition(560, [0.03] * 2)},
    ], predictors)  # fmt: skip
    m = sampler.report()[SERVICE]
    # the first scrape is a baseline: no rate yet, not a spike of 1500 tokens
    assert rates(m) == [None, 30.0, 14.0, 20.0]  # 40+20 over 2 s; 8 (since the restart)+20; 20+20
    assert [p["replicas"] for p in m["points"]] == [2, 2, 2, 2]
    # the TTFT of each point is over the histogram's increase in the last 60 s: none at first, then the 12 fast
    # ones, then those and the restarted replica's 2 slow ones
    assert m["points"][0]["ttft_p50_s"] is None
    p50, p95 = m["points"][1]["ttft_p50_s"], m["points"][1]["ttft_p95_s"]
    assert 0.02 < p50 <= 0.04 and 0.02 < p95 <= 0.04, m["points"][1]
    assert 0.02 < m["points"][2]["ttft_p50_s"] <= 0.04 and 0.25 < m["points"][2]["ttft_p95_s"] <= 0.5
    assert m["ttft_scope"] == "window" and m["ttft_count"] == 14.0
    assert m["window_s"] == 6.0 and m["tokens_per_s"] == 20.0


async def test_a_replica_coming_and_going_gives_no_spike(predictors: Predictors) -> None:
    source = Source(predictors.target("r0", index=0))
    sampler = MetricsSampler(source)
    async with httpx.AsyncClient(trust_env=False) as client:
        predictors.texts = {"r0": exposition(100, [])}
        await sampler.tick(client, now=0.0)
        # a second replica appears, with a long life behind it: its first scrape is only a baseline
        source.targets.append(predictors.target("r1", index=1))
        predictors.texts = {"r0": exposition(120, []), "r1": exposition(90_000, [0.01] * 500)}
        await sampler.tick(client, now=2.0)
        predictors.texts = {"r0": exposition(140, []), "r1": exposition(90_010, [0.01] * 500)}
        await sampler.tick(client, now=4.0)
        # it goes (unready, or scaled down): the others' rate goes on
        source.targets.pop()
        predictors.texts = {"r0": exposition(160, [])}
        await sampler.tick(client, now=6.0)
    m = sampler.report()[SERVICE]
    assert rates(m) == [None, 10.0, 15.0, 10.0]
    assert [p["replicas"] for p in m["points"]] == [1, 2, 2, 1]
    # no first token was timed in the window, so TTFT is r1's whole life, and says so; r1 has left, so none now
    assert m["ttft_p50_s"] is None and m["ttft_scope"] is None


async def test_without_first_tokens_in_the_window_ttft_is_labelled_since_the_start(predictors: Predictors) -> None:
    sampler = MetricsSampler(Source(predictors.target("r0")))
    before = [0.03] * 20
    await ticks(sampler, [{"r0": exposition(100, before)}, {"r0": exposition(100, before)}], predictors)
    m = sampler.report()[SERVICE]
    assert m["ttft_scope"] == "since_start" and m["ttft_count"] == 20.0
    assert 0.02 < m["ttft_p50_s"] <= 0.04
    assert [p["ttft_p50_s"] for p in m["points"]] == [None, None]  # the charts show only the window
    # one new first token in the window: the window's, not the lifetime's
    await ticks(sampler, [{"r0": exposition(104, before + [0.6])}], predictors, t0=1004.0)
    m = sampler.report()[SERVICE]
    assert m["ttft_scope"] == "window" and m["ttft_count"] == 1.0 and 0.5 < m["ttft_p50_s"] <= 0.75


async def test_ttft_points_cover_the_trailing_window_and_history_is_trimmed(predictors: Predictors) -> None:
    source = Source(predictors.target("r0"))
    sampler = MetricsSampler(source, window_s=30.0, ttft_window_s=10.0)
    # 2 s apart: a baseline at t=0, 4 slow first tokens (0.6 s) at t=2, then one fast one (0.03 s) every tick
    steps = [{"r0": exposition(100 + i, ([0.6] * 4 if i else []) + [0.03] * max(0, i - 1))} for i in range(20)]
    await ticks(sampler, steps[:8], predictors, t0=0.0)
    m = sampler.report()[SERVICE]
    # each point's TTFT is over its last 10 s: the slow ones count from t=2 to t=10, not before or after
    p95 = {p["t"]: p["ttft_p95_s"] for p in m["points"]}
    assert p95[0.0] is None and all(0.5 < p95[t] <= 0.75 for t in (2.0, 4.0, 6.0, 8.0, 10.0)), m["points"]
    assert 0.02 < p95[12.0] <= 0.04 and 0.02 < p95[14.0] <= 0.04, m["points"]
    await ticks(sampler, steps[8:], predictors, t0=16.0)
    m = sampler.report()[SERVICE]
    # 30 s of points kept (t = 8 .. 38); the headline is over them: fast first tokens only
    assert [p["t"] for p in m["points"]] == [float(t) for t in range(8, 39, 2)]
    assert m["ttft_scope"] == "window" and m["ttft_count"] == 16.0 and m["ttft_p95_s"] <= 0.04
    # the service is deleted: its history goes with it
    source.services = set()
    predictors.texts = {}
    async with httpx.AsyncClient(trust_env=False) as client:
        await sampler.tick(client, now=40.0)
    assert sampler.report() == {}


async def test_a_slow_or_failing_predictor_does_not_hold_up_the_others(predictors: Predictors) -> None:
    other = "default/other"
    source = Source(predictors.target("r0"), predictors.target("slow", index=1), predictors.target("gone", index=2),
                    predictors.target("o0", service=other, revision="other-predictor-00001"))  # fmt: skip
    sampler = MetricsSampler(source, timeout_s=0.5)
    predictors.delays = {"slow": 3.0}
    texts = {"r0": exposition(10, []), "slow": exposition(10, []), "o0": exposition(10, [])}  # "gone" is a 404
    started = time.monotonic()
    await ticks(sampler, [texts], predictors)
    assert time.monotonic() - started < 2.0
    report = sampler.report()
    assert report[SERVICE]["replicas"] == 1 and report[other]["replicas"] == 1


async def test_running_samples_in_the_background_until_stopped(predictors: Predictors) -> None:
    source = Source(predictors.target("r0"))
    sampler = MetricsSampler(source, interval_s=0.1)
    predictors.texts = {"r0": exposition(100, [0.03])}
    async with sampler.running():
        await asyncio.sleep(0.6)
        assert len(sampler.report()[SERVICE]["points"]) >= 3  # nobody asked for a report meanwhile
    assert source.closed
    assert not [t for t in asyncio.all_tasks() if t.get_name() == "isvc-console-metrics"]
    scraped = len(predictors.scrapes)
    await asyncio.sleep(0.3)
    assert len(predictors.scrapes) == scraped, "it went on scraping after the gateway stopped"


async def test_a_failing_source_is_logged_once_and_the_sampler_goes_on(
    predictors: Predictors, caplog: pytest.LogCaptureFixture
) -> None:
    calls = []

    def source() -> Targets:
        calls.append(1)
        if len(calls) <= 3:
            raise OSError("state.db is gone")
        return {SERVICE}, [predictors.target("r0")]

    predictors.texts = {"r0": exposition(100, [])}
    sampler = MetricsSampler(source, interval_s=0.05)
    async with sampler.running():
        await asyncio.sleep(0.5)
    assert SERVICE in sampler.report()
    assert [r.getMessage() for r in caplog.records].count("console metrics: a sampling round failed (OSError: "
                                                         "state.db is gone)") == 1  # fmt: skip


def test_store_targets_are_the_ready_replicas_of_existing_services(tmp_path: Path) -> None:
    store = Store(tmp_path)
    store.ensure_service("kserve-test", "llama2-7b-chat")
    for idx, port in ((0, 41001), (1, 41002)):
        store.replica_started("kserve-test", "llama2-7b-chat", REVISION, idx, pid=1, start_ticks=None, port=port,
                              gpus=(), log="", cpu_fallback=True)  # fmt: skip
    store.replica_ready("kserve-test", REVISION, 1)
    targets = StoreTargets(tmp_path)
    try:
        assert targets() == ({SERVICE}, [Target(SERVICE, REVISION, 1, "http://127.0.0.1:41002")])
        store.replica_ready("kserve-test", REVISION, 0)
        assert [t.index for t in targets()[1]] == [0, 1]  # the same connection sees the controller's writes
    finally:
        targets.close()
        store.close()
