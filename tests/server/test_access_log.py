"""The predictor's access log: a line per request, but none for the probes and scrapes that poll it."""

from __future__ import annotations

import logging

import httpx
import pytest

from isvc.engine.client import Task
from isvc.server.app import ServerSettings, create_app
from tests.server.fake_engine import FakeEngine


async def test_requests_are_logged_and_successful_probes_and_scrapes_are_not(caplog: pytest.LogCaptureFixture) -> None:
    engine = FakeEngine(Task.TEXT_EMBEDDING)
    engine.load()
    settings = ServerSettings(model_name="enc", model_root="/models/enc", log_requests=True, exit_on_engine_death=False)
    transport = httpx.ASGITransport(app=create_app(settings, engine))
    with caplog.at_level(logging.INFO, logger="isvc.http_errors"):
        async with httpx.AsyncClient(transport=transport, base_url="http://isvc") as client:
            for path in ("/metrics", "/v2/health/ready", "/v2/health/live"):
                assert (await client.get(path)).status_code == 200
            assert (await client.post("/v1/embeddings", json={"model": "enc", "input": "hello"})).status_code == 200
            assert (await client.get("/v2/health/nope")).status_code == 404
    lines = [r.getMessage() for r in caplog.records if r.name == "isvc.http_errors"]
    assert [line.rsplit(" ", 1)[0] for line in lines] == ["POST /v1/embeddings 200", "GET /v2/health/nope 404"]
