"""OpenAI-style pooling routes on the engine: embeddings (OpenAI), rerank (vLLM/Jina/Cohere), score and
classify (vLLM).

Embeddings need a ``text_embedding`` model. Rerank and score read (query, document) pairs
through a cross-encoder (``rerank`` or ``sequence_classification``: the first logit, through a
sigmoid as vLLM and sentence-transformers' CrossEncoder do), or compare embeddings by cosine on
a ``text_embedding`` model (as vLLM does). Classify answers a sequence classifier's (or a cross-encoder's)
label and class probabilities, naming the label from config.json's ``id2label``. Answers are built as plain dicts: an embeddings
answer holds thousands of floats, and pydantic would check each one again.
"""

from __future__ import annotations

import base64
import math
import struct
import time
import uuid
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from isvc.engine.client import EncodeInput, EngineClient, PoolingParams, Task
from isvc.errors import InvalidRequest, NotFound
from isvc.server.protocols import encode
from isvc.server.protocols.encode import EncoderOptions
from isvc.server.protocols.openai.schema import (
    ClassificationRequest,
    EmbeddingRequest,
    RerankDocument,
    RerankRequest,
    ScoreRequest,
)

CROSS_ENCODERS = (Task.RERANK, Task.SEQUENCE_CLASSIFICATION)
SCORERS = (*CROSS_ENCODERS, Task.TEXT_EMBEDDING)


class OpenAIPooling:
    def __init__(self, engine: EngineClient, model_name: str, options: EncoderOptions | None = None) -> None:
        self.engine = engine
        self.model_name = model_name
        self.options = options or EncoderOptions()

    def _check_model(self, name: str | None) -> None:
        if name is not None and name != self.model_name:
            raise NotFound(f"The model `{name}` does not exist. This server serves `{self.model_name}`.", param="model")

    # -- embeddings --------------------------------------------------------------------------

    async def embeddings(self, req: EmbeddingRequest) -> dict[str, Any]:
        self._check_model(req.model)
        info = encode.require_task(self.engine, (Task.TEXT_EMBEDDING,), "embeddings")
        dim = info.embedding_dim
        if req.dimensions is not None and dim is not None and req.dimensions > dim:
            raise InvalidRequest(
                f"dimensions {req.dimensions} is more than this model's {dim}; ask for 1..{dim}", param="dimensions"
            )
        inputs = await self._inputs(req.input, req.truncate_prompt_tokens, req.add_special_tokens)
        params = PoolingParams(kind="embed", dimensions=req.dimensions, truncate=req.truncate_prompt_tokens is not None)
        request_id = f"embd-{uuid.uuid4().hex}"
        outs = await encode.encode_all(self.engine, request_id, inputs, params)  # cut to dimensions by the engine
        data = []
        for i, out in enumerate(outs):
            vector: list[float] = out.data  # type: ignore[assignment]  # embed: one vector
            embedding: list[float] | str = _base64(vector) if req.encoding_format == "base64" else vector
            data.append({"object": "embedding", "index": i, "embedding": embedding})
        return self._list(request_id, data, sum(out.num_prompt_tokens for out in outs))

    async def _inputs(
        self, raw: str | list[Any], truncate_prompt_tokens: int | None, add_special_tokens: bool | None
    ) -> list[EncodeInput]:
        """An ``input`` field (a text, texts, token ids or lists of them) as encoder inputs."""
        rows: list[Any] = [raw] if isinstance(raw, str) or (raw and isinstance(raw[0], int)) else list(raw)
        encode.check_count(self.engine, len(rows), "input")
        truncate_to = encode.truncation(truncate_prompt_tokens, self.engine.max_model_len)
        if isinstance(rows[0], str):
            options = self.options
            if add_special_tokens is not None:
                options = _with_special_tokens(options, add_special_tokens)
            return (await encode.tokenize(self.engine, rows, options, truncate_to=truncate_to)).inputs
        return encode.token_id_inputs(self.engine, rows, truncate_to, "input")

    # -- classify ----------------------------------------------------------------------------

    async def classify(self, req: ClassificationRequest) -> dict[str, Any]:
        self._check_model(req.model)
        info = encode.require_task(self.engine, CROSS_ENCODERS, "classify")
        inputs = await self._inputs(req.input, req.truncate_prompt_tokens, req.add_special_tokens)
        request_id = f"classify-{uuid.uuid4().hex}"
        params = PoolingParams(kind="classify", truncate=req.truncate_prompt_tokens is not None)
        outs = await encode.encode_all(self.engine, request_id, inputs, params)
        data = []
        for i, out in enumerate(outs):
            probs = encode.probabilities(out.data)  # type: ignore[arg-type]  # classify: one row of logits
            best = encode.argmax(probs)
            label = info.id2label.get(best, f"LABEL_{best}")
            data.append({"index": i, "label": label, "probs": probs, "num_classes": len(probs)})
        return self._list(request_id, data, sum(out.num_prompt_tokens for out in outs), vllm_usage=True)

    # -- rerank and score --------------------------------------------------------------------

    async def rerank(self, req: RerankRequest) -> dict[str, Any]:
        self._check_model(req.model)
        documents = [d.text if isinstance(d, RerankDocument) else d for d in req.documents]
        scores, tokens = await self._score_pairs(
            [req.query], documents, req.truncate_prompt_tokens, "documents", "rerank"
        )
        order = sorted(range(len(documents)), key=lambda i: -scores[i])  # stable: ties keep their order
        if req.top_n:
            order = order[: req.top_n]
        results = []
        for i in order:
            result: dict[str, Any] = {"index": i, "relevance_score": scores[i]}
            if req.return_documents:
                result["document"] = {"text": documents[i]}
            results.append(result)
        return {
            "id": f"rerank-{uuid.uuid4().hex}",
            "model": self.model_name,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            "results": results,
        }

    async def score(self, req: ScoreRequest) -> dict[str, Any]:
        self._check_model(req.model)
        left = [req.text_1] if isinstance(req.text_1, str) else req.text_1
        right = [req.text_2] if isinstance(req.text_2, str) else req.text_2
        if not left or not right:
            raise InvalidRequest("text_1 and text_2 must each hold at least one text", param="text_1")
        if len(left) != 1 and len(left) != len(right):
            raise InvalidRequest(
                f"text_1 has {len(left)} texts and text_2 has {len(right)}: send one text_1 to score against "
                "every text_2, or as many text_1 as text_2 to score them in pairs",
                param="text_2",
            )
        scores, tokens = await self._score_pairs(left, right, req.truncate_prompt_tokens, "text_2", "score")
        data = [{"index": i, "object": "score", "score": s} for i, s in enumerate(scores)]
        return self._list(f"score-{uuid.uuid4().hex}", data, tokens, vllm_usage=True)

    def _list(
        self, request_id: str, data: list[dict[str, Any]], tokens: int, *, vllm_usage: bool = False
    ) -> dict[str, Any]:
        """The list envelope of embeddings, classify and score; vLLM's usage also counts no completion tokens."""
        usage = {"prompt_tokens": tokens, "total_tokens": tokens} | ({"completion_tokens": 0} if vllm_usage else {})
        return {
            "id": request_id,
            "object": "list",
            "created": int(time.time()),
            "model": self.model_name,
            "data": data,
            "usage": usage,
        }

    async def _score_pairs(
        self, left: Sequence[str], right: Sequence[str], truncate: int | None, param: str, what: str
    ) -> tuple[list[float], int]:
        """One relevance score per (left, right) pair (a single ``left`` is paired with every ``right``)."""
        info = encode.require_task(self.engine, SCORERS, what)
        encode.check_count(self.engine, len(right) + (len(left) if info.task == Task.TEXT_EMBEDDING else 0), param)
        truncate_to = encode.truncation(truncate, self.engine.max_model_len)
        request_id = f"{what}-{uuid.uuid4().hex}"
        if info.task == Task.TEXT_EMBEDDING:
            texts = [*left, *right]
            tokenized = await encode.tokenize(self.engine, texts, self.options, truncate_to=truncate_to, param=param)
            params = PoolingParams(kind="embed", truncate=truncate_to is not None)
            outs = await encode.encode_all(self.engine, request_id, tokenized.inputs, params)
            queries, docs = outs[: len(left)], outs[len(left) :]
            scores = [_cosine(queries[0 if len(left) == 1 else i].data, d.data) for i, d in enumerate(docs)]
            return scores, sum(o.num_prompt_tokens for o in outs)
        queries_per_doc = list(left) * len(right) if len(left) == 1 else list(left)
        tokenized = await encode.tokenize(
            self.engine, queries_per_doc, self.options, pairs=right, truncate_to=truncate_to, param=param
        )
        params = PoolingParams(kind="score", truncate=truncate_to is not None)
        outs = await encode.encode_all(self.engine, request_id, tokenized.inputs, params)
        return [encode.relevance(o) for o in outs], sum(o.num_prompt_tokens for o in outs)


def _cosine(a: Any, b: Any) -> float:
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    norm = math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b))
    return dot / norm if norm else 0.0


def _base64(vector: list[float]) -> str:
    """OpenAI's base64 encoding: the vector's little-endian float32 bytes."""
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode("ascii")


def _with_special_tokens(options: EncoderOptions, add: bool) -> EncoderOptions:
    return replace(options, add_special_tokens=add)
