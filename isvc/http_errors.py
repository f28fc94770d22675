"""An IsvcError as an HTTP answer in the protocol of the path it was sent to, for the server and the gateway.

A leaf (Starlette and ``isvc.errors`` only). OpenAI paths get ``{"error": {"message", "type",
"param", "code"}}``; KServe V1/V2 and every other path get KServe's ``{"error": "..."}``.

- ``protocol_of(path)``: which of the two a path speaks (a gateway path
  ``/serving/{ns}/{name}/<rest>`` speaks ``<rest>``'s).
- ``error_body`` / ``error_response``: the body, and the response with ``Retry-After`` (when the
  error carries one) and ``WWW-Authenticate`` (on 401).
- ``http_error(status, ...)``: the kind a bare HTTP status stands for, so that refusals no business
  code raises (the edge limits of ``isvc.http_limits``, a router's 404/405) render like the rest;
  ``render_error`` is that body as bytes, for code below the apps.
- ``EdgeMiddleware``: the outermost middleware of both apps; an exception that escaped every
  handler becomes a 500 in the path's protocol, and each request can get one access-log line.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping
from typing import Any, Literal

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from isvc.errors import (
    GatewayTimeout,
    HeadersTooLarge,
    InvalidRequest,
    IsvcError,
    MethodNotAllowed,
    RequestTimeout,
    RequestTooLarge,
    RouteNotFound,
    Unauthorized,
    Unavailable,
    UpstreamFailed,
)

logger = logging.getLogger(__name__)

Protocol = Literal["openai", "kserve"]

_OPENAI_PREFIXES = (
    "/openai/",
    "/v1/completions",
    "/v1/chat/completions",
    "/v1/models",
    "/v1/embeddings",
    "/v1/responses",
    "/v1/rerank",
    "/v1/score",
    "/v1/classify",
    "/v2/rerank",  # vLLM's rerank, score and classify also answer outside /v1
    "/rerank",
    "/score",
    "/classify",
    "/tokenize",  # vLLM's, at the root
    "/detokenize",
)
_KSERVE_VERBS = (":predict", ":explain")  # /v1/models/{name}:predict is KServe V1, not OpenAI's /v1/models


def path_in_service(path: str) -> str:
    """The path as the service sees it: the gateway's ``/serving/{ns}/{name}`` prefix stripped."""
    if path.startswith("/serving/"):
        parts = path.split("/", 4)
        return "/" + parts[4] if len(parts) > 4 else "/"
    return path


def protocol_of(path: str) -> Protocol:
    path = path_in_service(path)
    if path.startswith(_OPENAI_PREFIXES) and not any(verb in path for verb in _KSERVE_VERBS):
        return "openai"
    return "kserve"


def openai_error_body(exc: IsvcError) -> dict[str, Any]:
    return {"error": {"message": exc.message, "type": exc.type, "param": exc.param, "code": exc.code}}


def error_body(path: str, exc: IsvcError) -> dict[str, Any]:
    """``exc`` in the protocol of ``path``."""
    return openai_error_body(exc) if protocol_of(path) == "openai" else {"error": exc.message}


_KIND_OF_STATUS: dict[int, type[IsvcError]] = {
    400: InvalidRequest,
    401: Unauthorized,
    404: RouteNotFound,
    405: MethodNotAllowed,
    408: RequestTimeout,
    413: RequestTooLarge,
    431: HeadersTooLarge,
    502: UpstreamFailed,
    503: Unavailable,
    504: GatewayTimeout,
}


def http_error(status: int, message: str, param: str | None = None) -> IsvcError:
    """The IsvcError an HTTP status stands for (others: InvalidRequest below 500, IsvcError above)."""
    kind = _KIND_OF_STATUS.get(status, InvalidRequest if status < 500 else IsvcError)
    return kind(message, param=param)


def render_error(path: str, status: int, message: str, param: str | None = None) -> bytes:
    """The body of a request refused with ``status`` before any app saw it."""
    return _dumps(error_body(path, http_error(status, message, param)))


def _dumps(content: Any) -> bytes:
    # ASCII-escaped: a message quoting client text must render whatever that text holds (surrogates too).
    return json.dumps(content, separators=(",", ":")).encode()


class _AsciiJSONResponse(JSONResponse):
    def render(self, content: Any) -> bytes:
        return _dumps(content)


def error_response(
    path: str, exc: IsvcError, *, status: int | None = None, headers: Mapping[str, str] | None = None
) -> JSONResponse:
    """``exc`` as the answer on ``path``: its protocol's body, ``Retry-After`` if it has one, a challenge on 401."""
    all_headers = dict(headers or {})
    if exc.retry_after_s is not None:
        all_headers["Retry-After"] = str(exc.retry_after_s)
    if exc.http_status == 401:
        all_headers.setdefault("WWW-Authenticate", "Bearer")
    return _AsciiJSONResponse(error_body(path, exc), status_code=status or exc.http_status, headers=all_headers or None)


_PROBE_PATHS = frozenset({"/metrics", "/v2/health/ready", "/v2/health/live"})
"""Paths that Prometheus, the console's sampler and the readiness probe poll every second or two: their
successful GETs get no access line, which would bury the requests in a replica's log."""


def _is_probe(scope: Scope) -> bool:
    return scope.get("method") in ("GET", "HEAD") and scope.get("path") in _PROBE_PATHS


class EdgeMiddleware:
    """ASGI middleware: a 500 in the path's protocol for an exception that escaped; an access log line.

    Starlette's own ``ServerErrorMiddleware`` answers in plain text and re-raises, and uvicorn then
    closes the keep-alive connection; answering here keeps the connection and logs the error once.
    Add it inside that one (``add_middleware`` / ``Starlette(middleware=...)``), outside the rest.
    With ``log_requests``, one line per request once its response is complete (streams included),
    or when the client left first; not for a successful probe or scrape (``_PROBE_PATHS``).
    """

    def __init__(self, app: ASGIApp, *, log_requests: bool = False) -> None:
        self.app = app
        self.log_requests = log_requests

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 0

        async def watch_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, watch_send)
        except Exception as exc:
            logger.exception("unhandled error on %s %s", scope.get("method"), scope.get("path"))
            if status:
                raise  # the status is on the wire already; uvicorn ends the connection
            response = error_response(scope["path"], IsvcError(f"internal error: {type(exc).__name__}: {exc}"))
            await response(scope, receive, watch_send)
        finally:
            if self.log_requests and not (_is_probe(scope) and 200 <= status < 400):
                elapsed_ms = (time.perf_counter() - started) * 1000
                logger.info(
                    "%s %s %s %.1fms", scope["method"], scope["path"], status or "client-disconnected", elapsed_ms
                )
