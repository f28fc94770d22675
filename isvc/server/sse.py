"""Server-sent events framing for the server's streams: ``isvc.sse``, the leaf the gateway shares."""

from __future__ import annotations

from isvc.sse import DONE, error_events, event

__all__ = ["DONE", "error_events", "event"]
