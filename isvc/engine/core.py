"""EngineCore: the busy loop `schedule -> model step -> sample -> outputs` on its own thread.

Failures are contained at three depths:
- one request's own work (admission, sampling, stop checks, detokenizing, emitting) is
  guarded per request: an error fails that request alone, and the rest of the batch goes
  on with the tokens it would have had anyway;
- a fault in the shared step (the forward pass, the KV cache) fails the step's requests,
  and the loop goes on;
- a fault in the loop itself (the inbox, idling) marks the engine dead: every request gets
  EngineDeadError, new ones fail at once, and ``on_dead`` tells the server to exit.
The event loop talks to it only through ``submit``/``abort`` (thread-safe) and the
``emit`` callback it was given.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from isvc.engine import metrics
from isvc.engine.config import EngineConfig
from isvc.engine.detokenizer import IncrementalDetokenizer
from isvc.engine.errors import EngineDeadError
from isvc.engine.kv_cache import KVCacheFull
from isvc.engine.llama import ChunkInput, LlamaModel, StepInput, torch_dtype
from isvc.engine.outputs import RequestOutput, TokenLogprob
from isvc.engine.params import SamplingParams
from isvc.engine.prefix_cache import PrefixCache, PrefixHit
from isvc.engine.request import EngineRequest, RequestStatus
from isvc.engine.sampler import Sampler, SampleResult
from isvc.engine.scheduler import PrefillChunk, Scheduler
from isvc.engine.speculation import accepted, can_speculate, propose
from isvc.engine.stop import StopChecker

logger = logging.getLogger(__name__)

Emit = Callable[[RequestOutput], None]

PLAIN_FAST_TOKENIZERS = {"PreTrainedTokenizerFast", "TokenizersBackend"}


@dataclass(eq=False)
class _Tracked:
    """Per-request state the loop keeps beside the scheduler's EngineRequest."""

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


def load_tokenizer(model_dir: str, trust_remote_code: bool = False) -> Any:
    config_file = Path(model_dir) / "tokenizer_config.json"
    declared = json.loads(config_file.read_text()).get("tokenizer_class") if config_file.exists() else None
    if declared in PLAIN_FAST_TOKENIZERS and (Path(model_dir) / "tokenizer.json").exists():
        # AutoTokenizer finds the class through transformers' model registry, which imports
        # ~1,100 modules (accelerate, torch._dynamo, ...): ~100 MB of RSS for nothing when
        # the folder names the plain fast tokenizer.
        from transformers import PreTrainedTokenizerFast

        return PreTrainedTokenizerFast.from_pretrained(model_dir)
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_dir, trust_remote_code=trust_remote_code)


class EngineCore:
    def __init__(self, config: EngineConfig, tokenizer: Any | None = None) -> None:
        self.config = config
        threads = config.num_threads or len(os.sched_getaffinity(0))
        torch.set_num_threads(threads)
        model_dir = Path(config.model_dir)
        self.tokenizer = tokenizer or load_tokenizer(config.model_dir, config.trust_remote_code)
        self.model = LlamaModel(model_dir, torch_dtype(config.dtype), config.max_model_len, config.kv_cache_dtype)
        self.max_model_len = self.model.max_model_len
        self.cache = self.model.new_cache(config.max_num_seqs, int(config.kv_cache_space_gb * 2**30))
        # Prefix reuse and speculation keep answers exact only on the native ops (row-exact
        # across batch shapes and chunkings); on torch's they stay off.
        row_exact = self.model.ops.native_attention
        self.prefix_cache = (
            PrefixCache(int(config.prefix_cache_space_gb * 2**30))
            if config.enable_prefix_caching and row_exact
            else None
        )
        self.num_speculative_tokens = config.num_speculative_tokens if row_exact else 0
        self._prefix_loads: list[tuple[EngineRequest, PrefixHit]] = []  # admitted, KV not yet copied
        self.scheduler = Scheduler(
            config.max_num_seqs,
            config.max_num_batched_tokens,
            on_admit=self._reuse_prefix if self.prefix_cache is not None else None,
        )
        self.sampler = Sampler(config.seed)
        self.eos_ids = _eos_ids(model_dir, self.tokenizer)
        self.metrics = metrics.EngineMetrics(config.served_model_name or model_dir.name)
        self._tracked: dict[str, _Tracked] = {}
        self._inbox: deque[tuple[str, Any]] = deque()
        self._inbox_lock = threading.Lock()  # orders submit() against the engine's death
        self._wake = threading.Event()
        self._stopped = False
        self._thread: threading.Thread | None = None
        self._step_tokens = 0  # tokens accepted in the current step (counted once per step)
        self.max_batch_seen = 0
        self.dead: BaseException | None = None
        self.on_dead: Callable[[BaseException], None] | None = None
        """Called once, on the engine thread, when the loop fails (the process should exit)."""

    # -- thread-safe API -------------------------------------------------------------------

    def submit(self, request: EngineRequest, emit: Emit) -> None:
        with self._inbox_lock:
            if self.dead is None:
                self._inbox.append(("add", (request, emit)))
                self._wake.set()
                return
        emit(_failed(request, EngineDeadError(f"the engine stopped: {self.dead}")))

    def abort(self, request_id: str) -> None:
        self._inbox.append(("abort", request_id))
        self._wake.set()

    @property
    def num_waiting(self) -> int:
        return self.scheduler.num_waiting + sum(1 for kind, _ in list(self._inbox) if kind == "add")

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="isvc-engine", daemon=True)
        self._thread.start()

    def shutdown(self) -> None:
        self._stopped = True
        self._wake.set()
        if self._thread:
            self._thread.join(timeout=10)

    def warm_up(self) -> None:
        """One prefill and two decode steps through the whole path, before we report ready."""
        done: list[RequestOutput] = []
        req = EngineRequest(
            "warmup",
            self.tokenizer.encode("Hello, world")[:8] or [0],
            SamplingParams(max_tokens=3, temperature=0.0, ignore_eos=True),
        )
        with self.metrics.mute():  # not traffic: no latency, token or batch samples
            self._add(req, done.append)
            while self.scheduler.has_work():
                self.step()
        self.max_batch_seen = 0
        if done and done[-1].error is not None:
            raise done[-1].error

    # -- the loop --------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            while not self._stopped:
                self._drain_inbox()
                if not self.scheduler.has_work():
                    self._idle()
                    continue
                try:
                    self.step()
                except Exception as exc:  # a shared fault (the forward pass): fails the step's requests
                    logger.exception("engine step failed; failing the requests in it")
                    self._fail_running(exc)
        except BaseException as exc:  # the loop's own fault: nothing it tracks can be trusted
            self._die(exc)

    def _idle(self) -> None:
        self.cache.shrink()
        self.metrics.load(0, 0, 0.0, self.cache.nbytes)
        self._wake.wait(timeout=0.5)
        self._wake.clear()

    def _die(self, exc: BaseException) -> None:
        """Mark the engine dead, fail every request it holds or was sent, and tell ``on_dead``."""
        logger.critical("the engine loop failed; the engine is dead", exc_info=exc)
        with self._inbox_lock:
            self.dead = exc
            sent = [payload for kind, payload in self._inbox if kind == "add"]
            self._inbox.clear()
        if self.on_dead is not None:  # first: whoever sees a request fail sees the engine dead
            try:
                self.on_dead(exc)
            except Exception:
                logger.exception("on_dead failed")
        error = EngineDeadError(f"the engine stopped: {type(exc).__name__}: {exc}")
        held = [(t.request, t.emit) for t in self._tracked.values()]
        self._tracked.clear()
        for request, emit in held + sent:
            try:
                emit(_failed(request, error))
            except Exception:
                logger.exception("could not fail request %s", request.request_id)

    def _drain_inbox(self) -> None:
        while self._inbox:
            kind, payload = self._inbox.popleft()
            if kind == "add":
                self._add(*payload)
            elif kind == "abort":
                tracked = self._tracked.get(payload)
                if tracked is not None:
                    self._finish(tracked, RequestStatus.FINISHED_ABORTED, notify=False)
                    metrics.ABORTED.inc()

    def _add(self, request: EngineRequest, emit: Emit) -> None:
        p = request.params
        try:  # this request's own setup: a failure here is its alone
            tracked = _Tracked(
                request=request,
                emit=emit,
                detok=IncrementalDetokenizer(self.tokenizer, request.prompt_token_ids, p.skip_special_tokens),
                stop=StopChecker(p.stop),
            )
            self.sampler.add(request.request_id, p)
        except Exception as exc:
            logger.warning("request %s refused at admission: %r", request.request_id, exc)
            metrics.FAILED.inc()
            emit(_failed(request, exc))
            return
        self._tracked[request.request_id] = tracked
        self.scheduler.add(request)

    def _reuse_prefix(self, req: EngineRequest) -> None:
        """Scheduler hook at admission: start the prompt after its longest cached prefix."""
        if self.prefix_cache is None or req.params.prompt_logprobs is not None:
            return  # scoring every prompt token needs every row computed
        hit = self.prefix_cache.lookup(req.prompt_token_ids)
        self.metrics.prefix_lookup(req.num_prompt_tokens, hit.num_tokens if hit is not None else 0)
        if hit is not None:
            req.num_computed_tokens = hit.num_tokens
            self._prefix_loads.append((req, hit))

    def step(self) -> None:
        for move in self.scheduler.take_moves():
            self.cache.move(move.src, move.dst, move.length)
        out = self.scheduler.schedule()
        if out.empty:
            return
        started = time.perf_counter()
        drafts = self._drafts(out)
        plain = [r for r in out.decode if r not in drafts]
        need = max(
            [r.num_computed_tokens + 1 + len(drafts.get(r, ())) for r in out.decode] + [c.end for c in out.prefill]
        )
        try:
            self.cache.ensure(self.scheduler.num_running, need)
        except KVCacheFull:
            longest = max(self.scheduler.running, key=lambda r: r.num_tokens)
            logger.warning("KV cache budget reached; finishing %s at %d tokens", longest.request_id, longest.num_tokens)
            self._finish(self._tracked[longest.request_id], RequestStatus.FINISHED_LENGTH)
            return  # nothing ran: every request keeps its position and is scheduled again
        for req, hit in self._prefix_loads:
            if req.slot is not None:  # not finished meanwhile
                PrefixCache.load(hit, self.cache, req.slot)
        self._prefix_loads.clear()
        step = StepInput(
            num_slots=self.scheduler.num_running,
            decode_slots=[_slot(r) for r in plain],
            decode_tokens=[r.token_at(r.num_computed_tokens) for r in plain],
            decode_positions=[r.num_computed_tokens for r in plain],
            # a speculating request runs its last token and its drafts as one chunk, logits for each
            chunks=[
                ChunkInput(_slot(r), [r.token_at(r.num_computed_tokens), *d], r.num_computed_tokens, "all")
                for r, d in drafts.items()
            ]
            + [
                ChunkInput(
                    _slot(c.request),
                    c.request.prompt_token_ids[c.start : c.end],
                    c.start,
                    _logit_rows(c),
                )
                for c in out.prefill
            ],
        )
        logits = self.model.forward(step, self.cache)
        self._step_tokens = 0
        self._after_forward(out, logits, plain, drafts)
        self.max_batch_seen = max(self.max_batch_seen, len(out.decode))
        self.metrics.step(
            time.perf_counter() - started,
            computed_prompt=sum(c.end - c.start for c in out.prefill),
            prompts_done=sum(c.request.num_prompt_tokens for c in out.prefill if c.completes_prompt),
            generated=self._step_tokens,
            batch=len(out.decode),
            max_batch=self.max_batch_seen,
        )
        # The share of the KV budget this batch needs: dense slots x the longest request.
        kv_usage = self.scheduler.num_running * need * self.cache.bytes_per_slot_token / self.cache.budget_bytes
        self.metrics.load(self.scheduler.num_running, self.scheduler.num_waiting, min(kv_usage, 1.0), self.cache.nbytes)

    def _drafts(self, out: Any) -> dict[EngineRequest, list[int]]:
        """Prompt-lookup drafts for the greedy requests of a small decode-only step."""
        k = self.num_speculative_tokens
        if k == 0 or out.prefill or len(out.decode) > self.config.speculative_max_batch:
            return {}
        drafts = {}
        for req in out.decode:
            room = min(
                k, req.params.max_tokens - len(req.output_token_ids) - 1, self.max_model_len - req.num_tokens - 1
            )
            try:
                if room > 0 and can_speculate(req.params):
                    proposal = propose(req.prompt_token_ids + req.output_token_ids, room)
                    if proposal:
                        drafts[req] = proposal
            except Exception:  # drafting only saves time: this request decodes plainly
                logger.exception("no drafts for request %s", req.request_id)
        return drafts

    def _after_forward(
        self, out: Any, logits: torch.Tensor, plain: list[EngineRequest], drafts: dict[EngineRequest, list[int]]
    ) -> None:
        rows: list[EngineRequest] = []
        row_index: list[int] = []
        r = 0
        for req in plain:
            req.num_computed_tokens += 1
            rows.append(req)
            row_index.append(r)
            r += 1
        verified: list[tuple[EngineRequest, list[int]]] = []
        for req, proposal in drafts.items():
            tokens = accepted(proposal, logits[r : r + len(proposal) + 1].argmax(dim=-1).tolist())
            r += len(proposal) + 1
            req.num_computed_tokens += len(tokens)  # the last token and the accepted drafts are cached
            verified.append((req, tokens))
            metrics.SPEC_DRAFT_TOKENS.inc(len(proposal))
            metrics.SPEC_ACCEPTED_TOKENS.inc(len(tokens) - 1)
        for chunk in out.prefill:
            req = chunk.request
            n_rows = _num_logit_rows(chunk)
            req.num_computed_tokens = chunk.end
            try:
                if n_rows > 1:  # echo + logprobs: score each prompt token
                    self._record_prompt_logprobs(chunk, logits[r : r + n_rows])
                if chunk.completes_prompt:
                    if self.prefix_cache is not None and req.slot is not None:
                        self.prefix_cache.store(req.prompt_token_ids, self.cache, req.slot)
                    rows.append(req)
                    row_index.append(r + n_rows - 1)
            except Exception as exc:
                self._fail(req, exc)
            r += n_rows
        now = time.monotonic()
        for req, tokens in verified:
            for token in tokens:
                tracked = self._tracked.get(req.request_id)
                if tracked is None or req.status.finished:
                    break  # a stop, EOS or max_tokens among them ends the request there
                self._accept_row(tracked, token, None, now)
        if rows:
            sel = logits if len(row_index) == logits.shape[0] else logits[torch.tensor(row_index)]
            self._sample_and_accept(sel, rows)

    def _sample_and_accept(self, logits: torch.Tensor, rows: list[EngineRequest]) -> None:
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
                    self._fail(req, exc)
                    continue
                tracked = self._tracked.get(req.request_id)
                if tracked is not None:
                    self._accept_row(tracked, one.token_ids[0], self._logprob(req, one, 0), time.monotonic())
            return
        now = time.monotonic()
        for i, req in enumerate(rows):
            tracked = self._tracked.get(req.request_id)
            if tracked is not None:
                lp = self._logprob(req, result, i) if result.logprobs is not None else None
                self._accept_row(tracked, result.token_ids[i], lp, now)

    def _logprob(self, req: EngineRequest, result: SampleResult, i: int) -> TokenLogprob | None:
        if result.logprobs is None or req.params.logprobs is None:
            return None
        token_id = result.token_ids[i]
        top = result.top[i] if result.top else []
        return TokenLogprob(
            token_id, self._piece(token_id), result.logprobs[i], [(t, self._piece(t), v) for t, v in top]
        )

    def _accept_row(self, t: _Tracked, token_id: int, lp: TokenLogprob | None, now: float) -> None:
        """Stop checks, detokenizing and emitting for one request: a failure fails it alone."""
        try:
            self._accept_token(t, token_id, lp, now)
        except Exception as exc:
            self._fail(t.request, exc)

    def _accept_token(self, t: _Tracked, token_id: int, lp: TokenLogprob | None, now: float) -> None:
        req = t.request
        p = req.params
        if t.first_token_s is None:
            t.first_token_s = now
            self.metrics.first_token(now - req.arrival_s)
        req.output_token_ids.append(token_id)
        self._step_tokens += 1
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
            self._finish(t, status)
        else:
            self._emit_delta(t, final=False)

    def _emit_delta(
        self, t: _Tracked, final: bool, finish_reason: str | None = None, error: BaseException | None = None
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

    def _finish(
        self, t: _Tracked, status: RequestStatus, notify: bool = True, error: BaseException | None = None
    ) -> None:
        req = t.request
        self.scheduler.finish(req, status)
        self._tracked.pop(req.request_id, None)
        self.sampler.forget(req.request_id)
        self.metrics.finished(time.monotonic() - req.arrival_s)
        if notify:
            self._emit_delta(t, final=True, finish_reason=status.finish_reason, error=error)

    def _fail(self, req: EngineRequest, exc: BaseException) -> None:
        """An unexpected error in one request's own work: that request ends with it, alone."""
        logger.warning("request %s failed: %r", req.request_id, exc, exc_info=exc)
        metrics.FAILED.inc()
        t = self._tracked.get(req.request_id)
        if t is None:
            return  # already finished (the error came from its final emit): nothing left to free
        try:
            self._finish(t, RequestStatus.FINISHED_ERROR, error=exc)
        except Exception:
            logger.exception("could not report the failure of request %s", req.request_id)

    def _fail_running(self, exc: BaseException) -> None:
        for t in list(self._tracked.values()):
            if t.request.status == RequestStatus.RUNNING:
                metrics.FAILED.inc()
                self._finish(t, RequestStatus.FINISHED_ERROR, error=exc)

    def _record_prompt_logprobs(self, chunk: PrefillChunk, logits: torch.Tensor) -> None:
        t = self._tracked[chunk.request.request_id]
        prompt = chunk.request.prompt_token_ids
        k = min(chunk.request.params.prompt_logprobs or 0, logits.shape[-1])
        logprobs = torch.log_softmax(logits, dim=-1)  # row j predicts token start + j + 1
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

    def _piece(self, token_id: int) -> str:
        return self.tokenizer.decode([token_id], skip_special_tokens=False)


def _failed(request: EngineRequest, error: BaseException) -> RequestOutput:
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


def _slot(req: EngineRequest) -> int:
    assert req.slot is not None, "a scheduled request holds a slot"
    return req.slot


def _logit_rows(chunk: PrefillChunk) -> str:
    if chunk.request.params.prompt_logprobs is not None:
        return "all"
    return "last" if chunk.completes_prompt else "none"


def _num_logit_rows(chunk: PrefillChunk) -> int:
    kind = _logit_rows(chunk)
    return chunk.end - chunk.start if kind == "all" else (1 if kind == "last" else 0)


def _eos_ids(model_dir: Path, tokenizer: Any) -> set[int]:
    import json

    ids: set[int] = set()
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    gen = model_dir / "generation_config.json"
    if gen.exists():
        eos = json.loads(gen.read_text()).get("eos_token_id")
        ids.update([eos] if isinstance(eos, int) else (eos or []))
    return ids
