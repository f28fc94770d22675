"""EngineCore: the busy loop `schedule -> model step -> sample -> outputs` on its own thread.

Failures are contained at three depths:
- one request's own work (admission, sampling, stop checks, detokenizing, emitting) is
  guarded per request: an error fails that request alone, and the rest of the batch goes
  on with the tokens it would have had anyway;
- a fault in the shared step (the forward pass, the KV cache) fails the step's requests,
  and the loop goes on;
- a fault in the loop itself (the inbox, idling) marks the engine dead: every request gets
  EngineDeadError, new ones fail at once, and ``on_dead`` tells the server to exit.
What happens to a request's tokens after the forward pass (sampling, stop checks,
detokenizing, emitting) is the OutputProcessor's (output_processor.py). The event loop
talks to the core only through ``submit``/``abort`` (thread-safe) and the ``emit``
callback it was given.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from isvc.engine import metrics
from isvc.engine.config import EngineConfig
from isvc.engine.errors import EngineDeadError
from isvc.engine.kv_cache import KVCacheFull
from isvc.engine.llama import ChunkInput, LlamaModel, StepInput, torch_dtype
from isvc.engine.output_processor import Emit, OutputProcessor, failed_output
from isvc.engine.outputs import RequestOutput
from isvc.engine.params import SamplingParams
from isvc.engine.prefix_cache import PrefixCache, PrefixHit
from isvc.engine.request import EngineRequest, RequestStatus
from isvc.engine.sampler import Sampler
from isvc.engine.scheduler import PrefillChunk, Scheduler
from isvc.engine.speculation import accepted, can_speculate, propose

logger = logging.getLogger(__name__)

PLAIN_FAST_TOKENIZERS = {"PreTrainedTokenizerFast", "TokenizersBackend"}


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
        self.output = OutputProcessor(
            self.tokenizer, self.eos_ids, self.max_model_len, self.scheduler, self.sampler, self.metrics
        )
        self._inbox: deque[tuple[str, Any]] = deque()
        self._inbox_lock = threading.Lock()  # orders submit() against the engine's death
        self._wake = threading.Event()
        self._stopped = False
        self._thread: threading.Thread | None = None
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
        emit(failed_output(request, EngineDeadError(f"the engine stopped: {self.dead}")))

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
                    self.output.fail_running(exc)
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
        for request, emit in self.output.take_all() + sent:
            try:
                emit(failed_output(request, error))
            except Exception:
                logger.exception("could not fail request %s", request.request_id)

    def _drain_inbox(self) -> None:
        while self._inbox:
            kind, payload = self._inbox.popleft()
            if kind == "add":
                self._add(*payload)
            elif kind == "abort":
                self.output.abort(payload)

    def _add(self, request: EngineRequest, emit: Emit) -> None:
        if self.output.add(request, emit):  # its own setup failing fails it alone
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
            self.output.finish(self.output.requests[longest.request_id], RequestStatus.FINISHED_LENGTH)
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
        self.output.num_accepted = 0
        self._after_forward(out, logits, plain, drafts)
        self.max_batch_seen = max(self.max_batch_seen, len(out.decode))
        self.metrics.step(
            time.perf_counter() - started,
            computed_prompt=sum(c.end - c.start for c in out.prefill),
            prompts_done=sum(c.request.num_prompt_tokens for c in out.prefill if c.completes_prompt),
            generated=self.output.num_accepted,
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
            self.metrics.speculated(len(proposal), len(tokens) - 1)
        for chunk in out.prefill:
            req = chunk.request
            n_rows = _num_logit_rows(chunk)
            req.num_computed_tokens = chunk.end
            try:
                if n_rows > 1:  # echo + logprobs: score each prompt token
                    self.output.record_prompt_logprobs(chunk, logits[r : r + n_rows])
                if chunk.completes_prompt:
                    if self.prefix_cache is not None and req.slot is not None:
                        self.prefix_cache.store(req.prompt_token_ids, self.cache, req.slot)
                    rows.append(req)
                    row_index.append(r + n_rows - 1)
            except Exception as exc:
                self.output.fail(req, exc)
            r += n_rows
        now = time.monotonic()
        for req, tokens in verified:
            self.output.accept_verified(req, tokens, now)
        if rows:
            sel = logits if len(row_index) == logits.shape[0] else logits[torch.tensor(row_index)]
            self.output.sample_and_accept(sel, rows)


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
