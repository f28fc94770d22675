"""Find the top-level ``model`` of a JSON request body while it streams in, holding no more than a prefix.

The gateway routes OpenAI requests by their ``model`` field, but must not hold a whole
body to read it. ``ModelScanner`` reads tokens from the bytes seen so far (strings and
scalars are skipped with one regex each, nesting is a counter, so deep or huge bodies
cost neither recursion nor a parse tree) and stops at the first top-level ``"model"``
key, wherever it is in the object. The caller bounds the prefix it is willing to hold.
"""

from __future__ import annotations

import json
import re

_IN_STRING = re.compile(rb'[^"\\]*(?:\\.[^"\\]*)*', re.DOTALL)
_SCALAR = re.compile(rb"[^\s,:\[\]{}\"]+")
_SPACE = re.compile(rb"\s*")


class NoModel(Exception):
    """The body is complete (or not a JSON object) and has no top-level string ``model``."""


class ModelScanner:
    """Feed the body's bytes; ``model`` is set once the top-level ``"model": "<str>"`` is read."""

    def __init__(self) -> None:
        self.buf = bytearray()
        self.pos = 0
        self.depth = 0
        self.expect_key = False  # at depth 1, the next string is a key
        self.key: str | None = None  # the depth-1 key whose value comes next
        self.model: str | None = None
        self.string_at = -1  # start of the string being read, -1 outside strings

    def feed(self, chunk: bytes) -> str | None:
        self.buf += chunk
        if self.model is None:
            self._scan()
        return self.model

    def finish(self) -> str:
        """The body is complete: the model, or NoModel."""
        if self.model is None:
            raise NoModel("the request body has no top-level string 'model'")
        return self.model

    def _scan(self) -> None:
        buf, end = self.buf, len(self.buf)
        while self.model is None:
            if self.string_at >= 0:  # resume inside a string
                c, pos = ord('"'), self.pos
            else:
                pos = _SPACE.match(buf, self.pos).end()  # type: ignore[union-attr]
                if pos >= end:
                    self.pos = pos
                    return
                c = buf[pos]
                if self.depth == 0 and c != ord("{"):
                    raise NoModel("the request body is not a JSON object")
            if c == ord('"'):
                if self.string_at < 0:
                    self.string_at, pos = pos, pos + 1
                close = self._string_end(pos)
                if close < 0:
                    return  # the string is not complete yet
                self._string(bytes(buf[self.string_at : close]))
                self.string_at, self.pos = -1, close
            elif c in b"{[":
                self.depth += 1
                self.expect_key = self.depth == 1
                self.key = None
                self.pos = pos + 1
            elif c in b"}]":
                self.depth -= 1
                if self.depth <= 0:
                    raise NoModel("the request body has no top-level string 'model'")
                self.pos = pos + 1
            elif c == ord(","):
                if self.depth == 1:
                    self.expect_key, self.key = True, None
                self.pos = pos + 1
            elif c == ord(":"):
                self.pos = pos + 1
            else:
                m = _SCALAR.match(buf, pos)
                if m is None or m.end() == end:
                    return  # a number may go on in the next chunk
                if self.depth == 1 and self.key == "model":
                    raise NoModel("the request's 'model' is not a string")
                self.pos = m.end()

    def _string_end(self, pos: int) -> int:
        """Just past the closing quote of the string being read, or -1 (``self.pos`` then resumes)."""
        pos = _IN_STRING.match(self.buf, pos).end()  # type: ignore[union-attr]
        if pos < len(self.buf) and self.buf[pos] == ord('"'):
            return pos + 1
        self.pos = pos  # at the end, or at a backslash whose escaped byte has not arrived
        return -1

    def _string(self, token: bytes) -> None:
        if self.depth != 1:
            return
        if self.expect_key:
            self.expect_key, self.key = False, _decode(token, "a key")
            return
        if self.key == "model":
            self.model = _decode(token, "'model'")
        self.key = None


def _decode(token: bytes, what: str) -> str:
    """A complete JSON string token (quotes included) as text; NoModel if it is not a valid one."""
    try:
        text = json.loads(token)
    except ValueError as exc:  # a bad escape, a raw control character, invalid UTF-8
        raise NoModel(f"{what} in the request body is not a valid JSON string") from exc
    assert isinstance(text, str)  # the scanner hands over only whole "..." tokens
    return text
