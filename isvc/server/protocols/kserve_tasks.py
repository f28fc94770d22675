"""KServe V1/V2 answers for encoder tasks, in the shapes KServe huggingfaceserver's encoder model returns.

Per instance (V1 ``predictions``; V2 one tensor ``output-0``, as KServe's ``get_predict_response``):

- ``fill_mask``: the text of the best token at the mask(s) (V2: BYTES ``[n]``);
- ``sequence_classification``: the best label's index (V2: INT64 ``[n]``);
- ``token_classification``: ``[[label index per token]]`` (V2: INT64 ``[n, 1, T]``);
- ``text_embedding``: the vector (V2: FP64 ``[n, dim]``: KServe's numpy of Python floats);
- ``rerank`` (isvc's): the relevance score of the text, or of a ``{"text", "text_pair"}`` pair.

``--return_probabilities`` / ``--return_raw_logits`` turn the classification and fill-mask
answers into ``{label index: value}`` maps, as KServe does (probabilities rounded to 4 digits;
for fill-mask, one map per vocabulary token and mask, the probabilities as strings). In V2 those
become FP64 tensors of the values. Like KServe, inputs longer than the model reads are cut to it;
unlike KServe, a token-level answer covers the input's own tokens, not a batch's padding: V2
pads ragged rows with -1 (labels) or 0.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from isvc.engine.client import EncodeKind, EngineClient, PoolingParams, Task
from isvc.errors import InvalidRequest
from isvc.server.protocols import encode
from isvc.server.protocols.encode import EncoderOptions

ENCODER_TASKS = (
    Task.FILL_MASK,
    Task.SEQUENCE_CLASSIFICATION,
    Task.TOKEN_CLASSIFICATION,
    Task.TEXT_EMBEDDING,
    Task.RERANK,
)

_KIND: dict[Task, EncodeKind] = {
    Task.FILL_MASK: "fill_mask",
    Task.SEQUENCE_CLASSIFICATION: "classify",
    Task.TOKEN_CLASSIFICATION: "token_classify",
    Task.TEXT_EMBEDDING: "embed",
    Task.RERANK: "score",
}


@dataclass(frozen=True, slots=True)
class Tensor:
    """A V2 output tensor (``data`` flattened row-major, as the protocol's JSON form)."""

    name: str
    datatype: str
    shape: list[int]
    data: list[Any]

    def as_json(self) -> dict[str, Any]:
        return {"name": self.name, "datatype": self.datatype, "shape": self.shape, "data": self.data}


@dataclass(slots=True)
class Predictions:
    values: list[Any]
    """V1's ``predictions``: one per instance."""
    tensor: Tensor
    """V2's ``output-0``."""
    extra: list[Tensor] = field(default_factory=list)
    """More outputs (``offset_mapping``), in V1 as KServe's ``outputs`` beside ``predictions``."""


async def predict(
    engine: EngineClient, texts: Sequence[str], options: EncoderOptions, *, pairs: Sequence[str] | None = None
) -> Predictions:
    """Run ``texts`` through the served encoder task; ``param`` names the field in errors."""
    info = encode.require_task(engine, ENCODER_TASKS, "KServe V1/V2 encoder predictions")
    task = info.task
    if pairs is not None and task not in (Task.RERANK, Task.SEQUENCE_CLASSIFICATION):
        raise InvalidRequest(f"text_pair is read by rerank and sequence_classification models, not {task.value}")
    encode.check_count(engine, len(texts), "instances")
    offsets = options.return_offsets_mapping and task == Task.TOKEN_CLASSIFICATION
    tokenized = await encode.tokenize(
        engine, texts, options, pairs=pairs, truncate_to=engine.max_model_len, offsets=offsets, param="instances"
    )
    if task == Task.FILL_MASK:
        _check_masks(engine, tokenized.inputs)
    params = PoolingParams(kind=_KIND[task], truncate=True)
    outs = await encode.encode_all(engine, f"predict-{uuid.uuid4().hex}", tokenized.inputs, params)
    rows: list[Any] = [out.data for out in outs]
    if task == Task.FILL_MASK:
        result = _fill_mask(engine, rows, options)
    elif task == Task.SEQUENCE_CLASSIFICATION:
        result = _classification(rows, options)
    elif task == Task.TOKEN_CLASSIFICATION:
        result = _token_classification(rows, options)
    elif task == Task.TEXT_EMBEDDING:
        result = Predictions(rows, _tensor("FP64", rows))
    else:
        scores = [encode.relevance(out) for out in outs]
        result = Predictions(scores, _tensor("FP64", scores))
    if tokenized.offsets is not None:
        result.extra.append(
            _tensor("INT64", [[list(span) for span in row] for row in tokenized.offsets], "offset_mapping")
        )
    return result


def output_metadata(task: Task, embedding_dim: int | None, options: EncoderOptions) -> dict[str, Any]:
    """V2 model metadata's output, as ``predict`` builds it."""
    numbers = options.return_probabilities or options.return_raw_logits
    if task == Task.FILL_MASK:
        datatype, shape = ("FP64", [-1, -1, -1]) if numbers else ("BYTES", [-1])
    elif task == Task.SEQUENCE_CLASSIFICATION:
        datatype, shape = ("FP64", [-1, -1]) if numbers else ("INT64", [-1])
    elif task == Task.TOKEN_CLASSIFICATION:
        datatype, shape = ("FP64", [-1, -1, -1]) if numbers else ("INT64", [-1, 1, -1])
    elif task == Task.TEXT_EMBEDDING:
        datatype, shape = "FP64", [-1, embedding_dim or -1]
    else:
        datatype, shape = "FP64", [-1]
    return {"name": "output-0", "datatype": datatype, "shape": shape}


def _check_masks(engine: EngineClient, inputs: Sequence[Any]) -> None:
    mask_id = engine.tokenizer.mask_token_id
    for i, x in enumerate(inputs):
        if mask_id is None or mask_id not in x.token_ids:
            mask = engine.tokenizer.mask_token
            raise InvalidRequest(f"instances[{i}] has no mask token {mask} to fill", param="instances")


def _fill_mask(engine: EngineClient, rows: list[list[list[float]]], options: EncoderOptions) -> Predictions:
    if options.return_raw_logits:
        values = [[[{j: v} for j, v in enumerate(mask)] for mask in row] for row in rows]
        return Predictions(values, _tensor("FP64", rows))
    if options.return_probabilities:
        probs = [[encode.softmax(mask) for mask in row] for row in rows]
        strings = [[[{j: f"{p:.4f}"} for j, p in enumerate(mask)] for mask in row] for row in probs]
        return Predictions(strings, _tensor("FP64", probs))
    decode = engine.tokenizer.decode
    texts = [decode([encode.argmax(mask) for mask in row]) for row in rows]
    return Predictions(texts, Tensor("output-0", "BYTES", [len(texts)], texts))


def _classification(rows: list[list[float]], options: EncoderOptions) -> Predictions:
    if options.return_raw_logits:
        return Predictions([dict(enumerate(row)) for row in rows], _tensor("FP64", rows))
    if options.return_probabilities:
        probs = [[float(f"{p:.4f}") for p in encode.softmax(row)] for row in rows]
        return Predictions([dict(enumerate(row)) for row in probs], _tensor("FP64", probs))
    labels = [encode.argmax(row) for row in rows]
    return Predictions(labels, _tensor("INT64", labels))


def _token_classification(rows: list[list[list[float]]], options: EncoderOptions) -> Predictions:
    if options.return_raw_logits:
        return Predictions([[dict(enumerate(tok)) for tok in row] for row in rows], _tensor("FP64", rows))
    if options.return_probabilities:
        probs = [[[float(f"{p:.4f}") for p in encode.softmax(tok)] for tok in row] for row in rows]
        return Predictions([[dict(enumerate(tok)) for tok in row] for row in probs], _tensor("FP64", probs))
    labels = [[[encode.argmax(tok) for tok in row]] for row in rows]  # KServe's [[...]]: argmax over a [1, T, L] batch
    return Predictions(labels, _tensor("INT64", labels))


def _tensor(datatype: str, values: list[Any], name: str = "output-0") -> Tensor:
    """Nested lists as one V2 tensor; ragged rows padded (-1 for integers, 0 for floats) to the longest."""
    shape = _shape(values)
    pad: Any = -1 if datatype == "INT64" else 0.0
    if datatype == "INT64" and name == "offset_mapping":
        pad = 0  # a padding token's span, as the tokenizer gives it
    flat: list[Any] = []
    _flatten(values, shape, pad, flat)
    return Tensor(name, datatype, shape, flat)


def _shape(values: Any) -> list[int]:
    if not isinstance(values, list):
        return []
    inner = [_shape(v) for v in values]
    depth = max((len(s) for s in inner), default=0)
    return [len(values)] + [max((s[d] for s in inner if len(s) > d), default=0) for d in range(depth)]


def _flatten(values: Any, shape: list[int], pad: Any, out: list[Any]) -> None:
    if not shape:
        out.append(values)
        return
    items = values if isinstance(values, list) else []
    for i in range(shape[0]):
        if i < len(items):
            _flatten(items[i], shape[1:], pad, out)
        else:
            out.extend([pad] * math.prod(shape[1:]))
