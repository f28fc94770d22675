"""The web console of `isvc up` over HTTP (httpx against a real `isvc up`); the browser tests drive the same pages."""

from __future__ import annotations

import json
import re
import stat
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
from cp_helpers import NS, ControlPlane, fake_container, free_port, seed_1_on_cpu, stock_pvc

from isvc.console import auth
from isvc.console.app import create_console
from isvc.console.metrics import parse, quantile
from isvc.controlplane import process
from isvc.controlplane.store import Store
from isvc.node import cli as node_cli

CONSOLE = "/_isvc/console"


def api_apply(cp: ControlPlane, text: str, *, dry_run: bool, headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.post(f"{cp.url}{CONSOLE}/api/apply", json={"manifest": text, "dry_run": dry_run}, headers=headers,
                      timeout=30)  # fmt: skip


def services_table(cp: ControlPlane) -> dict[str, str]:
    """name -> the READY cell's text, read from the services page's table."""
    html = httpx.get(f"{cp.url}{CONSOLE}/", timeout=10).text
    table = html[html.index('<table id="services">') :]
    rows = re.findall(r'<tr data-service="[^/"]+/([^"]+)"[^>]*>.*?data-ready="[^"]*"[^>]*>([^<]*)</td>', table, re.S)
    return dict(rows)


def sse_lines(cp: ControlPlane, path: str, until: str, timeout_s: float = 20.0) -> list[str]:
    """The ``data:`` lines of an SSE stream, read until one contains ``until``."""
    got: list[str] = []
    deadline = time.monotonic() + timeout_s
    with httpx.stream("GET", f"{cp.url}{path}", timeout=timeout_s) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        for line in r.iter_lines():
            if line.startswith("data: "):
                got.append(json.loads(line[6:]))
                if until in got[-1]:
                    return got
            assert time.monotonic() < deadline, f"no {until!r} in {got}"
    raise AssertionError(f"stream ended without {until!r}: {got}")


def test_console_is_served_on_loopback_without_a_key(control_plane: ControlPlane) -> None:
    cp = control_plane
    r = httpx.get(f"{cp.url}/", timeout=10)
    assert r.status_code == 307 and r.headers["location"] == f"{CONSOLE}/"
    assert httpx.get(f"{cp.url}{CONSOLE}", timeout=10).headers["location"] == f"{CONSOLE}/"
    pages = {"/": "Services", "/apply": "Apply", "/playground": "Playground", "/metrics": "Metrics"}
    for path, title in pages.items():
        html = httpx.get(f"{cp.url}{CONSOLE}{path}", timeout=10).text
        assert re.search(r"<title>isvc console · " + title, html), html[:300]
        nav = html[html.index("<nav") : html.index("</nav>")]
        assert re.findall(r">(\w+)</a>", nav) == ["Services", "Apply", "Playground", "Metrics"]
        assert "https://" not in html  # nothing from a CDN
    apply_html = httpx.get(f"{cp.url}{CONSOLE}/apply", timeout=10).text
    assert '<label for="manifest">Manifest</label>' in apply_html and '<textarea id="manifest"' in apply_html
    assert ">Dry run</button>" in apply_html and ">Apply</button>" in apply_html and 'role="alert"' in apply_html
    for asset in ("js/core.js", "js/services.js", "js/playground.js", "console.css"):
        assert httpx.get(f"{cp.url}{CONSOLE}/static/{asset}", timeout=10).status_code == 200
    # a service Host still goes to the service, not the console
    r = httpx.get(f"{cp.url}/", headers={"Host": "nope.default.example.com"}, timeout=10)
    assert r.status_code == 404 and "no InferenceService" in r.text


def test_apply_dry_run_field_errors_logs_and_delete(control_plane: ControlPlane) -> None:
    cp = control_plane
    bad = fake_container("fake1").replace("containers:", "containerz:")
    r = api_apply(cp, bad, dry_run=True)
    assert r.status_code == 422, r.text
    assert any(p["path"].startswith("spec.predictor") for p in r.json()["problems"]), r.json()
    text = fake_container("fake1")
    r = api_apply(cp, text, dry_run=True)
    assert r.status_code == 200 and r.json()["lines"][0].endswith("fake1 validated (dry run)"), r.text
    assert "fake1" not in services_table(cp)  # a dry run changes nothing
    r = api_apply(cp, text, dry_run=False)
    assert r.json()["lines"] == ["inferenceservice.serving.kserve.io/fake1 created"], r.text
    cp.wait(lambda: services_table(cp).get("fake1") == "True", 30, "READY True in the services table")
    # the live stream carries the same list
    with httpx.stream("GET", f"{cp.url}{CONSOLE}/api/stream", timeout=10) as s:
        line = next(line for line in s.iter_lines() if line.startswith("data: "))
    (svc,) = json.loads(line[6:])
    assert svc["name"] == "fake1" and svc["ready"] == "True" and svc["traffic"] == {"fake1-predictor-00001": 100}
    detail = httpx.get(f"{cp.url}{CONSOLE}/services/default/fake1", timeout=10).text
    replica = cp.replicas("fake1")[0]
    assert f'<td class="wide">{replica.pid}</td>' in detail and f'<td class="wide">{replica.port}</td>' in detail
    assert "RevisionCreated" in detail
    logs = re.search(r'href="([^"]+)">Logs</a>', detail)
    assert logs and logs.group(1) == f"{CONSOLE}/logs/default/fake1-predictor-00001/0"
    assert 'id="log"' in httpx.get(f"{cp.url}{logs.group(1)}", timeout=10).text
    api = f"{CONSOLE}/api/logs/default/fake1-predictor-00001/0"
    assert any("fake predictor fake on port" in line for line in sse_lines(cp, api, "fake predictor"))
    # following: a line written after the stream opened arrives
    log_file = Path(replica.log or "")
    with httpx.stream("GET", f"{cp.url}{api}?tail=1", timeout=20) as s:
        lines = s.iter_lines()
        assert next(lines).startswith("id: ") and next(lines).startswith("data: ")
        with open(log_file, "a") as f:
            f.write("a line written later\n")
        deadline = time.monotonic() + 20
        for line in lines:  # keepalive comments come every 15 s, so this loop cannot hang
            if "a line written later" in line:
                break
            assert time.monotonic() < deadline, "the followed log did not get the new line"
    # delete, and the predictor goes
    r = httpx.post(f"{cp.url}{CONSOLE}/api/delete", json={"namespace": "default", "name": "fake1"}, timeout=10)
    assert r.status_code == 200 and r.json()["deleted"] == "InferenceService default/fake1"
    cp.wait(lambda: not cp.replicas("fake1") and "fake1" not in services_table(cp), 30, "fake1 gone")
    r = httpx.post(f"{cp.url}{CONSOLE}/api/delete", json={"namespace": "default", "name": "fake1"}, timeout=10)
    assert r.status_code == 404
    # state changes take JSON only (a cross-site form cannot post one)
    r = httpx.post(f"{cp.url}{CONSOLE}/api/apply", data={"manifest": text}, timeout=10)
    assert r.status_code == 415


def test_an_open_console_refuses_other_hosts_and_cross_site_changes(control_plane: ControlPlane) -> None:
    """DNS rebinding: a page at evil.example re-resolved to 127.0.0.1 sends its own Host, and is refused."""
    cp = control_plane
    text = fake_container("fake1")
    for path in ("/", "/apply", "/api/services", "/static/js/core.js"):
        r = httpx.get(f"{cp.url}{CONSOLE}{path}", headers={"Host": "evil.example"}, timeout=10)
        assert r.status_code == 403 and "loopback Host" in r.json()["error"], (path, r.text)
    r = api_apply(cp, text, dry_run=False, headers={"Host": "evil.example:8080"})
    assert r.status_code == 403
    for host in ("localhost", f"localhost:{cp.port}", f"127.0.0.1:{cp.port}", f"[::1]:{cp.port}"):
        assert httpx.get(f"{cp.url}{CONSOLE}/", headers={"Host": host}, timeout=10).status_code == 200, host
    # a state change from another origin, or one the browser marks cross-site, is refused
    for headers in ({"Origin": "http://evil.example"}, {"Origin": "null"},
                    {"Origin": f"http://localhost:{cp.port}"}, {"Sec-Fetch-Site": "cross-site"}):  # fmt: skip
        r = api_apply(cp, text, dry_run=False, headers=headers)
        assert r.status_code == 403 and "refused" in r.json()["error"], (headers, r.text)
        r = httpx.post(f"{cp.url}{CONSOLE}/api/delete", json={"namespace": "default", "name": "x"}, headers=headers,
                       timeout=10)  # fmt: skip
        assert r.status_code == 403, headers
    assert cp.store().resources() == []
    # what the console's own page sends passes
    same = {"Origin": cp.url, "Sec-Fetch-Site": "same-origin"}
    r = api_apply(cp, text, dry_run=True, headers=same)
    assert r.status_code == 200 and r.json()["lines"][0].endswith("fake1 validated (dry run)"), r.text


def sse_events(cp: ControlPlane, path: str, headers: dict[str, str] | None = None) -> list[tuple[int, str]]:
    """(id, line) of each event of a log stream that does not follow."""
    with httpx.stream("GET", f"{cp.url}{path}", headers=headers, timeout=10) as r:
        assert r.status_code == 200, r.read()
        text = r.read().decode()
    events = [dict(line.split(": ", 1) for line in block.splitlines()) for block in text.split("\n\n") if block]
    return [(int(e["id"]), json.loads(e["data"])) for e in events]


def test_logs_tail_is_checked_unknown_replicas_are_404_and_a_reconnect_resumes(control_plane: ControlPlane) -> None:
    cp = control_plane
    log_dir = cp.state_dir / "logs" / "default"  # the log of a deleted replica, looked up by name
    log_dir.mkdir(parents=True, exist_ok=True)
    (log_dir / "gone-predictor-00001-0.log").write_text("".join(f"line {i}\n" for i in range(10)) + "partial")
    api = f"{CONSOLE}/api/logs/default/gone-predictor-00001/0"
    for bad in ("abc", "-1", "1.5", ""):
        r = httpx.get(f"{cp.url}{api}?tail={bad}&follow=0", timeout=10)
        assert r.status_code == 422 and r.json()["error"].startswith("tail: a whole number"), (bad, r.text)
    events = sse_events(cp, f"{api}?tail=3&follow=0")
    assert [line for _, line in events] == ["line 7", "line 8", "line 9"]  # the partial line waits for its end
    assert [i for i, _ in events] == [len("".join(f"line {i}\n" for i in range(n + 1))) for n in (7, 8, 9)]
    assert len(sse_events(cp, f"{api}?tail=999999&follow=0")) == 10  # clamped to 5000, not an error
    assert sse_events(cp, f"{api}?tail=0&follow=0") == []
    # a reconnect sends Last-Event-ID (the offset of the last line it got): it gets the lines after, once
    resumed = sse_events(cp, f"{api}?follow=0", headers={"Last-Event-ID": str(events[1][0])})
    assert resumed == [events[2]]
    # an unknown replica: 404 with a message, for the page and the API
    for path in (
        f"{CONSOLE}/logs/default/nope-predictor-00001/0",
        f"{CONSOLE}/api/logs/default/nope-predictor-00001/0",
    ):
        r = httpx.get(f"{cp.url}{path}", timeout=10)
        assert r.status_code == 404 and "replica 0 of revision default/nope-predictor-00001" in r.text, path
    assert httpx.get(f"{cp.url}{CONSOLE}/logs/default/gone-predictor-00001/0", timeout=10).status_code == 200


def test_console_responses_carry_security_headers(control_plane: ControlPlane) -> None:
    cp = control_plane
    for path in ("/", "/apply", "/playground", "/api/services", "/static/js/core.js", "/services/default/nope"):
        h = httpx.get(f"{cp.url}{CONSOLE}{path}", timeout=10).headers
        assert h["content-security-policy"] == "default-src 'self'; frame-ancestors 'none'", path
        assert h["x-frame-options"] == "DENY" and h["referrer-policy"] == "same-origin", path
    r = httpx.get(f"{cp.url}{CONSOLE}/", headers={"Host": "evil.example"}, timeout=10)
    assert r.headers["x-frame-options"] == "DENY"
    # nothing inline for the policy to block
    for path in ("/", "/apply", "/playground", "/metrics"):
        html = httpx.get(f"{cp.url}{CONSOLE}{path}", timeout=10).text
        assert re.findall(r"<script(?![^>]*\bsrc=)[^>]*>", html) == [] and "<style" not in html, path
        assert not re.search(r"\s(style|on[a-z]+)=", html), path


def test_off_loopback_the_console_needs_the_admin_key(start_control_plane: Callable[..., ControlPlane]) -> None:
    cp = start_control_plane("--host", "0.0.0.0", "--admin-key", "s3cret", "--api-key", "*=nskey")
    for path in ("/", "/apply", "/api/services", "/api/logs/default/x-predictor-00001/0"):
        assert httpx.get(f"{cp.url}{CONSOLE}{path}", timeout=10).status_code == 401, path
        r = httpx.get(f"{cp.url}{CONSOLE}{path}", headers={"Authorization": "Bearer nskey"}, timeout=10)
        assert r.status_code == 401, path  # a namespace key never opens the console
    r = api_apply(cp, fake_container("fake1"), dry_run=False)
    assert r.status_code == 401 and "admin key" in r.json()["error"]
    assert cp.store().resources() == []
    ok = {"Authorization": "Bearer s3cret"}
    assert httpx.get(f"{cp.url}{CONSOLE}/api/services", headers=ok, timeout=10).json() == []
    assert api_apply(cp, fake_container("fake1"), dry_run=True, headers=ok).status_code == 200
    # the login form sets a cookie the pages then accept, for 12 hours; Sign out clears it (from another client
    # address: the four namespace-key tries above count as wrong keys, and a fifth would lock this one out)
    with httpx.Client(base_url=cp.url, timeout=10, transport=httpx.HTTPTransport(local_address="127.0.0.2")) as browser:
        assert browser.post(f"{CONSOLE}/login", data={"key": "wrong"}).status_code == 401
        r = browser.post(f"{CONSOLE}/login", data={"key": "s3cret"})
        assert r.status_code == 303 and browser.cookies["isvc_admin"] not in ("", "s3cret")  # not the key itself
        attrs = {a.strip().split("=")[0].lower(): a.strip() for a in r.headers["set-cookie"].split(";")[1:]}
        assert attrs["max-age"] == f"Max-Age={12 * 3600}" and attrs["path"] == f"Path={CONSOLE}", attrs
        assert "httponly" in attrs and attrs["samesite"].lower() == "samesite=strict", attrs
        assert "secure" not in attrs, attrs  # this request came over plain http
        assert browser.get(f"{CONSOLE}/").status_code == 200
        r = browser.post(f"{CONSOLE}/logout")
        assert r.status_code == 303 and r.headers["location"] == f"{CONSOLE}/login"
        assert "isvc_admin" not in browser.cookies and browser.get(f"{CONSOLE}/").status_code == 401
    # the cookie is an HMAC of its issue time: an old one, or one whose time was changed, opens nothing
    now = int(time.time())
    fresh = auth.cookie_value("s3cret", now)
    for cookie, status in ((fresh, 200), (auth.cookie_value("s3cret", now - 12 * 3600 - 5), 401),
                           (f"{now + 3600}.{fresh.split('.')[1]}", 401), (auth.cookie_value("other", now), 401),
                           (fresh.split(".")[1], 401)):  # fmt: skip
        r = httpx.get(f"{cp.url}{CONSOLE}/api/services", cookies={"isvc_admin": cookie}, timeout=10)
        assert r.status_code == status, (cookie, r.text)
    assert httpx.get(f"{cp.url}/_isvc/healthz", timeout=10).status_code == 200  # the gateway itself is unchanged


def test_wrong_admin_keys_from_one_address_get_429(start_control_plane: Callable[..., ControlPlane]) -> None:
    """Five wrong keys a minute from one address (Bearer or the form), then 429 with Retry-After, even for the
    right key (else the answers would still tell right from wrong); other addresses are unaffected."""
    cp = start_control_plane("--admin-key", "s3cret")
    api, login = f"{CONSOLE}/api/services", f"{CONSOLE}/login"
    right = {"Authorization": "Bearer s3cret"}
    with httpx.Client(base_url=cp.url, timeout=10) as client:
        assert client.get(api).status_code == 401  # no key at all is no guess: not counted
        for i in range(5):
            assert client.get(api, headers={"Authorization": f"Bearer wrong-{i}"}).status_code == 401
        for r in (client.get(api, headers=right), client.get(api, headers={"Authorization": "Bearer wrong"})):
            assert r.status_code == 429, r.text
            assert 1 <= int(r.headers["retry-after"]) <= 60
            assert r.json()["error"].startswith("Too many wrong admin keys (at most 5 from one address")
        r = client.post(login, data={"key": "s3cret"})
        assert r.status_code == 429 and 1 <= int(r.headers["retry-after"]) <= 60
        assert re.search(
            r'role="alert">Too many wrong admin keys \(at most 5 from one address .*try again in \d+ s', r.text
        )
    # the form's wrong keys count the same, from another address, which the first one's count does not touch
    other = httpx.HTTPTransport(local_address="127.0.0.2")
    with httpx.Client(base_url=cp.url, timeout=10, transport=other) as client:
        assert client.get(api, headers=right).status_code == 200
        for _ in range(5):
            assert client.post(login, data={"key": "wrong"}).status_code == 401
        r = client.post(login, data={"key": "s3cret"})
        assert r.status_code == 429 and "Too many wrong admin keys" in r.text
        assert client.get(api, headers=right).status_code == 429


def test_the_wrong_key_limit_lifts_after_its_window_and_https_gets_a_secure_cookie(tmp_path: Path) -> None:
    """The console app itself (a short window, so the test need not wait a minute), over https."""
    from starlette.applications import Starlette
    from starlette.routing import Mount
    from starlette.testclient import TestClient

    console = create_console(tmp_path, admin_key="s3cret", throttle=auth.Throttle(limit=2, window_s=1.0))
    app = Starlette(routes=[Mount(CONSOLE, app=console)])
    with TestClient(app, base_url="https://testserver", follow_redirects=False) as client:
        for _ in range(2):
            assert client.post(f"{CONSOLE}/login", data={"key": "wrong"}).status_code == 401
        r = client.post(f"{CONSOLE}/login", data={"key": "s3cret"})
        assert r.status_code == 429 and r.headers["retry-after"] == "1"
        time.sleep(1.05)
        r = client.post(f"{CONSOLE}/login", data={"key": "s3cret"})
        assert r.status_code == 303, r.text
        assert "secure" in [a.strip().lower() for a in r.headers["set-cookie"].split(";")]
        assert client.get(f"{CONSOLE}/api/services").status_code == 200  # the cookie opens it


def test_wrong_keys_from_many_addresses_together_are_capped() -> None:
    """A local process can name any address in X-Forwarded-For (uvicorn trusts it from 127.0.0.1), so the
    addresses' misses together are bounded too: a new address is refused once the total is reached."""
    throttle = auth.Throttle(limit=5, window_s=60.0, total_limit=6)
    for i in range(6):
        assert throttle.retry_after(f"10.0.0.{i}") is None
        throttle.failed(f"10.0.0.{i}")
    wait = throttle.retry_after("10.0.0.99")
    assert wait is not None and 55 <= wait <= 60
    assert auth.Throttle(limit=5, total_limit=50).retry_after("10.0.0.1") is None


def test_a_full_throttle_table_forgets_addresses_but_keeps_counting() -> None:
    """The table of addresses is bounded: a new address past it pushes out quiet ones, else the oldest, and its
    miss still counts (here and in the total)."""
    throttle = auth.Throttle(limit=1, window_s=0.3, max_clients=3, total_limit=4)
    throttle.failed("10.0.0.1")
    throttle.failed("10.0.0.2")
    time.sleep(0.35)  # both quiet now
    throttle.failed("10.0.0.3")  # the table {1, 2, total} is full: the quiet ones go
    throttle.failed("10.0.0.4")
    throttle.failed("10.0.0.5")  # {3, 4, total} is full of recent misses: the oldest address, 3, goes
    assert throttle.retry_after("10.0.0.3") is None
    assert throttle.retry_after("10.0.0.4") is not None and throttle.retry_after("10.0.0.5") is not None
    throttle.failed("10.0.0.6")  # the 4th miss in the window: the total, never pushed out, binds every address
    assert throttle.retry_after("10.0.0.3") is not None


def test_isvc_up_detached_keeps_the_admin_key_out_of_ps(tmp_path: Path) -> None:
    """`isvc up -d --admin-key K`: the background process gets K by its environment (which only this user can
    read), not its argv (which `ps` shows everyone); the console still wants K."""
    state, port, key = tmp_path / "state", free_port(), "detached-admin-key-for-tests"
    r = subprocess.run([sys.executable, "-m", "isvc", "up", "-d", f"--admin-key={key}", "--port", str(port),
                        "--state-dir", str(state)], capture_output=True, text=True, timeout=120)  # fmt: skip
    try:
        assert r.returncode == 0, r.stdout + r.stderr
        pid = process.running_pid(state)
        assert pid is not None
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        assert b"up" in cmdline and not any(key.encode() in arg for arg in cmdline), cmdline
        # nor does the controller (or a predictor it starts) inherit it
        deadline = time.monotonic() + 20
        while not (controller := int(Store(state).get_meta("controller_pid") or 0)) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert controller and key.encode() not in Path(f"/proc/{controller}/environ").read_bytes()
        url = f"http://127.0.0.1:{port}{CONSOLE}/api/services"
        assert httpx.get(url, timeout=10).status_code == 401
        assert httpx.get(url, headers={"Authorization": f"Bearer {key}"}, timeout=10).status_code == 200
    finally:
        assert node_cli.down(["--state-dir", str(state), "--timeout", "20"]) == 0


def test_a_key_file_is_made_and_printed_once_off_loopback(start_control_plane: Callable[..., ControlPlane]) -> None:
    cp = start_control_plane("--host", "0.0.0.0")
    key_file = cp.state_dir / "admin.key"
    key = key_file.read_text().strip()
    assert len(key) >= 24 and stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert key in (cp.tmp / "up.log").read_text()
    assert httpx.get(f"{cp.url}{CONSOLE}/api/services", timeout=10).status_code == 401
    r = httpx.get(f"{cp.url}{CONSOLE}/api/services", headers={"Authorization": f"Bearer {key}"}, timeout=10)
    assert r.status_code == 200


def test_seed_manifest_applied_from_the_console_answers_the_playground(
    control_plane: ControlPlane, pvc_root: Path, tiny_model_dir: Path
) -> None:
    cp = control_plane
    stock_pvc(pvc_root, tiny_model_dir)
    text = seed_1_on_cpu()
    r = api_apply(cp, text, dry_run=True)
    assert r.status_code == 200 and "model name(s): llama2" in "\n".join(r.json()["lines"]), r.text
    assert api_apply(cp, text, dry_run=False).status_code == 200
    cp.wait_ready("llama2-7b-chat", NS, timeout_s=120)
    (svc,) = httpx.get(f"{cp.url}{CONSOLE}/api/services", timeout=10).json()
    assert svc["model_names"] == ["llama2"] and svc["url"] == f"http://llama2-7b-chat.{NS}.example.com"
    playground = httpx.get(f"{cp.url}{CONSOLE}/playground", timeout=10).text
    option = f'<option value="{NS}/llama2-7b-chat" data-model="llama2" data-task="text_generation" data-modes="chat '
    assert option + 'completions">' in playground  # the task from the PVC folder's config.json, and its modes
    assert (
        '<label for="service">Service</label>' in playground
        and '<label for="message" id="message-label">Message</label>' in playground
    )
    # the service's page says what serves it and which routes answer, as `isvc describe` does
    detail = httpx.get(f"{cp.url}{CONSOLE}/services/{NS}/llama2-7b-chat", timeout=10).text
    facts = detail[detail.index('<dl class="facts">') : detail.index("</dl>")]
    assert "text_generation (from config.json architectures: LlamaForCausalLM)" in facts, facts
    assert "<code>POST /openai/v1/chat/completions</code>" in facts, facts
    assert "<code>POST /v1/models/llama2:predict</code>" in facts, facts
    # what the playground sends: the gateway's own OpenAI route, streamed
    body = {"model": "llama2", "stream": True, "max_tokens": 6, "messages": [{"role": "user", "content": "Hi"}],
            "stream_options": {"include_usage": True}}  # fmt: skip
    url = f"{cp.url}/serving/{NS}/llama2-7b-chat/openai/v1/chat/completions"
    with httpx.stream("POST", url, json=body, timeout=60) as s:
        assert s.status_code == 200 and s.headers["x-isvc-revision"] == "llama2-7b-chat-predictor-00001"
        events = [line[6:] for line in s.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]" and json.loads(events[-2])["usage"]["completion_tokens"] == 6
    # the storage initializer's lines are in the replica's log
    api = f"{CONSOLE}/api/logs/{NS}/llama2-7b-chat-predictor-00001/0?follow=0"
    with httpx.stream("GET", f"{cp.url}{api}", timeout=20) as s:
        log = [json.loads(line[6:]) for line in s.iter_lines() if line.startswith("data: ")]
    assert any(line.startswith("storage-initializer: pvc://") for line in log), log[:5]
    # metrics: the gateway samples the replica every 2 s since it became ready, whether anyone looks or not. Once
    # a scrape has seen it, three completions; 5 s later the first look at api/metrics has their history
    time.sleep(2.5)
    generated = 0
    for _ in range(3):
        r = httpx.post(f"{cp.url}/serving/{NS}/llama2-7b-chat/openai/v1/completions", timeout=60,
                       json={"model": "llama2", "prompt": "Once upon a time", "max_tokens": 8})  # fmt: skip
        assert r.status_code == 200, r.text
        generated += r.json()["usage"]["completion_tokens"]
    time.sleep(5)
    m = httpx.get(f"{cp.url}{CONSOLE}/api/metrics", timeout=10).json()[f"{NS}/llama2-7b-chat"]
    points = m["points"]
    assert len(points) >= 4 and m["window_s"] >= 6 and m["replicas"] == 1, m
    # tokens/s over time adds up to the tokens generated since the first scrape: these (and the chat's 6 if it
    # came after that scrape), none counted twice
    counted = sum((b["tokens_per_s"] or 0) * (b["t"] - a["t"]) for a, b in zip(points, points[1:]))
    assert generated - 0.5 <= counted <= generated + 6 + 0.5, (generated, points)
    assert m["ttft_scope"] == "window" and m["ttft_count"] >= 3 and 0 < m["ttft_p50_s"] <= m["ttft_p95_s"], m
    assert sum(p["ttft_p50_s"] is not None for p in points) >= 2  # the TTFT chart has a line
    assert m["running"] == 0 and m["waiting"] == 0


def test_metrics_parse_the_predictor_exposition_and_interpolate_quantiles() -> None:
    text = """\
# TYPE vllm:generation_tokens counter
vllm:generation_tokens_total{model_name="llama2"} 120.0
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{model_name="llama2"} 2.0
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{model_name="llama2"} 1.0
# TYPE vllm:time_to_first_token_seconds histogram
vllm:time_to_first_token_seconds_bucket{le="0.1",model_name="llama2"} 0.0
vllm:time_to_first_token_seconds_bucket{le="0.5",model_name="llama2"} 50.0
vllm:time_to_first_token_seconds_bucket{le="1.0",model_name="llama2"} 100.0
vllm:time_to_first_token_seconds_bucket{le="+Inf",model_name="llama2"} 100.0
vllm:time_to_first_token_seconds_count{model_name="llama2"} 100.0
vllm:time_to_first_token_seconds_sum{model_name="llama2"} 50.0
"""
    s = parse(text)
    assert (s.tokens, s.running, s.waiting) == (120.0, 2.0, 1.0)
    assert quantile(s.ttft, 0.5) == 0.5  # the 50th of 100 is the top of the (0.1, 0.5] bucket
    assert quantile(s.ttft, 0.95) == 0.95  # 45 of the 50 in (0.5, 1.0], interpolated as Prometheus does
    assert quantile({}, 0.5) is None and quantile({1.0: 0.0, float("inf"): 0.0}, 0.5) is None
