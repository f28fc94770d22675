"""RouteTable (pure) and the gateway app over a static route source."""

from __future__ import annotations

import json
import random
from collections import Counter
from collections.abc import Callable

import httpx
import pytest

from isvc.errors import NotFound, NotReady
from isvc.gateway.app import create_app
from isvc.gateway.routing import AmbiguousModel, Route, RouteTable
from isvc.gateway.settings import GatewaySettings

ROUTES = [
    {"namespace": "demo", "name": "llama", "model_names": ["llama2"],
     "revisions": [{"name": "llama-predictor-00001", "percent": 80, "endpoints": ["http://127.0.0.1:1"]},
                   {"name": "llama-predictor-00002", "percent": 20, "endpoints": ["http://127.0.0.1:2", "http://127.0.0.1:3"]}]},
    {"namespace": "demo", "name": "cold", "model_names": ["cold"], "reason": "needs 1 GPU, 0 present",
     "revisions": [{"name": "cold-predictor-00001", "percent": 100, "endpoints": []}]},
]  # fmt: skip


def table() -> RouteTable:
    return RouteTable([Route.from_dict(r) for r in ROUTES], "example.com", rng=random.Random(0))


def test_hosts_paths_and_models_resolve_to_the_service() -> None:
    t = table()
    assert t.by_host("llama.demo.example.com").name == "llama"
    assert t.by_host("llama-predictor.demo.example.com").name == "llama"
    assert t.by_path("demo", "cold").name == "cold"
    assert t.by_model("llama2").name == "llama"
    with pytest.raises(NotFound, match="known hosts: cold.demo.example.com, llama.demo.example.com"):
        t.by_host("nope.demo.example.com")
    with pytest.raises(NotFound, match="known models: cold, llama2"):
        t.by_model("gpt-4")


def test_traffic_is_split_by_percent_and_round_robin_inside_a_revision() -> None:
    t = table()
    route = t.by_host("llama.demo.example.com")
    picks = [t.pick(route) for _ in range(2000)]
    share = Counter(p.revision for p in picks)["llama-predictor-00002"] / len(picks)
    assert 0.16 < share < 0.24
    eps = Counter(p.endpoint for p in picks if p.revision == "llama-predictor-00002")
    assert set(eps) == {"http://127.0.0.1:2", "http://127.0.0.1:3"} and abs(
        eps["http://127.0.0.1:2"] - eps["http://127.0.0.1:3"]
    ) < 0.2 * sum(eps.values())


def test_no_ready_revision_is_not_ready_with_the_reason() -> None:
    t = table()
    with pytest.raises(NotReady, match="needs 1 GPU, 0 present"):
        t.pick(t.by_path("demo", "cold"))


async def test_the_app_answers_503_with_retry_after_and_404_with_names(tmp_path) -> None:  # type: ignore[no-untyped-def]
    app = create_app(GatewaySettings(state_dir=tmp_path, retry_after_s=7), lambda: (1, ROUTES))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw") as c:
        r = await c.post("/v1/completions", json={"model": "cold", "prompt": "x"})
        assert r.status_code == 503 and r.headers["retry-after"] == "7"
        assert r.json()["error"]["code"] == "model_not_ready"
        r = await c.get("/v1/models", headers={"Host": "ghost.demo.example.com"})
        assert r.status_code == 404 and "llama.demo.example.com" in r.json()["error"]["message"]
        r = await c.post("/v1/completions", json={"prompt": "x"})
        assert r.status_code == 400 and r.json()["error"]["param"] == "model"
        models = (await c.get("/v1/models")).json()["data"]
        assert {(m["id"], m["ready"]) for m in models} == {("llama2", True), ("cold", False)}


async def test_api_keys_are_per_namespace(tmp_path) -> None:  # type: ignore[no-untyped-def]
    app = create_app(GatewaySettings(state_dir=tmp_path, api_keys={"demo": ["k1"]}), lambda: (1, ROUTES))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw") as c:
        r = await c.post("/serving/demo/cold/v1/completions", json={"prompt": "x"})
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
        # The 401 says what to do, and names nothing the caller could not name already.
        for refused in (
            r,
            await c.post("/v1/completions", json={"model": "cold", "prompt": "x"}),
            await c.post("/v2/models/cold/infer", json={}, headers={"Host": "cold.demo.example.com"}),
        ):
            assert refused.status_code == 401 and "demo" not in refused.text, refused.text
            error = refused.json()["error"]
            assert "needs an API key" in (error if isinstance(error, str) else error["message"])
        r = await c.post("/v1/completions", json={"model": "cold"}, headers={"Authorization": "Bearer wrong"})
        assert r.status_code == 401 and "does not open" in r.json()["error"]["message"] and "demo" not in r.text
        r = await c.post(
            "/serving/demo/cold/v1/completions", json={"prompt": "x"}, headers={"Authorization": "Bearer k1"}
        )
        assert r.status_code == 503  # past auth; the service itself is not ready
        assert (await c.get("/v1/models")).json()["data"] == []  # hidden without a key


SHARED = [
    *ROUTES,
    {"namespace": "open", "name": "chat", "model_names": ["shared"],
     "revisions": [{"name": "chat-predictor-00001", "percent": 100, "endpoints": ["http://127.0.0.1:4"]}]},
    {"namespace": "secret", "name": "chat", "model_names": ["shared"],
     "revisions": [{"name": "chat-predictor-00001", "percent": 100, "endpoints": ["http://127.0.0.1:5"]}]},
]  # fmt: skip


def only(*namespaces: str) -> Callable[[str], bool]:
    return lambda ns: ns in namespaces


def test_listings_in_errors_show_only_what_the_caller_may_see() -> None:
    t = RouteTable([Route.from_dict(r) for r in SHARED], "example.com")
    with pytest.raises(NotFound, match="known hosts: chat.open.example.com$") as info:
        t.by_host("nope.x.example.com", only("open"))
    assert "secret" not in info.value.message and "demo" not in info.value.message
    with pytest.raises(NotFound, match="known hosts: none"):
        t.by_host("nope.x.example.com", only())
    with pytest.raises(NotFound, match="known: open/chat$"):
        t.by_path("x", "y", only("open"))
    with pytest.raises(NotFound, match="known models: shared$"):
        t.by_model("gpt-4", only("open"))
    assert t.known(only()) == []


def test_a_model_name_served_twice_is_ambiguous_not_routed_by_chance() -> None:
    t = RouteTable([Route.from_dict(r) for r in SHARED], "example.com")
    for _ in range(5):
        with pytest.raises(AmbiguousModel, match="served by more than one InferenceService") as info:
            t.by_model("shared", only("open"))
        msg = info.value.message
        assert "chat.open.example.com" in msg and "/serving/open/chat/" in msg and "secret" not in msg
        assert "2" not in msg  # how many there are would tell a caller that hidden ones exist
        assert info.value.http_status == 400 and info.value.param == "model"
    with pytest.raises(AmbiguousModel) as info:
        t.by_model("shared", only())
    assert "open" not in info.value.message.replace("{namespace}", "")
    assert t.by_model("llama2").name == "llama"  # a name served once still routes


async def test_the_app_hides_protected_names_from_callers_without_a_key(tmp_path) -> None:  # type: ignore[no-untyped-def]
    keys = {"demo": ["k1"], "secret": ["k2"]}
    app = create_app(GatewaySettings(state_dir=tmp_path, api_keys=keys), lambda: (1, SHARED))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw") as c:
        assert (await c.get("/_isvc/healthz")).json() == {"status": "ok", "routes": ["open/chat"]}
        r = await c.get("/_isvc/healthz", headers={"Authorization": "Bearer k2"})
        assert r.json()["routes"] == ["open/chat", "secret/chat"]
        r = await c.get("/v1/models", headers={"Host": "ghost.demo.example.com"})
        assert r.status_code == 404
        assert "secret" not in r.text and "llama" not in r.text and "chat.open.example.com" in r.text
        r = await c.get("/nowhere")
        assert r.status_code == 404 and "demo" not in r.text and "secret" not in r.text
        statuses = set()
        for _ in range(4):
            r = await c.post("/v1/chat/completions", json={"model": "shared", "messages": []})
            statuses.add(r.status_code)
            assert r.json()["error"]["code"] == "ambiguous_model" and "secret" not in r.text
        assert statuses == {400}


async def test_errors_on_kserve_paths_use_the_kserve_body(tmp_path) -> None:  # type: ignore[no-untyped-def]
    app = create_app(GatewaySettings(state_dir=tmp_path, retry_after_s=3), lambda: (1, ROUTES))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw") as c:
        r = await c.post("/serving/demo/cold/v2/models/cold/infer", json={"inputs": []})
        assert r.status_code == 503 and r.headers["retry-after"] == "3"
        assert isinstance(r.json()["error"], str) and "needs 1 GPU" in r.json()["error"]
        r = await c.post("/v1/models/cold:predict", headers={"Host": "cold.demo.example.com"}, json={})
        assert r.status_code == 503 and isinstance(r.json()["error"], str)
        r = await c.post("/serving/demo/cold/v1/chat/completions", json={})
        assert r.json()["error"]["code"] == "model_not_ready"


async def test_model_routing_reads_a_bounded_prefix(tmp_path) -> None:  # type: ignore[no-untyped-def]
    app = create_app(GatewaySettings(state_dir=tmp_path, model_scan_bytes=4096), lambda: (1, ROUTES))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw") as c:
        late = json.dumps({"messages": [{"role": "user", "content": "x" * 10_000}], "model": "cold"})
        r = await c.post("/v1/chat/completions", content=late)
        assert r.status_code == 400 and r.json()["error"]["param"] == "model"
        assert "first 4096 bytes" in r.json()["error"]["message"]
        early = json.dumps({"model": "cold", "messages": [{"role": "user", "content": "x" * 10_000}]})
        r = await c.post("/v1/chat/completions", content=early)
        assert r.status_code == 503  # routed (the service is not ready)
        deep = '{"a": ' + "[" * 100_000 + "]" * 100_000 + "}"
        r = await c.post("/v1/chat/completions", content=deep)
        assert r.status_code == 400 and r.json()["error"]["param"] == "model"
