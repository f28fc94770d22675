"""EngineCore: the busy loop `schedule -> run -> sample -> update -> outputs` on its own thread.

One step is a one-way flow of data: the scheduler's output goes to the runner
(runner.py), which runs the model and returns the logits with their layout (step.py:
which rows are whose, and why); the output processor samples them into tokens; the
scheduler is updated from those tokens (``update_from_output``); the output processor
turns what the scheduler appended into text and emits it. This module owns the loop
(the inbox, the guards, the engine's death) and wires those parts together.

Failures are contained at three depths:
- one request's own work (admission, sampling, stop checks, detokenizing, emitting) is
  guarded per request: an error fails that request alone, and the rest of the batch goes
  on with the tokens it would have had anyway;
- a fault in the shared step (the forward pass, the KV cache) fails the step's requests,
  and the loop goes on;
- a fault in the loop itself (the inbox, idling) marks the engine dead: every request gets
  EngineDeadError, new ones fail at once, and ``on_dead`` tells the server to exit.
The event loop talks to the core only through ``submit``/``abort`` (thread-safe) and the
``emit`` callback it was given.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from isvc.engine import metrics
from isvc.engine.client import Task
from isvc.engine.config import EngineConfig
from isvc.engine.errors import EngineDeadError
from isvc.engine.inbox import Inbox
from isvc.engine.kv_cache import KVCache, KVCacheFull
from isvc.engine.llama import LlamaModel, torch_dtype
from isvc.engine.output_processor import Emit, OutputProcessor, failed_output
from isvc.engine.outputs import RequestOutput
from isvc.engine.params import SamplingParams
from isvc.engine.prefix_cache import PrefixCache
from isvc.engine.request import EngineRequest, RequestStatus
from isvc.engine.runner import ModelRunner
from isvc.engine.sampler import Sampler
from isvc.engine.scheduler import Scheduler
from isvc.engine.seq2seq import Seq2SeqModel, Seq2SeqRunner, SlotStates
from isvc.engine.structured import Grammars

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
    def __init__(self, config: EngineConfig, tokenizer: Any | None = None, task: Task = Task.TEXT_GENERATION) -> None:
        self.config = config
        self.task = task
        threads = config.num_threads or len(os.sched_getaffinity(0))
        torch.set_num_threads(threads)
        model_dir = Path(config.model_dir)
        self.tokenizer = tokenizer or load_tokenizer(config.model_dir, config.trust_remote_code)
        self.metrics = metrics.EngineMetrics(config.served_model_name or model_dir.name)
        self.model: LlamaModel | Seq2SeqModel
        self.runner: ModelRunner | Seq2SeqRunner
        self.cache: KVCache | SlotStates
        if task is Task.TEXT2TEXT_GENERATION:
            prefix_cache, row_exact = self._build_seq2seq(config, model_dir)
        else:
            prefix_cache, row_exact = self._build_decoder(config, model_dir)
        self.max_model_len = self.model.max_model_len
        self.scheduler = Scheduler(
            config.max_num_seqs,
            config.max_num_batched_tokens,
            on_admit=self.runner.reuse_prefix if prefix_cache is not None else None,
            max_model_len=self.max_model_len,
            eos_ids=_eos_ids(model_dir, self.tokenizer),
            num_speculative_tokens=config.num_speculative_tokens if row_exact else 0,
            speculative_max_batch=config.speculative_max_batch,
        )
        # structured outputs' grammars; their vocabulary view is built at the first constrained request
        self.grammars = Grammars(self.tokenizer, int(self.model.vocab_size), sorted(self.scheduler.eos_ids))
        sampler = Sampler(config.seed, self.scheduler.eos_ids, self.grammars)
        self.scheduler.forced_tokens = lambda req, room: sampler.forced_tokens(req.request_id, room)
        decoder_prompt = [self.model.decoder_start_token_id] if isinstance(self.model, Seq2SeqModel) else None
        self.output = OutputProcessor(self.tokenizer, self.scheduler, sampler, self.metrics, decoder_prompt)
        self._inbox: Inbox[tuple[str, Any]] = Inbox()
        self._stopped = False
        self._thread: threading.Thread | None = None
        self.max_batch_seen = 0
        self.dead: BaseException | None = None
        self.on_dead: Callable[[BaseException], None] | None = None
        """Called once, on the engine thread, when the loop fails (the process should exit)."""

    def _build_decoder(self, config: EngineConfig, model_dir: Path) -> tuple[PrefixCache | None, bool]:
        """isvc's Llama forward on the slot KV cache; returns the prefix cache and whether rows are exact."""
        self.model = LlamaModel(
            model_dir, torch_dtype(config.dtype), config.max_model_len, config.kv_cache_dtype, config.quantization
        )
        self.cache = self.model.new_cache(config.max_num_seqs, int(config.kv_cache_space_gb * 2**30))
        # Prefix reuse and speculation keep answers exact only on the native ops (row-exact
        # across batch shapes and chunkings); on torch's they stay off.
        row_exact = self.model.ops.native_attention
        prefix_cache = (
            PrefixCache(int(config.prefix_cache_space_gb * 2**30))
            if config.enable_prefix_caching and row_exact
            else None
        )
        self.runner = ModelRunner(self.model, self.cache, prefix_cache, self.metrics)
        return prefix_cache, row_exact

    def _build_seq2seq(self, config: EngineConfig, model_dir: Path) -> tuple[PrefixCache | None, bool]:
        """transformers' encoder-decoder model (seq2seq.py): no prefix reuse or speculation, the
        encoder reading the whole prompt."""
        self.model = Seq2SeqModel(model_dir, torch_dtype(config.dtype), config.max_model_len, config.trust_remote_code)
        self.runner = Seq2SeqRunner(self.model, int(config.kv_cache_space_gb * 2**30))
        self.cache = self.runner.cache
        return None, False

    # -- thread-safe API -------------------------------------------------------------------

    def submit(self, request: EngineRequest, emit: Emit) -> None:
        if not self._inbox.put(("add", (request, emit))):
            emit(failed_output(request, EngineDeadError(f"the engine stopped: {self.dead}")))

    def abort(self, request_id: str) -> None:
        self._inbox.put(("abort", request_id))  # refused once dead: every request was failed already

    @property
    def num_waiting(self) -> int:
        return self.scheduler.num_waiting + sum(1 for kind, _ in self._inbox.items() if kind == "add")

    def start(self) -> None:
        """Run the loop on a new thread (tests; the server runs it on the thread that loaded the model)."""
        self._thread = threading.Thread(target=self._run, name="isvc-engine", daemon=True)
        self._thread.start()

    def run(self) -> None:
        """Run the loop on the calling thread until ``shutdown`` (see isvc.engine.threads for why)."""
        self._run()

    def shutdown(self) -> None:
        self._stopped = True
        self._inbox.wake_all()
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
        self._inbox.wait(timeout=0.5)

    def _die(self, exc: BaseException) -> None:
        """Mark the engine dead, fail every request it holds or was sent, and tell ``on_dead``."""
        logger.critical("the engine loop failed; the engine is dead", exc_info=exc)
        self.dead = exc
        sent = [payload for kind, payload in self._inbox.close(exc) if kind == "add"]
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
        while (item := self._inbox.pop()) is not None:
            kind, payload = item
            if kind == "add":
                self._add(*payload)
            elif kind == "abort":
                self.output.abort(payload)

    def _add(self, request: EngineRequest, emit: Emit) -> None:
        if self.output.add(request, emit):  # its own setup failing fails it alone
            self.scheduler.add(request)

    def step(self) -> None:
        """One step: schedule, run, sample, update the scheduler, then detokenize and emit."""
        self.runner.move_slots(self.scheduler.take_moves())
        out = self.scheduler.schedule()
        if out.empty:
            return
        started = time.perf_counter()
        try:
            result = self.runner.execute(out)
        except KVCacheFull:
            longest = max(self.scheduler.running, key=lambda r: r.num_tokens)
            logger.warning("KV cache budget reached; finishing %s at %d tokens", longest.request_id, longest.num_tokens)
            self.output.finish(self.output.requests[longest.request_id], RequestStatus.FINISHED_LENGTH)
            return  # nothing ran: every request keeps its position and is scheduled again
        tokens = self.output.sample(result)
        updates = self.scheduler.update_from_output(out, tokens)
        generated = self.output.process(updates, tokens)
        self.max_batch_seen = max(self.max_batch_seen, len(out.decode))
        self.metrics.step(
            time.perf_counter() - started,
            computed_prompt=sum(c.end - c.start for c in out.prefill),
            prompts_done=sum(c.request.num_prompt_tokens for c in out.prefill if c.completes_prompt),
            generated=generated,
            batch=len(out.decode),
            max_batch=self.max_batch_seen,
        )
        self.metrics.load(self.scheduler.num_running, self.scheduler.num_waiting, result.kv_usage, self.cache.nbytes)


def _eos_ids(model_dir: Path, tokenizer: Any) -> set[int]:
    ids: set[int] = set()
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    gen = model_dir / "generation_config.json"
    if gen.exists():
        eos = json.loads(gen.read_text()).get("eos_token_id")
        ids.update([eos] if isinstance(eos, int) else (eos or []))
    return ids
