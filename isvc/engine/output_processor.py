"""OutputProcessor: what happens to a request's tokens after the forward pass.

The engine core owns the loop and the step (schedule, forward, logit rows); this module
owns each request from its logits on, as vLLM's ``OutputProcessor`` does: sampling the
step's rows, accepting each token (EOS, stop strings, length), detokenizing, building
logprobs, emitting deltas, and finishing or failing the request. One request's work here
is guarded: an error fails that request alone, and the rest of the batch keeps its tokens.
It runs on the engine thread only.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from isvc.engine.detokenizer import IncrementalDetokenizer
from isvc.engine.metrics import EngineMetrics
from isvc.engine.outputs import RequestOutput, TokenLogprob
from isvc.engine.request import EngineRequest, RequestStatus
from isvc.engine.sampler import Sampler, SampleResult
from isvc.engine.scheduler import PrefillChunk, Scheduler
from isvc.engine.stop import StopChecker

logger = logging.getLogger(__name__)

Emit = Callable[[RequestOutput], None]


@dataclass(eq=False)
class TrackedRequest:
    """Per-request output state beside the scheduler's EngineRequest."""

    request: EngineRequest
    emit: Emit
    detok: IncrementalDetokenizer
    stop: StopChecker
    text: str = ""
    sent_chars: int = 0
    first_token_s: float | None = None
    pending_logprobs: list[TokenLogprob] = field(default_factory=list)
    prompt_logprobs: list[TokenLogprob | None] = field(default_factory=list)
    pending_ids: list[int] = field(default_factory=list)


class OutputProcessor:
    def __init__(
        self,
        tokenizer: Any,
        eos_ids: set[int],
        max_model_len: int,
        scheduler: Scheduler,
        sampler: Sampler,
        metrics: EngineMetrics,
    ) -> None:
        self.tokenizer = tokenizer
        self.eos_ids = eos_ids
        self.max_model_len = max_model_len
        self.scheduler = scheduler
        self.sampler = sampler
        self.metrics = metrics
        self.requests: dict[str, TrackedRequest] = {}
        self.num_accepted = 0
        """Tokens accepted since the core last reset it (once per step)."""

    # -- admission and the end of a request ------------------------------------------------

    def add(self, request: EngineRequest, emit: Emit) -> bool:
        """Track ``request``; False (and its failure emitted) if its own setup fails."""
        p = request.params
        try:
            tracked = TrackedRequest(
                request=request,
                emit=emit,
                detok=IncrementalDetokenizer(self.tokenizer, request.prompt_token_ids, p.skip_special_tokens),
                stop=StopChecker(p.stop),
            )
            self.sampler.add(request.request_id, p)
        except Exception as exc:
            logger.warning("request %s refused at admission: %r", request.request_id, exc)
            self.metrics.failed()
            emit(failed_output(request, exc))
            return False
        self.requests[request.request_id] = tracked
        return True

    def abort(self, request_id: str) -> None:
        """The client went away: free the request, tell nobody."""
        t = self.requests.get(request_id)
        if t is not None:
            self.finish(t, RequestStatus.FINISHED_ABORTED, notify=False)
            self.metrics.aborted()

    def finish(
        self, t: TrackedRequest, status: RequestStatus, notify: bool = True, error: BaseException | None = None
    ) -> None:
        req = t.request
        self.scheduler.finish(req, status)
        self.requests.pop(req.request_id, None)
        self.sampler.forget(req.request_id)
        self.metrics.finished(time.monotonic() - req.arrival_s)
        if notify:
            self._emit_delta(t, final=True, finish_reason=status.finish_reason, error=error)

    def fail(self, req: EngineRequest, exc: BaseException) -> None:
        """An unexpected error in one request's own work: that request ends with it, alone."""
        logger.warning("request %s failed: %r", req.request_id, exc, exc_info=exc)
        self.metrics.failed()
        t = self.requests.get(req.request_id)
        if t is None:
            return  # already finished (the error came from its final emit): nothing left to free
        try:
            self.finish(t, RequestStatus.FINISHED_ERROR, error=exc)
        except Exception:
            logger.exception("could not report the failure of request %s", req.request_id)

    def fail_running(self, exc: BaseException) -> None:
        """A shared fault (the forward pass): every running request ends with it."""
        for t in list(self.requests.values()):
            if t.request.status == RequestStatus.RUNNING:
                self.metrics.failed()
                self.finish(t, RequestStatus.FINISHED_ERROR, error=exc)

    def take_all(self) -> list[tuple[EngineRequest, Emit]]:
        """Every tracked request and its emit, forgotten here (the engine is dying)."""
        held = [(t.request, t.emit) for t in self.requests.values()]
        self.requests.clear()
        return held

    # -- a step's results -------------------------------------------------------------------

    def sample_and_accept(self, logits: torch.Tensor, rows: list[EngineRequest]) -> None:
        """One batched sample for all rows; if it raises, row by row, failing only the rows that raise.

        Row by row gives greedy rows the very same tokens (an argmax per row); a seeded row
        draws from its own generator, so it keeps its draws unless the failed batch had
        already drawn its noise (the last thing the batch does before the argmax).
        """
        try:
            result = self.sampler.sample(
                logits, [q.request_id for q in rows], [q.params for q in rows], [q.output_token_ids for q in rows]
            )
        except Exception:
            logger.exception("batched sampling failed; sampling its %d rows one by one", len(rows))
            for i, req in enumerate(rows):
                try:
                    one = self.sampler.sample(logits[i : i + 1], [req.request_id], [req.params], [req.output_token_ids])
                except Exception as exc:
                    self.fail(req, exc)
                    continue
                tracked = self.requests.get(req.request_id)
                if tracked is not None:
                    self._accept_row(tracked, one.token_ids[0], self._logprob(req, one, 0), time.monotonic())
            return
        now = time.monotonic()
        for i, req in enumerate(rows):
            tracked = self.requests.get(req.request_id)
            if tracked is not None:
                lp = self._logprob(req, result, i) if result.logprobs is not None else None
                self._accept_row(tracked, result.token_ids[i], lp, now)

    def accept_verified(self, req: EngineRequest, tokens: list[int], now: float) -> None:
        """A speculating request's confirmed tokens, in order, up to the first that ends it."""
        for token in tokens:
            tracked = self.requests.get(req.request_id)
            if tracked is None or req.status.finished:
                return  # a stop, EOS or max_tokens among them ends the request there
            self._accept_row(tracked, token, None, now)

    def record_prompt_logprobs(self, chunk: PrefillChunk, logits: torch.Tensor) -> None:
        """Echo + logprobs: score each prompt token of ``chunk`` (row j predicts token start + j + 1)."""
        t = self.requests[chunk.request.request_id]
        prompt = chunk.request.prompt_token_ids
        k = min(chunk.request.params.prompt_logprobs or 0, logits.shape[-1])
        logprobs = torch.log_softmax(logits, dim=-1)
        if chunk.start == 0:
            t.prompt_logprobs.append(None)  # the first prompt token has no logprob
        # Up to the first token of the next chunk; the slice stops at the prompt's end.
        targets = prompt[chunk.start + 1 : chunk.end + 1]
        rows = logprobs[: len(targets)]
        picked = rows.gather(1, torch.tensor(targets, dtype=torch.long)[:, None])[:, 0].tolist()
        tops = rows.topk(k, dim=-1) if k > 0 else None
        for j, tok in enumerate(targets):
            top = []
            if tops is not None:
                top = [(i, self._piece(i), v) for i, v in zip(tops.indices[j].tolist(), tops.values[j].tolist())]
            t.prompt_logprobs.append(TokenLogprob(tok, self._piece(tok), picked[j], top))

    # -- one token of one request -------------------------------------------------------------

    def _accept_row(self, t: TrackedRequest, token_id: int, lp: TokenLogprob | None, now: float) -> None:
        """Stop checks, detokenizing and emitting for one request: a failure fails it alone."""
        try:
            self._accept_token(t, token_id, lp, now)
        except Exception as exc:
            self.fail(t.request, exc)

    def _accept_token(self, t: TrackedRequest, token_id: int, lp: TokenLogprob | None, now: float) -> None:
        req = t.request
        p = req.params
        if t.first_token_s is None:
            t.first_token_s = now
            self.metrics.first_token(now - req.arrival_s)
        req.output_token_ids.append(token_id)
        self.num_accepted += 1
        t.pending_ids.append(token_id)
        if lp is not None:
            t.pending_logprobs.append(lp)
        status: RequestStatus | None = None
        is_eos = (token_id in self.eos_ids and not p.ignore_eos) or token_id in p.stop_token_ids
        if not is_eos:
            before = len(t.text)
            t.text += t.detok.add(token_id)
            cut = t.stop.check(t.text, before)
            if cut is not None:
                t.text = t.text[:cut]
                status = RequestStatus.FINISHED_STOPPED
        else:
            status = RequestStatus.FINISHED_STOPPED
        if status is None and (len(req.output_token_ids) >= p.max_tokens or req.num_tokens >= self.max_model_len):
            status = RequestStatus.FINISHED_LENGTH
        if status is not None:
            if status == RequestStatus.FINISHED_LENGTH:
                t.text += t.detok.flush()
            self.finish(t, status)
        else:
            self._emit_delta(t, final=False)

    def _emit_delta(
        self, t: TrackedRequest, final: bool, finish_reason: str | None = None, error: BaseException | None = None
    ) -> None:
        # Text that may be the start of a stop string waits until we know.
        upto = len(t.text) if final else len(t.text) - t.stop.holdback(t.text)
        delta = t.text[t.sent_chars : upto] if upto > t.sent_chars else ""
        if not final and not delta and not t.pending_ids:
            return
        t.sent_chars = max(t.sent_chars, upto)
        req = t.request
        out = RequestOutput(
            request_id=req.request_id,
            text=delta,
            token_ids=t.pending_ids,
            num_prompt_tokens=req.num_prompt_tokens,
            num_output_tokens=len(req.output_token_ids),
            finish_reason=finish_reason,
            logprobs=t.pending_logprobs if req.params.logprobs is not None else None,
            prompt_logprobs=t.prompt_logprobs or None,  # complete once the first token is sampled
            error=error,
        )
        t.pending_ids, t.pending_logprobs, t.prompt_logprobs = [], [], []
        t.emit(out)

    def _logprob(self, req: EngineRequest, result: SampleResult, i: int) -> TokenLogprob | None:
        if result.logprobs is None or req.params.logprobs is None:
            return None
        token_id = result.token_ids[i]
        top = result.top[i] if result.top else []
        return TokenLogprob(
            token_id, self._piece(token_id), result.logprobs[i], [(t, self._piece(t), v) for t, v in top]
        )

    def _piece(self, token_id: int) -> str:
        return self.tokenizer.decode([token_id], skip_special_tokens=False)


def failed_output(request: EngineRequest, error: BaseException) -> RequestOutput:
    """The last output of a request that ends in ``error`` (it may never have run)."""
    return RequestOutput(
        request_id=request.request_id,
        text="",
        token_ids=[],
        num_prompt_tokens=request.num_prompt_tokens,
        num_output_tokens=len(request.output_token_ids),
        finish_reason=RequestStatus.FINISHED_ERROR.finish_reason,
        error=error,
    )
