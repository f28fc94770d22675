"""KServe V1 and Open Inference Protocol (V2) routes, readiness, and overload, with httpx."""

from __future__ import annotations

import asyncio
import concurrent.futures

import httpx
import openai

from isvc.engine.async_engine import AsyncEngine
from isvc.engine.config import EngineConfig
from isvc.server.app import ServerSettings, create_app


def test_v1_model_status_and_predict(tiny_server) -> None:
    base = tiny_server.base_url
    status = httpx.get(f"{base}/v1/models/tiny").json()
    assert status["name"] == "tiny" and status["ready"] is True
    assert httpx.get(f"{base}/v1/models").json()["models"] == ["tiny"]
    r = httpx.post(
        f"{base}/v1/models/tiny:predict",
        json={"instances": ["Hello", "The capital"], "parameters": {"max_tokens": 4}},
        timeout=30,
    )
    assert r.status_code == 200
    predictions = r.json()["predictions"]
    assert len(predictions) == 2 and all(isinstance(p, str) and p for p in predictions)


def test_v1_errors_use_kserve_body(tiny_server) -> None:
    base = tiny_server.base_url
    r = httpx.post(f"{base}/v1/models/nope:predict", json={"instances": ["x"]})
    assert r.status_code == 404 and isinstance(r.json()["error"], str)
    r = httpx.post(f"{base}/v1/models/tiny:predict", json={"inputs": ["x"]})
    assert r.status_code == 400 and "instances" in r.json()["error"]


def test_v2_health_metadata_and_infer(tiny_server) -> None:
    base = tiny_server.base_url
    assert httpx.get(f"{base}/v2/health/live").status_code == 200
    assert httpx.get(f"{base}/v2/health/ready").json() == {"ready": True}
    assert httpx.get(f"{base}/v2").json()["name"] == "isvc"
    assert httpx.get(f"{base}/v2/models/tiny/ready").status_code == 200
    meta = httpx.get(f"{base}/v2/models/tiny").json()
    assert meta["inputs"][0]["datatype"] == "BYTES"
    r = httpx.post(
        f"{base}/v2/models/tiny/infer",
        json={
            "inputs": [{"name": "text_input", "shape": [1], "datatype": "BYTES", "data": ["Hello world"]}],
            "parameters": {"max_tokens": 5},
        },
        timeout=30,
    )
    assert r.status_code == 200
    out = r.json()["outputs"][0]
    assert out["name"] == "text_output" and out["datatype"] == "BYTES" and out["data"][0]


def test_v2_errors_use_kserve_body(tiny_server) -> None:
    base = tiny_server.base_url
    r = httpx.get(f"{base}/v2/models/nope")
    assert r.status_code == 404 and "nope" in r.json()["error"]
    r = httpx.post(
        f"{base}/v2/models/tiny/infer",
        json={"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1.0]}]},
    )
    assert r.status_code == 400 and "BYTES" in r.json()["error"]


async def test_not_ready_is_503_in_each_protocol(tiny_model_dir) -> None:
    """Before the weights are loaded and warmed up, nothing claims to be ready."""
    engine = AsyncEngine(EngineConfig(model_dir=str(tiny_model_dir)))  # never loaded
    app = create_app(ServerSettings(model_name="tiny", model_root=str(tiny_model_dir)), engine)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
        assert (await client.get("/v2/health/ready")).status_code == 503
        assert (await client.get("/v2/models/tiny/ready")).status_code == 503
        r = await client.post("/openai/v1/completions", json={"model": "tiny", "prompt": "hi"})
        assert r.status_code == 503 and r.json()["error"]["code"] == "model_not_ready"
        assert "Retry-After" in r.headers


def test_overload_is_429_on_openai_and_503_on_kserve(start_server, tiny_model_dir) -> None:
    server = start_server(
        ["--model_dir", str(tiny_model_dir), "--model_name", "tiny", "--max_num_seqs", "1", "--max_queue", "1"]
    )
    client = openai.OpenAI(base_url=server.base_url + "/v1", api_key="unused", max_retries=0)

    def long(i: int) -> str:
        try:
            client.completions.create(model="tiny", prompt="Hello", max_tokens=200, extra_body={"ignore_eos": True})
            return "ok"
        except openai.RateLimitError as err:
            assert err.response.headers.get("retry-after")
            return "429"

    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        results = list(pool.map(long, range(6)))
    assert "429" in results and "ok" in results

    async def v2_burst() -> list[int]:
        async with httpx.AsyncClient(base_url=server.base_url, timeout=60) as http:
            body = {
                "inputs": [{"name": "text_input", "shape": [1], "datatype": "BYTES", "data": ["Hi"]}],
                "parameters": {"max_tokens": 200},
            }
            rs = await asyncio.gather(*[http.post("/v2/models/tiny/infer", json=body) for _ in range(6)])
            return [r.status_code for r in rs]

    codes = asyncio.run(v2_burst())
    assert 503 in codes and 200 in codes
