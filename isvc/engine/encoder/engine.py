"""AsyncEncoderEngine: encoder models (BERT, DistilBERT, XLM-RoBERTa ...) behind ``EngineClient``.

``encode`` checks its input on the event loop (task, length, vocabulary), then hands it to the
engine's inbox and awaits a future. Worker threads, one per core, each with one torch thread,
take the next planned batch: the worker that finds nothing planned takes everything waiting and
plans length-bucketed batches under the token budget (batching.py), and each worker runs one
padded forward per batch (runner.py) and resolves each future with ``call_soon_threadsafe``.
Concurrent requests share forwards, one request alone runs at once. A failed forward fails its
batch; a failure of a worker's loop itself marks the engine dead (503s, ``on_dead``), as in the
generative engine.

NOTE: why several one-thread workers and not one forward on every core. A MiniLM forward of a
few hundred tokens is made of small ops; split over two OpenMP threads each op ends at a
barrier, and whenever the event loop or the clients take a core, the other thread spins at
that barrier. Measured here (all-MiniLM-L6-v2, 40-token documents, in-process): one worker on
2 OpenMP threads 253-274 docs/s, two one-thread workers 260-278; over HTTP at 64 clients the
2-thread forward spent 12.8 ms of core time per document against 7.6 alone.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable
from functools import partial
from pathlib import Path
from typing import Any

from isvc.engine.admission import check_queue, check_token_ids
from isvc.engine.client import EncodeInput, EncodeKind, ModelInfo, PoolingOutput, PoolingParams, Task, WrongTask
from isvc.engine.config import EngineConfig
from isvc.engine.encoder.batching import EncodeRequest, Rows, plan_batches
from isvc.engine.errors import ContextLengthExceeded, EngineDeadError
from isvc.engine.inbox import Inbox
from isvc.engine.metrics import EngineMetrics
from isvc.engine.outputs import RequestOutput
from isvc.engine.params import SamplingParams, StructuredOutput
from isvc.engine.threads import start_engine_thread
from isvc.errors import ConfigError, InvalidRequest, IsvcError, NotReady

logger = logging.getLogger(__name__)

INPUTS_QUEUED = 4096
"""Default ``max_queue`` of the encoder engine, in inputs."""

KINDS: dict[Task, tuple[EncodeKind, ...]] = {
    Task.TEXT_EMBEDDING: ("embed",),
    Task.SEQUENCE_CLASSIFICATION: ("classify", "score"),
    Task.RERANK: ("score", "classify"),
    Task.TOKEN_CLASSIFICATION: ("token_classify",),
    Task.FILL_MASK: ("fill_mask",),
}


class EncodeFailed(IsvcError):
    """The forward pass this request was in failed; the engine itself goes on."""

    code = "encode_failed"


class AsyncEncoderEngine:
    """The encoder engine; the server sees it only as an ``EngineClient``."""

    def __init__(
        self, config: EngineConfig, task: Task, on_dead: Callable[[BaseException], None] | None = None
    ) -> None:
        if task not in KINDS:
            raise ConfigError(f"the encoder engine does not serve {task.value}")
        self.config = config
        self.task = task
        self.on_dead = on_dead
        self.load_error: BaseException | None = None
        self._runner: Any = None
        self._tokenizer: Any = None
        self._info: ModelInfo | None = None
        self._inbox: Inbox[EncodeRequest] = Inbox()
        self._lock = self._inbox.lock  # also guards the plan and the running batches, and orders death
        self._plan: deque[list[EncodeRequest]] = deque()
        """Batches planned from the inbox that no worker has taken yet (their requests still wait)."""
        self._planning: list[EncodeRequest] = []
        """Taken from the inbox and not yet in the plan (so a fault while planning still fails them)."""
        self._running: dict[int, list[EncodeRequest]] = {}
        """The batch each worker runs now, by worker index."""
        self._workers: list[threading.Thread] = []
        self._stopped = False
        self._dead: BaseException | None = None
        self._counts = {"batches": 0, "max_batch_seen": 0, "last_batch_size": 0, "requests": 0}
        self.metrics = EngineMetrics(config.served_model_name or Path(config.model_dir).name)

    # -- lifecycle -------------------------------------------------------------------------

    @property
    def num_workers(self) -> int:
        """Worker threads: ``--num_threads``, by default the cores this process may use."""
        return self.config.num_threads or len(os.sched_getaffinity(0))

    def load(self) -> None:
        """Load tokenizer and weights on the first worker, then start the others; each warms up first."""
        threads = []
        for index in range(self.num_workers):
            init = self._load if index == 0 else self._warm_up
            _, thread = start_engine_thread(f"isvc-encoder-{index}", init, partial(_run_worker, self, index))
            threads.append(thread)
        self._workers = threads

    def _load(self) -> None:
        import torch

        from isvc.engine.encoder.runner import EncoderRunner

        model_dir = Path(self.config.model_dir)
        self._tokenizer = load_tokenizer(model_dir, self.config.trust_remote_code)
        if self.config.keep_case:
            keep_case(self._tokenizer)
        dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}.get(
            self.config.dtype, torch.float32
        )
        self._runner = EncoderRunner(model_dir, self.task, dtype, self.config.trust_remote_code)
        names = list(self._tokenizer.model_input_names)
        if self._runner.takes_token_types and "token_type_ids" not in names:
            # a BERT pair's second text is segment 1, as BertTokenizer (KServe's AutoTokenizer) says;
            # the plain fast tokenizer only returns what tokenizer_config.json lists
            self._tokenizer.model_input_names = [*names, "token_type_ids"]
        self._info = self._model_info(self._runner)
        self._warm_up()

    def shutdown(self) -> None:
        with self._lock:
            self._stopped = True
            self._inbox.wake_all()
        for thread in self._workers:
            thread.join(timeout=10)
        stopped = EngineDeadError("the engine was shut down")
        with self._lock:  # what no worker took is answered, and later submissions are refused
            left = self._close(stopped)
        for request in left:
            request.done(stopped)

    @property
    def ready(self) -> bool:
        return bool(self._workers) and self._dead is None

    @property
    def dead(self) -> bool:
        return self._dead is not None

    @property
    def model_info(self) -> ModelInfo:
        self._check_alive()
        assert self._info is not None
        return self._info

    @property
    def tokenizer(self) -> Any:
        self._check_alive()
        return self._tokenizer

    @property
    def max_model_len(self) -> int:
        return self.model_info.max_model_len

    @property
    def vocab_size(self) -> int:
        return self.model_info.vocab_size

    @property
    def max_queue(self) -> int:
        return INPUTS_QUEUED if self.config.max_queue is None else self.config.max_queue

    # -- requests --------------------------------------------------------------------------

    def check_request(self, prompt_ids: list[int], max_tokens: int | None) -> int:
        raise self._wrong_task("text generation")

    def check_token_ids(self, ids: Iterable[int], param: str) -> None:
        check_token_ids(ids, self.vocab_size, param)

    def check_capacity(self, num_requests: int = 1) -> None:
        self._check_alive()
        check_queue(self._num_running, self._num_waiting, num_requests, self.max_queue)

    async def generate(
        self, request_id: str, prompt_ids: list[int], params: SamplingParams
    ) -> AsyncIterator[RequestOutput]:
        raise self._wrong_task("chat and completions")
        yield  # an async generator, like the generative engine's: it raises at the first step

    async def encode(self, request_id: str, inputs: EncodeInput, params: PoolingParams) -> PoolingOutput:
        info = self.model_info
        if params.kind not in KINDS[self.task]:
            raise self._wrong_task(f"{params.kind} requests")
        inputs = self._fit(inputs, params, info)
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Rows] = loop.create_future()

        def done(result: Rows | BaseException) -> None:  # on the engine thread
            try:
                loop.call_soon_threadsafe(_resolve, future, result)
            except RuntimeError:  # the caller's loop is closed: nobody is listening
                pass

        request = EncodeRequest(request_id, inputs, params, done, time.monotonic())
        self._submit(request)
        try:
            rows = await future
        except asyncio.CancelledError:
            request.cancelled = True  # skipped if it has not run yet
            raise
        return PoolingOutput(request_id, rows, len(inputs.token_ids), token_ids=inputs.token_ids)

    async def check_structured(self, spec: StructuredOutput) -> None:
        raise self._wrong_task("structured outputs")

    def stats(self) -> dict[str, int]:
        return {"running": self._num_running, "waiting": self._num_waiting, **self._counts}

    @property
    def _num_running(self) -> int:
        return sum(len(batch) for batch in list(self._running.values()))

    @property
    def _num_waiting(self) -> int:
        return len(self._inbox) + sum(len(batch) for batch in list(self._plan))

    # -- checks ----------------------------------------------------------------------------

    def _fit(self, inputs: EncodeInput, params: PoolingParams, info: ModelInfo) -> EncodeInput:
        """The input as it will run: non-empty, known ids, within max_model_len (or cut to it)."""
        ids = inputs.token_ids
        if not ids:
            raise InvalidRequest("the input is empty", param="input")
        self.check_token_ids(ids, "input")
        limit = info.max_model_len
        if len(ids) > limit:
            if not params.truncate:
                raise ContextLengthExceeded(
                    f"This model's maximum input length is {limit} tokens. However, the input has "
                    f"{len(ids)} tokens. Please shorten the input, or ask for truncation.",
                    param="input",
                )
            inputs = truncate(inputs, limit, set(self._tokenizer.all_special_ids))
        dims, width = params.dimensions, info.embedding_dim
        if dims is not None and width is not None and not 1 <= dims <= width:
            raise InvalidRequest(
                f"dimensions must be between 1 and the model's {info.embedding_dim}", param="dimensions"
            )
        if params.kind == "fill_mask" and self._tokenizer.mask_token_id not in inputs.token_ids:
            raise InvalidRequest(f"the input has no mask token {info.mask_token}", param="input")
        return inputs

    def _wrong_task(self, what: str) -> WrongTask:
        return WrongTask(f"this model serves the {self.task.value} task; it does not answer {what}", param="model")

    def _check_alive(self) -> None:
        if self._dead is not None:
            raise EngineDeadError(f"the engine stopped: {self._dead}")
        if self._info is None or not self._workers:
            raise NotReady("the model is still loading; retry when /v2/health/ready returns 200", retry_after_s=5)

    def _model_info(self, runner: Any) -> ModelInfo:
        limit = runner.max_positions
        layout = runner.layout
        if self.config.max_model_len is not None:
            if self.config.max_model_len > limit:
                raise ConfigError(
                    f"--max_model_len {self.config.max_model_len} is longer than the {limit} positions "
                    f"{runner.architecture} has"
                )
            limit = self.config.max_model_len
        elif layout is not None and layout.max_seq_length:
            limit = min(limit, layout.max_seq_length)
        id2label = runner.config.get("id2label") or {}
        return ModelInfo(
            task=self.task,
            architecture=runner.architecture,
            max_model_len=limit,
            vocab_size=runner.vocab_size,
            hidden_size=runner.hidden_size,
            embedding_dim=runner.hidden_size if layout is not None else None,
            pooling=layout.pooling if layout is not None else None,
            normalize=layout.normalize if layout is not None else False,
            id2label={int(k): str(v) for k, v in id2label.items()} if self.task is not Task.TEXT_EMBEDDING else {},
            mask_token=self._tokenizer.mask_token if self.task is Task.FILL_MASK else None,
        )

    # -- the workers ----------------------------------------------------------------------

    def _submit(self, request: EncodeRequest) -> None:
        if not self._inbox.put(request):
            request.done(EngineDeadError(f"the engine stopped: {self._dead or self._inbox.closed_by}"))

    def _work(self, worker: int) -> None:
        """One worker's loop: take the next planned batch (planning one when none is left) and run it."""
        import torch

        threads = 1
        try:
            while True:
                with self._lock:
                    batch = self._take_batch(worker)
                    alone = worker == 0 and not self._plan and not self._inbox and len(self._running) == 1
                if batch is None:
                    return
                # a batch with nothing beside it may use every core: one request alone is answered
                # at once; only worker 0 ever does, so the process holds one OpenMP team
                wanted = self.num_workers if alone else 1
                if wanted != threads:
                    torch.set_num_threads(wanted)
                    threads = wanted
                self._step(batch)
                with self._lock:
                    del self._running[worker]
        except BaseException as exc:  # the loop's own fault: nothing it tracks can be trusted
            self._die(exc)

    def _take_batch(self, worker: int) -> list[EncodeRequest] | None:
        """The next batch to run (under the lock), waiting for one; None when the engine stops."""
        while not self._plan:
            if self._stopped or self._dead is not None:
                return None
            if self._inbox and self._inbox.next_up(worker):  # else a lower worker was woken for it
                self._plan.extend(self._plan_inbox())
                continue
            if not self._running:
                self.metrics.load(0, 0, 0.0, 0)
            self._inbox.wait(worker, timeout=0.5)
        batch = self._plan.popleft()
        self._running[worker] = batch
        if self._plan or self._inbox:
            self._inbox.wake_one()  # an idle worker can take the rest
        return batch

    def _plan_inbox(self) -> list[list[EncodeRequest]]:
        self._planning = self._inbox.take_all()
        waiting: list[EncodeRequest] = []
        for request in self._planning:
            if request.cancelled:
                self.metrics.aborted()
            else:
                waiting.append(request)
        batches = plan_batches(waiting, self.config.max_num_seqs, self.config.max_batch_tokens)
        self._planning = []  # the caller puts the batches in the plan under the same lock
        return batches

    def _step(self, batch: list[EncodeRequest]) -> None:
        batch = [r for r in batch if not r.cancelled]
        if not batch:
            return
        started = time.perf_counter()
        self.metrics.load(self._num_running, self._num_waiting, 0.0, 0)
        try:
            rows = self._runner.run([r.inputs for r in batch], [r.params for r in batch], self._mask_id)
        except Exception as exc:  # a shared fault (the forward pass): fails this batch only
            logger.exception("encoder forward failed; failing the %d requests in it", len(batch))
            for request in batch:
                self.metrics.failed()
                request.done(EncodeFailed(f"the forward pass failed: {type(exc).__name__}: {exc}"))
            return
        now = time.monotonic()
        for request, answer in zip(batch, rows, strict=True):
            request.done(answer)
            self.metrics.finished(now - request.arrival_s)
        tokens = sum(r.num_tokens for r in batch)
        with self._lock:
            counts = self._counts
            counts["batches"] += 1
            counts["requests"] += len(batch)
            counts["last_batch_size"] = len(batch)
            counts["max_batch_seen"] = max(counts["max_batch_seen"], len(batch))
        self.metrics.step(
            time.perf_counter() - started,
            computed_prompt=tokens,
            prompts_done=tokens,
            generated=0,
            batch=len(batch),
            max_batch=counts["max_batch_seen"],
        )

    @property
    def _mask_id(self) -> int | None:
        return self._tokenizer.mask_token_id if self.task is Task.FILL_MASK else None

    def _warm_up(self) -> None:
        """Two batches through the whole path (one row, two rows) on this worker before we report ready."""
        import torch

        torch.set_num_threads(1)  # on this thread: a worker computes on one core (see NOTE)
        ids = list(self._tokenizer("Hello, world")["input_ids"])[: self._info.max_model_len if self._info else 8]
        if self._mask_id is not None:
            ids[len(ids) // 2] = self._mask_id
        kind = KINDS[self.task][0]
        with self.metrics.mute():
            for rows in (1, 2):
                self._runner.run([EncodeInput(ids)] * rows, [PoolingParams(kind)] * rows, self._mask_id)

    def _close(self, exc: BaseException) -> list[EncodeRequest]:
        """Under the lock: refuse new requests (waking every worker, which then stops) and take every
        request not answered yet: queued, being planned, planned or running."""
        held = [*self._running.values(), *self._plan, self._planning]
        self._plan.clear()
        self._planning = []
        return [r for batch in held for r in batch] + self._inbox.close(exc)

    def _die(self, exc: BaseException) -> None:
        logger.critical("an encoder worker failed; the engine is dead", exc_info=exc)
        with self._lock:
            first = self._dead is None
            if first:
                self._dead = exc
            sent = self._close(exc)  # answered ones ignore a second answer
        if first and self.on_dead is not None:
            try:
                self.on_dead(exc)
            except Exception:
                logger.exception("on_dead failed")
        error = EngineDeadError(f"the engine stopped: {type(exc).__name__}: {exc}")
        for request in sent:
            request.done(error)


def _run_worker(engine: AsyncEncoderEngine, index: int, _: None) -> None:
    engine._work(index)


def _resolve(future: asyncio.Future[Rows], result: Rows | BaseException) -> None:
    if future.done():  # cancelled meanwhile
        return
    if isinstance(result, BaseException):
        future.set_exception(result)
    else:
        future.set_result(result)


def truncate(inputs: EncodeInput, limit: int, special_ids: set[int]) -> EncodeInput:
    """The first ``limit`` tokens, keeping a closing special token (``[SEP]``, ``</s>``) last, as
    tokenizers' truncation does."""
    ids, types = inputs.token_ids, inputs.token_type_ids
    keep_last = ids[-1] in special_ids
    cut = limit - 1 if keep_last else limit
    new_ids = ids[:cut] + (ids[-1:] if keep_last else [])
    new_types = None if types is None else types[:cut] + (types[-1:] if keep_last else [])
    return EncodeInput(new_ids, new_types)


def keep_case(tokenizer: Any) -> None:
    """Turn off lower-casing (and the accent stripping that comes with it) in a fast tokenizer's normalizer."""
    import json

    from tokenizers import Tokenizer

    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None or backend.normalizer is None:
        return
    raw = json.loads(backend.to_str())
    spec = raw["normalizer"]
    parts = spec["normalizers"] if spec.get("type") == "Sequence" else [spec]
    kept = [
        {**part, "lowercase": False, "strip_accents": False} if part.get("type") == "BertNormalizer" else part
        for part in parts
        if part.get("type") != "Lowercase"
    ]
    raw["normalizer"] = {**spec, "normalizers": kept} if spec.get("type") == "Sequence" else (kept[0] if kept else None)
    backend.normalizer = Tokenizer.from_str(json.dumps(raw)).normalizer


def load_tokenizer(model_dir: Path, trust_remote_code: bool = False) -> Any:
    """The folder's fast tokenizer from tokenizer.json when there is one (no model registry import)."""
    if (model_dir / "tokenizer.json").exists() and not trust_remote_code:
        from transformers import PreTrainedTokenizerFast

        return PreTrainedTokenizerFast.from_pretrained(str(model_dir))
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(model_dir), trust_remote_code=trust_remote_code)
