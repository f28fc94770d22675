"""uvicorn's h11 protocol with a header deadline, a cut-off for unread bodies, and a bound on complete header blocks."""

from __future__ import annotations

import asyncio
from http import HTTPStatus
from typing import Any, ClassVar

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from isvc.http_errors import render_error
from isvc.http_limits.asgi import ASGIApp
from isvc.http_limits.limits import RequestLimits


class _DeadlineH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a header deadline and a cut-off for bodies nobody reads."""

    request_limits: ClassVar[RequestLimits] = RequestLimits()

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self._header_deadline: asyncio.TimerHandle | None = None
        self._linger_deadline: asyncio.TimerHandle | None = None
        self._header_bytes = 0  # of the header block being received
        self._header_tail = b""  # its last bytes so far (a terminator may straddle two reads)
        super().connection_made(transport)
        self._header_deadline = self.loop.call_later(self.request_limits.header_timeout_s, self._header_expired)

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_deadlines()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self.conn.their_state is h11.IDLE:
            # h11 bounds only a header block that is still incomplete; count complete ones too. The
            # terminator may be split across reads: search it from the previous read's last 3 bytes.
            tail = self._header_tail
            end = (tail + data).find(b"\r\n\r\n")
            self._header_bytes += len(data) if end < 0 else max(0, end - len(tail))
            self._header_tail = (tail + data)[-3:]
            if self._header_bytes > self.request_limits.max_header_bytes:
                self._refuse(431, f"the request line and headers are larger than {self._max_header_text()}")
                return
        super().data_received(data)
        if self.conn.their_state is not h11.IDLE:
            self._header_bytes, self._header_tail = 0, b""  # the block is complete; the next starts afresh
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
        body = render_error("", status, message)
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
