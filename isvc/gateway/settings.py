"""GatewaySettings: the one settings object of the gateway role."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from isvc.http_limits import RequestLimits

_LIMITS = RequestLimits()  # the defaults shared with `isvc serve`


class GatewaySettings(BaseModel):
    model_config = ConfigDict(frozen=True, use_attribute_docstrings=True)

    state_dir: Path
    """Where state.db lives (routes are read from it)."""
    host: str = "127.0.0.1"
    """Interface the gateway listens on."""
    port: int = Field(default=8080, ge=0, le=65535)
    """The one port every InferenceService is served on."""
    domain: str = "example.com"
    """Host routing domain: {name}.{namespace}.{domain}."""
    api_keys: dict[str, list[str]] = Field(default_factory=dict)
    """Namespace ("*" for all) → accepted bearer tokens; a namespace without keys is open."""
    refresh_s: float = Field(default=0.1, gt=0)
    """Longest time a route change takes to reach the gateway."""
    retry_after_s: int = Field(default=5, ge=1)
    """Retry-After sent with 503 while a service has no ready revision."""
    model_scan_bytes: int = Field(default=1 << 20, ge=1024)
    """Most bytes of a body held to find its OpenAI ``model`` when neither Host nor path names the service."""
    max_body_bytes: int = Field(default=_LIMITS.max_body_bytes, ge=1)
    """Largest request body passed to a predictor (413 beyond)."""
    header_timeout_s: float = Field(default=_LIMITS.header_timeout_s, gt=0)
    """Seconds a connection has to send its complete request header block; then it is closed."""
    body_timeout_s: float = Field(default=_LIMITS.body_timeout_s, gt=0)
    """Longest stall between two request body chunks (408 then)."""

    @property
    def limits(self) -> RequestLimits:
        return RequestLimits(
            max_body_bytes=self.max_body_bytes,
            header_timeout_s=self.header_timeout_s,
            body_timeout_s=self.body_timeout_s,
        )
