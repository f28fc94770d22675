"""The console's admin key: required unless the gateway listens on loopback only; namespace API keys never grant it."""

from __future__ import annotations

import hmac
import ipaddress
import os
import secrets
from pathlib import Path

KEY_FILE = "admin.key"
COOKIE = "isvc_admin"


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


def cookie_value(key: str) -> str:
    """What the sign-in cookie holds: a MAC of the key, not the key (it opens only this console)."""
    return hmac.new(key.encode(), b"isvc console session", "sha256").hexdigest()
