"""The console's ASGI app, mounted by the gateway at ``/_isvc/console`` (see the package docstring)."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import parse_qs, urlsplit

from jinja2 import Environment, PackageLoader, select_autoescape
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from isvc.console import auth, playground, views
from isvc.console.metrics import MetricsSampler, StoreTargets
from isvc.controlplane.apply import apply_documents
from isvc.controlplane.store import Store
from isvc.errors import IsvcError
from isvc.manifest import SERVICE_KINDS, ManifestError, load_text

logger = logging.getLogger(__name__)

PREFIX = "/_isvc/console"
_LOG_LINES = 500
_MAX_TAIL = 5000
_MAX_RESUME = 4 << 20
"""A reconnect further behind than this many bytes gets the tail instead of everything since."""
_FOLLOW_S = 0.3
_KEEPALIVE_EVERY = 50


def create_console(
    root: Path, *, admin_key: str | None, poll_s: float = 1.0, throttle: auth.Throttle | None = None
) -> Starlette:
    """The console of the control plane in ``root``; ``admin_key`` None means open (a loopback gateway).
    ``throttle`` counts wrong admin keys per client address (default: 5 a minute, then 429)."""
    env = Environment(loader=PackageLoader("isvc.console", "templates"), autoescape=select_autoescape(["html"]))
    sampler = MetricsSampler(StoreTargets(root))  # sampling for the life of the gateway: see its lifespan below
    wrong_keys = throttle or auth.Throttle()

    def page(request: Request, name: str, status_code: int = 200, **ctx: Any) -> HTMLResponse:
        html = env.get_template(name).render(prefix=PREFIX, path=request.url.path, locked=admin_key is not None, **ctx)
        return HTMLResponse(html, status_code=status_code)

    stores = threading.local()

    def read_sync(fn: Callable[[Store], Any]) -> Any:
        # one Store per worker thread, kept open: opening one runs the schema script, and every open tab's
        # api/stream reads the list each second; a connection is never shared between threads
        store: Store | None = getattr(stores, "store", None)
        if store is None:
            store = stores.store = Store(root)
        return fn(store)

    async def read(fn: Callable[[Store], Any]) -> Any:
        """``fn`` on its worker thread's Store: the gateway's event loop never waits on SQLite."""
        return await asyncio.to_thread(read_sync, fn)

    # ---- pages ----
    async def services_page(request: Request) -> Response:
        rows = await read(views.services)
        name = "_services.html" if request.query_params.get("fragment") else "services.html"
        return page(request, name, services=rows)

    async def service_page(request: Request) -> Response:
        ns, name = request.path_params["ns"], request.path_params["name"]
        svc = await read(lambda s: views.service(s, ns, name))
        if svc is None:
            return page(request, "missing.html", 404, what=f"service {ns}/{name}")
        template = "_service.html" if request.query_params.get("fragment") else "service.html"
        return page(request, template, svc=svc)

    async def apply_page(request: Request) -> Response:
        return page(request, "apply.html")

    async def logs_page(request: Request) -> Response:
        p = request.path_params
        if await read(lambda s: views.log_path(s, p["ns"], p["revision"], p["index"])) is None:
            return page(request, "missing.html", 404, what=f"replica {p['index']} of revision {p['ns']}/{p['revision']} "
                                                            "(it was deleted, or never ran)")  # fmt: skip
        return page(request, "logs.html", ns=p["ns"], revision=p["revision"], index=p["index"])

    async def playground_page(request: Request) -> Response:
        found = await playground.with_served_tasks(await read(playground.targets))
        return page(request, "playground.html", targets=found)

    async def metrics_page(request: Request) -> Response:
        return page(request, "metrics.html", sampler=sampler)

    async def login(request: Request) -> Response:
        if request.method == "GET":
            return page(request, "login.html", error="")
        if admin_key is None:
            return RedirectResponse(f"{PREFIX}/", status_code=303)
        client = _client(request)
        if (wait := wrong_keys.retry_after(client)) is not None:
            return too_many(request, wait)
        # a urlencoded form of one field (Starlette's form parser would need python-multipart)
        form = parse_qs((await request.body())[:4096].decode("utf-8", "replace"))
        key = form.get("key", [""])[0].strip()
        if auth.matches(key, admin_key):
            resp = RedirectResponse(f"{PREFIX}/", status_code=303)
            # Secure when this request came over https (the scheme uvicorn saw); over plain http a browser
            # would not send a Secure cookie back
            resp.set_cookie(auth.COOKIE, auth.cookie_value(admin_key), max_age=auth.COOKIE_MAX_AGE_S, httponly=True,
                            samesite="strict", secure=request.url.scheme == "https", path=PREFIX)  # fmt: skip
            return resp
        wrong_keys.failed(client)
        return page(request, "login.html", 401, error="That is not the admin key.")

    async def logout(request: Request) -> Response:
        resp = RedirectResponse(f"{PREFIX}/login", status_code=303)
        resp.delete_cookie(auth.COOKIE, path=PREFIX, secure=request.url.scheme == "https", httponly=True,
                           samesite="strict")  # fmt: skip
        return resp

    def too_many(request: Request, wait: int) -> Response:
        message = (f"Too many wrong admin keys (at most {wrong_keys.limit} from one address and "
                   f"{wrong_keys.total_limit} from all in {wrong_keys.window_s:.0f} s): try again in {wait} s.")  # fmt: skip
        if "/api/" not in request.url.path:  # the sign-in form, or a page
            resp: Response = page(request, "login.html", 429, error=message)
        else:
            resp = _error(429, message, retry_after_s=wait)
        resp.headers["Retry-After"] = str(wait)
        return resp

    # ---- JSON / SSE API ----
    async def api_services(request: Request) -> Response:
        return JSONResponse([v.to_json() for v in await read(lambda s: views.services(s, detail=True))])

    async def api_service(request: Request) -> Response:
        ns, name = request.path_params["ns"], request.path_params["name"]
        svc = await read(lambda s: views.service(s, ns, name))
        if svc is None:
            return _error(404, f"no InferenceService {ns}/{name}")
        return JSONResponse(svc.to_json())

    async def api_apply(request: Request) -> Response:
        body = await _json_body(request)
        if isinstance(body, Response):
            return body
        text, dry_run = body.get("manifest"), bool(body.get("dry_run", False))
        namespace = body.get("namespace") or None
        if not isinstance(text, str) or not text.strip():
            return _error(422, "manifest: paste one or more YAML documents", problems=[
                {"path": "manifest", "message": "empty", "doc": 0}])  # fmt: skip
        out: list[str] = []
        warnings: list[str] = []

        def run(s: Store) -> None:
            apply_documents(s, load_text(text, "<console>"), namespace, dry_run=dry_run, out=out.append,
                            warn=warnings.append)  # fmt: skip

        try:
            await read(run)
        except ManifestError as exc:
            problems = [{"path": p.path, "message": p.message, "doc": p.index} for p in exc.problems]
            return _error(422, exc.message, problems=problems, warnings=warnings)
        except IsvcError as exc:
            problems = [{"path": exc.param, "message": exc.message, "doc": 0}] if exc.param else []
            return _error(exc.http_status if exc.http_status < 500 else 422, exc.message, problems=problems,
                          warnings=warnings)  # fmt: skip
        return JSONResponse({"ok": True, "dry_run": dry_run, "lines": out, "warnings": warnings})

    async def api_delete(request: Request) -> Response:
        body = await _json_body(request)
        if isinstance(body, Response):
            return body
        kind, ns, name = body.get("kind", "InferenceService"), body.get("namespace"), body.get("name")
        if kind not in SERVICE_KINDS or not isinstance(ns, str) or not isinstance(name, str):
            return _error(422, f"kind must be one of {', '.join(SERVICE_KINDS)}; namespace and name are strings")
        if not await read(lambda s: s.delete_resource(kind, ns, name)):
            return _error(404, f"no {kind} {ns}/{name}")
        return JSONResponse({"ok": True, "deleted": f"{kind} {ns}/{name}"})

    async def api_logs(request: Request) -> Response:
        p = request.path_params
        path = await read(lambda s: views.log_path(s, p["ns"], p["revision"], p["index"]))
        if path is None:
            return _error(404, f"no replica {p['index']} of revision {p['ns']}/{p['revision']} (it was deleted, "
                               "or never ran)")  # fmt: skip
        tail = request.query_params.get("tail", str(_LOG_LINES)).strip()
        if not tail.isdigit():
            return _error(422, f"tail: a whole number of lines (0 to {_MAX_TAIL}), not {tail!r}")
        lines = min(int(tail), _MAX_TAIL)
        follow = request.query_params.get("follow", "1") != "0"
        last_id = request.headers.get("last-event-id", "").strip()
        resume = int(last_id) if last_id.isdigit() else None
        return StreamingResponse(_follow(path, lines, resume, follow, request.is_disconnected),
                                 media_type="text/event-stream", headers={"Cache-Control": "no-store"})  # fmt: skip

    async def api_metrics(request: Request) -> Response:
        return JSONResponse(sampler.report())

    async def api_stream(request: Request) -> Response:
        """Server-sent ``services`` events: the list again whenever it changes (checked every ``poll_s``)."""

        async def events() -> AsyncIterator[bytes]:
            last = ""
            while not await request.is_disconnected():
                data = json.dumps([v.to_json() for v in await read(views.services)], sort_keys=True)
                if data != last:
                    last = data
                    yield f"event: services\ndata: {data}\n\n".encode()
                else:
                    yield b": keepalive\n\n"
                await asyncio.sleep(poll_s)

        return StreamingResponse(events(), media_type="text/event-stream", headers={"Cache-Control": "no-store"})

    static = StaticFiles(packages=[("isvc.console", "static")])
    routes = [
        Route("/", services_page),
        Route("/services/{ns}/{name}", service_page),
        Route("/apply", apply_page),
        Route("/logs/{ns}/{revision}/{index:int}", logs_page),
        Route("/playground", playground_page),
        Route("/metrics", metrics_page),
        Route("/login", login, methods=["GET", "POST"]),
        Route("/logout", logout, methods=["POST"]),
        Route("/api/services", api_services),
        Route("/api/services/{ns}/{name}", api_service),
        Route("/api/stream", api_stream),
        Route("/api/apply", api_apply, methods=["POST"]),
        Route("/api/delete", api_delete, methods=["POST"]),
        Route("/api/logs/{ns}/{revision}/{index:int}", api_logs),
        Route("/api/metrics", api_metrics),
        Mount("/static", static, name="static"),
    ]

    async def guard(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        refused = _refuse_foreign(request, unlocked=admin_key is None)
        if refused is not None:
            return _secure(refused)
        return _secure(await check_key(request, call_next))

    async def check_key(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        exempt = (f"{PREFIX}/static/", f"{PREFIX}/login", f"{PREFIX}/logout")
        if admin_key is None or request.url.path.startswith(exempt):
            return await call_next(request)
        if auth.cookie_valid(request.cookies.get(auth.COOKIE), admin_key):
            return await call_next(request)
        bearer = request.headers.get("authorization", "")
        if bearer.lower().startswith("bearer "):
            client = _client(request)
            if (wait := wrong_keys.retry_after(client)) is not None:
                return too_many(request, wait)  # even the right key: else a guess's answer would tell
            if auth.matches(bearer[7:].strip(), admin_key):
                return await call_next(request)
            wrong_keys.failed(client)
        if "/api/" in request.url.path:
            return _error(401, "the console needs the admin key: 'Authorization: Bearer <key>' (isvc up --admin-key, "
                               "or the key in the state dir's admin.key)")  # fmt: skip
        return page(request, "login.html", 401, error="")

    # Starlette runs the lifespan of the outermost app only: the gateway enters this one in its own
    return Starlette(routes=routes, middleware=[Middleware(BaseHTTPMiddleware, dispatch=guard)],
                     lifespan=lambda _app: sampler.running())  # fmt: skip


_LOOPBACK_NAMES = ("127.0.0.1", "::1", "localhost")
_STATE_CHANGING = ("POST", "PUT", "PATCH", "DELETE")
_SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; frame-ancestors 'none'",
    "X-Frame-Options": "DENY",
    # not "no-referrer": with it Chromium sends `Origin: null` on the login form's same-origin POST, which
    # the origin check then refuses; "same-origin" still sends nothing to other sites
    "Referrer-Policy": "same-origin",
}


def _client(request: Request) -> str:
    """The client's address, as uvicorn gives it (the peer's, or a trusted local proxy's X-Forwarded-For)."""
    return request.client.host if request.client else ""


def _host_name(host: str) -> str:
    """The name in a Host header without its port: ``[::1]:8080`` -> ``::1``, ``localhost:80`` -> ``localhost``."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1 : host.find("]")] if "]" in host else host
    return host.rpartition(":")[0] if host.count(":") == 1 else host


def _refuse_foreign(request: Request, *, unlocked: bool) -> Response | None:
    """A 403 for a request another web site's page may have made (DNS rebinding, cross-site posts), else None.

    An unlocked console (loopback, no admin key) answers only a loopback Host: a page whose domain re-resolves
    to 127.0.0.1 still sends its own name. A state change must also come from the console's own origin.
    """
    host = request.headers.get("host", "")
    if unlocked and _host_name(host) not in _LOOPBACK_NAMES:
        return _error(403, f"the console without an admin key answers only a loopback Host (127.0.0.1, [::1] or "
                           f"localhost), not {host!r}; open it at http://127.0.0.1:PORT{PREFIX}/ or start isvc up "
                           "with --admin-key")  # fmt: skip
    if request.method in _STATE_CHANGING:
        origin = request.headers.get("origin")
        if origin is not None:
            parts = urlsplit(origin)
            if parts.scheme not in ("http", "https") or parts.netloc.lower() != host.strip().lower():
                return _error(403, f"cross-origin request refused: Origin {origin!r} is not this console ({host!r})")
        if request.headers.get("sec-fetch-site", "").lower() == "cross-site":
            return _error(403, "cross-site request refused (Sec-Fetch-Site: cross-site)")
    return None


def _secure(response: Response) -> Response:
    for name, value in _SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
    return response


async def _json_body(request: Request) -> dict[str, Any] | Response:
    """State changes take JSON only: a cross-site form post cannot send it without a CORS preflight."""
    if not request.headers.get("content-type", "").startswith("application/json"):
        return _error(415, "send the request as application/json")
    try:
        body = await request.json()
    except ValueError:
        return _error(400, "the body is not valid JSON")
    if not isinstance(body, dict):
        return _error(400, "the body must be a JSON object")
    return body


def _error(status: int, message: str, **extra: Any) -> JSONResponse:
    return JSONResponse({"error": message, **extra}, status_code=status)


def _read_tail(path: Path, lines: int, resume: int | None) -> tuple[BinaryIO, list[bytes]]:
    """The log open at the end of its last whole line, and the events before that: the last ``lines``, or,
    with ``resume`` (a Last-Event-ID: the byte offset after the last line the client got), every line since."""
    f = open(path, "rb")  # noqa: SIM115 (the caller closes it)
    try:
        end = f.seek(0, 2)
        if resume is not None and 0 <= resume <= end and end - resume <= _MAX_RESUME:
            start = resume
        else:
            resume, start = None, max(0, end - max(8192, lines * 400))
        f.seek(start)
        data = f.read(end - start)
        data = data[: data.rfind(b"\n") + 1]  # a partial last line is sent whole, by the follow loop
        f.seek(start + len(data))
        events: list[tuple[str, int]] = []
        pos = start
        for raw in data.splitlines(keepends=True):
            pos += len(raw)
            events.append((raw.decode("utf-8", "replace"), pos))
        if resume is None and start > 0:
            events = events[1:]  # the first line may be cut
        events = [e for e in events if e[0].strip()]
        if resume is None:
            events = events[-lines:] if lines > 0 else []
        return f, [_line_event(line, pos) for line, pos in events]
    except BaseException:
        f.close()
        raise


async def _follow(
    path: Path, lines: int, resume: int | None, follow: bool, disconnected: Callable[[], Awaitable[bool]]
) -> AsyncIterator[bytes]:
    """The last ``lines`` of the log (or every line after ``resume``) as ``data:`` events, one per line, each with
    its end's byte offset as ``id:``, then new lines as they are written."""
    try:
        f, events = await asyncio.to_thread(_read_tail, path, lines, resume)
    except OSError as exc:
        yield f"event: error\ndata: {json.dumps(str(exc))}\n\n".encode()
        return
    try:
        # the tail ends where following starts: a line written meanwhile is sent once, not lost
        for event in events:
            yield event
        pos = f.tell()
        held, idle = b"", 0
        while follow and not await disconnected():
            chunk = f.read()
            if not chunk:
                idle += 1
                if idle % _KEEPALIVE_EVERY == 0:
                    yield b": keepalive\n\n"  # a proxy or a browser would close a silent stream
                await asyncio.sleep(_FOLLOW_S)
                continue
            held += chunk
            *done, held = held.split(b"\n")
            for raw in done:
                pos += len(raw) + 1
                if raw.strip():
                    yield _line_event(raw.decode("utf-8", "replace"), pos)
    finally:
        f.close()


def _line_event(line: str, offset: int) -> bytes:
    return f"id: {offset}\ndata: {json.dumps(line.rstrip())}\n\n".encode()
