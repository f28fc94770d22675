"""The hand-off from the event loop to engine threads (isvc.engine.inbox), without torch."""

from __future__ import annotations

import threading
import time

from isvc.engine.inbox import Inbox


def test_a_closed_inbox_returns_what_waited_and_refuses_the_rest() -> None:
    inbox: Inbox[str] = Inbox()
    assert inbox.put("a") and inbox.put("b")
    assert inbox.pop() == "a"
    error = RuntimeError("the loop broke")
    assert inbox.close(error) == ["b"]
    assert not inbox.put("c")  # refused: the caller fails it at once instead of leaving it to wait
    assert inbox.closed_by is error and len(inbox) == 0 and inbox.pop() is None


def _waiter(inbox: Inbox[str], worker: int, woken: list[int]) -> threading.Thread:
    def run() -> None:
        inbox.wait(worker, timeout=5)
        woken.append(worker)

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def _until(condition, timeout: float = 5.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.001)


def test_a_put_wakes_the_lowest_idle_worker_at_once() -> None:
    inbox: Inbox[str] = Inbox()
    woken: list[int] = []
    threads = [_waiter(inbox, worker, woken) for worker in (1, 0)]
    _until(lambda: len(inbox._idle) == 2)
    started = time.monotonic()
    inbox.put("x")
    _until(lambda: woken == [0])
    assert time.monotonic() - started < 4  # woken by the put, not by the 5 s timeout
    assert inbox.close(RuntimeError("stop")) == ["x"]  # close wakes the other one too
    for thread in threads:
        thread.join(timeout=5)
    assert woken == [0, 1]


def test_wait_returns_at_once_when_something_is_queued() -> None:
    inbox: Inbox[int] = Inbox()
    inbox.put(1)
    started = time.monotonic()
    inbox.wait(timeout=5)
    assert time.monotonic() - started < 1 and inbox.take_all() == [1]


def test_queued_work_is_left_to_a_lower_idle_worker() -> None:
    inbox: Inbox[str] = Inbox()
    woken: list[int] = []
    low = _waiter(inbox, 0, woken)
    _until(lambda: 0 in inbox._idle)
    with inbox.lock:  # worker 0 cannot run until the lock is free: "x" stays queued meanwhile
        inbox.put("x")
        assert not inbox.next_up(1) and inbox.next_up(0)
        started = time.monotonic()
        inbox.wait(1, timeout=0.2)  # does not return at once: the work is worker 0's
        assert time.monotonic() - started >= 0.15
    low.join(timeout=5)
    assert woken == [0]
