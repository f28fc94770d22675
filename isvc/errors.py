"""The error base every isvc failure a user can meet derives from.

Each kind carries its HTTP status and a machine-readable code; the server renders
them once per protocol family (OpenAI envelope on /openai and /v1 OpenAI routes,
KServe's ``{"error": ...}`` on V1/V2). Business code raises, it never builds bodies.

    IsvcError (500)
      + InvalidRequest (400)
        - ContextLengthExceeded (400)
        - MethodNotAllowed (405)
        - RequestTimeout (408)
        - RequestTooLarge (413)
        - HeadersTooLarge (431)
      + Unauthorized (401)
      + NotFound (404)
        - RouteNotFound (404)
      + Overloaded (429 on OpenAI routes, 503 on KServe routes)
      + UpstreamFailed (502)
      + NotReady (503)
      + Unavailable (503)
      + GatewayTimeout (504)

The HTTP-level kinds (405, 408, 413, 431, an unknown route) are raised by no business code:
``isvc.http_errors`` names them when the edge (``isvc.http_limits``, Starlette's router)
refuses a request, so their bodies take the same path as every other error.
"""

from __future__ import annotations

from typing import ClassVar


class IsvcError(Exception):
    http_status: ClassVar[int] = 500
    code: ClassVar[str] = "internal_error"
    type: ClassVar[str] = "internal_server_error"

    def __init__(self, message: str, *, param: str | None = None, retry_after_s: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.retry_after_s = retry_after_s

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r}, param={self.param!r})"


class InvalidRequest(IsvcError):
    http_status = 400
    code = "invalid_request_error"
    type = "BadRequestError"


class ContextLengthExceeded(InvalidRequest):
    code = "context_length_exceeded"


class Unauthorized(IsvcError):
    http_status = 401
    code = "invalid_api_key"
    type = "AuthenticationError"


class MethodNotAllowed(InvalidRequest):
    http_status = 405
    code = "method_not_allowed"


class RequestTimeout(InvalidRequest):
    """The client stalled while sending its request body."""

    http_status = 408
    code = "request_timeout"


class RequestTooLarge(InvalidRequest):
    http_status = 413
    code = "request_too_large"


class HeadersTooLarge(InvalidRequest):
    http_status = 431
    code = "request_header_fields_too_large"


class NotFound(IsvcError):
    http_status = 404
    code = "model_not_found"
    type = "NotFoundError"


class RouteNotFound(NotFound):
    """No route of this server matches the method's path (not a model that is missing)."""

    code = "not_found"


class Overloaded(IsvcError):
    """The waiting queue is full; the client should retry after ``retry_after_s``."""

    http_status = 429
    code = "rate_limit_exceeded"
    type = "RateLimitError"


class UpstreamFailed(IsvcError):
    """The predictor closed the connection or died before it finished its answer (at the gateway)."""

    http_status = 502
    code = "upstream_failed"
    type = "BadGatewayError"


class NotReady(IsvcError):
    http_status = 503  # not 400: the client did nothing wrong
    code = "model_not_ready"
    type = "ServiceUnavailableError"


class Unavailable(IsvcError):
    http_status = 503
    code = "service_unavailable"
    type = "ServiceUnavailableError"


class GatewayTimeout(IsvcError):
    http_status = 504
    code = "upstream_timeout"
    type = "TimeoutError"


class ConfigError(IsvcError):
    """A command line, manifest or config file that cannot be honoured; raised before serving."""

    http_status = 400
    code = "invalid_config"
