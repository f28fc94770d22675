"""Inbox: how work crosses from the event loop to an engine's threads, for both engines (no torch).

The event loop ``put``s (from any thread); engine threads ``take_all`` and, when there is
nothing to do, ``wait``. When an engine dies, ``close`` hands back everything not yet taken
and every later ``put`` is refused, under one lock, so no request can slip in after the last
one was failed and wait forever.

An engine with several worker threads (the encoder's) keeps the rest of its own state under
``lock`` too, so a worker can check that state and start waiting without missing a wake-up;
``wake_one`` wakes the lowest-numbered idle worker, which is the one an engine may let use
every core.
"""

from __future__ import annotations

import threading
from collections import deque
from typing import Generic, TypeVar

T = TypeVar("T")


class Inbox(Generic[T]):
    """A thread-safe queue with idle workers, closed for good when its engine dies."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self._items: deque[T] = deque()
        self._idle: dict[int, threading.Condition] = {}
        self.closed_by: BaseException | None = None
        """The engine's fatal error once ``close`` ran: ``put`` refuses from then on."""

    def __len__(self) -> int:
        return len(self._items)

    def items(self) -> list[T]:
        """A snapshot of what waits (for counting; any thread)."""
        return list(self._items)

    def put(self, item: T) -> bool:
        """Queue ``item`` and wake an idle worker; False (nothing queued) once closed."""
        with self.lock:
            if self.closed_by is not None:
                return False
            self._items.append(item)
            self.wake_one()
            return True

    def pop(self) -> T | None:
        """The oldest item, or None when empty (one at a time: a fault leaves the rest queued for ``close``)."""
        with self.lock:
            return self._items.popleft() if self._items else None

    def take_all(self) -> list[T]:
        """Everything queued, oldest first."""
        with self.lock:
            items = list(self._items)
            self._items.clear()
            return items

    def wait(self, worker: int = 0, timeout: float = 0.5) -> None:
        """Sleep until a ``put``/``wake_one``/``wake_all`` picks this worker, or ``timeout`` passes.

        Callers check their own state under ``lock`` first and call this while still holding it.
        """
        with self.lock:
            if self._items and self.next_up(worker):
                return
            wakeup = self._idle[worker] = threading.Condition(self.lock)
            try:
                wakeup.wait(timeout)
            finally:
                del self._idle[worker]

    def next_up(self, worker: int) -> bool:
        """Whether queued work is this worker's to take: no lower-numbered worker is idle."""
        with self.lock:
            return not any(idle < worker for idle in self._idle)

    def wake_one(self) -> None:
        with self.lock:
            if self._idle:
                self._idle[min(self._idle)].notify()

    def wake_all(self) -> None:
        with self.lock:
            for wakeup in self._idle.values():
                wakeup.notify()

    def close(self, exc: BaseException) -> list[T]:
        """Refuse every later ``put``; return what was queued and not taken, and wake every worker."""
        with self.lock:
            if self.closed_by is None:
                self.closed_by = exc
            left = self.take_all()
            self.wake_all()
            return left
