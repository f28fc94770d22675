"""AsyncEngine: the engine as the server sees it. One async generator per request.

The core runs on its own thread; outputs cross back to the event loop with
``call_soon_threadsafe``. A consumer that stops (client disconnect, cancellation)
aborts its request, which frees the batch slot at the next step. If the core's loop
dies, every request fails with EngineDeadError (503), and ``on_dead`` is called once
so the server can exit for its controller to restart it.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any

from isvc.engine.admission import check_queue, check_token_ids
from isvc.engine.client import NO_PROMPT_LOGPROBS, EncodeInput, ModelInfo, PoolingOutput, PoolingParams, Task, WrongTask
from isvc.engine.config import EngineConfig
from isvc.engine.core import EngineCore
from isvc.engine.errors import ContextLengthExceeded, EngineDeadError, GenerationFailed
from isvc.engine.outputs import RequestOutput
from isvc.engine.params import SamplingParams, StructuredOutput
from isvc.engine.request import EngineRequest
from isvc.engine.threads import start_engine_thread
from isvc.errors import InvalidRequest, IsvcError, NotReady

GENERATIONS_QUEUED = 256
"""Default ``max_queue`` of the generative engine."""
GRAMMARS_KEPT = 256
"""Structured output grammars kept, most recently used first (a grammar is a few kB of text)."""


class AsyncEngine:
    def __init__(
        self,
        config: EngineConfig,
        on_dead: Callable[[BaseException], None] | None = None,
        task: Task = Task.TEXT_GENERATION,
    ) -> None:
        self.config = config
        self.task = task
        """text_generation (decoder LLMs) or text2text_generation (encoder-decoder models, seq2seq.py)."""
        self.core: EngineCore | None = None
        self._thread: threading.Thread | None = None
        self._loaded = False
        self.load_error: BaseException | None = None
        self.on_dead = on_dead
        """Called once, from the engine thread, when the engine dies (may be set after load)."""
        self._grammars: OrderedDict[StructuredOutput, str] = OrderedDict()

    # -- lifecycle -------------------------------------------------------------------------

    def load(self) -> None:
        """Load weights and run the warm-up step (blocking; call from a worker thread)."""

        def init() -> EngineCore:
            core = EngineCore(self.config, task=self.task)
            core.warm_up()
            core.on_dead = self._died
            return core

        core, self._thread = start_engine_thread("isvc-engine", init, EngineCore.run)
        self.core = core
        self._loaded = True

    def shutdown(self) -> None:
        if self.core:
            self.core.shutdown()
        if self._thread is not None:
            self._thread.join(timeout=10)

    @property
    def ready(self) -> bool:
        """Loaded and warmed up, and not dead (readiness answers 503 otherwise)."""
        return self._loaded and not self.dead

    @property
    def dead(self) -> bool:
        """The engine loop failed: nothing will be served again (liveness answers 503)."""
        return self.core is not None and self.core.dead is not None

    def _died(self, exc: BaseException) -> None:
        if self.on_dead is not None:
            self.on_dead(exc)

    @property
    def model_info(self) -> ModelInfo:
        core = self._core()
        config = core.model.config
        return ModelInfo(
            task=self.task,
            architecture=(config.get("architectures") or ["?"])[0],
            max_model_len=core.max_model_len,
            vocab_size=int(core.model.vocab_size),
            hidden_size=int(config.get("hidden_size") or config.get("d_model") or 0),
        )

    @property
    def tokenizer(self) -> Any:
        return self._core().tokenizer

    @property
    def max_queue(self) -> int:
        return GENERATIONS_QUEUED if self.config.max_queue is None else self.config.max_queue

    @property
    def max_model_len(self) -> int:
        return self._core().max_model_len

    @property
    def vocab_size(self) -> int:
        """Rows of the model's embedding: a token id is valid when 0 <= id < vocab_size.

        The model's, not ``len(tokenizer)``: a tokenizer may have fewer tokens (padded
        embeddings) or, with added tokens, more than the model can look up.
        """
        return int(self._core().model.vocab_size)

    def _core(self) -> EngineCore:
        if self.core is not None and self.core.dead is not None:
            raise EngineDeadError(f"the engine stopped: {self.core.dead}")
        if self.core is None or not self.ready:
            raise NotReady("the model is still loading; retry when /v2/health/ready returns 200", retry_after_s=5)
        return self.core

    # -- requests --------------------------------------------------------------------------

    def check_request(self, prompt_ids: list[int], max_tokens: int | None) -> int:
        """Validate lengths before any work; returns the effective max_tokens."""
        core = self._core()
        n = len(prompt_ids)
        limit = core.max_model_len
        if n == 0:
            raise InvalidRequest("the prompt is empty", param="prompt")
        self.check_token_ids(prompt_ids, "prompt")
        if max_tokens is None:
            max_tokens = limit - n
        if n + max_tokens > limit:
            raise ContextLengthExceeded(
                f"This model's maximum context length is {limit} tokens. However, you requested "
                f"{n + max_tokens} tokens ({n} in the messages, {max_tokens} in the completion). "
                "Please reduce the length of the messages or completion.",
                param="max_tokens" if n < limit else "messages",
            )
        return max_tokens

    def check_token_ids(self, ids: Iterable[int], param: str) -> None:
        """Refuse ids the model has no row for (a prompt's, a stop list's): a 400 naming ``param``."""
        check_token_ids(ids, self.vocab_size, param)

    def check_capacity(self, num_requests: int = 1) -> None:
        """Refuse before any work when the waiting queue is full (callers map it to 429/503)."""
        core = self._core()
        check_queue(core.scheduler.num_running, core.num_waiting, num_requests, self.max_queue)

    async def check_structured(self, spec: StructuredOutput) -> None:
        """Build ``spec``'s grammar off the event loop (400 when it cannot be built), kept for ``generate``."""
        if spec in self._grammars:
            self._grammars.move_to_end(spec)
            return
        grammar = await asyncio.to_thread(self._core().grammars.check, spec)
        self._grammars[spec] = grammar
        while len(self._grammars) > GRAMMARS_KEPT:
            self._grammars.popitem(last=False)

    async def generate(
        self, request_id: str, prompt_ids: list[int], params: SamplingParams
    ) -> AsyncIterator[RequestOutput]:
        core = self._core()
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[RequestOutput] = asyncio.Queue()

        def emit(out: RequestOutput) -> None:
            try:
                loop.call_soon_threadsafe(queue.put_nowait, out)
            except RuntimeError:  # the consumer's event loop is closed: nobody is listening
                core.abort(request_id)

        if params.prompt_logprobs is not None and self.task is Task.TEXT2TEXT_GENERATION:
            raise InvalidRequest(NO_PROMPT_LOGPROBS, param="echo")
        request = EngineRequest(request_id, list(prompt_ids), params, arrival_s=time.monotonic())
        if params.structured is not None:
            await self.check_structured(params.structured)
            request.grammar = self._grammars[params.structured]
        core.submit(request, emit)
        finished = False
        try:
            while True:
                out = await queue.get()
                if out.error is not None:
                    finished = True
                    if isinstance(out.error, IsvcError):  # a refusal (400) or a dead engine (503)
                        raise out.error
                    raise GenerationFailed(f"generation failed: {out.error}") from out.error
                yield out
                if out.finished:
                    finished = True
                    return
        finally:
            # The client went away, or the consumer stopped early: free the slot.
            if not finished:
                core.abort(request_id)

    async def encode(self, request_id: str, inputs: EncodeInput, params: PoolingParams) -> PoolingOutput:
        raise WrongTask(
            f"this model serves the {self.task.value} task (chat and completions); "
            f"it does not answer {params.kind} requests",
            param="model",
        )

    def stats(self) -> dict[str, int]:
        core = self._core()
        return {
            "running": core.scheduler.num_running,
            "waiting": core.num_waiting,
            "max_batch_seen": core.max_batch_seen,
        }
