"""IsvcError -> HTTP for the model server, once, in each protocol's own body format (``isvc.http_errors``).

OpenAI routes get ``{"error": {"message", "type", "param", "code"}}``; KServe V1/V2 routes get
``{"error": "..."}``. The one rule of this server's own: an overloaded server answers 429 on
OpenAI routes (clients back off and retry) and 503 on KServe routes, both with Retry-After.
After the first SSE byte the status is on the wire, so errors become one
``data: {"error": ...}`` event and ``data: [DONE]``.

Refusals that no business code raises take the same path: unknown routes (404), wrong methods
(405), bodies refused at the edge by ``isvc.http_limits`` (400/408/413), FastAPI's own parse
errors; anything that escapes a handler is ``isvc.http_errors.EdgeMiddleware``'s 500.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Mapping

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from isvc import http_errors
from isvc.errors import InvalidRequest, IsvcError, Overloaded
from isvc.sse import error_events

logger = logging.getLogger(__name__)


def error_response(
    path: str, exc: IsvcError, *, status: int | None = None, headers: Mapping[str, str] | None = None
) -> JSONResponse:
    if isinstance(exc, Overloaded) and http_errors.protocol_of(path) == "kserve":
        status = 503  # KServe clients know 503 + Retry-After, not 429
    return http_errors.error_response(path, exc, status=status, headers=headers)


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
            request.url.path,
            http_errors.http_error(exc.status_code, message),
            status=exc.status_code,
            headers=exc.headers,
        )


def _is_json(content_type: str | None) -> bool:
    media = (content_type or "").split(";", 1)[0].strip().lower()
    return media == "application/json" or media.endswith("+json")


async def guarded_stream(events: AsyncIterator[str]) -> AsyncIterator[str]:
    """Pass SSE events through; turn a failure after the first byte into an error event."""
    try:
        async for item in events:
            yield item
    except IsvcError as exc:
        yield error_events(http_errors.openai_error_body(exc))
    except Exception as exc:
        logger.exception("stream failed")
        yield error_events(http_errors.openai_error_body(IsvcError(f"internal error: {type(exc).__name__}: {exc}")))
