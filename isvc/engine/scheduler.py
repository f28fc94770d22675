"""Scheduler: which requests run in the next step, and how many of their tokens. Pure Python.

NOTE on the algorithm (after vLLM's): there is no separate prefill or decode phase.
Each request has ``num_computed_tokens`` (KV already in the cache) and a target
(all prompt tokens, then one new token per step). Each step first gives every
decoding request its one token, so running streams never stall, then spends the rest
of the token budget on prompt chunks: requests already prefilling first, then new
ones admitted from the waiting queue (FIFO) while batch slots remain.

Slots are dense: running requests occupy slots 0..n-1. When one leaves, the request
in the last slot moves into the hole, and the move is reported so the runner copies
that slot's KV (one slot, not the whole cache).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from isvc.engine.request import EngineRequest, RequestStatus


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
    prefill: list[PrefillChunk] = field(default_factory=list)

    @property
    def num_tokens(self) -> int:
        return len(self.decode) + sum(c.end - c.start for c in self.prefill)

    @property
    def empty(self) -> bool:
        return not self.decode and not self.prefill


@dataclass(frozen=True, slots=True)
class SlotMove:
    src: int
    dst: int
    length: int


class Scheduler:
    def __init__(
        self, max_num_seqs: int, max_num_batched_tokens: int, on_admit: Callable[[EngineRequest], None] | None = None
    ) -> None:
        """``on_admit`` runs when a request gets its slot, before its first chunk is cut; it
        may advance ``num_computed_tokens`` (a reused prompt prefix)."""
        self.on_admit = on_admit
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens
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
            if self.on_admit is not None:
                self.on_admit(req)
            budget -= self._add_chunk(out, req, budget)
        assert budget >= 0 and len(self.running) <= self.max_num_seqs
        return out

    @staticmethod
    def _add_chunk(out: SchedulerOutput, req: EngineRequest, budget: int) -> int:
        start = req.num_computed_tokens
        end = min(req.num_prompt_tokens, start + budget)
        out.prefill.append(PrefillChunk(req, start, end))
        return end - start

    def finish(self, request: EngineRequest, status: RequestStatus) -> None:
        """Remove a request (finished, aborted or failed) and free its slot; idempotent."""
        request.status = status
        if request.slot is None:
            try:
                self.waiting.remove(request)
            except ValueError:
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
