"""Faults in the engine: one request's failure stays its own; a fault in the loop kills the engine loudly.

Poison requests reach the engine with their SamplingParams forced past validation
(``object.__setattr__`` on the frozen dataclass): the step's per-request guards are the
last line and must hold even when a value slips through every check above them. A loop
fault cannot be caused by any input once the loop is fixed, so it is injected by
replacing one method of the core in-process (or of the server process, through a launcher).
"""

from __future__ import annotations

import asyncio
import math
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from isvc.engine import metrics
from isvc.engine.async_engine import AsyncEngine
from isvc.engine.config import EngineConfig
from isvc.engine.errors import EngineDeadError
from isvc.engine.params import SamplingParams
from isvc.errors import InvalidRequest
from tests.conftest import ServerProcess, counter_value, free_port

GREEDY = SamplingParams(max_tokens=24, temperature=0, ignore_eos=True)


@pytest.fixture(scope="module")
def engine(tiny_model_dir: Path) -> Iterator[AsyncEngine]:
    eng = AsyncEngine(EngineConfig(model_dir=str(tiny_model_dir), max_num_batched_tokens=64, num_threads=2))
    eng.load()
    yield eng
    eng.shutdown()


def prompts(engine: AsyncEngine, n: int) -> list[list[int]]:
    base = ["The capital of France is", "Hello world! How are", "Once upon a time there", "你好! 我们用中文"]
    return [engine.tokenizer.encode(base[i % 4] + " " + "x" * i) for i in range(n)]


async def run(engine: AsyncEngine, rid: str, ids: list[int], params: SamplingParams) -> list[int]:
    tokens: list[int] = []
    async for out in engine.generate(rid, ids, params):
        tokens += out.token_ids
    return tokens


def forced(params: SamplingParams, **fields: Any) -> SamplingParams:
    """``params`` with ``fields`` set past SamplingParams' own validation."""
    for name, value in fields.items():
        object.__setattr__(params, name, value)
    return params


class _RaisingStop(str):
    """A stop string whose prefix test fails: a fault in the stop logic mid-stream."""

    def startswith(self, *args: Any) -> bool:  # type: ignore[override]
        raise RuntimeError("stop check failed")


# -- SamplingParams: a 400 before any work ------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("seed", 2**64),
        ("seed", -(2**63) - 1),
        ("seed", "42"),
        ("top_k", 2**63),
        ("top_k", -2),
        ("temperature", math.nan),
        ("temperature", -0.5),
        ("top_p", 1.5),
        ("presence_penalty", math.inf),
        ("stop", ("ok", 3)),
        ("stop_token_ids", (2**70,)),
        ("logprobs", -1),
        ("max_tokens", 2.5),
    ],
)
def test_sampling_params_refuse_what_the_engine_cannot_represent(field: str, value: object) -> None:
    with pytest.raises(InvalidRequest) as err:
        SamplingParams(**{"max_tokens": 4, field: value})  # type: ignore[arg-type]
    assert err.value.param == field and field in err.value.message


def test_the_extremes_that_pass_are_served(engine: AsyncEngine) -> None:
    """The largest seed and top_k, and more logprobs than the vocabulary, all decode."""
    params = SamplingParams(max_tokens=5, temperature=0.8, seed=2**64 - 1, top_k=2**63 - 1, ignore_eos=True)
    low = SamplingParams(max_tokens=5, temperature=0.8, seed=-(2**63), logprobs=10**6, ignore_eos=True)
    ids = prompts(engine, 1)[0]
    assert len(asyncio.run(run(engine, "max-seed", ids, params))) == 5
    assert len(asyncio.run(run(engine, "min-seed", ids, low))) == 5


# -- one poison request among live streams ----------------------------------------------


POISONS = {
    # fails when the engine admits it: the seeded generator cannot be made
    "admission": lambda: forced(SamplingParams(max_tokens=24, temperature=1.0, seed=1), seed=2**64),
    # fails inside the batched sample from its second token on (penalties over its output)
    "sampling": lambda: forced(SamplingParams(max_tokens=24, temperature=0, ignore_eos=True), presence_penalty="x"),
    # fails in the stop-string logic on its first token
    "stopping": lambda: SamplingParams(max_tokens=24, temperature=0, ignore_eos=True, stop=(_RaisingStop("zz"),)),
    # fails in the detokenizer on its first token
    "detokenizing": lambda: forced(
        SamplingParams(max_tokens=24, temperature=0, ignore_eos=True), skip_special_tokens=object()
    ),
}


@pytest.mark.parametrize("where", list(POISONS))
def test_a_poison_request_fails_alone_and_the_batch_keeps_its_tokens(engine: AsyncEngine, where: str) -> None:
    ids = prompts(engine, 6)

    async def batch(poison: SamplingParams | None) -> tuple[list[list[int]], BaseException | None]:
        tag = where if poison else "clean"
        jobs = [run(engine, f"{tag}-{i}", p, GREEDY) for i, p in enumerate(ids)]
        if poison is not None:
            jobs.insert(3, run(engine, f"{tag}-poison", ids[0], poison))
        results = await asyncio.gather(*jobs, return_exceptions=True)
        failure = results.pop(3) if poison is not None else None
        assert all(isinstance(r, list) for r in results), results
        return results, failure  # type: ignore[return-value]

    clean, _ = asyncio.run(batch(None))
    failed_before = counter_value(metrics.FAILED)
    poisoned, failure = asyncio.run(batch(POISONS[where]()))
    assert isinstance(failure, Exception), f"the poison request was served: {failure}"
    assert counter_value(metrics.FAILED) - failed_before == 1  # that request, and no other
    assert poisoned == clean
    assert all(len(tokens) == 24 for tokens in poisoned)
    # and the engine goes on serving
    assert asyncio.run(run(engine, f"{where}-after", ids[1], GREEDY)) == clean[1]


# -- the warm-up is not traffic: under mute() no metric moves -----------------------------


def _engine_samples(model_name: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every engine counter and histogram sample in this process, and this model's labelled series."""
    from prometheus_client import REGISTRY

    out = {}
    for family in REGISTRY.collect():
        if not family.name.startswith(("isvc_", "vllm:")) or family.name == "isvc_requests":
            continue  # isvc_requests is the server's (by route)
        for s in family.samples:
            labelled = s.labels.get("model_name") == model_name
            if s.name.endswith("_created") or not (family.type in ("counter", "histogram") or labelled):
                continue  # gauges of other engines alive in this process move when they idle
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def _exercise(core: Any, tag: str) -> list[Any]:
    """Two poison requests, an aborted one, then one that speculates alone (on the native kernels)."""
    from isvc.engine.request import EngineRequest

    outs: list[Any] = []
    ids = core.tokenizer.encode("Hello world! How are")
    long = SamplingParams(max_tokens=50, temperature=0, ignore_eos=True)
    for name, params in (("admission", POISONS["admission"]()), ("sampling", POISONS["sampling"]()), ("abort", long)):
        core.submit(EngineRequest(f"{tag}-{name}", ids, params, arrival_s=time.monotonic()), outs.append)
    core._drain_inbox()
    for _ in range(3):
        core.step()
    core.abort(f"{tag}-abort")
    core._drain_inbox()
    while core.scheduler.has_work():
        core.step()
    repetitive = (ids * 6)[:30]
    params = SamplingParams(max_tokens=20, temperature=0, ignore_eos=True)
    core.submit(EngineRequest(f"{tag}-spec", repetitive, params, arrival_s=time.monotonic()), outs.append)
    core._drain_inbox()
    while core.scheduler.has_work():
        core.step()
    return outs


def test_poisons_aborts_and_drafts_under_mute_record_nothing(tiny_model_dir: Path) -> None:
    """What mute() covers (the warm-up) is every engine metric: failures, aborts and drafts too."""
    from isvc.engine import kernels
    from isvc.engine.core import EngineCore

    core = EngineCore(EngineConfig(model_dir=str(tiny_model_dir), num_threads=2, served_model_name="tiny-muted"))
    try:
        before = _engine_samples("tiny-muted")
        with core.metrics.mute():
            muted = _exercise(core, "muted")
        assert _engine_samples("tiny-muted") == before
        # the same traffic unmuted moves each of them: the muted run did exercise every write
        failed, aborted, drafted = (
            counter_value(c) for c in (metrics.FAILED, metrics.ABORTED, metrics.SPEC_DRAFT_TOKENS)
        )
        loud = _exercise(core, "loud")
        assert [o.error is not None for o in muted if o.finished] == [o.error is not None for o in loud if o.finished]
        assert counter_value(metrics.FAILED) - failed == 2
        assert counter_value(metrics.ABORTED) - aborted == 1
        assert counter_value(metrics.SPEC_DRAFT_TOKENS) > drafted or kernels.load() is None
        assert _engine_samples("tiny-muted") != before
    finally:
        core.shutdown()


# -- a fault in the loop itself: the engine is dead, and says so ---------------------------


def _live_engine(tiny_model_dir: Path) -> tuple[AsyncEngine, list[BaseException]]:
    died: list[BaseException] = []
    eng = AsyncEngine(EngineConfig(model_dir=str(tiny_model_dir), num_threads=2), on_dead=died.append)
    eng.load()
    return eng, died


def test_a_fault_in_the_inbox_drain_fails_every_request_and_kills_the_engine(tiny_model_dir: Path) -> None:
    eng, died = _live_engine(tiny_model_dir)
    core = eng.core
    assert core is not None
    drain = core._drain_inbox

    def faulty_drain() -> None:  # once three streams have tokens, the loop itself fails
        if sum(1 for t in list(core.output.requests.values()) if t.request.output_token_ids) >= 3:
            raise RuntimeError("injected fault in the inbox drain")
        drain()

    core._drain_inbox = faulty_drain  # type: ignore[method-assign]
    params = SamplingParams(max_tokens=200, temperature=0, ignore_eos=True)

    async def streams() -> list[BaseException | list[int]]:
        jobs = [run(eng, f"s{i}", p, params) for i, p in enumerate(prompts(eng, 3))]
        return await asyncio.wait_for(asyncio.gather(*jobs, return_exceptions=True), timeout=60)

    try:
        results = asyncio.run(streams())
        assert all(isinstance(r, EngineDeadError) for r in results), results
        assert eng.dead and not eng.ready
        assert len(died) == 1 and "injected fault" in str(died[0])
        # new requests fail at once, through every entry point
        with pytest.raises(EngineDeadError):
            eng.check_request([1, 2, 3], 4)
        with pytest.raises(EngineDeadError):
            asyncio.run(asyncio.wait_for(run(eng, "late", [1, 2, 3], params), timeout=10))
        late: list[Any] = []
        core.submit(_request(), late.append)  # a submit that races the death still gets its answer
        assert late and isinstance(late[0].error, EngineDeadError)
        _liveness_says_dead(eng, tiny_model_dir)
    finally:
        eng.shutdown()


def test_a_fault_while_idling_kills_the_engine(tiny_model_dir: Path) -> None:
    eng, died = _live_engine(tiny_model_dir)
    core = eng.core
    assert core is not None

    def faulty_shrink() -> None:
        raise MemoryError("injected fault in the cache shrink")

    core.cache.shrink = faulty_shrink  # type: ignore[method-assign]
    try:
        deadline = time.monotonic() + 10
        while not eng.dead and time.monotonic() < deadline:
            time.sleep(0.05)
        assert eng.dead and len(died) == 1
        with pytest.raises(EngineDeadError) as err:
            asyncio.run(run(eng, "after", [1, 2, 3], GREEDY))
        assert err.value.http_status == 503
    finally:
        eng.shutdown()


def _request() -> Any:
    from isvc.engine.request import EngineRequest

    return EngineRequest("late-submit", [1, 2, 3], GREEDY)


def _liveness_says_dead(eng: AsyncEngine, tiny_model_dir: Path) -> None:
    """The server's view of a dead engine: liveness and readiness 503, requests 503 in their format."""
    from isvc.server.app import ServerSettings, create_app

    app = create_app(ServerSettings("tiny", str(tiny_model_dir), exit_on_engine_death=False), eng)

    async def probe() -> None:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://isvc") as client:
            assert (await client.get("/v2/health/live")).status_code == 503
            assert (await client.get("/")).status_code == 503
            assert (await client.get("/v2/health/ready")).status_code == 503
            r = await client.post("/openai/v1/completions", json={"model": "tiny", "prompt": "hi", "max_tokens": 2})
            assert r.status_code == 503 and r.json()["error"]["code"] == "engine_dead"
            text = {"name": "text_input", "datatype": "BYTES", "shape": [1], "data": ["hi"]}
            r = await client.post("/v2/models/tiny/infer", json={"inputs": [text]})
            assert r.status_code == 503 and "engine" in r.json()["error"]

    asyncio.run(probe())


# -- on a real `isvc serve` ----------------------------------------------------------------


def _stream(client: openai.OpenAI, prompt: str, max_tokens: int, started: threading.Event | None = None) -> str:
    text = ""
    for chunk in client.completions.create(
        model="tiny",
        prompt=prompt,
        max_tokens=max_tokens,
        temperature=0,
        stream=True,
        extra_body={"ignore_eos": True},
    ):
        text += chunk.choices[0].text if chunk.choices else ""
        if started is not None:
            started.set()
    return text


def test_a_poison_request_among_live_streams_on_a_real_server(tiny_server: ServerProcess) -> None:
    """Out-of-range seed and top_k (they used to fail every stream of the batch) are refused
    with a 400 naming the field; the streams running beside them keep their tokens."""
    client = openai.OpenAI(base_url=f"{tiny_server.base_url}/openai/v1", api_key="none", max_retries=0)
    texts = ["The capital of France is", "Hello world! How are", "Once upon a time there", "0123456789 + -"]

    def batch(poison: bool) -> tuple[list[str], list[BaseException]]:
        started = threading.Event()
        with ThreadPoolExecutor(len(texts) + 2) as pool:
            streams = [pool.submit(_stream, client, t, 48, started) for t in texts]
            refusals: list[BaseException] = []
            if poison:
                assert started.wait(30)
                for extra in ({"seed": 2**64}, {"top_k": 2**63}):
                    try:
                        client.completions.create(
                            model="tiny",
                            prompt="poison",
                            max_tokens=8,
                            **({"seed": extra["seed"]} if "seed" in extra else {"extra_body": extra}),
                        )
                    except openai.BadRequestError as exc:
                        refusals.append(exc)
            return [s.result(timeout=60) for s in streams], refusals

    clean, _ = batch(poison=False)
    served, refusals = batch(poison=True)
    assert served == clean
    assert [r.body["param"] for r in refusals] == ["seed", "top_k"]  # type: ignore[index]
    # the same through KServe V1, whose parameters reach SamplingParams untyped
    r = httpx.post(
        f"{tiny_server.base_url}/v1/models/tiny:predict",
        json={"instances": ["hi"], "parameters": {"seed": "not a number"}},
        timeout=30,
    )
    assert r.status_code == 400 and "seed" in r.json()["error"]


LAUNCHER = """
import sys, time
from pathlib import Path
from isvc.engine.core import EngineCore
from isvc.server.main import main

trigger = Path(sys.argv[1])
drain, step = EngineCore._drain_inbox, EngineCore.step

def faulty_drain(self):
    if trigger.exists():
        raise RuntimeError("injected fault in the inbox drain")
    drain(self)

def slow_step(self):  # ~100 steps/s at most, so a stream is still running when the fault lands
    time.sleep(0.01)
    step(self)

EngineCore._drain_inbox = faulty_drain
EngineCore.step = slow_step
sys.exit(main(sys.argv[2:]))
"""


def test_a_dead_engine_fails_its_streams_says_so_and_the_server_exits_nonzero(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    launcher = tmp_path / "launch.py"
    launcher.write_text(LAUNCHER)
    trigger = tmp_path / "fault"
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log = open(tmp_path / "serve.log", "w+")  # noqa: SIM115 (the server process writes it)
    args = ["--model_dir", str(tiny_model_dir), "--model_name", "tiny", "--host", "127.0.0.1", "--http_port", str(port)]
    proc = subprocess.Popen(
        [sys.executable, str(launcher), str(trigger), *args], stdout=log, stderr=subprocess.STDOUT, cwd=Path.cwd()
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None and time.monotonic() < deadline, "server did not start"
            try:
                if httpx.get(f"{base}/v2/health/ready", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        assert httpx.get(f"{base}/v2/health/live").status_code == 200
        client = openai.OpenAI(base_url=f"{base}/openai/v1", api_key="none", max_retries=0)
        stream = client.completions.create(
            model="tiny", prompt="Hello", max_tokens=200, temperature=0, stream=True, extra_body={"ignore_eos": True}
        )
        next(iter(stream))  # the stream is live
        trigger.touch()
        with pytest.raises(openai.APIError) as err:
            for _ in stream:
                pass
        assert "engine" in str(err.value.message)
        seen = []
        while proc.poll() is None and time.monotonic() < deadline:
            try:
                seen.append(httpx.get(f"{base}/v2/health/live", timeout=2).status_code)
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        assert 503 in seen and 200 not in seen
        assert proc.wait(timeout=30) == 1
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()
