"""EngineClient: the engine as the server sees it — one Protocol that every engine implements.

The server depends on this module and the torch-free data types it names (``SamplingParams``,
``PoolingParams``, ``RequestOutput``, ``PoolingOutput``, ``ModelInfo``, ``Task``), never on an
engine's internals (an import-linter contract holds it). Two engines implement it:

- the generative engine (``isvc.engine.async_engine.AsyncEngine``: decoder LLMs, continuous
  batching, sampling) answers ``generate``;
- the encoder engine (``isvc.engine.encoder``: BERT-like models, dynamic batches of whole
  prompts, pooling/classification heads) answers ``encode``.

An engine asked for what its task does not do raises ``WrongTask`` (a 400 naming the model's
task), so "embeddings from a chat model" or "chat with an embedding model" is a clear refusal.
Like vLLM's ``EngineClient`` (``generate`` / ``encode``), with KServe's task names.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Literal, Protocol

from isvc import tasks
from isvc.engine.outputs import RequestOutput
from isvc.engine.params import SamplingParams, StructuredOutput
from isvc.errors import InvalidRequest


class Task(StrEnum):
    """KServe huggingfaceserver's task names (``--task``), plus ``rerank`` for cross-encoders."""

    # the names come from isvc.tasks, the torch-free table the control plane reads too
    TEXT_GENERATION = tasks.TEXT_GENERATION
    TEXT2TEXT_GENERATION = tasks.TEXT2TEXT_GENERATION
    FILL_MASK = tasks.FILL_MASK
    TOKEN_CLASSIFICATION = tasks.TOKEN_CLASSIFICATION
    SEQUENCE_CLASSIFICATION = tasks.SEQUENCE_CLASSIFICATION
    TEXT_EMBEDDING = tasks.TEXT_EMBEDDING
    RERANK = tasks.RERANK

    @property
    def generative(self) -> bool:
        return self in (Task.TEXT_GENERATION, Task.TEXT2TEXT_GENERATION)


NO_PROMPT_LOGPROBS = (
    "prompt logprobs (echo with logprobs) need a decoder-only model: an encoder-decoder model's prompt "
    "is its encoder's input, which it does not predict"
)
"""The refusal of ``echo`` + ``logprobs`` on a ``text2text_generation`` model (the server's, before
anything streams, and the engine's own)."""


class WrongTask(InvalidRequest):
    """The request asks for something the served model's task does not do (400)."""

    code = "wrong_task"


Pooling = Literal["mean", "cls", "last", "max"]


@dataclass(frozen=True, slots=True)
class ModelInfo:
    """What the server needs to know about the served model to shape requests and answers."""

    task: Task
    architecture: str
    """The ``architectures[0]`` of config.json (e.g. ``BertModel``, ``LlamaForCausalLM``)."""
    max_model_len: int
    """Longest input in tokens (prompt + output for generation; the whole input for encoders)."""
    vocab_size: int
    hidden_size: int
    embedding_dim: int | None = None
    """Length of the vector ``encode`` returns for ``text_embedding`` (None for other tasks)."""
    pooling: Pooling | None = None
    """How token states become one vector (sentence-transformers' ``1_Pooling``), for embeddings."""
    normalize: bool = False
    """Whether embeddings are L2-normalized by the model's own pipeline (a ``Normalize`` module)."""
    id2label: dict[int, str] = field(default_factory=dict)
    """Class names for classification tasks (config.json ``id2label``)."""
    mask_token: str | None = None
    """The tokenizer's mask token, for ``fill_mask``."""


EncodeKind = Literal["embed", "classify", "token_classify", "fill_mask", "score"]


@dataclass(frozen=True, slots=True)
class PoolingParams:
    """What one ``encode`` request asks for.

    ``embed``: one pooled vector (``dimensions`` truncates it, Matryoshka-style, then it is
    re-normalized when ``normalize``). ``classify`` / ``score``: the sequence-classification
    logits of the input (a cross-encoder's relevance score is ``score``'s first logit).
    ``token_classify``: logits for every token. ``fill_mask``: vocabulary logits at each mask
    position.
    """

    kind: EncodeKind
    normalize: bool | None = None
    """None: the model's own choice (``ModelInfo.normalize``)."""
    dimensions: int | None = None
    truncate: bool = False
    """Cut inputs longer than ``max_model_len`` instead of refusing them (400)."""


@dataclass(frozen=True, slots=True)
class EncodeInput:
    """One tokenized input: a text, or a (query, document) pair for a cross-encoder."""

    token_ids: list[int]
    token_type_ids: list[int] | None = None


@dataclass(slots=True)
class PoolingOutput:
    """The result of one ``encode``: a vector (embed, classify, score) or rows (per token / mask)."""

    request_id: str
    data: list[float] | list[list[float]]
    num_prompt_tokens: int
    token_ids: list[int] = field(default_factory=list)
    """The input's token ids as run (after truncation), for token-level answers."""


class EngineClient(Protocol):
    """The engine as the server sees it. Every method may raise an ``IsvcError`` (mapped once to HTTP)."""

    on_dead: Callable[[BaseException], None] | None
    load_error: BaseException | None

    def load(self) -> None:
        """Load weights and warm up (blocking; the server calls it before it binds its port)."""

    def shutdown(self) -> None: ...

    @property
    def ready(self) -> bool: ...

    @property
    def dead(self) -> bool: ...

    @property
    def model_info(self) -> ModelInfo: ...

    @property
    def tokenizer(self) -> Any: ...

    @property
    def max_model_len(self) -> int: ...

    @property
    def vocab_size(self) -> int: ...

    @property
    def max_queue(self) -> int:
        """Requests that may wait for the engine at once (one HTTP request never needs more)."""
        ...

    def check_request(self, prompt_ids: list[int], max_tokens: int | None) -> int:
        """Generation: validate lengths before any work; returns the effective max_tokens."""
        ...

    def check_token_ids(self, ids: Iterable[int], param: str) -> None: ...

    def check_capacity(self, num_requests: int = 1) -> None:
        """Refuse (Overloaded: 429/503) before any work when the queue is full."""

    async def check_structured(self, spec: StructuredOutput) -> None:
        """Refuse (InvalidRequest: 400) an output constraint that cannot be built, before any work."""

    def generate(self, request_id: str, prompt_ids: list[int], params: SamplingParams) -> AsyncIterator[RequestOutput]:
        """Stream a generation's deltas; cancelling the iterator aborts the request."""
        ...

    async def encode(self, request_id: str, inputs: EncodeInput, params: PoolingParams) -> PoolingOutput:
        """Run one input through an encoder task; cancelling the await aborts it."""
        ...

    def stats(self) -> dict[str, int]: ...
