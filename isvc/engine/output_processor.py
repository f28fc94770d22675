"""OutputProcessor: what happens to a request's tokens after the forward pass.

The runner returns the step's logits and their layout (which rows are whose, and why);
this module owns each request from its logits on, as vLLM's ``OutputProcessor`` does,
in two phases around the scheduler's update:

- ``sample``: the step's logits -> its tokens per request (sampling the sampled rows,
  verifying drafts, scoring prompt tokens); data for ``Scheduler.update_from_output``;
- ``process``: the tokens the scheduler appended -> text (detokenizing, stop strings,
  logprobs), emitted deltas, and the end of the requests that finished.

One request's work here is guarded: an error fails that request alone, and the rest of
the batch keeps its tokens. It runs on the engine thread only.
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
from isvc.engine.runner import StepResult
from isvc.engine.sampler import Sampler, SampleResult
from isvc.engine.scheduler import RequestUpdate, Scheduler, StepTokens
from isvc.engine.speculation import accepted
from isvc.engine.step import RowSpan
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
    stop_reason: int | str | None = None
    """The stop string or stop token id that ended the output (vLLM's stop_reason); None for EOS."""


class OutputProcessor:
    def __init__(
        self,
        tokenizer: Any,
        scheduler: Scheduler,
        sampler: Sampler,
        metrics: EngineMetrics,
        decoder_prompt: list[int] | None = None,
    ) -> None:
        self.tokenizer = tokenizer
        self.decoder_prompt = decoder_prompt
        """Encoder-decoder models: what their decoder reads before the output (``[decoder_start_token_id]``),
        where a decoder reads the request's prompt. The output is then a text of its own (its first
        token detokenized as a text's first, with no word-joining space), and ``repetition_penalty``
        counts the decoder's tokens, not the encoder's input, as transformers' ``generate`` does."""
        self.scheduler = scheduler
        self.sampler = sampler
        self.metrics = metrics
        self.requests: dict[str, TrackedRequest] = {}
        self._num_taken = 0  # tokens taken by the current process() call

    # -- admission and the end of a request ------------------------------------------------

    def add(self, request: EngineRequest, emit: Emit) -> bool:
        """Track ``request``; False (and its failure emitted) if its own setup fails."""
        p = request.params
        try:
            tracked = TrackedRequest(
                request=request,
                emit=emit,
                detok=IncrementalDetokenizer(
                    self.tokenizer,
                    request.prompt_token_ids if self.decoder_prompt is None else [],
                    p.skip_special_tokens,
                ),
                stop=StopChecker(p.stop),
            )
            self.sampler.add(request.request_id, p, request.grammar)
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
        """A shared fault (the forward pass): every request past the waiting queue ends with it.

        That includes one the scheduler finished in the failed step but nobody told yet."""
        for t in list(self.requests.values()):
            if t.request.status != RequestStatus.WAITING:
                self.metrics.failed()
                self.finish(t, RequestStatus.FINISHED_ERROR, error=exc)

    def take_all(self) -> list[tuple[EngineRequest, Emit]]:
        """Every tracked request and its emit, forgotten here (the engine is dying)."""
        held = [(t.request, t.emit) for t in self.requests.values()]
        self.requests.clear()
        return held

    # -- phase 1: the step's logits -> its tokens ------------------------------------------------

    def sample(self, result: StepResult) -> StepTokens:
        """Each request's new tokens from ``result``'s logits, and the requests whose own work failed."""
        step = StepTokens(errors=dict(result.errors))
        layout, logits = result.layout, result.logits
        for span in layout.prompt_scored:
            try:
                self._score_prompt(span, logits[span.row : span.row + span.num_rows])
            except Exception as exc:
                step.errors[span.request] = exc
        for span in layout.verified:
            req = span.request
            proposal = result.scheduled.drafts[req]
            verified = logits[span.row : span.row + span.num_rows]
            if req.request_id in self.sampler.matchers:  # structured output: each row masked by its grammar
                try:
                    tokens = self.sampler.verify(req.request_id, verified, proposal)
                except Exception as exc:
                    step.errors[req] = exc
                    continue
            else:
                tokens = accepted(proposal, verified.argmax(dim=-1).tolist())
            step.token_ids[req] = tokens
            self.metrics.speculated(len(proposal), len(tokens) - 1)
        spans = layout.sampled
        if step.errors:
            spans = [s for s in spans if s.request not in step.errors]
        if spans:
            rows = [s.row for s in spans]
            sel = logits if len(rows) == logits.shape[0] else logits[torch.tensor(rows)]
            self._sample_rows(sel, [s.request for s in spans], step)
        return step

    def _sample_rows(self, logits: torch.Tensor, rows: list[EngineRequest], step: StepTokens) -> None:
        """One batched sample for all rows; if it raises, row by row, failing only the rows that raise.

        Row by row gives greedy rows the very same tokens (an argmax per row); a seeded row
        draws from its own generator, so it keeps its draws unless the failed batch had
        already drawn its noise (the last thing the batch does before the argmax).
        """
        try:
            result = self.sampler.sample(
                logits,
                [q.request_id for q in rows],
                [q.params for q in rows],
                [q.output_token_ids for q in rows],
                [self._seen_prompt(q) for q in rows],
            )
        except Exception:
            logger.exception("batched sampling failed; sampling its %d rows one by one", len(rows))
            for i, req in enumerate(rows):
                try:
                    one = self.sampler.sample(
                        logits[i : i + 1],
                        [req.request_id],
                        [req.params],
                        [req.output_token_ids],
                        [self._seen_prompt(req)],
                    )
                    self._take_sample(req, one, 0, step)
                except Exception as exc:
                    step.errors[req] = exc
            return
        for i, req in enumerate(rows):
            try:
                self._take_sample(req, result, i, step)
            except Exception as exc:
                step.errors[req] = exc

    def _seen_prompt(self, req: EngineRequest) -> list[int]:
        """The tokens before the output that ``repetition_penalty`` counts (the decoder's)."""
        return req.prompt_token_ids if self.decoder_prompt is None else self.decoder_prompt

    def _take_sample(self, req: EngineRequest, result: SampleResult, i: int, step: StepTokens) -> None:
        t = self.requests[req.request_id]
        if result.logprobs is not None and req.params.logprobs is not None:
            t.pending_logprobs.append(self._logprob(result, i))  # sent with the token, in process()
        token_id = result.token_ids[i]
        self.sampler.accept(req.request_id, token_id)
        step.token_ids[req] = [token_id]

    def _score_prompt(self, span: RowSpan, logits: torch.Tensor) -> None:
        """Echo + logprobs: score each prompt token of a chunk (row j predicts token position + j + 1)."""
        req = span.request
        t = self.requests[req.request_id]
        k = min(req.params.prompt_logprobs or 0, logits.shape[-1])
        logprobs = torch.log_softmax(logits, dim=-1)
        if span.position == 0:
            t.prompt_logprobs.append(None)  # the first prompt token has no logprob
        # Up to the first token of the next chunk; the slice stops at the prompt's end.
        targets = req.prompt_token_ids[span.position + 1 : span.position + span.num_rows + 1]
        rows = logprobs[: len(targets)]
        picked = rows.gather(1, torch.tensor(targets, dtype=torch.long)[:, None])[:, 0].tolist()
        tops = rows.topk(k, dim=-1) if k > 0 else None
        for j, tok in enumerate(targets):
            top = []
            if tops is not None:
                top = [(i, self._piece(i), v) for i, v in zip(tops.indices[j].tolist(), tops.values[j].tolist())]
            t.prompt_logprobs.append(TokenLogprob(tok, self._piece(tok), picked[j], top))

    # -- phase 2: the appended tokens -> text, deltas, finishes -------------------------------------

    def process(self, updates: list[RequestUpdate], step: StepTokens) -> int:
        """After the scheduler's update: fail ``step``'s failed requests, then take each update's tokens.

        Returns the number of tokens taken (the step's generated tokens)."""
        for req, exc in step.errors.items():
            self.fail(req, exc)
        now = time.monotonic()
        self._num_taken = 0
        for update in updates:
            t = self.requests.get(update.request.request_id)
            if t is None:
                continue
            try:
                self._take_tokens(t, update, now)
            except Exception as exc:  # stop checks, detokenizing, emitting: this request alone
                self.fail(t.request, exc)
        return self._num_taken

    def _take_tokens(self, t: TrackedRequest, update: RequestUpdate, now: float) -> None:
        """Detokenize and stop-check ``update``'s tokens in order, one delta per token, as a decode would."""
        req = t.request
        if t.first_token_s is None:
            t.first_token_s = now
            self.metrics.first_token(now - req.arrival_s)
        tokens, status = update.token_ids, update.status
        last = len(tokens) - 1
        for j, token_id in enumerate(tokens):
            t.pending_ids.append(token_id)
            self._num_taken += 1
            if j == last and status == RequestStatus.FINISHED_STOPPED:
                live_eos = token_id in self.scheduler.eos_ids and not req.params.ignore_eos
                if token_id in req.params.stop_token_ids and not live_eos:  # EOS first, as vLLM: no reason
                    t.stop_reason = token_id
                break  # an EOS or stop token id: it ends the request and is no text
            before = len(t.text)
            t.text += t.detok.add(token_id)
            output_len = len(req.output_token_ids) - (last - j)  # with this token
            hit = t.stop.check(t.text, before) if output_len >= req.params.min_tokens else None
            if hit is not None:
                cut, t.stop_reason = hit
                t.text = t.text[: cut + len(hit[1])] if req.params.include_stop_str_in_output else t.text[:cut]
                if j < last:  # the verified tokens after the stop string are not the request's
                    del req.output_token_ids[j - last :]
                status = RequestStatus.FINISHED_STOPPED
                break
            if j < last:
                self._emit_delta(t, final=False)
        if status is None:
            self._emit_delta(t, final=False)
            return
        if status == RequestStatus.FINISHED_LENGTH:
            t.text += t.detok.flush()
        self.finish(t, status)

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
            stop_reason=t.stop_reason if finish_reason is not None else None,
            logprobs=t.pending_logprobs if req.params.logprobs is not None else None,
            prompt_logprobs=t.prompt_logprobs or None,  # complete once the first token is sampled
            error=error,
        )
        t.pending_ids, t.pending_logprobs, t.prompt_logprobs = [], [], []
        t.emit(out)

    def _logprob(self, result: SampleResult, i: int) -> TokenLogprob:
        assert result.logprobs is not None
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
