"""IsvcError -> HTTP, once, in each protocol's own body format.

OpenAI routes get ``{"error": {"message", "type", "param", "code"}}``; KServe V1/V2
routes get ``{"error": "..."}``. An overloaded server answers 429 on OpenAI routes
(clients back off and retry) and 503 on KServe routes, both with Retry-After.
After the first SSE byte the status is on the wire, so errors become one
``data: {"error": ...}`` event and ``data: [DONE]``.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from isvc.errors import IsvcError, Overloaded
from isvc.server.sse import DONE, event

logger = logging.getLogger(__name__)

_OPENAI_PREFIXES = ("/openai/", "/v1/completions", "/v1/chat/completions", "/v1/models")


def is_openai_path(path: str) -> bool:
    return path.startswith(_OPENAI_PREFIXES) and ":predict" not in path


def openai_error_body(exc: IsvcError) -> dict[str, object]:
    return {"error": {"message": exc.message, "type": exc.type, "param": exc.param, "code": exc.code}}


def error_response(path: str, exc: IsvcError) -> JSONResponse:
    openai = is_openai_path(path)
    status = exc.http_status
    if isinstance(exc, Overloaded) and not openai:
        status = 503
    headers = {"Retry-After": str(exc.retry_after_s)} if exc.retry_after_s is not None else None
    body = openai_error_body(exc) if openai else {"error": exc.message}
    return JSONResponse(body, status_code=status, headers=headers)


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
        from isvc.errors import InvalidRequest

        return error_response(request.url.path, InvalidRequest(message, param=param))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        logger.exception("unhandled error on %s %s", request.method, request.url.path)
        return error_response(request.url.path, IsvcError(f"internal error: {type(exc).__name__}: {exc}"))


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
