"""The scheduler on plain Python objects: budgets, slots, and compaction."""

from __future__ import annotations

from isvc.engine.params import SamplingParams
from isvc.engine.request import EngineRequest, RequestStatus
from isvc.engine.scheduler import Scheduler, StepTokens


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


# -- update_from_output: the step's tokens in, advanced and finished requests out -----------


def test_update_advances_each_request_and_appends_its_token() -> None:
    sched = Scheduler(max_num_seqs=4, max_num_batched_tokens=10)
    done, long = make_requests(2, prompt_len=3)
    long.prompt_token_ids = list(range(20))
    for r in (done, long):
        sched.add(r)
    out = sched.schedule()  # all of done's prompt, 7 tokens of long's
    updates = sched.update_from_output(out, StepTokens({done: [7]}))
    assert done.num_computed_tokens == 3 and long.num_computed_tokens == 7
    assert [(u.request, u.token_ids, u.status) for u in updates] == [(done, [7], None)]
    assert done.output_token_ids == [7] and long.output_token_ids == []

    out = sched.schedule()
    assert out.decode == [done] and [(c.start, c.end) for c in out.prefill] == [(7, 16)]
    sched.update_from_output(out, StepTokens({done: [8]}))
    assert done.num_computed_tokens == 4 and done.output_token_ids == [7, 8]
    assert long.num_computed_tokens == 16


def test_eos_stop_ids_and_max_tokens_finish_the_request_and_free_its_slot() -> None:
    sched = Scheduler(max_num_seqs=4, max_num_batched_tokens=100, eos_ids={0})
    eos, stop_id, length, ignoring = (
        EngineRequest(name, [1, 2, 3], params)
        for name, params in (
            ("eos", SamplingParams(max_tokens=8)),
            ("stop-id", SamplingParams(max_tokens=8, stop_token_ids=(9,))),
            ("length", SamplingParams(max_tokens=1)),
            ("ignoring", SamplingParams(max_tokens=8, ignore_eos=True)),
        )
    )
    for r in (eos, stop_id, length, ignoring):
        sched.add(r)
    out = sched.schedule()
    updates = sched.update_from_output(out, StepTokens({eos: [0], stop_id: [9], length: [5], ignoring: [0]}))
    assert [u.status for u in updates] == [
        RequestStatus.FINISHED_STOPPED,
        RequestStatus.FINISHED_STOPPED,
        RequestStatus.FINISHED_LENGTH,
        None,
    ]
    assert sched.running == [ignoring] and ignoring.slot == 0
    assert all(r.status.finished and r.slot is None for r in (eos, stop_id, length))


def test_a_verified_run_stops_at_the_first_token_that_ends_the_request() -> None:
    sched = Scheduler(max_num_seqs=2, max_num_batched_tokens=100, eos_ids={0}, num_speculative_tokens=3)
    a = EngineRequest("a", [1, 2, 3, 1, 2], SamplingParams(max_tokens=10, temperature=0))
    sched.add(a)
    sched.update_from_output(sched.schedule(), StepTokens({a: [3]}))
    out = sched.schedule()
    assert out.drafts == {a: [1, 2, 3]}  # what followed the last "1 2 3"
    computed = a.num_computed_tokens
    update = sched.update_from_output(out, StepTokens({a: [1, 2, 7]}))[0]
    assert a.num_computed_tokens == computed + 3  # the last token and the two accepted drafts
    assert update.token_ids == [1, 2, 7] and update.status is None

    out = sched.schedule()
    update = sched.update_from_output(out, StepTokens({a: [4, 0, 5]}))[0]
    assert update.token_ids == [4, 0] and update.status == RequestStatus.FINISHED_STOPPED
    assert a.output_token_ids == [3, 1, 2, 7, 4, 0]


def test_drafts_only_in_small_decode_only_steps_and_within_max_tokens() -> None:
    sched = Scheduler(max_num_seqs=4, max_num_batched_tokens=100, num_speculative_tokens=3, speculative_max_batch=1)
    a = EngineRequest("a", [1, 2, 1, 2, 1, 2], SamplingParams(max_tokens=3, temperature=0))
    sampled = EngineRequest("s", [1, 2, 1, 2, 1, 2], SamplingParams(max_tokens=8, temperature=0.7))
    sched.add(a)
    out = sched.schedule()
    assert out.prefill and not out.drafts  # a prefill step
    sched.update_from_output(out, StepTokens({a: [1]}))
    assert sched.schedule().drafts == {a: [2]}  # room for one draft: max_tokens 3, one out, one to verify
    sched.add(sampled)
    out = sched.schedule()
    assert out.prefill and not out.drafts
    sched.update_from_output(out, StepTokens({a: [2], sampled: [1]}))
    assert sched.schedule().drafts == {}  # two decoding: above speculative_max_batch


def test_a_finish_moves_the_last_request_with_what_it_computed_in_the_same_step() -> None:
    """Every request advances before any finishes: the moved KV includes this step's positions."""
    sched = Scheduler(max_num_seqs=3, max_num_batched_tokens=100, eos_ids={0})
    a, b, c = make_requests(3, prompt_len=4)
    for r in (a, b, c):
        sched.add(r)
    out = sched.schedule()
    sched.update_from_output(out, StepTokens({a: [0], b: [5]}, errors={c: RuntimeError("its own fault")}))
    assert a.status == RequestStatus.FINISHED_STOPPED and c.slot == 0
    assert [(m.src, m.dst, m.length) for m in sched.take_moves()] == [(2, 0, 4)]
    assert c.output_token_ids == []  # a failed request gets no tokens (the output processor fails it)


def test_forced_tokens_are_drafted_in_steps_of_any_size_inside_the_budget() -> None:
    from isvc.engine.params import StructuredOutput

    json_greedy = SamplingParams(max_tokens=50, temperature=0, structured=StructuredOutput("json_object"))
    json_sampled = SamplingParams(max_tokens=50, temperature=0.7, structured=StructuredOutput("json_object"))

    def step(budget: int) -> tuple[list[EngineRequest], dict]:
        sched = Scheduler(max_num_seqs=8, max_num_batched_tokens=budget, num_speculative_tokens=3)
        sched.forced_tokens = lambda req, room: [7, 8, 9][:room]  # what the grammar would force
        requests = [
            EngineRequest("c0", [1, 2], json_greedy),
            EngineRequest("c1", [1, 2], json_greedy),
            EngineRequest("free", [1, 2], SamplingParams(max_tokens=50, temperature=0)),
            EngineRequest("sampled", [1, 2], json_sampled),
        ]
        for req in requests:
            sched.add(req)
        while any(r.prefilling for r in requests):
            complete_prefill(sched)
        sched.update_from_output(sched.schedule(), StepTokens({r: [5] for r in requests}))
        out = sched.schedule()
        assert len(out.decode) == 4 and len(out.decode) + sum(len(d) for d in out.drafts.values()) <= budget
        return requests, out.drafts

    requests, drafts = step(budget=100)  # four decoding: far above speculative_max_batch
    assert drafts == {requests[0]: [7, 8, 9], requests[1]: [7, 8, 9]}  # constrained greedy requests only
    requests, drafts = step(budget=6)
    assert drafts == {requests[0]: [7, 8]}  # inside the step's token budget

    # prompts come first: a waiting request's chunk takes the budget before any draft
    sched = Scheduler(max_num_seqs=8, max_num_batched_tokens=4, num_speculative_tokens=3)
    sched.forced_tokens = lambda req, room: [7, 8, 9][:room]
    first, waiting = EngineRequest("c", [1, 2], json_greedy), EngineRequest("w", [1, 2, 3], json_greedy)
    sched.add(first)
    complete_prefill(sched)
    sched.update_from_output(sched.schedule(), StepTokens({first: [5]}))
    sched.add(waiting)
    out = sched.schedule()
    assert [c.request for c in out.prefill] == [waiting] and out.drafts == {}  # 1 decode row + 3 prompt tokens
