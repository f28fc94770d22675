"""Encoder tasks on the engine, for every protocol: which task a route needs, tokenizing, submitting.

The OpenAI routes (embeddings, rerank, score) and KServe's V1/V2 answers for encoder tasks share
three steps: refuse a model whose task cannot answer (``WrongTask``, a 400 naming the task) before
any work; tokenize the inputs off the event loop into ``EncodeInput``s, refusing (or cutting)
inputs longer than the model reads; and submit all inputs of one request at once, so the engine
batches them together, after the same queue checks the generation routes make.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any

from isvc.engine.client import EncodeInput, EngineClient, ModelInfo, PoolingOutput, PoolingParams, Task, WrongTask
from isvc.errors import ContextLengthExceeded, InvalidRequest
from isvc.server.protocols.preprocess import INLINE_ENCODE_CHARS, off_loop

MAX_INPUTS = 2048
"""Inputs (texts, documents, pairs) in one request: OpenAI's limit for embeddings."""

_ROUTES_OF_TASK = {
    Task.TEXT_GENERATION: "/v1/chat/completions and /v1/completions",
    Task.TEXT2TEXT_GENERATION: "/v1/chat/completions and /v1/completions",
    Task.TEXT_EMBEDDING: "/v1/embeddings, /v1/rerank and /v1/score",
    Task.RERANK: "/v1/rerank, /v1/score and /v1/classify",
    Task.SEQUENCE_CLASSIFICATION: "/v1/rerank, /v1/score, /v1/classify and the KServe V1/V2 routes",
}


@dataclass(frozen=True, slots=True)
class EncoderOptions:
    """KServe huggingfaceserver's encoder flags, as they shape tokenizing and V1/V2 answers."""

    add_special_tokens: bool = True
    """False with ``--disable_special_tokens``: inputs are tokenized without [CLS]/[SEP]."""
    return_token_type_ids: bool = False
    """``--return_token_type_ids``: give the model token type ids even when its tokenizer makes none."""
    tensor_input_names: tuple[str, ...] | None = None
    """``--tensor_input_names``: the tokenizer outputs the model gets (None: all it makes)."""
    return_probabilities: bool = False
    """``--return_probabilities``: V1/V2 classification and fill-mask answers are probabilities."""
    return_raw_logits: bool = False
    """``--return_raw_logits``: V1/V2 classification and fill-mask answers are raw logits."""
    return_offsets_mapping: bool = False
    """``--return_offsets_mapping``: token_classification answers carry each token's character span."""

    @classmethod
    def from_args(cls, args: Any) -> EncoderOptions:
        """From ``isvc serve``'s parsed flags (``isvc.runtime_args``)."""
        names = getattr(args, "tensor_input_names", None)
        return cls(
            add_special_tokens=not getattr(args, "disable_special_tokens", False),
            return_token_type_ids=bool(getattr(args, "return_token_type_ids", False)),
            tensor_input_names=tuple(names) if names else None,
            return_probabilities=bool(getattr(args, "return_probabilities", False)),
            return_raw_logits=bool(getattr(args, "return_raw_logits", False)),
            return_offsets_mapping=bool(getattr(args, "return_offsets_mapping", False)),
        )


def require_task(engine: EngineClient, tasks: Collection[Task], what: str) -> ModelInfo:
    """The served model's info, or ``WrongTask`` when its task cannot answer ``what`` (before any work)."""
    info = engine.model_info
    if info.task not in tasks:
        routes = _ROUTES_OF_TASK.get(info.task, "the KServe V1/V2 routes")
        raise WrongTask(
            f"this model serves the {info.task.value} task, which does not answer {what} "
            f"(needs a model served as {' or '.join(t.value for t in tasks)}); it answers {routes}",
            param="model",
        )
    return info


GENERATIVE = (Task.TEXT_GENERATION, Task.TEXT2TEXT_GENERATION)


def require_generative(engine: EngineClient, what: str) -> None:
    require_task(engine, GENERATIVE, what)


def check_count(engine: EngineClient, num_inputs: int, param: str) -> None:
    """Refuse an empty request, or one with more inputs than any request may have or the queue holds."""
    if num_inputs == 0:
        raise InvalidRequest(f"{param} is empty; send at least one input", param=param)
    limit = min(MAX_INPUTS, engine.max_queue)
    if num_inputs > limit:
        why = f"the server queues at most {limit} at once (max_queue)" if limit < MAX_INPUTS else "the limit"
        raise InvalidRequest(
            f"{param} has {num_inputs} inputs; at most {limit} per request ({why}); split it into smaller requests",
            param=param,
        )


@dataclass(frozen=True, slots=True)
class Tokenized:
    inputs: list[EncodeInput]
    offsets: list[list[tuple[int, int]]] | None = None
    """Each token's (start, end) characters in its text, when asked for."""


async def tokenize(
    engine: EngineClient,
    texts: Sequence[str],
    options: EncoderOptions,
    *,
    pairs: Sequence[str] | None = None,
    truncate_to: int | None = None,
    offsets: bool = False,
    param: str = "input",
) -> Tokenized:
    """Tokenize ``texts`` (with ``pairs`` as second segments) as the model reads them.

    ``truncate_to``: cut each input to that many tokens (None: refuse inputs longer than the
    model reads with a 400). Long batches are tokenized off the event loop.
    """
    tokenizer = engine.tokenizer
    max_len = engine.max_model_len
    limit = min(truncate_to, max_len) if truncate_to is not None else None
    with_types = _wants_token_types(tokenizer, options)

    def run() -> Any:
        kwargs: dict[str, Any] = {
            "add_special_tokens": options.add_special_tokens,
            "return_token_type_ids": with_types,
            "return_attention_mask": False,
        }
        if limit is not None:
            kwargs.update(truncation=True, max_length=limit)
        if offsets:
            kwargs["return_offsets_mapping"] = True
        if pairs is not None:
            return tokenizer(list(texts), list(pairs), **kwargs)
        return tokenizer(list(texts), **kwargs)

    size = sum(len(t) for t in texts) + sum(len(t) for t in pairs or ())
    try:
        encoded = run() if size <= INLINE_ENCODE_CHARS else await off_loop(run)
    except (ValueError, TypeError) as exc:  # e.g. a pair whose first text alone is longer than the limit
        raise InvalidRequest(f"{param}: cannot tokenize: {exc}", param=param) from None
    ids: list[list[int]] = encoded["input_ids"]
    types: list[list[int]] | None = encoded.get("token_type_ids") if with_types else None
    inputs = []
    for i, row in enumerate(ids):
        check_length(len(row), max_len, param, i)
        inputs.append(EncodeInput(token_ids=list(row), token_type_ids=list(types[i]) if types is not None else None))
    spans = [[(int(a), int(b)) for a, b in row] for row in encoded["offset_mapping"]] if offsets else None
    return Tokenized(inputs, spans)


def token_id_inputs(
    engine: EngineClient, rows: Sequence[Sequence[int]], truncate_to: int | None, param: str
) -> list[EncodeInput]:
    """Inputs the client tokenized itself: ids checked against the vocabulary, lengths as for texts."""
    max_len = engine.max_model_len
    limit = min(truncate_to, max_len) if truncate_to is not None else None
    inputs = []
    for i, row in enumerate(rows):
        ids = list(row[:limit] if limit is not None else row)
        engine.check_token_ids(ids, param)
        check_length(len(ids), max_len, param, i)
        inputs.append(EncodeInput(token_ids=ids))
    return inputs


def check_length(num_tokens: int, max_len: int, param: str, index: int) -> None:
    if num_tokens == 0:
        raise InvalidRequest(f"{param}[{index}] has no tokens", param=param)
    if num_tokens > max_len:
        raise ContextLengthExceeded(
            f"{param}[{index}] has {num_tokens} tokens; this model reads at most {max_len}. "
            "Shorten it, or set truncate_prompt_tokens to cut it.",
            param=param,
        )


def truncation(truncate_prompt_tokens: int | None, max_len: int) -> int | None:
    """vLLM's ``truncate_prompt_tokens``: None keeps inputs whole, -1 cuts at the model's limit, k at k."""
    if truncate_prompt_tokens is None:
        return None
    return max_len if truncate_prompt_tokens < 0 else truncate_prompt_tokens


async def encode_all(
    engine: EngineClient, request_id: str, inputs: Sequence[EncodeInput], params: PoolingParams
) -> list[PoolingOutput]:
    """Submit every input at once (so the engine batches them) and return the outputs in order.

    The first failure fails the request and cancels the rest; so does the client leaving.
    """
    engine.check_capacity(len(inputs))
    tasks = [asyncio.ensure_future(engine.encode(f"{request_id}-{i}", x, params)) for i, x in enumerate(inputs)]
    try:
        return list(await asyncio.gather(*tasks))
    finally:
        pending = [t for t in tasks if not t.done()]
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)


def _wants_token_types(tokenizer: Any, options: EncoderOptions) -> bool:
    wanted = options.return_token_type_ids or "token_type_ids" in getattr(tokenizer, "model_input_names", ())
    if options.tensor_input_names is not None and "token_type_ids" not in options.tensor_input_names:
        return False
    return wanted


def relevance(out: PoolingOutput) -> float:
    """A cross-encoder's score: sigmoid of its one logit; with several labels, the last label's probability."""
    return probabilities(out.data)[-1]  # type: ignore[arg-type]


def probabilities(logits: Sequence[float]) -> list[float]:
    """A classifier's class probabilities: softmax over its labels, or the sigmoid of a lone logit (as vLLM's
    classify and sentence-transformers' CrossEncoder do)."""
    if len(logits) == 1:
        return [_sigmoid(logits[0])]
    return softmax(logits)


def argmax(row: Sequence[float]) -> int:
    """The index of the largest value (the first of equals)."""
    return max(range(len(row)), key=row.__getitem__)


def softmax(row: Sequence[float]) -> list[float]:
    top = max(row)
    exps = [math.exp(x - top) for x in row]
    total = sum(exps)
    return [e / total for e in exps]


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x)) if x >= 0 else math.exp(x) / (1.0 + math.exp(x))
