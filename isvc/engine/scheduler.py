"""Scheduler: which requests run in the next step, and how many of their tokens. Pure Python.

NOTE on the algorithm (after vLLM's): there is no separate prefill or decode phase.
Each request has ``num_computed_tokens`` (KV already in the cache) and a target
(all prompt tokens, then one new token per step). Each step first gives every
decoding request its one token, so running streams never stall, then spends the rest
of the token budget on prompt chunks: requests already prefilling first, then new
ones admitted from the waiting queue (FIFO) while batch slots remain. A small
decode-only step may also run prompt-lookup drafts (speculation.py) after a request's
token, to be verified in the same step.

Data in, data out: ``schedule()`` returns what the step runs; after the step,
``update_from_output()`` takes its new tokens, advances each request's
``num_computed_tokens``, appends the tokens and finishes the requests that hit EOS, a
stop token id, ``max_tokens`` or the context length (stop strings need text: the
output processor checks those and calls ``finish``).

Slots are dense: running requests occupy slots 0..n-1. When one leaves, the request
in the last slot moves into the hole, and the move is reported so the runner copies
that slot's KV (one slot, not the whole cache).
"""

from __future__ import annotations

import logging
import sys
from collections import deque
from collections.abc import Callable, Collection
from dataclasses import dataclass, field

from isvc.engine.request import EngineRequest, RequestStatus
from isvc.engine.speculation import can_speculate, propose

logger = logging.getLogger(__name__)

MAX_FORCED = 8
"""Most forced tokens drafted for one request in one step."""


@dataclass(slots=True)
class PrefillChunk:
    request: EngineRequest
    start: int
    end: int

    @property
    def completes_prompt(self) -> bool:
        return self.end == self.request.num_prompt_tokens


@dataclass(slots=True)
class SchedulerOutput:
    decode: list[EngineRequest] = field(default_factory=list)
    """Every decoding request: its next token runs (and its drafts, if it has some)."""
    prefill: list[PrefillChunk] = field(default_factory=list)
    drafts: dict[EngineRequest, list[int]] = field(default_factory=dict)
    """Draft tokens verified after the next token, for some requests of ``decode``."""
    num_slots: int = 0
    """Slots in use during the step (dense 0..n-1)."""
    admitted: list[int] = field(default_factory=list)
    """Slots given to requests in this step: whatever an earlier request left in them is stale."""

    @property
    def num_tokens(self) -> int:
        return len(self.decode) + sum(c.end - c.start for c in self.prefill)

    @property
    def empty(self) -> bool:
        return not self.decode and not self.prefill


@dataclass(slots=True)
class StepTokens:
    """What a step yielded per request, the scheduler's input after the step (no tensors)."""

    token_ids: dict[EngineRequest, list[int]] = field(default_factory=dict)
    """New tokens: one sampled, or a verified run (the matching drafts and the model's next token)."""
    errors: dict[EngineRequest, BaseException] = field(default_factory=dict)
    """Requests whose own work failed in this step: no tokens; the output processor fails them."""


@dataclass(slots=True)
class RequestUpdate:
    """One request's tokens appended by ``update_from_output``, and how it finished, if it did."""

    request: EngineRequest
    token_ids: list[int]
    status: RequestStatus | None
    """FINISHED_STOPPED (on an EOS or stop token id: the last token), FINISHED_LENGTH, or None."""


@dataclass(frozen=True, slots=True)
class SlotMove:
    src: int
    dst: int
    length: int


class Scheduler:
    def __init__(
        self,
        max_num_seqs: int,
        max_num_batched_tokens: int,
        on_admit: Callable[[EngineRequest], None] | None = None,
        *,
        max_model_len: int = sys.maxsize,
        eos_ids: Collection[int] = (),
        num_speculative_tokens: int = 0,
        speculative_max_batch: int = 1,
    ) -> None:
        """``on_admit`` runs when a request gets its slot, before its first chunk is cut; it
        may advance ``num_computed_tokens`` (a reused prompt prefix)."""
        self.on_admit = on_admit
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens
        self.max_model_len = max_model_len
        self.eos_ids = frozenset(eos_ids)
        self.num_speculative_tokens = num_speculative_tokens
        self.speculative_max_batch = speculative_max_batch
        self.forced_tokens: Callable[[EngineRequest, int], list[int]] | None = None
        """The tokens a structured output request's grammar forces next (up to the room given)."""
        self.waiting: deque[EngineRequest] = deque()
        self.running: list[EngineRequest] = []  # index == slot
        self.pending_moves: list[SlotMove] = []

    @property
    def num_waiting(self) -> int:
        return len(self.waiting)

    @property
    def num_running(self) -> int:
        return len(self.running)

    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def add(self, request: EngineRequest) -> None:
        request.status = RequestStatus.WAITING
        self.waiting.append(request)

    # -- before the step ---------------------------------------------------------------------

    def schedule(self) -> SchedulerOutput:
        out = SchedulerOutput()
        budget = self.max_num_batched_tokens
        for req in self.running:
            if not req.prefilling:
                out.decode.append(req)
        budget -= len(out.decode)
        for req in self.running:
            if budget <= 0:
                break
            if req.prefilling:
                budget -= self._add_chunk(out, req, budget)
        while budget > 0 and self.waiting and len(self.running) < self.max_num_seqs:
            req = self.waiting.popleft()
            req.status = RequestStatus.RUNNING
            req.slot = len(self.running)
            self.running.append(req)
            out.admitted.append(req.slot)
            if self.on_admit is not None:
                self.on_admit(req)
            budget -= self._add_chunk(out, req, budget)
        if self.num_speculative_tokens and self.forced_tokens is not None:  # what prompts left of the budget
            budget -= self._add_forced(out, budget)
        assert budget >= 0 and len(self.running) <= self.max_num_seqs
        out.num_slots = len(self.running)
        if self.num_speculative_tokens and not out.prefill and len(out.decode) <= self.speculative_max_batch:
            self._add_drafts(out)
        return out

    @staticmethod
    def _add_chunk(out: SchedulerOutput, req: EngineRequest, budget: int) -> int:
        start = req.num_computed_tokens
        end = min(req.num_prompt_tokens, start + budget)
        out.prefill.append(PrefillChunk(req, start, end))
        return end - start

    def _room(self, req: EngineRequest, most: int) -> int:
        return min(most, req.params.max_tokens - len(req.output_token_ids) - 1, self.max_model_len - req.num_tokens - 1)

    def _add_forced(self, out: SchedulerOutput, budget: int) -> int:
        """Drafts of what a constrained greedy request's grammar forces (JSON keys, quotes, commas), in a
        step of any size, in the budget prompt chunks left: the model takes them unless it tokenizes them
        otherwise, so each verified row is a token for a fraction of a step. Returns the rows added."""
        assert self.forced_tokens is not None
        used = 0
        for req in out.decode:
            room = self._room(req, min(MAX_FORCED, budget - used))
            if room <= 0 or req.params.structured is None or not can_speculate(req.params):
                continue
            try:
                forced = self.forced_tokens(req, room)
            except Exception:  # drafting only saves time: this request decodes plainly
                logger.exception("no forced tokens for request %s", req.request_id)
                continue
            if forced:
                out.drafts[req] = forced
                used += len(forced)
        return used

    def _add_drafts(self, out: SchedulerOutput) -> None:
        """Prompt-lookup drafts for the greedy requests of a small decode-only step (not drafted yet)."""
        for req in out.decode:
            room = self._room(req, self.num_speculative_tokens)
            try:
                if room > 0 and req not in out.drafts and can_speculate(req.params):
                    proposal = propose(req.prompt_token_ids + req.output_token_ids, room)
                    if proposal:
                        out.drafts[req] = proposal
            except Exception:  # drafting only saves time: this request decodes plainly
                logger.exception("no drafts for request %s", req.request_id)

    # -- after the step ----------------------------------------------------------------------

    def update_from_output(self, out: SchedulerOutput, step: StepTokens) -> list[RequestUpdate]:
        """Advance what ``out`` computed, append ``step``'s tokens, finish the requests that end.

        Called once after each step that ran. Every request advances before any request
        finishes: a finish moves the last slot's request into the hole, copying as many
        positions as that request has computed by then.
        """
        new = step.token_ids
        drafts = out.drafts
        for req in out.decode:
            # a verified run: the last token and the accepted drafts are cached
            req.num_computed_tokens += len(new[req]) if drafts and req in drafts and req in new else 1
        for chunk in out.prefill:
            chunk.request.num_computed_tokens = chunk.end
        return [self._append(req, tokens) for req, tokens in new.items() if not req.status.finished]

    def _append(self, req: EngineRequest, tokens: list[int]) -> RequestUpdate:
        """Append ``tokens`` in order, up to the first that ends the request."""
        p = req.params
        output = req.output_token_ids
        for i, token in enumerate(tokens):
            output.append(token)
            if (token in self.eos_ids and not p.ignore_eos) or token in p.stop_token_ids:
                status = RequestStatus.FINISHED_STOPPED
            elif len(output) >= p.max_tokens or req.num_tokens >= self.max_model_len:
                status = RequestStatus.FINISHED_LENGTH
            else:
                continue
            self.finish(req, status)
            return RequestUpdate(req, tokens[: i + 1] if i + 1 < len(tokens) else tokens, status)
        return RequestUpdate(req, tokens, None)

    def finish(self, request: EngineRequest, status: RequestStatus) -> None:
        """Remove a request (finished, aborted or failed) and free its slot; idempotent."""
        was_waiting = request.status == RequestStatus.WAITING
        request.status = status
        if request.slot is None:
            if was_waiting:
                try:
                    self.waiting.remove(request)
                except ValueError:  # its own setup failed before it was added
                    pass
            return
        hole = request.slot
        request.slot = None
        last = self.running.pop()
        if last is not request:
            self.running[hole] = last
            last.slot = hole
            self.pending_moves.append(SlotMove(src=len(self.running), dst=hole, length=last.num_computed_tokens))

    def take_moves(self) -> list[SlotMove]:
        moves, self.pending_moves = self.pending_moves, []
        return moves
