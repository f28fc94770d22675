"""ModelRunner: the scheduler's output in, the step's logits and their layout out.

It owns what lives beside the model: the slot KV cache (slot moves, growing it for the
step) and the prefix cache (loading a reused prefix at admission, storing a prompt once
its KV is complete). It neither samples nor touches a request's tokens or counters: the
output processor reads the logits through the layout, and the scheduler is updated from
what that yields.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from isvc.engine.kv_cache import KVCache
from isvc.engine.llama import LlamaModel
from isvc.engine.metrics import EngineMetrics
from isvc.engine.prefix_cache import PrefixCache, PrefixHit
from isvc.engine.request import EngineRequest
from isvc.engine.scheduler import SchedulerOutput, SlotMove
from isvc.engine.step import StepLayout, build_layout


@dataclass(slots=True)
class StepResult:
    """One step that ran: what was scheduled, its row layout and the logits [R, V] it names."""

    scheduled: SchedulerOutput
    layout: StepLayout
    logits: torch.Tensor
    kv_usage: float
    """The share of the KV budget this step needs: dense slots x the longest request."""
    errors: dict[EngineRequest, BaseException] = field(default_factory=dict)
    """Requests whose own work in the runner failed (storing their prompt's KV)."""


class ModelRunner:
    def __init__(
        self, model: LlamaModel, cache: KVCache, prefix_cache: PrefixCache | None, metrics: EngineMetrics
    ) -> None:
        self.model = model
        self.cache = cache
        self.prefix_cache = prefix_cache
        self.metrics = metrics
        self._prefix_loads: list[tuple[EngineRequest, PrefixHit]] = []  # admitted, KV not yet copied

    def reuse_prefix(self, req: EngineRequest) -> None:
        """Scheduler hook at admission: start the prompt after its longest cached prefix."""
        if self.prefix_cache is None or req.params.prompt_logprobs is not None:
            return  # scoring every prompt token needs every row computed
        hit = self.prefix_cache.lookup(req.prompt_token_ids)
        self.metrics.prefix_lookup(req.num_prompt_tokens, hit.num_tokens if hit is not None else 0)
        if hit is not None:
            req.num_computed_tokens = hit.num_tokens
            self._prefix_loads.append((req, hit))

    def move_slots(self, moves: list[SlotMove]) -> None:
        for move in moves:
            self.cache.move(move.src, move.dst, move.length)

    def execute(self, out: SchedulerOutput) -> StepResult:
        """Run the step ``out`` describes. KVCacheFull (before anything ran) if it does not fit."""
        drafts = out.drafts
        need = max(
            [r.num_computed_tokens + 1 + len(drafts.get(r, ())) for r in out.decode] + [c.end for c in out.prefill]
        )
        self.cache.ensure(out.num_slots, need)
        for slot in out.admitted:
            self.cache.release(slot)
        for req, hit in self._prefix_loads:
            if req.slot is not None:  # not finished meanwhile
                PrefixCache.load(hit, self.cache, req.slot)
        self._prefix_loads.clear()
        layout = build_layout(out)
        logits = self.model.forward(layout, self.cache)
        kv_usage = out.num_slots * need * self.cache.bytes_per_slot_token / self.cache.budget_bytes
        result = StepResult(out, layout, logits, min(kv_usage, 1.0))
        if self.prefix_cache is not None:
            self._store_prompts(result)
        return result

    def _store_prompts(self, result: StepResult) -> None:
        """Keep the KV of each prompt completed in this step, for later prompts that start alike."""
        assert self.prefix_cache is not None
        for chunk in result.scheduled.prefill:
            req = chunk.request
            if chunk.completes_prompt and req.slot is not None:
                try:
                    self.prefix_cache.store(req.prompt_token_ids, self.cache, req.slot)
                except Exception as exc:
                    result.errors[req] = exc
