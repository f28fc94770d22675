"""What one HTTP client may make a server hold: body bytes, read time, header time, JSON shape, abandoned work.

A leaf (ASGI and uvicorn only, nothing of isvc above it), shared by ``isvc serve`` and the gateway.

Interface::

    limits = RequestLimits(max_body_bytes=4 << 20, header_timeout_s=10, body_timeout_s=30)
    app = LimitRequests(app, limits, render_error, json_bodies=True, cancel_on_disconnect=True)
    uvicorn.Server(uvicorn_config(app, host=host, port=port, limits=limits, log_level="warning")).run()
    # or: serve(app, host=host, port=port, limits=limits, ...)

- ``LimitRequests`` (ASGI middleware) answers 413 when ``content-length`` exceeds
  ``max_body_bytes`` (before reading a byte) or when a chunked body crosses it while being read
  (holding at most the limit plus one chunk); 408 when the client stalls longer than
  ``body_timeout_s`` between body chunks. With ``json_bodies`` every non-empty request body must
  be one JSON document in UTF-8, nested at most ``max_json_depth`` deep, whose strings can be
  encoded as UTF-8 (no lone surrogates such as ``"\\ud800"``), else 400 naming the field. With
  ``cancel_on_disconnect`` a client that goes away before its response is complete cancels the
  app's handler, so the work it started (a non-streaming generation) is abandoned at once.
  Error bodies are built by ``render_error(path, status, message, param)`` so each app answers in
  its own protocol's format.
- ``uvicorn_config`` / ``serve`` run uvicorn's h11 protocol with two more deadlines: a connection
  must deliver a complete header block within ``header_timeout_s`` of connecting (or of its first
  byte after an idle keep-alive), and a client still sending a body after its response went out
  (413, or a route that never read it) is cut after ``body_timeout_s``. Header blocks are bounded
  by ``max_header_bytes`` (uvicorn's ``h11_max_incomplete_event_size``); a request h11 cannot parse
  gets 400, a header block over the limit 431, both with a JSON ``{"error": ...}`` body.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any, ClassVar, Protocol

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[MutableMapping[str, Any], Receive, Send], Awaitable[None]]


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


class RenderError(Protocol):
    def __call__(self, path: str, status: int, message: str, param: str | None) -> bytes:
        """The JSON error body for a refused request on ``path``, in that route's protocol."""
        ...


class BadJson(ValueError):
    """A request body that is not a JSON document isvc will accept; ``param`` names the field."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


def parse_json(raw: bytes, max_depth: int = 128) -> Any:
    """Parse a request body strictly: UTF-8, one document, bounded nesting, UTF-8-encodable strings."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadJson(f"the request body is not valid UTF-8 (byte {exc.start})") from exc
    try:
        doc = json.loads(text)
    except RecursionError as exc:
        raise BadJson(f"the request body nests deeper than {max_depth} levels") from exc
    except ValueError as exc:
        raise BadJson(f"the request body is not valid JSON: {exc}") from exc
    _check_tree(doc, max_depth)
    return doc


def _check_tree(doc: Any, max_depth: int) -> None:
    """Refuse lone surrogates in any key or string and nesting beyond ``max_depth`` (iterative)."""
    stack: list[tuple[Any, str, int]] = [(doc, "", 0)]
    while stack:
        node, path, depth = stack.pop()
        if isinstance(node, str):
            _check_text(node, path)
        elif isinstance(node, dict | list):
            if depth >= max_depth:
                raise BadJson(f"the request body nests deeper than {max_depth} levels")
            if isinstance(node, dict):
                for key, value in node.items():
                    child = f"{path}.{key}" if path else str(key)
                    _check_text(key, child)
                    stack.append((value, child, depth + 1))
            else:
                stack.extend((value, f"{path}[{i}]", depth + 1) for i, value in enumerate(node))


def _check_text(text: str, path: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        bad = ord(text[exc.start])
        shown = path.encode("utf-8", "backslashreplace").decode()  # the path may hold the surrogate itself
        raise BadJson(
            f"{shown or 'the request body'} holds a lone UTF-16 surrogate (\\u{bad:04x} at character {exc.start}), "
            "which is not text; send valid Unicode",
            param=shown or None,
        ) from None


class _Refused(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, close: bool = False) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.close = close


class LimitRequests:
    """ASGI middleware enforcing ``RequestLimits`` on each HTTP request (see the module docstring)."""

    def __init__(
        self,
        app: ASGIApp,
        limits: RequestLimits,
        render_error: RenderError,
        *,
        json_bodies: bool = False,
        cancel_on_disconnect: bool = False,
    ) -> None:
        self.app = app
        self.limits = limits
        self.render_error = render_error
        self.json_bodies = json_bodies
        self.cancel_on_disconnect = cancel_on_disconnect

    async def __call__(self, scope: MutableMapping[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        exchange = _Exchange(self, scope, receive, send)
        try:
            await exchange.run()
        except _Refused as refused:
            await exchange.refuse(refused)


class _Exchange:
    """One request through ``LimitRequests``: what was read, what was sent, who is waiting."""

    def __init__(self, owner: LimitRequests, scope: MutableMapping[str, Any], receive: Receive, send: Send) -> None:
        self.owner = owner
        self.limits = owner.limits
        self.scope = scope
        self._receive = receive
        self._send = send
        self.received = 0
        self.body_complete = False
        self.replay: list[Message] = []
        self.refused: _Refused | None = None
        self.response_started = False
        self.response_complete = False
        self.disconnected = False
        self.watcher: asyncio.Future[Message] | None = None
        self.app_task: asyncio.Future[None] | None = None

    async def run(self) -> None:
        self._check_length()
        if self.owner.json_bodies:
            await self._read_json_body()
            if self.disconnected:
                return  # gone before its body was in: nothing to answer
        if not self.owner.cancel_on_disconnect:
            await self._call_app()
            return
        self.app_task = asyncio.ensure_future(self._call_app())
        try:
            await self.app_task
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if self.disconnected and not (task and task.cancelling()):
                return  # the client left: its handler was cancelled on purpose
            raise
        finally:
            if self.watcher is not None and not self.watcher.done():
                self.watcher.cancel()

    async def _call_app(self) -> None:
        try:
            await self.owner.app(self.scope, self.receive, self.send)
        except Exception:
            if self.refused is None:
                raise
        if self.refused is not None and not self.response_started:
            await self.refuse(self.refused)

    def _check_length(self) -> None:
        for name, value in self.scope["headers"]:
            if name == b"content-length" and value.isdigit() and int(value) > self.limits.max_body_bytes:
                raise _Refused(413, self._too_large(f"content-length is {int(value)} bytes"))

    def _too_large(self, what: str) -> str:
        return f"the request body is too large: {what}; the limit is {self.limits.max_body_bytes} bytes"

    async def _read_json_body(self) -> None:
        chunks: list[bytes] = []
        while not self.body_complete:
            message = await self._read()
            if message["type"] != "http.request":
                self.replay.append(message)
                return
            chunks.append(message.get("body", b""))
        body = b"".join(chunks)
        if body:
            try:
                parse_json(body, self.limits.max_json_depth)
            except BadJson as exc:
                raise _Refused(400, exc.message, exc.param) from exc
        self.replay.append({"type": "http.request", "body": body, "more_body": False})

    async def _read(self) -> Message:
        """The next message from the client while the body is incomplete, under the limits."""
        try:
            async with asyncio.timeout(self.limits.body_timeout_s):
                message = await self._receive()
        except TimeoutError:
            raise _Refused(
                408, f"the request body stalled for more than {self.limits.body_timeout_s:g}s", close=True
            ) from None
        if message["type"] == "http.request":
            self.received += len(message.get("body", b""))
            if self.received > self.limits.max_body_bytes:
                raise _Refused(413, self._too_large(f"more than {self.limits.max_body_bytes} bytes were sent"))
            if not message.get("more_body", False):
                self.body_complete = True
                self._watch()
        else:
            self.body_complete = True
            self.disconnected = True
        return message

    def _watch(self) -> None:
        """Once the body is in, the next message can only be ``http.disconnect``: wait for it."""
        if not self.owner.cancel_on_disconnect or self.watcher is not None:
            return
        self.watcher = asyncio.ensure_future(self._receive())
        self.watcher.add_done_callback(self._on_watch_done)

    def _on_watch_done(self, watcher: asyncio.Future[Message]) -> None:
        if watcher.cancelled() or watcher.exception() is not None:
            return
        if watcher.result()["type"] == "http.disconnect" and not self.response_complete:
            self.disconnected = True
            if self.app_task is not None:
                self.app_task.cancel()

    async def receive(self) -> Message:
        """What the app reads: the buffered body, then the guarded stream, then the disconnect."""
        if self.replay:
            return self.replay.pop(0)
        if self.refused is not None:
            return {"type": "http.disconnect"}
        if not self.body_complete:
            try:
                return await self._read()
            except _Refused as refused:
                self.refused = refused
                raise
        if self.watcher is not None:
            return await asyncio.shield(self.watcher)
        return await self._receive()

    async def send(self, message: Message) -> None:
        if self.refused is not None:
            return  # the app's own answer to a body we cut off; ours goes out instead
        if message["type"] == "http.response.start":
            self.response_started = True
        elif message["type"] == "http.response.body" and not message.get("more_body", False):
            self.response_complete = True
        await self._send(message)

    async def refuse(self, refused: _Refused) -> None:
        self.refused = refused
        if self.response_started:
            return
        self.response_started = self.response_complete = True
        body = self.owner.render_error(self.scope.get("path", ""), refused.status, refused.message, refused.param)
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        if refused.close:
            headers.append((b"connection", b"close"))
        await self._send({"type": "http.response.start", "status": refused.status, "headers": headers})
        await self._send({"type": "http.response.body", "body": body, "more_body": False})


class _DeadlineH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a header deadline and a cut-off for bodies nobody reads."""

    request_limits: ClassVar[RequestLimits] = RequestLimits()

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self._header_deadline: asyncio.TimerHandle | None = None
        self._linger_deadline: asyncio.TimerHandle | None = None
        self._header_bytes = 0  # of the header block being received
        super().connection_made(transport)
        self._header_deadline = self.loop.call_later(self.request_limits.header_timeout_s, self._header_expired)

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_deadlines()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self.conn.their_state is h11.IDLE:
            # h11 bounds only a header block that is still incomplete; count complete ones too.
            end = data.find(b"\r\n\r\n")
            self._header_bytes += len(data) if end < 0 else end
            if self._header_bytes > self.request_limits.max_header_bytes:
                self._refuse(431, f"the request line and headers are larger than {self._max_header_text()}")
                return
        super().data_received(data)
        if self.conn.their_state is not h11.IDLE:
            self._header_bytes = 0  # the block is complete; the next one starts from zero
        self._update_deadlines()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._update_deadlines()

    def _update_deadlines(self) -> None:
        if self.transport.is_closing():
            self._cancel_deadlines()
            return
        between_requests = self.cycle is None or self.cycle.response_complete
        their_state = self.conn.their_state
        if their_state is h11.IDLE and between_requests:
            # A header block has begun (bytes are buffered) but is not complete yet.
            if self._header_deadline is None and self.conn.trailing_data[0]:
                self._header_deadline = self.loop.call_later(self.request_limits.header_timeout_s, self._header_expired)
        elif self._header_deadline is not None:
            self._header_deadline.cancel()
            self._header_deadline = None
        if their_state is h11.SEND_BODY and between_requests:
            # Answered already (413, or a route that does not read bodies): let the client finish
            # sending for a while, so it can read the answer, then cut it off.
            if self._linger_deadline is None:
                self._linger_deadline = self.loop.call_later(self.request_limits.body_timeout_s, self._close)
        elif self._linger_deadline is not None:
            self._linger_deadline.cancel()
            self._linger_deadline = None

    def send_400_response(self, msg: str) -> None:
        """A request h11 cannot parse (malformed, or an incomplete header block over the limit)."""
        self._refuse(400, f"{msg.rstrip('.')}: malformed, or a header block over {self._max_header_text()}")

    def _refuse(self, status: int, message: str) -> None:
        """Answer before (or instead of) h11's parse, as raw bytes: no route is known yet, so KServe's body."""
        body = json.dumps({"error": message}).encode()
        head = (
            f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
        )
        self.transport.write(head.encode() + body)
        self._close()

    def _max_header_text(self) -> str:
        return f"{self.request_limits.max_header_bytes} bytes"

    def _header_expired(self) -> None:
        self._header_deadline = None
        if self.conn.their_state is h11.IDLE and (self.cycle is None or self.cycle.response_complete):
            self._close()

    def _close(self) -> None:
        self._cancel_deadlines()
        if not self.transport.is_closing():
            self.transport.close()

    def _cancel_deadlines(self) -> None:
        for handle in (self._header_deadline, self._linger_deadline):
            if handle is not None:
                handle.cancel()
        self._header_deadline = self._linger_deadline = None


def uvicorn_config(app: ASGIApp, *, host: str, port: int, limits: RequestLimits, **kwargs: Any) -> uvicorn.Config:
    """A uvicorn config that enforces ``limits``' header deadline and header size (``kwargs`` pass through)."""
    protocol = type("LimitedH11Protocol", (_DeadlineH11Protocol,), {"request_limits": limits})
    return uvicorn.Config(
        app, host=host, port=port, http=protocol, h11_max_incomplete_event_size=limits.max_header_bytes, **kwargs
    )


def serve(app: ASGIApp, *, host: str, port: int, limits: RequestLimits, **kwargs: Any) -> None:
    """Run ``app`` with uvicorn under ``limits`` until it is stopped (blocking)."""
    uvicorn.Server(uvicorn_config(app, host=host, port=port, limits=limits, **kwargs)).run()
