"""The gateway's ASGI app: resolve a route, check the API key, stream the proxied response.

SSE and every other body is passed through chunk by chunk (``aiter_raw``), never buffered.
The response names the revision that served it in ``x-isvc-revision``.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route as StarletteRoute

from isvc.errors import GatewayTimeout, InvalidRequest, IsvcError, NotFound, Unauthorized, Unavailable
from isvc.gateway.routing import Pick, Route, RouteTable
from isvc.gateway.settings import GatewaySettings

logger = logging.getLogger(__name__)

RouteSource = Callable[[], tuple[int, list[dict[str, Any]]]]
"""Returns (version, routes); called at most every ``refresh_s`` and on a miss."""

REVISION_HEADER = "x-isvc-revision"
SERVICE_HEADER = "x-isvc-service"
_HOP = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailers",
        "transfer-encoding", "upgrade", "host"}  # fmt: skip
_HOP_RESPONSE = _HOP | {"content-length"}  # the body is re-streamed (chunked)
_MODEL_PATHS = ("completions", "chat/completions", "embeddings", "responses")


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
            version, routes = self.source()
            if version != self.version or self.table is None:
                self.version = version
                self.table = RouteTable([Route.from_dict(r) for r in routes], self.domain)
        assert self.table is not None
        return self.table


def _error(exc: IsvcError, retry_after_s: int | None = None) -> JSONResponse:
    body = {"error": {"message": exc.message, "type": exc.type, "param": exc.param, "code": exc.code}}
    headers = {}
    if exc.http_status == 503:
        headers["Retry-After"] = str(exc.retry_after_s or retry_after_s or 5)
    if exc.http_status == 401:
        headers["WWW-Authenticate"] = "Bearer"
    return JSONResponse(body, status_code=exc.http_status, headers=headers)


def _host(request: Request) -> str:
    return request.headers.get("host", "").split(":")[0].lower()


def create_app(settings: GatewaySettings, source: RouteSource) -> Starlette:
    routes = _Routes(source, settings.domain, settings.refresh_s)
    state: dict[str, httpx.AsyncClient] = {}

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        limits = httpx.Limits(max_connections=1000, max_keepalive_connections=100)
        async with httpx.AsyncClient(limits=limits, timeout=None, follow_redirects=False) as client:
            state["client"] = client
            yield

    def check_key(request: Request, namespace: str) -> None:
        keys = settings.api_keys.get(namespace, []) + settings.api_keys.get("*", [])
        if not keys:
            return
        auth = request.headers.get("authorization", "")
        token = auth[7:].strip() if auth.lower().startswith("bearer ") else request.headers.get("x-api-key", "")
        if token not in keys:
            raise Unauthorized(f"namespace {namespace!r} needs an API key: send 'Authorization: Bearer <key>'")

    async def resolve(request: Request, body: bytes | None) -> tuple[Route, str]:
        """(route, path to send upstream)."""
        table = routes.get()
        host, path = _host(request), request.url.path
        for attempt in (0, 1):
            try:
                if table.is_our_host(host):
                    return table.by_host(host), path
                if path.startswith("/serving/"):
                    parts = path.split("/", 4)
                    if len(parts) < 4:
                        raise NotFound("use /serving/{namespace}/{name}/<path>", param="path")
                    rest = "/" + parts[4] if len(parts) > 4 else "/"
                    return table.by_path(parts[2], parts[3]), rest
                if request.method == "POST" and path.rstrip("/").endswith(_MODEL_PATHS) and body:
                    try:
                        model = json.loads(body).get("model")
                    except (ValueError, AttributeError):
                        model = None
                    if not isinstance(model, str):
                        raise InvalidRequest("the request names no 'model' and no InferenceService host", param="model")
                    return table.by_model(model), path
                known = ", ".join(table.known_hosts()) or "none"
                raise NotFound(
                    f"no InferenceService matches host {host!r} and path {path!r}; known hosts: {known} "
                    f"(or use /serving/<namespace>/<name>/...)",
                    param="host",
                )
            except NotFound:
                if attempt == 1:
                    raise
                table = routes.get(force=True)
        raise AssertionError("unreachable")

    async def list_models(request: Request) -> Response:
        table = routes.get()
        data = []
        for route in table.routes:
            try:
                check_key(request, route.namespace)
            except Unauthorized:
                continue
            for m in route.model_names or (route.name,):
                data.append(
                    {"id": m, "object": "model", "owned_by": f"{route.namespace}/{route.name}", "ready": route.ready}
                )
        return JSONResponse({"object": "list", "data": data})

    async def forward(request: Request, pick: Pick, path: str, body: bytes | None) -> httpx.Response:
        client = state["client"]
        skip = _HOP | ({"content-length"} if body is not None else set())
        headers = [(k, v) for k, v in request.headers.items() if k.lower() not in skip]
        headers.append(("x-forwarded-host", request.headers.get("host", "")))
        if "x-request-id" not in request.headers:
            headers.append(("x-request-id", uuid.uuid4().hex))
        url = pick.endpoint + path + (f"?{request.url.query}" if request.url.query else "")
        timeout = httpx.Timeout(connect=5.0, read=pick.route.timeout_s, write=pick.route.timeout_s, pool=None)
        content: bytes | AsyncIterator[bytes] = body if body is not None else request.stream()
        req = client.build_request(request.method, url, headers=headers, content=content, timeout=timeout)
        return await client.send(req, stream=True)

    async def proxy(request: Request) -> Response:
        try:
            path = request.url.path
            if path in ("/_isvc/healthz", "/healthz") and not routes.get().is_our_host(_host(request)):
                return JSONResponse({"status": "ok", "routes": routes.get().known()})
            if path in ("/v1/models", "/openai/v1/models") and not routes.get().is_our_host(_host(request)):
                return await list_models(request)
            needs_body = (
                request.method == "POST"
                and not routes.get().is_our_host(_host(request))
                and not path.startswith("/serving/")
            )
            body = await request.body() if needs_body else None
            route, upstream_path = await resolve(request, body)
            check_key(request, route.namespace)
            exclude: frozenset[str] = frozenset()
            while True:
                pick = routes.get().pick(_fresh(routes.get(), route), exclude)
                try:
                    upstream = await forward(request, pick, upstream_path, body)
                    break
                except httpx.ConnectError as exc:
                    if body is None and request.method not in ("GET", "HEAD"):
                        raise Unavailable(
                            f"predictor {pick.revision} at {pick.endpoint} refused the connection"
                        ) from exc
                    exclude = exclude | {pick.endpoint}
                    routes.get(force=True)
                    logger.warning("predictor %s at %s refused; trying another", pick.revision, pick.endpoint)
                except httpx.TimeoutException as exc:
                    raise GatewayTimeout(f"predictor {pick.revision} did not answer within {route.timeout_s}s") from exc
        except IsvcError as exc:
            return _error(exc, settings.retry_after_s)
        headers = [(k, v) for k, v in upstream.headers.multi_items() if k.lower() not in _HOP_RESPONSE]
        headers += [(REVISION_HEADER, pick.revision), (SERVICE_HEADER, f"{route.namespace}/{route.name}")]
        response = StreamingResponse(
            upstream.aiter_raw(), status_code=upstream.status_code, background=BackgroundTask(upstream.aclose)
        )
        response.raw_headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers]
        return response

    methods = ["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"]
    return Starlette(routes=[StarletteRoute("/{path:path}", proxy, methods=methods)], lifespan=lifespan)


def _fresh(table: RouteTable, route: Route) -> Route:
    """The current version of ``route`` (endpoints change while a request retries)."""
    for r in table.routes:
        if r.namespace == route.namespace and r.name == route.name:
            return r
    return route
