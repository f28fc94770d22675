"""FakeEngine: a real ``EngineClient`` with deterministic answers, for fast in-process server tests.

It tokenizes with a real (tiny, trained in milliseconds) BERT WordPiece tokenizer and answers
every task without a model, by rules a test can predict from the token ids alone:

- ``embed``: a unit vector (``embedding_dim``) from the ids (the same ids give the same vector);
  ``dimensions`` keeps the first numbers, re-normalized;
- ``classify``: the best label is ``len(ids) % num_labels``;
- ``score``: one logit, the number of the query's words found in the document;
- ``token_classify``: each token's best label is ``id % num_labels``;
- ``fill_mask``: the best token at a mask is the token just before it.

It records the most ``encode`` calls in flight at once, so a test can see a request's inputs
were submitted together.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator, Callable, Iterable
from functools import cache
from typing import Any

from isvc.engine.client import EncodeInput, ModelInfo, PoolingOutput, PoolingParams, Task, WrongTask
from isvc.engine.outputs import RequestOutput
from isvc.engine.params import SamplingParams, StructuredOutput
from isvc.errors import ContextLengthExceeded, InvalidRequest, Overloaded


@cache
def fake_tokenizer() -> Any:
    from tests.encoder_fixtures import BERT_SPECIALS, _tokenizer

    return _tokenizer(BERT_SPECIALS, token_types=True)


class FakeEngine:
    def __init__(
        self,
        task: Task = Task.TEXT_EMBEDDING,
        *,
        embedding_dim: int = 8,
        num_labels: int = 3,
        max_model_len: int = 32,
        max_queue: int = 64,
        normalize: bool = True,
    ) -> None:
        self.task = task
        self.embedding_dim = embedding_dim
        self.num_labels = num_labels
        self._max_model_len = max_model_len
        self._max_queue = max_queue
        self.normalize = normalize
        self.on_dead: Callable[[BaseException], None] | None = None
        self.load_error: BaseException | None = None
        self._ready = False
        self.in_flight = 0
        self.max_in_flight = 0
        self.encoded: list[tuple[EncodeInput, PoolingParams]] = []
        self.overloaded = False
        """Set to make ``check_capacity`` refuse, as a full queue does."""

    # -- lifecycle -------------------------------------------------------------------------

    def load(self) -> None:
        self._ready = True

    def shutdown(self) -> None:
        self._ready = False

    @property
    def ready(self) -> bool:
        return self._ready

    @property
    def dead(self) -> bool:
        return False

    @property
    def model_info(self) -> ModelInfo:
        return ModelInfo(
            task=self.task,
            architecture="FakeBert",
            max_model_len=self._max_model_len,
            vocab_size=self.vocab_size,
            hidden_size=self.embedding_dim,
            embedding_dim=self.embedding_dim if self.task == Task.TEXT_EMBEDDING else None,
            pooling="mean" if self.task == Task.TEXT_EMBEDDING else None,
            normalize=self.normalize,
            id2label={i: f"LABEL_{i}" for i in range(self.num_labels)},
            mask_token=self.tokenizer.mask_token,
        )

    @property
    def tokenizer(self) -> Any:
        return fake_tokenizer()

    @property
    def max_model_len(self) -> int:
        return self._max_model_len

    @property
    def vocab_size(self) -> int:
        return len(self.tokenizer)

    @property
    def max_queue(self) -> int:
        return self._max_queue

    # -- checks ----------------------------------------------------------------------------

    def check_request(self, prompt_ids: list[int], max_tokens: int | None) -> int:
        if not prompt_ids:
            raise InvalidRequest("the prompt is empty", param="prompt")
        self.check_token_ids(prompt_ids, "prompt")
        wanted = max_tokens if max_tokens is not None else self._max_model_len - len(prompt_ids)
        if len(prompt_ids) + wanted > self._max_model_len:
            raise ContextLengthExceeded(f"prompt too long for {self._max_model_len} tokens", param="messages")
        return wanted

    def check_token_ids(self, ids: Iterable[int], param: str) -> None:
        bad = next((t for t in ids if not 0 <= t < self.vocab_size), None)
        if bad is not None:
            raise InvalidRequest(f"token id {bad} is out of range: the vocabulary has {self.vocab_size}", param=param)

    def check_capacity(self, num_requests: int = 1) -> None:
        if self.overloaded:
            raise Overloaded("the fake is at capacity; retry shortly", retry_after_s=1)

    async def check_structured(self, spec: StructuredOutput) -> None:
        raise WrongTask("the fake engine does not generate", param="model")

    # -- work ------------------------------------------------------------------------------

    async def generate(
        self, request_id: str, prompt_ids: list[int], params: SamplingParams
    ) -> AsyncIterator[RequestOutput]:
        if not self.task.generative:
            raise WrongTask(f"this model serves the {self.task.value} task", param="model")
        yield RequestOutput(request_id, " ok", [7], len(prompt_ids), 1, finish_reason="length")

    async def encode(self, request_id: str, inputs: EncodeInput, params: PoolingParams) -> PoolingOutput:
        if self.task.generative:
            raise WrongTask(f"this model serves the {self.task.value} task", param="model")
        ids = inputs.token_ids
        if len(ids) > self._max_model_len:
            raise ContextLengthExceeded(f"{len(ids)} tokens > {self._max_model_len}", param="input")
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            for _ in range(3):  # let the other inputs of the request arrive, as a batch would
                await asyncio.sleep(0)
        finally:
            self.in_flight -= 1
        self.encoded.append((inputs, params))
        data = self._answer(inputs, params)
        return PoolingOutput(request_id, data, num_prompt_tokens=len(ids), token_ids=list(ids))

    def _answer(self, inputs: EncodeInput, params: PoolingParams) -> list[float] | list[list[float]]:
        ids = inputs.token_ids
        if params.kind == "embed":
            return self.vector(ids, params.dimensions, params.normalize)
        if params.kind == "classify":
            best = len(ids) % self.num_labels
            return [1.0 if k == best else -abs(best - k) * 0.5 for k in range(self.num_labels)]
        if params.kind == "score":
            return [float(self._overlap(inputs))]
        if params.kind == "token_classify":
            return [[1.0 if k == t % self.num_labels else 0.0 for k in range(self.num_labels)] for t in ids]
        mask = self.tokenizer.mask_token_id
        rows = []
        for pos, t in enumerate(ids):
            if t == mask:
                best = ids[pos - 1] if pos else 0
                rows.append([2.0 if v == best else 0.0 for v in range(self.vocab_size)])
        return rows

    def vector(self, ids: list[int], dimensions: int | None = None, normalize: bool | None = None) -> list[float]:
        """The embedding of ``ids`` (tests compute the expected answer with it)."""
        v = [sum(math.sin((t + 1) * (j + 1)) for t in ids) / len(ids) for j in range(self.embedding_dim)]
        if dimensions is not None:
            v = v[:dimensions]
        if self.normalize if normalize is None else normalize:
            norm = math.sqrt(sum(x * x for x in v))
            v = [x / norm for x in v]
        return v

    def _overlap(self, inputs: EncodeInput) -> int:
        specials = set(self.tokenizer.all_special_ids)
        types = inputs.token_type_ids or [0] * len(inputs.token_ids)
        query = {t for t, s in zip(inputs.token_ids, types, strict=True) if s == 0 and t not in specials}
        document = [t for t, s in zip(inputs.token_ids, types, strict=True) if s == 1 and t not in specials]
        return sum(1 for t in document if t in query)

    def stats(self) -> dict[str, int]:
        return {"running": self.in_flight, "waiting": 0, "max_batch_seen": self.max_in_flight}
