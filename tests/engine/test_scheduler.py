"""The scheduler on plain Python objects: budgets, slots, and compaction."""

from __future__ import annotations

from isvc.engine.params import SamplingParams
from isvc.engine.request import EngineRequest, RequestStatus
from isvc.engine.scheduler import Scheduler


def make_requests(n: int, prompt_len: int) -> list[EngineRequest]:
    return [EngineRequest(f"r{i}", list(range(prompt_len)), SamplingParams(max_tokens=4)) for i in range(n)]


def complete_prefill(sched: Scheduler) -> None:
    out = sched.schedule()
    for chunk in out.prefill:
        chunk.request.num_computed_tokens = chunk.end


def test_max_num_seqs_bounds_the_batch() -> None:
    sched = Scheduler(max_num_seqs=2, max_num_batched_tokens=100)
    a, b, c = make_requests(3, prompt_len=4)
    for r in (a, b, c):
        sched.add(r)
    out = sched.schedule()
    assert [ch.request for ch in out.prefill] == [a, b]
    assert c.status == RequestStatus.WAITING and sched.num_waiting == 1


def test_long_prompt_is_chunked_and_decodes_keep_running() -> None:
    sched = Scheduler(max_num_seqs=4, max_num_batched_tokens=10)
    short, long = (
        EngineRequest("s", [1, 2], SamplingParams(max_tokens=8)),
        EngineRequest("l", list(range(25)), SamplingParams(max_tokens=8)),
    )
    sched.add(short)
    complete_prefill(sched)
    short.output_token_ids.append(5)  # sampled at the end of its prefill
    sched.add(long)
    budgets = []
    for _ in range(3):
        out = sched.schedule()
        assert out.decode == [short], "a running stream gets its token every step"
        budgets.append(out.num_tokens)
        short.num_computed_tokens += 1
        short.output_token_ids.append(5)
        for ch in out.prefill:
            ch.request.num_computed_tokens = ch.end
    assert budgets == [10, 10, 8]  # 1 decode + 9, 1 + 9, then 1 + the last 7 prompt tokens
    assert long.num_computed_tokens == 25 and not long.prefilling


def test_finished_request_frees_its_slot_and_the_last_slot_moves_in() -> None:
    sched = Scheduler(max_num_seqs=3, max_num_batched_tokens=100)
    a, b, c, d = make_requests(4, prompt_len=3)
    for r in (a, b, c, d):
        sched.add(r)
    complete_prefill(sched)
    assert [r.slot for r in (a, b, c)] == [0, 1, 2]
    sched.finish(a, RequestStatus.FINISHED_STOPPED)
    assert c.slot == 0 and a.slot is None
    moves = sched.take_moves()
    assert [(m.src, m.dst, m.length) for m in moves] == [(2, 0, 3)]
    out = sched.schedule()
    assert [ch.request for ch in out.prefill] == [d] and d.slot == 2


def test_abort_of_a_waiting_request_removes_it() -> None:
    sched = Scheduler(max_num_seqs=1, max_num_batched_tokens=100)
    a, b = make_requests(2, prompt_len=3)
    sched.add(a)
    sched.add(b)
    sched.schedule()
    sched.finish(b, RequestStatus.FINISHED_ABORTED)
    assert sched.num_waiting == 0 and b.status == RequestStatus.FINISHED_ABORTED
