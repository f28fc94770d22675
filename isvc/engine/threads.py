"""A loop's own thread also runs its load and warm-up: every OpenMP op of a loop on one thread.

OpenMP thread teams belong to the thread that opens a parallel region. When the server
loads and warms up a model on one thread and then runs its loop on another, two teams exist
for two cores, and the second one's ops slow down (measured here, 2 threads each: a
45x384 @ 384x1536 matmul 214 -> 449 us, a layer norm 9 -> 69 us, a MiniLM forward 7 -> 14 ms),
whatever OMP_WAIT_POLICY / GOMP_SPINCOUNT say. So the engine thread does all three (the
encoder engine's workers each warm up on their own thread; only its worker 0 ever opens a team).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import TypeVar

T = TypeVar("T")


def start_engine_thread(name: str, init: Callable[[], T], run: Callable[[T], None]) -> tuple[T, threading.Thread]:
    """Run ``init`` on a new daemon thread, then ``run(init's result)`` on the same thread.

    Blocks until ``init`` is done and returns its result and the thread; an exception in
    ``init`` is raised here and the thread ends.
    """
    started: Future[T] = Future()

    def main() -> None:
        try:
            value = init()
        except BaseException as exc:
            started.set_exception(exc)
            return
        started.set_result(value)
        run(value)

    thread = threading.Thread(target=main, name=name, daemon=True)
    thread.start()
    return started.result(), thread
