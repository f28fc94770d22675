"""Retry a network call with exponential backoff; the caller decides what is transient and translates the last error."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

from isvc.storage.settings import StorageSettings

logger = logging.getLogger(__name__)

T = TypeVar("T")

_MAX_DELAY_S = 30.0


def with_retries(
    call: Callable[[], T],
    *,
    what: str,
    settings: StorageSettings,
    transient: Callable[[BaseException], bool],
) -> T:
    """Run ``call`` up to ``settings.max_attempts`` times; re-raise the last error unchanged.

    ``call`` must be safe to repeat from scratch (each attempt rewrites its whole file).
    """
    delay_s = settings.backoff_s
    for attempt in range(1, settings.max_attempts + 1):
        try:
            return call()
        except Exception as exc:
            if attempt == settings.max_attempts or not transient(exc):
                raise
            logger.warning(
                "%s failed (attempt %d/%d: %s: %s); retrying in %.1fs",
                what,
                attempt,
                settings.max_attempts,
                type(exc).__name__,
                exc,
                delay_s,
            )
            time.sleep(delay_s)
            delay_s = min(delay_s * 2, _MAX_DELAY_S)
    raise AssertionError("unreachable")  # the loop returns or raises
