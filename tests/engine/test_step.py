"""The step's row layout on plain Python objects: which logit rows are whose, and why."""

from __future__ import annotations

from isvc.engine.params import SamplingParams
from isvc.engine.request import EngineRequest
from isvc.engine.scheduler import PrefillChunk, SchedulerOutput
from isvc.engine.step import RowKind, build_layout


def running(name: str, prompt_len: int, slot: int, computed: int, **params: object) -> EngineRequest:
    req = EngineRequest(name, list(range(100, 100 + prompt_len)), SamplingParams(max_tokens=8, **params))  # type: ignore[arg-type]
    req.slot, req.num_computed_tokens = slot, computed
    return req


def spans(layout: object) -> list[tuple[str, RowKind, int, int, int]]:
    return [
        (s.request.request_id, s.kind, s.row, s.num_rows, s.position)
        for group in ("sampled", "verified", "prompt_scored")
        for s in getattr(layout, group)
    ]


def test_decode_rows_then_draft_runs_then_prompt_chunks() -> None:
    dec = running("dec", 3, slot=0, computed=4)
    dec.output_token_ids = [7, 8]
    spec = running("spec", 3, slot=1, computed=3)
    spec.output_token_ids = [9]
    out = SchedulerOutput(decode=[dec, spec], drafts={spec: [5, 6]}, num_slots=2)
    layout = build_layout(out)
    assert (layout.decode_slots, layout.decode_tokens, layout.decode_positions) == ([0], [8], [4])
    assert [(c.slot, c.token_ids, c.start) for c in layout.chunks] == [(1, [9, 5, 6], 3)]
    assert layout.logit_rows == [0, 1, 2, 3]  # every row: one decode, the last token and two drafts
    assert spans(layout) == [("dec", RowKind.DECODE, 0, 1, 4), ("spec", RowKind.VERIFY, 1, 3, 3)]


def test_a_prompt_chunk_gets_logits_for_its_last_row_only_when_it_completes_the_prompt() -> None:
    dec = running("dec", 2, slot=0, computed=2)
    dec.output_token_ids = [1]
    mid = running("mid", 10, slot=1, computed=0)
    last = running("last", 10, slot=2, computed=6)
    out = SchedulerOutput(decode=[dec], prefill=[PrefillChunk(mid, 0, 5), PrefillChunk(last, 6, 10)], num_slots=3)
    layout = build_layout(out)
    # rows: 0 decode, 1..5 mid's chunk, 6..9 last's chunk
    assert layout.logit_rows == [0, 9]
    assert spans(layout) == [("dec", RowKind.DECODE, 0, 1, 2), ("last", RowKind.PROMPT_LAST, 1, 1, 9)]


def test_scored_prompt_chunks_get_every_row_and_the_last_one_is_also_sampled() -> None:
    first = running("first", 6, slot=0, computed=0, prompt_logprobs=0)
    rest = running("rest", 6, slot=1, computed=4, prompt_logprobs=2)
    out = SchedulerOutput(prefill=[PrefillChunk(first, 0, 4), PrefillChunk(rest, 4, 6)], num_slots=2)
    layout = build_layout(out)
    assert layout.logit_rows == [0, 1, 2, 3, 4, 5]
    assert spans(layout) == [
        ("rest", RowKind.PROMPT_LAST, 5, 1, 5),
        ("first", RowKind.PROMPT_LOGPROBS, 0, 4, 0),
        ("rest", RowKind.PROMPT_LOGPROBS, 4, 2, 4),
    ]
