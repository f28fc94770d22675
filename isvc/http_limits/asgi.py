"""LimitRequests: ASGI middleware holding each HTTP request to ``RequestLimits`` (see the package docstring)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from isvc.http_errors import render_error
from isvc.http_limits.json_body import BadJson, check_json
from isvc.http_limits.limits import RequestLimits

Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[MutableMapping[str, Any], Receive, Send], Awaitable[None]]


class _Refused(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, close: bool = False) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.close = close


class LimitRequests:
    """ASGI middleware enforcing ``RequestLimits`` on each HTTP request (see ``isvc.http_limits``)."""

    def __init__(
        self,
        app: ASGIApp,
        limits: RequestLimits,
        *,
        json_bodies: bool = False,
        cancel_on_disconnect: bool = False,
    ) -> None:
        self.app = app
        self.limits = limits
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
                await check_json(body, self.limits.max_json_depth)
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
        body = render_error(self.scope.get("path", ""), refused.status, refused.message, refused.param)
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        if refused.close:
            headers.append((b"connection", b"close"))
        await self._send({"type": "http.response.start", "status": refused.status, "headers": headers})
        await self._send({"type": "http.response.body", "body": body, "more_body": False})
