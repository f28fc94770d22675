"""The gateway's edge, in process: whatever the body bytes, the route source or the client, an answer in the protocol.

OpenAI paths answer ``{"error": {"message", "type", "param", "code"}}``, KServe paths
``{"error": "..."}``; never Starlette's plain-text ``Internal Server Error``. The predictor,
where one is needed, is a real process (the control-plane tests' fake predictor).
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from isvc.gateway.app import CLIENT_CLOSED, RouteSource, create_app
from isvc.gateway.settings import GatewaySettings
from tests.conftest import free_port

FAKE_PREDICTOR = Path(__file__).parents[1] / "controlplane" / "fake_predictor.py"


def routes_to(*endpoints: str, name: str = "llama", model: str = "llama2") -> list[dict[str, Any]]:
    revision = {"name": f"{name}-predictor-00001", "percent": 100, "endpoints": list(endpoints)}
    return [{"namespace": "demo", "name": name, "model_names": [model], "revisions": [revision]}]


CLOSED = routes_to("http://127.0.0.1:1")  # nothing listens there: a routed request is a 503


@asynccontextmanager
async def gateway(tmp_path: Path, source: RouteSource, **settings: Any) -> AsyncIterator[httpx.AsyncClient]:
    """A client of the gateway app, in process, its lifespan (the upstream client) running."""
    app = create_app(GatewaySettings(state_dir=tmp_path, retry_after_s=2, **settings), source)
    transport = httpx.ASGITransport(app=app)
    async with app.router.lifespan_context(app), httpx.AsyncClient(transport=transport, base_url="http://gw") as c:
        yield c


def assert_protocol_error(r: httpx.Response, openai: bool, status: int | None = None) -> None:
    assert status is None or r.status_code == status, (r.status_code, r.text)
    assert r.headers["content-type"].startswith("application/json"), (r.status_code, r.text)
    body = r.json()
    if openai:
        assert set(body["error"]) == {"message", "type", "param", "code"} and body["error"]["message"], body
    else:
        assert set(body) == {"error"} and isinstance(body["error"], str) and body["error"], body


# Bodies routed by their "model" field that are not the JSON they look like.
BAD_BODIES = {
    "bad-escape-in-a-key": b'{"\\q": "x", "model": "llama2"}',
    "raw-tab-in-a-key": b'{"a\tb": 1, "model": "llama2"}',
    "raw-newline-in-the-model": b'{"model": "llama\n2"}',
    "bad-escape-in-the-model": b'{"model": "ll\\ama2"}',
    "invalid-utf8-in-a-key": b'{"\xff\xfe": 1, "model": "llama2"}',
    "cut-unicode-escape-in-a-key": b'{"\\u12": 1, "model": "llama2"}',
    "deeply-nested": b'{"a": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
    "not-json": b"hello",
}


@pytest.mark.parametrize("name", sorted(BAD_BODIES))
async def test_bad_bodies_are_a_400_in_the_openai_envelope(tmp_path: Path, name: str) -> None:
    async with gateway(tmp_path, lambda: (1, CLOSED)) as c:
        r = await c.post("/v1/chat/completions", content=BAD_BODIES[name], headers={"content-type": "application/json"})
    assert_protocol_error(r, openai=True, status=400)
    assert r.json()["error"]["param"] == "model"


async def test_a_lone_surrogate_as_the_model_is_an_unknown_model(tmp_path: Path) -> None:
    async with gateway(tmp_path, lambda: (1, CLOSED)) as c:
        r = await c.post("/v1/completions", content=b'{"model": "\\ud800", "prompt": "x"}')
    assert_protocol_error(r, openai=True, status=404)
    assert "\\ud800" in r.text  # quoted, escaped


JSONISH = st.lists(
    st.sampled_from(
        [
            "{",
            "}",
            "[",
            "]",
            ",",
            ":",
            '"',
            "\\",
            '"model"',
            '"llama2"',
            '"x"',
            "\\u",
            "\\ud800",
            "1",
            "null",
            " ",
            "\t",
            "\n",
            "\x00",
            "\xff",
            "é",
            "\\q",
            "\\n",
        ]
    ),  # fmt: skip
    max_size=40,
).map(lambda parts: "".join(parts).encode("utf-8", "surrogatepass"))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=st.one_of(JSONISH, st.binary(max_size=200)), path=st.sampled_from(["/v1/completions", "/v1/embeddings"]))
def test_no_body_bytes_make_a_500(tmp_path: Path, body: bytes, path: str) -> None:
    app = create_app(GatewaySettings(state_dir=tmp_path, retry_after_s=2), lambda: (1, routes_to()))

    async def post() -> httpx.Response:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw") as c:
            return await c.post(path, content=body)

    r = asyncio.run(post())
    assert r.status_code < 500 or r.status_code == 503, (r.status_code, r.text)  # 503: routed, no replica
    assert_protocol_error(r, openai=True)


async def test_a_failing_route_source_is_a_503_then_the_last_routes_serve(tmp_path: Path) -> None:
    calls = {"n": 0}

    def source() -> tuple[int, list[dict[str, Any]]]:
        calls["n"] += 1
        if calls["n"] == 2:
            return 1, CLOSED
        raise OSError("database is locked")

    async with gateway(tmp_path, source, refresh_s=0.001) as c:
        r = await c.post("/v1/completions", json={"model": "llama2", "prompt": "x"})
        assert_protocol_error(r, openai=True, status=503)
        assert r.headers["retry-after"] == "2" and "locked" not in r.text
        r = await c.post("/v2/models/llama2/infer", json={}, headers={"Host": "llama.demo.example.com"})
        assert_protocol_error(r, openai=False, status=503)  # routed now (nobody listens there)
        assert "demo/llama" in r.json()["error"]
        time.sleep(0.01)
        r = await c.post("/v1/completions", json={"model": "llama2", "prompt": "x"})  # the source fails again
        assert_protocol_error(r, openai=True, status=503)
        assert "demo/llama" in r.json()["error"]["message"]  # routed with the last routes read


@pytest.mark.parametrize(("path", "openai"), [("/v1/completions", True), ("/v2/models/llama2/infer", False)])
async def test_an_escaped_exception_is_a_500_in_the_protocol(tmp_path: Path, path: str, openai: bool) -> None:
    bad_endpoint = routes_to("http://[::1")  # httpx cannot build the URL: an error nothing expects
    async with gateway(tmp_path, lambda: (1, bad_endpoint)) as c:
        r = await c.post(path, json={"model": "llama2"}, headers={"Host": "llama.demo.example.com"})
        assert_protocol_error(r, openai=openai, status=500)
        assert "InvalidURL" in (r.json()["error"]["message"] if openai else r.json()["error"])
        r = await c.get("/v1/models")  # and the app goes on
        assert r.status_code == 200


@pytest.fixture(scope="module")
def predictor() -> Iterator[str]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, str(FAKE_PREDICTOR), "--http_port", str(port), "--model_name", "llama2"])
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{url}/v2/health/ready", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.05)
        yield url
    finally:
        proc.kill()
        proc.wait()


async def leave_mid_body(app: Callable[..., Any], path: str, headers: dict[str, str], first: bytes) -> list[int]:
    """Send the first part of a body, then disconnect; the statuses the app sent back."""
    messages: list[dict[str, Any]] = [{"type": "http.request", "body": first, "more_body": True}]

    async def receive() -> dict[str, Any]:
        if messages:
            return messages.pop(0)
        await asyncio.sleep(0.05)
        return {"type": "http.disconnect"}

    statuses: list[int] = []

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            statuses.append(message["status"])

    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
        "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "",
        "headers": [(k.encode(), v.encode()) for k, v in headers.items()],
        "client": ("127.0.0.1", 5555), "server": ("gw", 80),
    }  # fmt: skip
    await app(scope, receive, send)
    return statuses


async def test_a_client_leaving_mid_body_is_no_500_and_the_gateway_goes_on(tmp_path: Path, predictor: str) -> None:
    app = create_app(GatewaySettings(state_dir=tmp_path), lambda: (1, routes_to(predictor)))
    length = {"content-type": "application/json", "content-length": "100000"}
    async with app.router.lifespan_context(app):
        # While the gateway reads the body for its "model" field ...
        assert await leave_mid_body(app, "/v1/completions", length, b'{"prompt": "abc') == [CLIENT_CLOSED]
        # ... and while it streams the body on to the predictor.
        host = {**length, "host": "llama.demo.example.com"}
        assert await leave_mid_body(app, "/v1/completions", host, b'{"model": "llama2", "prompt": "') == [CLIENT_CLOSED]
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw") as c:
            r = await c.post("/v1/completions", json={"model": "llama2", "prompt": "x", "max_tokens": 2})
    assert r.status_code == 200 and r.json()["choices"][0]["text"] == " w0 w1"
