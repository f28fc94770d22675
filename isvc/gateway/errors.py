"""IsvcError -> HTTP at the gateway, in the protocol of the path the client called.

KServe V1/V2 paths (``/v2/...``, ``/v1/models/{name}:predict``) get ``{"error": "..."}``;
every other path gets the OpenAI envelope. A predictor that fails after the first SSE
byte is reported as one ``data: {"error": ...}`` event followed by ``data: [DONE]``.
"""

from __future__ import annotations

import json

from starlette.responses import JSONResponse

from isvc.errors import InvalidRequest, IsvcError, Unauthorized

DONE = b"data: [DONE]\n\n"


class UpstreamFailed(IsvcError):
    """The predictor closed the connection or died before it finished its answer."""

    http_status = 502
    code = "upstream_failed"
    type = "BadGatewayError"


class RequestTooLarge(InvalidRequest):
    http_status = 413
    code = "request_too_large"


class RequestTimeout(InvalidRequest):
    http_status = 408
    code = "request_timeout"


_REFUSALS: dict[int, type[IsvcError]] = {401: Unauthorized, 408: RequestTimeout, 413: RequestTooLarge}


def protocol_path(path: str) -> str:
    """The path as the predictor sees it (``/serving/{ns}/{name}`` stripped): its protocol is the client's."""
    if path.startswith("/serving/"):
        parts = path.split("/", 4)
        return "/" + parts[4] if len(parts) > 4 else "/"
    return path


def is_kserve_path(path: str) -> bool:
    return path.startswith("/v2/") or path == "/v2" or (path.startswith("/v1/models/") and ":" in path)


def openai_error_body(exc: IsvcError) -> dict[str, object]:
    return {"error": {"message": exc.message, "type": exc.type, "param": exc.param, "code": exc.code}}


def error_body(path: str, exc: IsvcError) -> dict[str, object]:
    """``exc`` in the protocol of ``path`` (a path as the client sent it, or as the predictor sees it)."""
    return {"error": exc.message} if is_kserve_path(protocol_path(path)) else openai_error_body(exc)


def render_refusal(path: str, status: int, message: str, param: str | None) -> bytes:
    """The body of a request ``isvc.http_limits`` refused (413 too large, 408 stalled)."""
    kind = _REFUSALS.get(status, InvalidRequest if status < 500 else IsvcError)
    return json.dumps(error_body(path, kind(message, param=param))).encode()


def error_response(path: str, exc: IsvcError, retry_after_s: int) -> JSONResponse:
    """``exc`` as the body of ``path``'s protocol; Retry-After on 502/503, WWW-Authenticate on 401."""
    body = error_body(path, exc)
    headers = {}
    if exc.http_status in (502, 503):
        headers["Retry-After"] = str(exc.retry_after_s or retry_after_s)
    if exc.http_status == 401:
        headers["WWW-Authenticate"] = "Bearer"
    return JSONResponse(body, status_code=exc.http_status, headers=headers)


def sse_error(exc: IsvcError) -> bytes:
    """The last two events of a stream that failed after its first byte."""
    return b"data: " + json.dumps(openai_error_body(exc)).encode() + b"\n\n" + DONE
