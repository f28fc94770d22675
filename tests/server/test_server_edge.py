"""The server's HTTP edge on a live tiny server: whatever the bytes, every route answers in its own protocol.

OpenAI routes answer ``{"error": {"message", "type", "param", "code"}}``; KServe V1/V2 and the
rest answer ``{"error": "..."}``. Never a 500, never FastAPI's ``{"detail": ...}``, and the
keep-alive connection survives every refusal.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from isvc.http_limits import RequestLimits
from isvc.runtime_args import parse
from tests.conftest import ServerProcess


@dataclass(frozen=True)
class Route:
    path: str
    openai: bool
    body: dict[str, object]
    """A valid request, small and quick."""
    text_field: str
    """Where the prompt text sits in ``body``, as the server names the field."""


def _completion(prompt: object) -> dict[str, object]:
    return {"model": "tiny", "prompt": prompt, "max_tokens": 2}


def _chat(text: object) -> dict[str, object]:
    return {"model": "tiny", "messages": [{"role": "user", "content": text}], "max_tokens": 2}


def _v1(text: object) -> dict[str, object]:
    return {"instances": [text], "parameters": {"max_tokens": 2}}


def _v2(text: object) -> dict[str, object]:
    return {
        "inputs": [{"name": "text_input", "shape": [1], "datatype": "BYTES", "data": [text]}],
        "parameters": {"max_tokens": 2},
    }


ROUTES = [
    Route("/v1/completions", True, _completion("Hello"), "prompt"),
    Route("/openai/v1/completions", True, _completion("Hello"), "prompt"),
    Route("/v1/chat/completions", True, _chat("Hello"), "messages[0].content"),
    Route("/openai/v1/chat/completions", True, _chat("Hello"), "messages[0].content"),
    Route("/v1/models/tiny:predict", False, _v1("Hello"), "instances[0]"),
    Route("/v2/models/tiny/infer", False, _v2("Hello"), "inputs[0].data[0]"),
]
BUILDERS = {
    "/v1/completions": _completion,
    "/openai/v1/completions": _completion,
    "/v1/chat/completions": _chat,
    "/openai/v1/chat/completions": _chat,
    "/v1/models/tiny:predict": _v1,
    "/v2/models/tiny/infer": _v2,
}
JSON = {"content-type": "application/json"}
V1_PREDICT = "/v1/models/tiny:predict"
LONE = "\ud800"
DEEP = b"[" * 100_000 + b"]" * 100_000

# name -> (raw body, headers); each one is refused with 400 on every route.
BAD_BODIES: dict[str, tuple[bytes, dict[str, str]]] = {
    "not-json": (b"hello, not json", JSON),
    "truncated-json": (b'{"model": "tiny", "prompt": "Hel', JSON),
    "invalid-utf8": (b'{"model": "tiny", "prompt": "\xff\xfe", "instances": ["\xff"]}', JSON),
    "utf8-encoded-surrogate": (b'{"model": "tiny", "prompt": "\xed\xa0\x80"}', JSON),
    "deeply-nested": (DEEP, JSON),
    "nested-past-limit": (b'{"a": ' + b"[" * 200 + b"]" * 200 + b"}", JSON),
    "array-not-object": (b"[1, 2, 3]", JSON),
    "string-not-object": (b'"Hello"', JSON),
    "null": (b"null", JSON),
    "empty-body": (b"", JSON),
    "surrogate-as-key": (json.dumps({LONE: 1, "model": "tiny"}).encode(), JSON),
}


@pytest.fixture(scope="module")
def client(tiny_server: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=tiny_server.base_url, timeout=60) as http:
        yield http


def assert_protocol_error(r: httpx.Response, openai: bool, status: int | None = None) -> None:
    assert status is None or r.status_code == status, (r.status_code, r.text)
    assert 400 <= r.status_code < 500, (r.status_code, r.text)
    assert r.headers["content-type"].startswith("application/json"), r.headers
    body = r.json()
    assert "detail" not in body, body
    if openai:
        error = body["error"]
        assert set(error) == {"message", "type", "param", "code"}, body
        assert isinstance(error["message"], str) and error["message"]
    else:
        assert set(body) == {"error"} and isinstance(body["error"], str) and body["error"], body


@pytest.mark.parametrize("route", ROUTES, ids=lambda r: r.path)
def test_valid_request_is_served(client: httpx.Client, route: Route) -> None:
    r = client.post(route.path, json=route.body)
    assert r.status_code == 200, r.text


@pytest.mark.parametrize("bad", sorted(BAD_BODIES))
@pytest.mark.parametrize("route", ROUTES, ids=lambda r: r.path)
def test_bad_bytes_are_400_in_the_protocol(client: httpx.Client, route: Route, bad: str) -> None:
    content, headers = BAD_BODIES[bad]
    r = client.post(route.path, content=content, headers=headers)
    assert_protocol_error(r, route.openai, 400)
    assert r.headers.get("connection") != "close"
    assert client.post(route.path, json=route.body).status_code == 200  # same connection, still served


@pytest.mark.parametrize("route", ROUTES, ids=lambda r: r.path)
def test_lone_surrogate_in_the_text_is_400_naming_the_field(client: httpx.Client, route: Route) -> None:
    body = BUILDERS[route.path]("Hello " + LONE)
    r = client.post(route.path, content=json.dumps(body).encode(), headers=JSON)  # valid JSON: "\ud800"
    assert_protocol_error(r, route.openai, 400)
    message = r.json()["error"]["message"] if route.openai else r.json()["error"]
    assert route.text_field in message and "surrogate" in message
    if route.openai:
        assert r.json()["error"]["param"] == route.text_field
    assert r.headers.get("connection") != "close"


@pytest.mark.parametrize(
    ("path", "openai", "body", "field"),
    [
        ("/v1/completions", True, {**_completion("Hi"), "stop": ["ok", LONE]}, "stop[1]"),
        ("/v1/chat/completions", True, {**_chat("Hi"), "stop": LONE}, "stop"),
        ("/v1/chat/completions", True, {**_chat([{"type": "text", "text": LONE}])}, "messages[0].content[0].text"),
        ("/v1/models/tiny:predict", False, {"instances": [{"text": LONE}]}, "instances[0].text"),
        ("/v1/models/tiny:predict", False, {**_v1("Hi"), "parameters": {"stop": [LONE]}}, "parameters.stop[0]"),
        ("/v2/models/tiny/infer", False, {**_v2("Hi"), "id": LONE}, "id"),
    ],
)
def test_lone_surrogate_anywhere_is_400_naming_the_field(
    client: httpx.Client, path: str, openai: bool, body: dict[str, object], field: str
) -> None:
    r = client.post(path, content=json.dumps(body).encode(), headers=JSON)
    assert_protocol_error(r, openai, 400)
    assert field in (r.json()["error"]["message"] if openai else r.json()["error"])


@pytest.mark.parametrize("route", [r for r in ROUTES if r.path != V1_PREDICT], ids=lambda r: r.path)
def test_wrong_content_type_is_answered_in_the_protocol(client: httpx.Client, route: Route) -> None:
    r = client.post(route.path, content=json.dumps(route.body).encode(), headers={"content-type": "text/plain"})
    assert_protocol_error(r, route.openai, 400)
    message = r.json()["error"]["message"] if route.openai else r.json()["error"]
    assert "content-type" in message


@pytest.mark.parametrize(
    "content_type", ["text/plain", "application/x-www-form-urlencoded", None], ids=["text", "form", "none"]
)
def test_v1_predict_reads_any_content_type_as_json(client: httpx.Client, content_type: str | None) -> None:
    """KServe's V1 server does: `curl .../v1/models/m:predict -d @input.json` sends a form content-type."""
    body = json.dumps(_v1("Hello")).encode()
    r = client.post(V1_PREDICT, content=body, headers={"content-type": content_type} if content_type else {})
    assert r.status_code == 200, r.text
    assert len(r.json()["predictions"]) == 1
    r = client.post(V1_PREDICT, content=b"instances=Hello", headers={"content-type": content_type or "text/plain"})
    assert_protocol_error(r, openai=False, status=400)  # still JSON, whatever the label
    assert "not valid JSON" in r.json()["error"]


def test_v1_predict_keeps_its_schema_in_openapi(tiny_model_dir: Path) -> None:
    from fastapi.testclient import TestClient

    from isvc.engine.async_engine import AsyncEngine
    from isvc.engine.config import EngineConfig
    from isvc.server.app import ServerSettings, create_app

    app = create_app(
        ServerSettings(model_name="tiny", model_root=str(tiny_model_dir), enable_docs_url=True),
        AsyncEngine(EngineConfig(model_dir=str(tiny_model_dir))),
    )
    spec = TestClient(app).get("/openapi.json").json()
    body = spec["paths"]["/v1/models/{name}:predict"]["post"]["requestBody"]
    assert body["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/PredictRequest"}
    assert "instances" in spec["components"]["schemas"]["PredictRequest"]["properties"]


@pytest.mark.parametrize(
    ("method", "path", "openai", "status"),
    [
        ("GET", "/v1/nope", False, 404),
        ("POST", "/openai/v1/nope", True, 404),
        ("GET", "/v2/models/tiny/nope", False, 404),
        ("POST", "/nope", False, 404),
        ("GET", "/v1/completions", True, 405),
        ("PUT", "/openai/v1/chat/completions", True, 405),
        ("PUT", "/v1/models/tiny:predict", False, 405),
        ("DELETE", "/v2/models/tiny/infer", False, 405),
        ("POST", "/v2/health/ready", False, 405),
    ],
)
def test_unknown_routes_and_wrong_methods_in_the_protocol(
    client: httpx.Client, method: str, path: str, openai: bool, status: int
) -> None:
    r = client.request(method, path, json={})
    assert_protocol_error(r, openai, status)
    if status == 405:
        assert r.headers.get("allow")


def test_request_limit_flags_default_to_the_shared_limits() -> None:
    args = parse([])
    limits = RequestLimits()
    assert args.max_request_body_bytes == limits.max_body_bytes
    assert args.max_request_header_bytes == limits.max_header_bytes
    assert args.request_header_timeout_seconds == limits.header_timeout_s
    assert args.request_body_timeout_seconds == limits.body_timeout_s


async def test_an_escaped_exception_is_500_in_the_protocol(tiny_model_dir: Path) -> None:
    """A bug in a handler still answers in the route's format (and so keeps uvicorn's connection)."""
    from isvc.engine.async_engine import AsyncEngine
    from isvc.engine.config import EngineConfig
    from isvc.server.app import ServerSettings, create_app

    app = create_app(
        ServerSettings(model_name="tiny", model_root=str(tiny_model_dir)),
        AsyncEngine(EngineConfig(model_dir=str(tiny_model_dir))),
    )

    async def boom() -> None:
        raise RuntimeError("a bug")

    app.add_api_route("/v1/chat/completions/boom", boom, methods=["POST"])
    app.add_api_route("/v2/boom", boom, methods=["POST"])
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as http:
        r = await http.post("/v1/chat/completions/boom", json={})
        assert r.status_code == 500 and r.json()["error"]["code"] == "internal_error"
        r = await http.post("/v2/boom", json={})
        assert r.status_code == 500 and "RuntimeError" in r.json()["error"]
