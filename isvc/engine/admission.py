"""The checks every engine makes before it takes a request (a 400 or a 429/503 before any work)."""

from __future__ import annotations

from collections.abc import Iterable

from isvc.engine.errors import EngineOverloaded
from isvc.errors import InvalidRequest


def check_token_ids(ids: Iterable[int], vocab_size: int, param: str) -> None:
    """Refuse ids the model has no row for (a prompt's, a stop list's): a 400 naming ``param``."""
    bad = next((t for t in ids if not 0 <= t < vocab_size), None)
    if bad is not None:
        raise InvalidRequest(f"token id {bad} is out of range: the vocabulary has {vocab_size} tokens", param=param)


def check_queue(running: int, waiting: int, wanted: int, max_queue: int) -> None:
    """Refuse ``wanted`` more requests when the waiting queue cannot hold them (callers map it to 429/503)."""
    if waiting + wanted > max_queue:
        raise EngineOverloaded(
            f"the server is at capacity ({running} running, {waiting} waiting, max_queue {max_queue}); retry shortly",
            retry_after_s=1,
        )
