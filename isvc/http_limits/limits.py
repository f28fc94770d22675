"""RequestLimits: what one HTTP client may make a server hold, shared by ``isvc serve`` and the gateway."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class RequestLimits:
    max_body_bytes: int = field(default=4 << 20)
    """Largest request body accepted, in bytes (413 beyond). 4 MiB holds a full-context prompt with
    room to spare; nginx's default is 1 MiB, uvicorn and vLLM have none."""

    header_timeout_s: float = 10.0
    """Seconds a connection has to deliver a complete request header block (nginx's
    client_header_timeout); then it is closed."""

    body_timeout_s: float = 30.0
    """Longest stall between two body chunks (nginx's client_body_timeout); 408 then, and the
    longest a client may go on sending a body after its response was sent."""

    max_header_bytes: int = 32 << 10
    """Largest request line plus headers, in bytes (nginx allows 4 x 8 KiB); 431 beyond."""

    max_json_depth: int = 128
    """Deepest nesting of arrays and objects in a JSON body (serde_json's default limit)."""

    def __post_init__(self) -> None:
        for name in ("max_body_bytes", "header_timeout_s", "body_timeout_s", "max_header_bytes", "max_json_depth"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)!r}")
