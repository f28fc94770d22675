"""The error base every isvc failure a user can meet derives from.

Each kind carries its HTTP status and a machine-readable code; the server renders
them once per protocol family (OpenAI envelope on /openai and /v1 OpenAI routes,
KServe's ``{"error": ...}`` on V1/V2). Business code raises, it never builds bodies.

    IsvcError (500)
      + InvalidRequest (400)
        - ContextLengthExceeded (400)
      + Unauthorized (401)
      + NotFound (404)
      + Overloaded (429 on OpenAI routes, 503 on KServe routes)
      + NotReady (503)
      + Unavailable (503)
      + GatewayTimeout (504)
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


class NotFound(IsvcError):
    http_status = 404
    code = "model_not_found"
    type = "NotFoundError"


class Overloaded(IsvcError):
    """The waiting queue is full; the client should retry after ``retry_after_s``."""

    http_status = 429
    code = "rate_limit_exceeded"
    type = "RateLimitError"


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
