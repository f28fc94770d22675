"""What one HTTP client may make a server hold: body bytes, read time, header time, JSON shape, abandoned work.

Shared by ``isvc serve`` and the gateway; below them (ASGI, uvicorn, and ``isvc.http_errors`` for
the bodies of its refusals). Interface::

    limits = RequestLimits(max_body_bytes=4 << 20, header_timeout_s=10, body_timeout_s=30)
    app = LimitRequests(app, limits, json_bodies=True, cancel_on_disconnect=True)
    uvicorn.Server(uvicorn_config(app, host=host, port=port, limits=limits, log_level="warning")).run()
    # or: serve(app, host=host, port=port, limits=limits, ...)

- ``limits``: ``RequestLimits``, the numbers.
- ``asgi``: ``LimitRequests`` (ASGI middleware) answers 413 when ``content-length`` exceeds
  ``max_body_bytes`` (before reading a byte) or when a chunked body crosses it while being read
  (holding at most the limit plus one chunk); 408 when the client stalls longer than
  ``body_timeout_s`` between body chunks. With ``json_bodies`` every non-empty request body must
  pass ``json_body.check_json``, else 400 naming the field. With ``cancel_on_disconnect`` a client
  that goes away before its response is complete cancels the app's handler, so the work it
  started (a non-streaming generation) is abandoned at once. Refusals are answered in the
  protocol of the request's path (``isvc.http_errors.render_error``).
- ``json_body``: ``parse_json`` / ``check_json``, the strict JSON check: one document in UTF-8,
  nested at most ``max_json_depth`` deep, whose strings can be encoded as UTF-8 (no lone
  surrogates such as ``"\\ud800"``); large bodies are checked off the event loop.
- ``h11_protocol``: ``uvicorn_config`` / ``serve`` run uvicorn's h11 protocol with two more
  deadlines: a connection must deliver a complete header block within ``header_timeout_s`` of
  connecting (or of its first byte after an idle keep-alive), and a client still sending a body
  after its response went out (413, or a route that never read it) is cut after
  ``body_timeout_s``. Header blocks are bounded by ``max_header_bytes`` (uvicorn's
  ``h11_max_incomplete_event_size``); a request h11 cannot parse gets 400, a header block over the
  limit 431, both with a JSON ``{"error": ...}`` body.
"""

from __future__ import annotations

from isvc.http_limits.asgi import ASGIApp, LimitRequests, Message, Receive, Send
from isvc.http_limits.h11_protocol import serve, uvicorn_config
from isvc.http_limits.json_body import BadJson, check_json, parse_json
from isvc.http_limits.limits import RequestLimits

__all__ = [
    "ASGIApp",
    "BadJson",
    "LimitRequests",
    "Message",
    "Receive",
    "RequestLimits",
    "Send",
    "check_json",
    "parse_json",
    "serve",
    "uvicorn_config",
]
