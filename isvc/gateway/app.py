"""The gateway's ASGI app: resolve a route, check the API key, stream the body both ways.

Request bodies are limited in size and read time (``isvc.http_limits``) and streamed to the
predictor, never held: only a request routed by its
OpenAI ``model`` field has a prefix of at most ``model_scan_bytes`` held while the field
is found (``model_field.ModelScanner``). Responses are passed through chunk by chunk,
except small non-streaming answers, which are read whole first so that a predictor dying
mid-answer becomes a 502 instead of a cut body. A predictor that dies mid-stream ends an
SSE stream with an error event and ``[DONE]``. The response names the revision that served
it in ``x-isvc-revision``. Every error is in the protocol of the path the client called
(``isvc.http_errors``): one that escaped the proxy too (``EdgeMiddleware``), whatever the body bytes.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager, nullcontext
from dataclasses import dataclass
from typing import Any

import httpx
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.middleware import Middleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import BaseRoute, Mount
from starlette.routing import Route as StarletteRoute
from starlette.types import ASGIApp

from isvc.errors import (
    GatewayTimeout,
    InvalidRequest,
    IsvcError,
    NotFound,
    Unauthorized,
    Unavailable,
    UpstreamFailed,
)
from isvc.gateway.model_field import ModelScanner, NoModel
from isvc.gateway.routing import Pick, Route, RouteTable, Visible
from isvc.gateway.settings import GatewaySettings
from isvc.http_errors import EdgeMiddleware, error_response, openai_error_body, path_in_service
from isvc.http_limits import LimitRequests
from isvc.sse import error_events

logger = logging.getLogger(__name__)

RouteSource = Callable[[], tuple[int, list[dict[str, Any]]]]
"""Returns (version, routes); called at most every ``refresh_s`` and on a miss."""

REVISION_HEADER = "x-isvc-revision"
SERVICE_HEADER = "x-isvc-service"
CONSOLE_PATH = "/_isvc/console"
_HOP = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailers",
        "transfer-encoding", "upgrade", "host"}  # fmt: skip
_HOP_RESPONSE = _HOP | {"content-length"}  # the body is re-streamed (chunked)
_MODEL_PATHS = ("completions", "chat/completions", "embeddings", "responses")
_READ_WHOLE_BYTES = 1 << 20
"""A non-SSE answer up to this size is read whole before its status is sent."""
_SSE_HOLD_BYTES = 1 << 20
"""Longest partial SSE event held back (so an error event never lands inside one)."""
CLIENT_CLOSED = 499
"""The status logged for a client that left before its request was complete (nginx's)."""


@dataclass
class _Routes:
    source: RouteSource
    domain: str
    refresh_s: float
    version: int = -1
    checked: float = 0.0
    table: RouteTable | None = None

    def get(self, force: bool = False) -> RouteTable:
        now = time.monotonic()
        if force or self.table is None or now - self.checked >= self.refresh_s:
            self.checked = now
            try:
                version, routes = self.source()
                if version != self.version or self.table is None:
                    self.table = RouteTable([Route.from_dict(r) for r in routes], self.domain)
                    self.version = version
            except Exception as exc:
                logger.warning("cannot read the routes (%s: %s)", type(exc).__name__, exc)
                if self.table is None:
                    raise Unavailable("the gateway cannot read its routes yet; retry shortly") from exc
                # Serve with the last routes read; the next call tries again.
        assert self.table is not None
        return self.table


class _Body:
    """The request body sent upstream: the prefix already read, then the rest of the client's stream."""

    def __init__(self, prefix: bytes, rest: AsyncIterator[bytes] | None) -> None:
        self.prefix = prefix
        self.rest = rest
        self.started = False
        self.failed: Exception | None = None
        """Reading the client's body failed (a limit of ``isvc.http_limits``): that, not the predictor, is the error."""

    @property
    def empty(self) -> bool:
        return not self.prefix and self.rest is None

    async def __aiter__(self) -> AsyncIterator[bytes]:
        self.started = True
        if self.prefix:
            yield self.prefix
        if self.rest is not None:
            try:
                async for chunk in self.rest:
                    if chunk:
                        yield chunk
            except Exception as exc:
                self.failed = exc
                raise


@dataclass
class _Target:
    route: Route
    path: str
    """The path sent upstream; its protocol decides the error body."""
    body: _Body


def _host(request: Request) -> str:
    return request.headers.get("host", "").split(":")[0].lower()


def _token(request: Request) -> str:
    auth = request.headers.get("authorization", "")
    return auth[7:].strip() if auth.lower().startswith("bearer ") else request.headers.get("x-api-key", "")


def create_app(settings: GatewaySettings, source: RouteSource, console: ASGIApp | None = None) -> Starlette:
    """The gateway, behind ``EdgeMiddleware`` (500s in the protocol) and ``isvc.http_limits`` (413, 408).

    ``console`` (``isvc up``'s web console) is mounted at ``/_isvc/console``; ``GET /`` of a Host that is no
    service's redirects there. Its lifespan (the console's metrics sampler) runs inside the gateway's.
    """
    routes = _Routes(source, settings.domain, settings.refresh_s)
    state: dict[str, httpx.AsyncClient] = {}

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        limits = httpx.Limits(max_connections=1000, max_keepalive_connections=100)
        async with (
            httpx.AsyncClient(limits=limits, timeout=None, follow_redirects=False) as client,
            _lifespan_of(console),
        ):
            state["client"] = client
            yield

    def keys_for(namespace: str) -> list[str]:
        return settings.api_keys.get(namespace, []) + settings.api_keys.get("*", [])

    def visible_to(request: Request) -> Visible:
        token = _token(request)

        def visible(namespace: str) -> bool:
            keys = keys_for(namespace)
            return not keys or token in keys

        return visible

    def check_key(request: Request, namespace: str) -> None:
        if not visible_to(request)(namespace):  # no names: the caller may not learn the namespace
            raise Unauthorized(
                "this InferenceService needs an API key: send 'Authorization: Bearer <key>' (or 'x-api-key: <key>')"
                if not _token(request)
                else "the API key sent does not open this InferenceService"
            )

    async def read_model(stream: AsyncIterator[bytes]) -> tuple[str, bytes, bool]:
        """(model, the bytes read, whether the stream has more) — holding at most model_scan_bytes."""
        scanner = ModelScanner()
        limit = settings.model_scan_bytes
        try:
            async for chunk in stream:
                room = limit - len(scanner.buf)
                if scanner.feed(chunk[:room]) is not None:
                    return scanner.finish(), bytes(scanner.buf) + chunk[room:], True
                if len(chunk) > room:
                    raise InvalidRequest(
                        f"the request's 'model' is not within its first {limit} bytes (the gateway reads at "
                        "most that much of a body to route it; `isvc up --model-scan-bytes`); put 'model' "
                        "first, or address the service by its Host header or /serving/<namespace>/<name>/",
                        param="model",
                    )
            return scanner.finish(), bytes(scanner.buf), False
        except NoModel as exc:
            raise InvalidRequest(
                f"{exc}, and the request names no InferenceService host; send a JSON object with a "
                "'model', or address the service by its Host header or /serving/<namespace>/<name>/",
                param="model",
            ) from exc

    async def resolve(request: Request, visible: Visible) -> _Target:
        host, path = _host(request), request.url.path
        stream = request.stream()
        has_body = "content-length" in request.headers or "transfer-encoding" in request.headers
        body = _Body(b"", stream if has_body else None)
        model: str | None = None
        for attempt in (0, 1):
            table = routes.get(force=attempt == 1)
            try:
                if table.is_our_host(host):
                    return _Target(table.by_host(host, visible), path, body)
                if path.startswith("/serving/"):
                    parts = path.split("/", 4)
                    if len(parts) < 4:
                        raise NotFound("use /serving/{namespace}/{name}/<path>", param="path")
                    return _Target(table.by_path(parts[2], parts[3], visible), path_in_service(path), body)
                if request.method == "POST" and path.rstrip("/").endswith(_MODEL_PATHS):
                    if model is None:
                        model, prefix, more = await read_model(stream)
                        body = _Body(prefix, stream if more else None)
                    return _Target(table.by_model(model, visible), path, body)
                known = ", ".join(table.known_hosts(visible)) or "none"
                raise NotFound(
                    f"no InferenceService matches host {host!r} and path {path!r}; known hosts: {known} "
                    f"(or use /serving/<namespace>/<name>/...)",
                    param="host",
                )
            except NotFound:
                if attempt == 1:
                    raise
        raise AssertionError("unreachable")

    async def list_models(request: Request) -> Response:
        visible = visible_to(request)
        data = [
            {"id": m, "object": "model", "owned_by": f"{route.namespace}/{route.name}", "ready": route.ready}
            for route in routes.get().routes
            if visible(route.namespace)
            for m in route.model_names or (route.name,)
        ]
        return JSONResponse({"object": "list", "data": data})

    async def send(request: Request, target: _Target) -> tuple[httpx.Response, Pick]:
        """Send to a ready endpoint; another one if it refuses before the body was started."""
        headers = [(k, v) for k, v in request.headers.items() if k.lower() not in _HOP]
        headers.append(("x-forwarded-host", request.headers.get("host", "")))
        if "x-request-id" not in request.headers:
            headers.append(("x-request-id", uuid.uuid4().hex))
        query = f"?{request.url.query}" if request.url.query else ""
        route = target.route
        exclude: frozenset[str] = frozenset()
        while True:
            pick = routes.get().pick(_fresh(routes.get(), route), exclude)
            client = state["client"]
            timeout = httpx.Timeout(connect=5.0, read=route.timeout_s, write=route.timeout_s, pool=None)
            req = client.build_request(
                request.method, pick.endpoint + target.path + query, headers=headers,
                content=None if target.body.empty else target.body,
                timeout=timeout,
            )  # fmt: skip
            try:
                return await client.send(req, stream=True), pick
            except httpx.TransportError as exc:
                if target.body.failed is not None:
                    raise target.body.failed from None
                if isinstance(exc, httpx.TimeoutException):
                    raise GatewayTimeout(f"predictor {pick.revision} did not answer within {route.timeout_s}s") from exc
                if not isinstance(exc, httpx.ConnectError):
                    raise UpstreamFailed(
                        f"predictor {pick.revision} failed before answering ({_why(exc)}); retry the request"
                    ) from exc
                if target.body.started:
                    raise Unavailable(f"predictor {pick.revision} at {pick.endpoint} refused the connection") from exc
                exclude = exclude | {pick.endpoint}
                routes.get(force=True)
                logger.warning("predictor %s at %s refused; trying another", pick.revision, pick.endpoint)

    async def proxy(request: Request) -> Response:
        path = request.url.path
        try:
            if not routes.get().is_our_host(_host(request)):
                if path in ("/_isvc/healthz", "/healthz"):
                    return JSONResponse({"status": "ok", "routes": routes.get().known(visible_to(request))})
                if path in ("/v1/models", "/openai/v1/models"):
                    return await list_models(request)
                if console is not None and path in ("/", CONSOLE_PATH) and request.method in ("GET", "HEAD"):
                    return RedirectResponse(f"{CONSOLE_PATH}/", status_code=307)
            target = await resolve(request, visible_to(request))
            check_key(request, target.route.namespace)
            upstream, pick = await send(request, target)
            return await _relay(upstream, pick, target.route)
        except IsvcError as exc:
            if exc.http_status >= 500:
                logger.warning("%s %s -> %d: %s", request.method, path, exc.http_status, exc.message)
            retry = exc.http_status in (502, 503) and exc.retry_after_s is None
            return error_response(path, exc, headers={"Retry-After": str(settings.retry_after_s)} if retry else None)
        except ClientDisconnect:
            logger.info("%s %s: the client left while sending its body", request.method, path)
            return Response(status_code=CLIENT_CLOSED)  # nobody reads it

    methods = ["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"]
    app_routes: list[BaseRoute] = [StarletteRoute("/{path:path}", proxy, methods=methods)]
    if console is not None:
        app_routes.insert(0, Mount(CONSOLE_PATH, app=console))
    return Starlette(
        routes=app_routes,
        lifespan=lifespan,
        middleware=[
            Middleware(EdgeMiddleware),
            Middleware(LimitRequests, limits=settings.limits, cancel_on_disconnect=True),
        ],
    )


def _lifespan_of(app: ASGIApp | None) -> AbstractAsyncContextManager[Any]:
    """The lifespan of a mounted Starlette app: Starlette runs only the outermost app's, so the gateway enters it."""
    if isinstance(app, Starlette):
        return app.router.lifespan_context(app)
    return nullcontext()


async def _relay(upstream: httpx.Response, pick: Pick, route: Route) -> Response:
    """The predictor's answer as the gateway's response (SSE and large bodies streamed)."""
    sse = upstream.headers.get("content-type", "").startswith("text/event-stream")
    length = upstream.headers.get("content-length")
    read_whole = not sse and length is not None and length.isdigit() and int(length) <= _READ_WHOLE_BYTES
    skip = _HOP if read_whole else _HOP_RESPONSE  # a streamed body is re-chunked: its length goes
    headers = [(k, v) for k, v in upstream.headers.multi_items() if k.lower() not in skip]
    headers += [(REVISION_HEADER, pick.revision), (SERVICE_HEADER, f"{route.namespace}/{route.name}")]
    raw_headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers]
    response: Response
    if read_whole:
        try:
            content = await upstream.aread()
        except httpx.TransportError as exc:
            raise UpstreamFailed(
                f"predictor {pick.revision} failed mid-answer ({_why(exc)}); retry the request"
            ) from exc
        finally:
            await upstream.aclose()
        response = Response(content, status_code=upstream.status_code)
    else:
        body = _sse_events(upstream, pick) if sse else upstream.aiter_raw()
        response = StreamingResponse(body, status_code=upstream.status_code, background=BackgroundTask(upstream.aclose))
    response.raw_headers = raw_headers
    return response


async def _sse_events(upstream: httpx.Response, pick: Pick) -> AsyncIterator[bytes]:
    """Whole SSE events; a predictor failing mid-stream ends it with an error event and ``[DONE]``."""
    held = b""
    try:
        async for chunk in upstream.aiter_raw():
            held += chunk
            ends = [i + len(sep) for sep in (b"\n\n", b"\r\n\r\n") if (i := held.rfind(sep)) >= 0]
            cut = max(ends, default=0)
            if not cut:
                if len(held) <= _SSE_HOLD_BYTES:
                    continue
                cut = len(held)
            yield held[:cut]
            held = held[cut:]
        if held:
            yield held
    except httpx.TransportError as exc:
        kind = GatewayTimeout if isinstance(exc, httpx.TimeoutException) else UpstreamFailed
        logger.warning("predictor %s failed mid-stream: %s", pick.revision, _why(exc))
        error = kind(f"predictor {pick.revision} failed mid-stream ({_why(exc)}); the stream is incomplete")
        yield error_events(openai_error_body(error)).encode()


def _why(exc: Exception) -> str:
    return str(exc) or type(exc).__name__


def _fresh(table: RouteTable, route: Route) -> Route:
    """The current version of ``route`` (endpoints change while a request retries)."""
    for r in table.routes:
        if r.namespace == route.namespace and r.name == route.name:
            return r
    return route
