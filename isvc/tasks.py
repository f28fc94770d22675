"""Which task a model folder serves, from its config.json ``architectures`` (KServe's rule), torch-free.

A leaf (json and pathlib only), so the engine (which picks the model class and engine) and the
control plane (which says, at ``apply --dry-run`` and ``describe``, what will serve and which
routes answer) read the same table and cannot disagree.

KServe's ``infer_task_from_model_architecture`` matches the *end* of ``architectures[0]``
against a table, first match wins. We keep its suffixes and order and add two rules KServe
leaves to ``--task``, as vLLM does: a sentence-transformers folder (``modules.json``) or a bare
encoder or decoder (``BertModel``, ``XLMRobertaModel``, ``Qwen2Model``: no head) serves
``text_embedding``, and a sequence classifier with exactly one label is a cross-encoder, served
as ``rerank``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

TEXT_GENERATION = "text_generation"
TEXT2TEXT_GENERATION = "text2text_generation"
FILL_MASK = "fill_mask"
TOKEN_CLASSIFICATION = "token_classification"
SEQUENCE_CLASSIFICATION = "sequence_classification"
TEXT_EMBEDDING = "text_embedding"
RERANK = "rerank"

TASKS = (
    TEXT_GENERATION,
    TEXT2TEXT_GENERATION,
    FILL_MASK,
    TOKEN_CLASSIFICATION,
    SEQUENCE_CLASSIFICATION,
    TEXT_EMBEDDING,
    RERANK,
)
"""KServe huggingfaceserver's task names (``--task``), plus ``rerank`` for cross-encoders."""

GENERATIVE_TASKS = frozenset({TEXT_GENERATION, TEXT2TEXT_GENERATION})

ARCHITECTURE_SUFFIXES: tuple[tuple[str, str | None], ...] = (
    ("TapasForQuestionAnswering", None),  # KServe knows these two and serves neither
    ("ForQuestionAnswering", None),
    ("ForTokenClassification", TOKEN_CLASSIFICATION),
    ("ForSequenceClassification", SEQUENCE_CLASSIFICATION),
    ("ForMultipleChoice", None),
    ("ForMaskedLM", FILL_MASK),
    ("ForCausalLM", TEXT_GENERATION),
    ("LMHeadModel", TEXT_GENERATION),  # GPT2LMHeadModel: before the bare "Model"
    ("ForConditionalGeneration", TEXT2TEXT_GENERATION),
    ("ForSeq2SeqLM", TEXT2TEXT_GENERATION),
    ("MTModel", TEXT2TEXT_GENERATION),
    ("EncoderDecoderModel", TEXT2TEXT_GENERATION),
    ("Model", TEXT_EMBEDDING),  # a model with no head: its hidden states, pooled
)
"""``architectures[0]`` suffix → task, first match wins (KServe's table and order, then the bare ``*Model``)."""

ALIASES = {
    "embed": TEXT_EMBEDDING,
    "embedding": TEXT_EMBEDDING,
    "feature_extraction": TEXT_EMBEDDING,
    "score": RERANK,
    "classify": SEQUENCE_CLASSIFICATION,
    "text_classification": SEQUENCE_CLASSIFICATION,
    "ner": TOKEN_CLASSIFICATION,
    "generate": TEXT_GENERATION,
}
"""Names other servers give the same tasks (vLLM's ``--task``/``--runner``, transformers' pipelines)."""


def task_for_architecture(architecture: str) -> str | None:
    """The task an ``architectures[0]`` name implies, or None (unknown, or a task isvc does not serve)."""
    for suffix, task in ARCHITECTURE_SUFFIXES:
        if architecture.endswith(suffix):
            return task
    return None


def infer_task(config: Mapping[str, Any]) -> str | None:
    """The task of a model from its parsed config.json, or None when ``--task`` must say it."""
    architectures = config.get("architectures")
    if not isinstance(architectures, list) or not architectures or not isinstance(architectures[0], str):
        return None
    task = task_for_architecture(architectures[0])
    if task == SEQUENCE_CLASSIFICATION and _num_labels(config) == 1:
        return RERANK
    if task == TEXT2TEXT_GENERATION and not is_encoder_decoder(config):
        return None  # a multimodal decoder (Llava, Gemma3, Qwen2-VL: *ForConditionalGeneration too)
    return task


def is_encoder_decoder(config: Mapping[str, Any]) -> bool:
    """T5, BART, Marian and kin: their config.json says so (transformers writes ``is_encoder_decoder``)."""
    return config.get("is_encoder_decoder") is True


def infer_task_from_folder(folder: Path) -> str | None:
    """The task a model folder was saved for: a sentence-transformers folder (``modules.json``) embeds,
    else ``infer_task`` on its config.json; None when that file is missing or unreadable."""
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if (folder / "modules.json").is_file():
        return TEXT_EMBEDDING  # whatever transformer sits inside
    return infer_task(config) if isinstance(config, dict) else None


def architecture_of(folder: Path) -> str | None:
    """``architectures[0]`` of ``folder/config.json``, when it can be read."""
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
        arch = config["architectures"][0]
    except (OSError, ValueError, KeyError, IndexError, TypeError):
        return None
    return arch if isinstance(arch, str) else None


def _num_labels(config: Mapping[str, Any]) -> int | None:
    """transformers' rule: ``id2label`` when given, else ``num_labels``, else 2."""
    id2label = config.get("id2label")
    if isinstance(id2label, dict) and id2label:
        return len(id2label)
    num = config.get("num_labels")
    return num if isinstance(num, int) else 2


def is_generative(task: str) -> bool:
    return task in GENERATIVE_TASKS


def routes(task: str, model_name: str) -> list[str]:
    """The inference routes ``isvc serve`` answers for ``task`` (the OpenAI ones are under /openai/v1 and /v1)."""
    v1 = f"POST /v1/models/{model_name}:predict"
    v2 = f"POST /v2/models/{model_name}/infer"
    if task == TEXT2TEXT_GENERATION:  # T5 and BART folders ship no chat template
        return ["POST /openai/v1/completions", "POST /openai/v1/chat/completions (with a chat template)", v1, v2]
    if task in GENERATIVE_TASKS:
        return ["POST /openai/v1/chat/completions", "POST /openai/v1/completions", v1, v2]
    if task == TEXT_EMBEDDING:  # rerank and score by the cosine of the embeddings
        return ["POST /openai/v1/embeddings", "POST /openai/v1/rerank", "POST /openai/v1/score", v1, v2]
    if task in (RERANK, SEQUENCE_CLASSIFICATION):  # a classifier scores pairs as a cross-encoder does
        return ["POST /openai/v1/rerank", "POST /openai/v1/score", "POST /openai/v1/classify", v1, v2]
    return [v1, v2]
