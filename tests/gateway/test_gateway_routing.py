"""RouteTable (pure) and the gateway app over a static route source."""

from __future__ import annotations

import random
from collections import Counter

import httpx
import pytest

from isvc.errors import NotFound, NotReady
from isvc.gateway.app import create_app
from isvc.gateway.routing import Route, RouteTable
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
        r = await c.post(
            "/serving/demo/cold/v1/completions", json={"prompt": "x"}, headers={"Authorization": "Bearer k1"}
        )
        assert r.status_code == 503  # past auth; the service itself is not ready
        assert (await c.get("/v1/models")).json()["data"] == []  # hidden without a key
