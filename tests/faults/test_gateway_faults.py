"""Faults at the gateway, with a real `isvc up` and a real `isvc serve` predictor of the tiny model.

A predictor killed with -9 mid-stream and mid-request, clients that send too much or too
slowly, and names that a caller without a key must not learn. The predictor is frozen
with SIGSTOP before the SIGKILL where the test needs the request to be in flight at the
kill (the tiny model answers faster than a test can aim a signal).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import openai
import pytest

from tests.controlplane.cp_helpers import ControlPlane, fake_container
from tests.controlplane.cp_helpers import start as start_up
from tests.controlplane.cp_helpers import stop as stop_up

TINY = """\
apiVersion: serving.kserve.io/v1beta1
kind: InferenceService
metadata: {name: tiny, namespace: default}
spec:
  predictor:
    model:
      modelFormat: {name: huggingface}
      storageUri: pvc://models/tiny
      args: ["--model_name=tiny"]
"""
HOST = {"Host": "tiny.default.example.com"}


@pytest.fixture
def start_control_plane(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tiny_model_dir: Path
) -> Iterator[Callable[..., ControlPlane]]:
    pvc = tmp_path / "pvc"
    (pvc / "models").mkdir(parents=True)
    (pvc / "models" / "tiny").symlink_to(tiny_model_dir, target_is_directory=True)
    monkeypatch.setenv("ISVC_PVC_ROOT", str(pvc))
    started: list[ControlPlane] = []

    def start(*extra: str) -> ControlPlane:
        sub = tmp_path / f"cp{len(started)}"
        sub.mkdir()
        started.append(start_up(sub, *extra))
        return started[-1]

    yield start
    for cp in started:
        stop_up(cp)


@pytest.fixture
def tiny(start_control_plane: Callable[..., ControlPlane]) -> ControlPlane:
    cp = start_control_plane()
    assert cp.apply(TINY) == 0
    cp.wait_ready("tiny", timeout_s=90)
    return cp


def predictor_pid(cp: ControlPlane) -> int:
    (rep,) = cp.replicas("tiny")
    return int(rep.pid or 0)


def wait_served_again(cp: ControlPlane, killed_at: float) -> float:
    """Seconds from the kill to the first completion answered through the gateway again."""
    body = {"model": "tiny", "prompt": "hi", "max_tokens": 2}
    while time.monotonic() - killed_at < 10:
        try:
            if httpx.post(f"{cp.url}/v1/completions", json=body, timeout=5).status_code == 200:
                return time.monotonic() - killed_at
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"not served again within 10 s of the kill; log:\n{cp.log_tail()}")


def test_kill_9_mid_stream_ends_the_stream_with_an_error_event_and_done(tiny: ControlPlane) -> None:
    cp = tiny
    pid = predictor_pid(cp)
    body = {"model": "tiny", "prompt": "once upon", "max_tokens": 200, "ignore_eos": True, "stream": True}
    with httpx.stream("POST", f"{cp.url}/v1/completions", json=body, timeout=30) as s:
        assert s.status_code == 200
        lines = s.iter_lines()
        first = next(line for line in lines if line.startswith("data: "))
        assert json.loads(first[6:])["choices"]
        os.kill(pid, signal.SIGSTOP)  # in flight for sure, then a real kill -9
        os.kill(pid, signal.SIGKILL)
        killed_at = time.monotonic()
        events = [line for line in lines if line.startswith("data: ")]
    assert events[-1] == "data: [DONE]"
    error = json.loads(events[-2][6:])["error"]
    assert error["code"] == "upstream_failed" and "mid-stream" in error["message"]
    assert all("choices" in json.loads(e[6:]) for e in events[:-2])  # no event was cut in half
    print(f"\nkill -9 mid-stream -> served again after {wait_served_again(cp, killed_at):.1f}s")


def test_the_openai_client_sees_a_mid_stream_kill_as_an_api_error(tiny: ControlPlane) -> None:
    cp = tiny
    pid = predictor_pid(cp)
    client = openai.OpenAI(base_url=f"{cp.url}/v1", api_key="none", max_retries=0)
    stream = client.completions.create(
        model="tiny", prompt="x", max_tokens=200, stream=True, extra_body={"ignore_eos": True}
    )
    chunks = iter(stream)
    next(chunks)
    os.kill(pid, signal.SIGSTOP)
    os.kill(pid, signal.SIGKILL)
    with pytest.raises(openai.APIError, match="mid-stream"):
        for _ in chunks:
            pass


def test_kill_9_mid_request_is_a_502_in_each_protocol_and_service_returns(tiny: ControlPlane) -> None:
    cp = tiny
    pid = predictor_pid(cp)
    os.kill(pid, signal.SIGSTOP)  # requests sent now are in flight when the kill lands
    answers: dict[str, httpx.Response] = {}

    def call(name: str, path: str, body: dict[str, object]) -> None:
        answers[name] = httpx.post(f"{cp.url}{path}", headers=HOST, json=body, timeout=30)

    calls = [
        threading.Thread(target=call, args=("openai", "/v1/completions", {"model": "tiny", "prompt": "x"})),
        threading.Thread(target=call, args=("v2", "/v2/models/tiny/infer", {"inputs": []})),
    ]
    for t in calls:
        t.start()
    time.sleep(1.0)  # both requests reach the frozen predictor
    os.kill(pid, signal.SIGKILL)
    killed_at = time.monotonic()
    for t in calls:
        t.join(30)
    r = answers["openai"]
    assert r.status_code == 502 and r.headers["retry-after"]
    assert r.json()["error"]["code"] == "upstream_failed" and "failed before answering" in r.json()["error"]["message"]
    r = answers["v2"]
    assert r.status_code == 502 and r.headers["retry-after"] and isinstance(r.json()["error"], str)
    served_after = wait_served_again(cp, killed_at)
    print(f"\nkill -9 mid-request -> served again after {served_after:.1f}s")


def recv_all(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes, or until a complete JSON answer is in."""
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        length = next(
            (int(h.split(b":")[1]) for h in head.split(b"\r\n") if h.lower().startswith(b"content-length")), -1
        )
        if length >= 0 and len(body) >= length:
            break
    return data


def gateway_rss(cp: ControlPlane) -> int:
    for line in Path(f"/proc/{cp.proc.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def test_bodies_over_the_limit_get_413_and_bodies_under_it_stream_through(
    start_control_plane: Callable[..., ControlPlane],
) -> None:
    cp = start_control_plane("--max-body-bytes", str(64 << 20))
    assert cp.apply(fake_container("sink", "--model_name", "sink")) == 0
    cp.wait_ready("sink")
    before = gateway_rss(cp)
    # Declared too large: refused before a byte is read, in the OpenAI envelope.
    with socket.create_connection(("127.0.0.1", cp.port), timeout=10) as sock:
        sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\ncontent-length: %d\r\n\r\n{" % (300 << 20))
        head, _, body = recv_all(sock).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413")
    assert json.loads(body)["error"]["code"] == "request_too_large"
    assert str(64 << 20) in json.loads(body)["error"]["message"]

    # Chunked and too large: cut at the limit, not held.
    def chunks(total: int) -> Iterator[bytes]:
        piece = b"x" * (1 << 20)
        yield b'{"model": "sink", "prompt": "'
        for _ in range(total >> 20):
            yield piece
        yield b'"}'

    r = httpx.post(f"{cp.url}/serving/default/sink/v1/completions", content=chunks(100 << 20), timeout=60)
    assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"
    # Under the limit: 48 MiB reach the predictor through the gateway, streamed, never held whole.
    r = httpx.post(f"{cp.url}/v1/completions", content=chunks(48 << 20), timeout=60)
    assert r.status_code == 200, r.text
    grown = gateway_rss(cp) - before
    assert grown < 24 << 20, f"the gateway grew by {grown >> 20} MiB"


def test_slow_clients_are_closed(start_control_plane: Callable[..., ControlPlane]) -> None:
    cp = start_control_plane("--header-timeout", "1", "--body-timeout", "1")
    half_header = socket.create_connection(("127.0.0.1", cp.port))
    half_header.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\n")
    short_body = socket.create_connection(("127.0.0.1", cp.port))
    short_body.sendall(b'POST /v1/completions HTTP/1.1\r\nHost: x\r\ncontent-length: 100\r\n\r\n{"mo')
    for s in (half_header, short_body):
        s.settimeout(10)
    assert half_header.recv(1024) == b""  # closed without an answer
    answer = recv_all(short_body)
    assert answer.startswith(b"HTTP/1.1 408") and b"request_timeout" in answer
    half_header.close()
    short_body.close()


def test_names_stay_hidden_without_a_key_and_a_shared_model_is_ambiguous(
    start_control_plane: Callable[..., ControlPlane],
) -> None:
    cp = start_control_plane("--api-key", "secure=s3cret")
    assert cp.apply(fake_container("chat", "--model_name", "shared", ns="secure")) == 0
    assert cp.apply(fake_container("chat", "--model_name", "shared", ns="default")) == 0
    cp.wait_ready("chat", "secure")
    cp.wait_ready("chat")
    assert httpx.get(f"{cp.url}/_isvc/healthz").json()["routes"] == ["default/chat"]
    keyed = {"Authorization": "Bearer s3cret"}
    assert httpx.get(f"{cp.url}/_isvc/healthz", headers=keyed).json()["routes"] == ["default/chat", "secure/chat"]
    r = httpx.get(f"{cp.url}/anything", headers={"Host": "ghost.other.example.com"})
    assert r.status_code == 404 and "secure" not in r.text and "chat.default.example.com" in r.text
    body = {"model": "shared", "prompt": "x", "max_tokens": 1}
    for _ in range(6):  # the same answer every time, not 401 one time and 200 the next
        r = httpx.post(f"{cp.url}/v1/completions", json=body)
        assert r.status_code == 400 and r.json()["error"]["code"] == "ambiguous_model"
        assert "secure" not in r.text and "/serving/default/chat/" in r.text
    r = httpx.post(f"{cp.url}/v1/completions", json=body, headers=keyed)
    assert r.status_code == 400 and "/serving/secure/chat/" in r.text
    r = httpx.post(f"{cp.url}/serving/default/chat/v1/completions", json=body)
    assert r.status_code == 200
