"""IsvcError -> HTTP, once, in each protocol's own body format.

OpenAI routes get ``{"error": {"message", "type", "param", "code"}}``; KServe V1/V2
routes get ``{"error": "..."}``. An overloaded server answers 429 on OpenAI routes
(clients back off and retry) and 503 on KServe routes, both with Retry-After.
After the first SSE byte the status is on the wire, so errors become one
``data: {"error": ...}`` event and ``data: [DONE]``.

Refusals that no business code raises take the same path: unknown routes (404), wrong methods
(405), bodies refused at the edge by ``isvc.http_limits`` (400/408/413), FastAPI's own parse
errors, and anything that escapes a handler (500, and the keep-alive connection survives it).
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from isvc.errors import InvalidRequest, IsvcError, NotFound, Overloaded, Unauthorized, Unavailable
from isvc.server.sse import DONE, event

logger = logging.getLogger(__name__)

_OPENAI_PREFIXES = ("/openai/", "/v1/completions", "/v1/chat/completions", "/v1/models")


def is_openai_path(path: str) -> bool:
    return path.startswith(_OPENAI_PREFIXES) and ":predict" not in path


def openai_error_body(exc: IsvcError) -> dict[str, object]:
    return {"error": {"message": exc.message, "type": exc.type, "param": exc.param, "code": exc.code}}


class RouteNotFound(NotFound):
    code = "not_found"


class MethodNotAllowed(InvalidRequest):
    http_status = 405
    code = "method_not_allowed"


class RequestTimeout(InvalidRequest):
    http_status = 408
    code = "request_timeout"


class RequestTooLarge(InvalidRequest):
    http_status = 413
    code = "request_too_large"


# The kind an HTTP-level refusal is reported as, by status (others: InvalidRequest or IsvcError).
_KIND_OF_STATUS: dict[int, type[IsvcError]] = {
    400: InvalidRequest,
    401: Unauthorized,
    404: RouteNotFound,
    405: MethodNotAllowed,
    408: RequestTimeout,
    413: RequestTooLarge,
    503: Unavailable,
}


def http_error(status: int, message: str, param: str | None = None) -> IsvcError:
    """The IsvcError an HTTP status stands for (FastAPI/Starlette refusals, edge limits)."""
    kind = _KIND_OF_STATUS.get(status, InvalidRequest if status < 500 else IsvcError)
    return kind(message, param=param)


def error_response(
    path: str, exc: IsvcError, *, status: int | None = None, headers: Mapping[str, str] | None = None
) -> JSONResponse:
    openai = is_openai_path(path)
    status = status or exc.http_status
    if isinstance(exc, Overloaded) and not openai:
        status = 503
    all_headers = dict(headers or {})
    if exc.retry_after_s is not None:
        all_headers["Retry-After"] = str(exc.retry_after_s)
    return _AsciiJSONResponse(_body(openai, exc), status_code=status, headers=all_headers or None)


class _AsciiJSONResponse(JSONResponse):
    """Escapes non-ASCII: an error message quoting client text must render whatever that text holds."""

    def render(self, content: Any) -> bytes:
        return json.dumps(content, separators=(",", ":")).encode()


def _body(openai: bool, exc: IsvcError) -> dict[str, Any]:
    return openai_error_body(exc) if openai else {"error": exc.message}


def render_edge_error(path: str, status: int, message: str, param: str | None) -> bytes:
    """The body of a request refused by ``isvc.http_limits`` (too large, stalled, not JSON)."""
    return json.dumps(_body(is_openai_path(path), http_error(status, message, param))).encode()


def install_handlers(app: FastAPI) -> None:
    @app.exception_handler(IsvcError)
    async def _isvc_error(request: Request, exc: IsvcError) -> JSONResponse:
        if exc.http_status >= 500:
            logger.warning("%s %s -> %d: %s", request.method, request.url.path, exc.http_status, exc.message)
        return error_response(request.url.path, exc)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        loc = [str(p) for p in first.get("loc", ()) if p not in ("body",)]
        param = ".".join(loc) or None
        message = f"{param}: {first.get('msg')}" if param else str(first.get("msg"))
        if first.get("type") == "json_invalid":
            message = "the request body is not valid JSON"
        elif not param and not _is_json(request.headers.get("content-type")):
            message = (
                f"expected a JSON body with content-type application/json, "
                f"got content-type {request.headers.get('content-type') or '(none)'}"
            )
        return error_response(request.url.path, InvalidRequest(message, param=param))

    @app.exception_handler(HTTPException)
    async def _http_error(request: Request, exc: HTTPException) -> JSONResponse:
        message = str(exc.detail)
        if exc.status_code == 404:
            message = f"{request.method} {request.url.path} is not a route of this server (404 Not Found)"
        elif exc.status_code == 405:
            allowed = (exc.headers or {}).get("Allow") or (exc.headers or {}).get("allow") or "?"
            message = f"{request.method} is not allowed on {request.url.path}; allowed: {allowed}"
        return error_response(
            request.url.path, http_error(exc.status_code, message), status=exc.status_code, headers=exc.headers
        )


def _is_json(content_type: str | None) -> bool:
    media = (content_type or "").split(";", 1)[0].strip().lower()
    return media == "application/json" or media.endswith("+json")


class CatchUnexpected:
    """ASGI middleware: an exception that escaped every handler becomes a 500 in the route's protocol.

    Starlette's ``Exception`` handler re-raises after answering, and uvicorn then closes the
    keep-alive connection; answering here keeps the connection and logs the error once.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def watch_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, watch_send)
        except Exception as exc:
            logger.exception("unhandled error on %s %s", scope.get("method"), scope.get("path"))
            if started:
                raise  # the status is on the wire already; uvicorn ends the connection
            response = error_response(scope["path"], IsvcError(f"internal error: {type(exc).__name__}: {exc}"))
            await response(scope, receive, send)


async def guarded_stream(events: AsyncIterator[str]) -> AsyncIterator[str]:
    """Pass SSE events through; turn a failure after the first byte into an error event."""
    try:
        async for item in events:
            yield item
    except IsvcError as exc:
        yield event(openai_error_body(exc))
        yield DONE
    except Exception as exc:
        logger.exception("stream failed")
        yield event(openai_error_body(IsvcError(f"internal error: {type(exc).__name__}: {exc}")))
        yield DONE
