"""The console's admin key: required unless the gateway listens on loopback only; namespace API keys never grant it."""

from __future__ import annotations

import hmac
import ipaddress
import math
import os
import secrets
import time
from collections import deque
from pathlib import Path

KEY_FILE = "admin.key"
COOKIE = "isvc_admin"
COOKIE_MAX_AGE_S = 12 * 3600
"""A sign-in lasts this long: the browser drops the cookie then, and the console refuses an older one."""


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def admin_key(root: Path, host: str, explicit: str | None) -> tuple[str | None, bool]:
    """(the key the console requires or None, whether it was just created and must be shown once).

    ``--admin-key`` is always honoured; without it a gateway on loopback needs none, and one on any other
    interface uses ``<state dir>/admin.key``, created (mode 0600) on the first such start.
    """
    if explicit:
        return explicit, False
    if is_loopback(host):
        return None, False
    path = root / KEY_FILE
    try:
        key = path.read_text().strip()
        if key:
            return key, False
    except FileNotFoundError:
        pass
    key = secrets.token_urlsafe(24)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(key + "\n")
    return key, True


def matches(sent: str | None, key: str) -> bool:
    return bool(sent) and hmac.compare_digest(sent.encode(), key.encode())  # type: ignore[union-attr]


def cookie_value(key: str, issued: int | None = None) -> str:
    """What the sign-in cookie holds: ``<issued-at>.<MAC of it under the key>``, not the key (it opens only this
    console, and only for ``COOKIE_MAX_AGE_S`` after ``issued``, a Unix time; default now)."""
    at = str(int(time.time()) if issued is None else issued)
    return f"{at}.{_mac(key, at)}"


def cookie_valid(value: str | None, key: str, now: float | None = None) -> bool:
    """Whether ``value`` is a cookie ``cookie_value(key)`` made less than ``COOKIE_MAX_AGE_S`` ago."""
    at, _, mac = (value or "").partition(".")
    if not at.isdigit() or not matches(mac, _mac(key, at)):
        return False
    age = (time.time() if now is None else now) - int(at)
    return -60 <= age < COOKIE_MAX_AGE_S  # a minute of clock skew, no more


def _mac(key: str, issued: str) -> str:
    return hmac.new(key.encode(), b"isvc console session " + issued.encode(), "sha256").hexdigest()


class Throttle:
    """Wrong admin keys per client address: after ``limit`` within ``window_s`` the address is refused until the
    oldest of them is ``window_s`` old. In memory, per gateway process.

    All addresses together may also miss ``total_limit`` times a window: a process on the gateway's own machine
    can name any address in ``X-Forwarded-For`` (uvicorn trusts it from 127.0.0.1, for a local TLS proxy), so
    the per-address count alone would not bound its guesses. A signed-in cookie still opens the console then.
    """

    _ALL = "*"

    def __init__(
        self, limit: int = 5, window_s: float = 60.0, max_clients: int = 10_000, total_limit: int = 50
    ) -> None:
        self.limit, self.window_s, self.max_clients, self.total_limit = limit, window_s, max_clients, total_limit
        self._failures: dict[str, deque[float]] = {}

    def retry_after(self, client: str) -> int | None:
        """Seconds until ``client`` may try again (at least 1), or None if it may now."""
        waits = [
            times[0] + self.window_s - time.monotonic()
            for times, limit in ((self._recent(client), self.limit), (self._recent(self._ALL), self.total_limit))
            if len(times) >= limit
        ]
        return max(1, math.ceil(max(waits))) if waits else None

    def failed(self, client: str) -> None:
        if client not in self._failures and len(self._failures) >= self.max_clients:
            for other in list(self._failures):
                self._recent(other)  # forgets an address with nothing recent
            oldest = next((other for other in self._failures if other != self._ALL), None)
            if len(self._failures) >= self.max_clients and oldest is not None:
                del self._failures[oldest]  # else the oldest address, never the total
        self._failures.setdefault(client, deque()).append(time.monotonic())
        self._failures.setdefault(self._ALL, deque()).append(time.monotonic())

    def _recent(self, client: str) -> deque[float]:
        times = self._failures.get(client, deque())
        while times and times[0] <= time.monotonic() - self.window_s:
            times.popleft()
        if not times:
            self._failures.pop(client, None)
        return times
