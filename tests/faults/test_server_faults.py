"""Hostile and careless clients against a live `isvc serve`: large bodies, slow clients, early disconnects, probes.

One tiny server with short read deadlines (1 s for a header block, 2 s of body stall) and a
1 MiB body limit; its model allows long generations (``--max_model_len 32768``) so that an
abandoned request would keep the engine busy for a long time if it were not aborted.
"""

from __future__ import annotations

import json
import shutil
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import ServerProcess, metric

BODY_LIMIT = 1 << 20
HEADER_TIMEOUT_S = 1.0
BODY_TIMEOUT_S = 2.0
LONG = {"max_tokens": 30000, "ignore_eos": True, "temperature": 0}
JSON = {"content-type": "application/json"}


@pytest.fixture(scope="module")
def server(start_server: Callable[..., ServerProcess], tiny_model_dir: Path) -> ServerProcess:
    return start_server(
        [
            *("--model_dir", str(tiny_model_dir), "--model_name", "tiny", "--max_model_len", "32768"),
            *("--max_request_body_bytes", str(BODY_LIMIT)),
            *("--request_header_timeout_seconds", str(HEADER_TIMEOUT_S)),
            *("--request_body_timeout_seconds", str(BODY_TIMEOUT_S)),
        ]
    )


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise KeyError("VmRSS")


def served(server: ServerProcess) -> bool:
    r = httpx.post(
        f"{server.base_url}/v1/completions", json={"model": "tiny", "prompt": "Hello", "max_tokens": 2}, timeout=30
    )
    return r.status_code == 200 and len(r.json()["choices"]) == 1


# -- large bodies -------------------------------------------------------------------------------


def test_large_body_is_413_in_each_protocol_without_being_held(server: ServerProcess) -> None:
    big = b'{"model": "tiny", "prompt": "' + b"x" * (64 << 20) + b'"}'
    before = rss_bytes(server.proc.pid)
    with httpx.Client(base_url=server.base_url, timeout=60) as http:
        r = http.post("/v1/completions", content=big, headers={"content-type": "application/json"})
        assert r.status_code == 413
        error = r.json()["error"]
        assert error["code"] == "request_too_large" and str(BODY_LIMIT) in error["message"]

        def chunks() -> Iterator[bytes]:  # no content-length: the limit is crossed while reading
            yield b'{"inputs": [{"name": "text_input", "shape": [1], "datatype": "BYTES", "data": ["'
            for _ in range(64):
                yield b"x" * (1 << 20)
            yield b'"]}]}'

        r = http.post("/v2/models/tiny/infer", content=chunks(), headers={"content-type": "application/json"})
        assert r.status_code == 413
        assert set(r.json()) == {"error"} and str(BODY_LIMIT) in r.json()["error"]
    assert rss_bytes(server.proc.pid) - before < 32 << 20  # 128 MiB were sent; none of it was kept
    assert served(server)


def test_body_just_under_the_limit_is_read(server: ServerProcess) -> None:
    body = {"model": "tiny", "prompt": "Hello", "max_tokens": 2, "user": "x" * (BODY_LIMIT - 200)}
    r = httpx.post(f"{server.base_url}/v1/completions", json=body, timeout=60)
    assert r.status_code == 200, r.text


def test_a_large_body_being_checked_stalls_no_one(tiny_server: ServerProcess) -> None:
    """While a ~4 MiB JSON body (2 million numbers) is checked and served, health checks are answered at once."""
    numbers = b"0," * 2_000_000
    body = b'{"model": "tiny", "prompt": "Hello", "max_tokens": 1, "x": [' + numbers + b"0]}"
    assert len(body) < 4 << 20  # under the default limit: checked, not refused
    answered: list[int] = []

    def post_big() -> None:
        for _ in range(3):
            r = httpx.post(f"{tiny_server.base_url}/v1/completions", content=body, headers=JSON, timeout=60)
            answered.append(r.status_code)

    big = threading.Thread(target=post_big)
    with httpx.Client(base_url=tiny_server.base_url, timeout=10) as http:
        http.get("/v2/health/ready")  # connected before the big bodies start
        big.start()
        slowest = 0.0
        while big.is_alive():
            started = time.monotonic()
            assert http.get("/v2/health/ready").status_code == 200
            slowest = max(slowest, time.monotonic() - started)
            time.sleep(0.01)
    big.join()
    assert answered == [200, 200, 200]
    assert slowest < 0.5, f"a health check waited {slowest:.2f}s behind a large body"


def test_a_header_terminator_split_across_reads_is_no_431(server: ServerProcess) -> None:
    """The blank line ending the headers arrives in two writes, the second carrying > 32 KiB of body."""
    body = json.dumps({"model": "tiny", "prompt": "Hello", "max_tokens": 2, "user": "x" * (40 << 10)}).encode()
    head = (
        b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nConnection: close\r\n"
        b"Content-Length: %d\r\n" % len(body)
    )
    sock = _open(server, head)  # ends with one "\r\n" ...
    try:
        time.sleep(0.2)  # ... read by the server on its own
        sock.sendall(b"\r\n" + body)
        answer = _read_until_closed(sock)
    finally:
        sock.close()
    head_in, _, body_in = answer.partition(b"\r\n\r\n")
    assert head_in.startswith(b"HTTP/1.1 200"), answer[:300]
    assert json.loads(body_in)["choices"]


# -- slow clients -------------------------------------------------------------------------------


def _open(server: ServerProcess, data: bytes) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=30)
    if data:
        sock.sendall(data)
    return sock


def _read_until_closed(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (or 30 s pass: a failure)."""
    out = b""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        data = sock.recv(65536)
        if not data:
            return out
        out += data
    raise AssertionError(f"the server kept the connection open: {out[:200]!r}")


def test_slow_clients_are_cut_off_while_others_are_served(server: ServerProcess) -> None:
    half_header = b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: appli"
    short_body = (
        b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b'Content-Length: 1000\r\n\r\n{"model": "tiny", "pro'
    )
    v2_short_body = (
        b"POST /v2/models/tiny/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b'Content-Length: 1000\r\n\r\n{"inputs": ['
    )
    slow = (
        [_open(server, half_header) for _ in range(25)]
        + [_open(server, b"") for _ in range(10)]  # connected, said nothing
        + [_open(server, short_body) for _ in range(20)]
        + [_open(server, v2_short_body) for _ in range(5)]
    )
    try:
        assert served(server)  # while 60 slow connections are open
        answers = [_read_until_closed(sock) for sock in slow]
    finally:
        for sock in slow:
            sock.close()
    assert all(a == b"" for a in answers[:35])  # no header block: closed without an answer
    for answer in answers[35:55]:
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 408") and b"connection: close" in head.lower()
        assert json.loads(body)["error"]["code"] == "request_timeout"  # OpenAI envelope
    for answer in answers[55:]:
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 408") and "stalled" in json.loads(body)["error"]  # KServe body
    assert served(server)


def test_trickled_header_block_is_cut_at_the_deadline(server: ServerProcess) -> None:
    """Each byte resets nothing: the whole header block must arrive within the deadline."""
    sock = _open(server, b"GET /v2/health/ready HTTP/1.1\r\n")
    closed = threading.Event()

    def trickle() -> None:
        try:
            for _ in range(int(10 * HEADER_TIMEOUT_S / 0.2)):
                sock.sendall(b"X")
                time.sleep(0.2)
        except OSError:
            closed.set()

    thread = threading.Thread(target=trickle)
    thread.start()
    thread.join(timeout=30)
    sock.close()
    assert closed.is_set()


# -- client disconnects -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/completions", {"model": "tiny", "prompt": "Hello", **LONG}),
        ("/openai/v1/chat/completions", {"model": "tiny", "messages": [{"role": "user", "content": "Hi"}], **LONG}),
        ("/v1/models/tiny:predict", {"instances": ["Hello"], "parameters": {"max_tokens": 30000}}),
        (
            "/v2/models/tiny/infer",
            {
                "inputs": [{"name": "text_input", "shape": [1], "datatype": "BYTES", "data": ["Hello"]}],
                "parameters": {"max_tokens": 30000},
            },
        ),
    ],
    ids=["completions", "chat", "v1-predict", "v2-infer"],
)
def test_non_streaming_request_is_aborted_when_its_client_leaves(
    server: ServerProcess, path: str, body: dict[str, object]
) -> None:
    aborted = metric(server.base_url, "isvc_requests_aborted_total")
    with pytest.raises(httpx.ReadTimeout):  # like `curl -m 1`: the client gives up and closes
        httpx.post(f"{server.base_url}{path}", json=body, timeout=httpx.Timeout(30, read=1.0))
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if metric(server.base_url, "isvc_num_requests_running") == 0:
            break
        time.sleep(0.1)
    assert metric(server.base_url, "isvc_num_requests_running") == 0
    assert metric(server.base_url, "isvc_requests_aborted_total") == aborted + 1
    assert served(server)


# -- bind after load ------------------------------------------------------------------------------


def test_port_opens_only_once_the_model_is_ready(
    start_server: Callable[..., ServerProcess], tiny_model_dir: Path
) -> None:
    server = start_server(["--model_dir", str(tiny_model_dir), "--model_name", "tiny"], wait=False)
    refused_while_loading = 0
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert server.proc.poll() is None, server.output()
        try:
            socket.create_connection(("127.0.0.1", server.port), timeout=5).close()
            break
        except ConnectionRefusedError:
            refused_while_loading += "loading" in server.output()
            time.sleep(0.05)
    else:
        raise AssertionError(f"the port never opened:\n{server.output()}")
    assert "ready in" in server.output()  # warmed up before the first connect succeeded
    assert refused_while_loading > 0
    r = httpx.get(f"{server.base_url}/v2/health/ready", timeout=10)
    assert r.status_code == 200 and r.json() == {"ready": True}
    server.stop()


def test_a_model_that_cannot_load_exits_non_zero_with_the_cause(
    start_server: Callable[..., ServerProcess], tiny_model_dir: Path, tmp_path: Path
) -> None:
    broken = shutil.copytree(tiny_model_dir, tmp_path / "broken")
    (broken / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not a safetensors header")
    server = start_server(["--model_dir", str(broken), "--model_name", "broken"], wait=False)
    assert server.proc.wait(timeout=120) != 0
    output = server.output()
    assert "failed to load the model" in output
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", server.port), timeout=5).close()


@pytest.mark.parametrize("complete", [True, False], ids=["complete-block", "block-still-coming"])
def test_oversized_header_block_is_431_and_closed(server: ServerProcess, complete: bool) -> None:
    head_start = b"GET /v2/health/ready HTTP/1.1\r\nHost: x\r\nX-Big: "
    if complete:  # one send, terminated
        pieces = [head_start + b"a" * (64 << 10) + b"\r\n\r\n"]
    else:  # 1 KiB at a time, the last one just over the 32 KiB default, then nothing more
        filler = b"a" * ((32 << 10) + 512 - len(head_start))
        data = head_start + filler
        pieces = [data[i : i + 1024] for i in range(0, len(data), 1024)]
    sock = _open(server, b"")
    try:
        for piece in pieces:
            sock.sendall(piece)
            time.sleep(0 if complete else 0.01)
        head, _, body = _read_until_closed(sock).partition(b"\r\n\r\n")
    finally:
        sock.close()
    assert head.startswith(b"HTTP/1.1 431"), head
    assert "bytes" in json.loads(body)["error"]
    assert httpx.get(f"{server.base_url}/v2/health/ready", headers={"X-Ok": "a" * 8000}).status_code == 200
