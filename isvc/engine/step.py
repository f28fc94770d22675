"""StepLayout: one step's rows, and which logit rows are whose and why, computed once per step.

The model runs a step as N rows: first one row per plainly decoding request, then chunks
(a speculating request's last token and its drafts, then the prompt chunks). Only some
rows get logits; ``logit_rows`` names them, in the order of the logits the model returns,
and each ``RowSpan`` says which request a run of those logits belongs to and what it is
for. The model's forward pass (llama.py) and the output processor both read this one
object, so the layout is written once. Plain lists and ints, built once per step: no
torch here.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import TYPE_CHECKING

from isvc.engine.request import EngineRequest

if TYPE_CHECKING:
    from isvc.engine.scheduler import SchedulerOutput


class RowKind(enum.Enum):
    DECODE = "decode"
    """One row: the next token of a decoding request (sampled)."""
    PROMPT_LAST = "prompt_last"
    """One row: the prompt's last token, whose logits give the first output token (sampled)."""
    VERIFY = "verify"
    """1 + k rows: the greedy token after the last token and after each of k drafts."""
    PROMPT_LOGPROBS = "prompt_logprobs"
    """One row per prompt token of a chunk: row j scores the prompt token after it (echo + logprobs)."""


@dataclass(slots=True)
class RowSpan:
    """Logit rows ``row .. row + num_rows - 1`` of the step: ``request``'s, for ``kind``."""

    request: EngineRequest
    kind: RowKind
    row: int
    num_rows: int
    position: int
    """The token position of the span's first row."""


@dataclass(slots=True)
class ChunkInput:
    """Consecutive tokens of one slot run as one chunk, from position ``start``."""

    slot: int
    token_ids: list[int]
    start: int


@dataclass(slots=True)
class StepLayout:
    num_slots: int
    """Slots in use (dense 0..n-1)."""
    decode_slots: list[int]
    decode_tokens: list[int]
    decode_positions: list[int]
    chunks: list[ChunkInput]
    logit_rows: list[int]
    """Row i of the step's logits is the step's row ``logit_rows[i]``."""
    sampled: list[RowSpan]
    """DECODE and PROMPT_LAST spans, one row each, in row order."""
    verified: list[RowSpan]
    prompt_scored: list[RowSpan]


def build_layout(out: SchedulerOutput) -> StepLayout:
    """The step the scheduler cut, as rows: plain decodes, draft runs, then prompt chunks."""
    drafts = out.drafts
    plain = [r for r in out.decode if r not in drafts] if drafts else out.decode
    positions = [r.num_computed_tokens for r in plain]
    layout = StepLayout(
        num_slots=out.num_slots,
        decode_slots=[_slot(r) for r in plain],
        decode_tokens=[r.token_at(p) for r, p in zip(plain, positions)],
        decode_positions=positions,
        chunks=[],
        logit_rows=list(range(len(plain))),
        sampled=[RowSpan(r, RowKind.DECODE, i, 1, p) for i, (r, p) in enumerate(zip(plain, positions))],
        verified=[],
        prompt_scored=[],
    )
    chunks, logit_rows = layout.chunks, layout.logit_rows
    row = len(plain)  # the step's next row
    for req, proposal in drafts.items():
        pos = req.num_computed_tokens
        n = len(proposal) + 1
        chunks.append(ChunkInput(_slot(req), [req.token_at(pos), *proposal], pos))
        layout.verified.append(RowSpan(req, RowKind.VERIFY, len(logit_rows), n, pos))
        logit_rows.extend(range(row, row + n))
        row += n
    for chunk in out.prefill:
        req = chunk.request
        n = chunk.end - chunk.start
        chunks.append(ChunkInput(_slot(req), req.prompt_token_ids[chunk.start : chunk.end], chunk.start))
        if req.params.prompt_logprobs is not None:
            layout.prompt_scored.append(RowSpan(req, RowKind.PROMPT_LOGPROBS, len(logit_rows), n, chunk.start))
            logit_rows.extend(range(row, row + n))
            if chunk.completes_prompt:  # the scored chunk's last row is sampled as well
                layout.sampled.append(RowSpan(req, RowKind.PROMPT_LAST, len(logit_rows) - 1, 1, chunk.end - 1))
        elif chunk.completes_prompt:
            layout.sampled.append(RowSpan(req, RowKind.PROMPT_LAST, len(logit_rows), 1, chunk.end - 1))
            logit_rows.append(row + n - 1)
        row += n
    return layout


def _slot(req: EngineRequest) -> int:
    assert req.slot is not None, "a scheduled request holds a slot"
    return req.slot
