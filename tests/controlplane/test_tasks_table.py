"""isvc.tasks: the architectures → task table the control plane and the engine share (KServe's rule, plus two)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from isvc import runtime_args, tasks
from tests.encoder_fixtures import (  # noqa: F401
    tiny_classifier_dir,
    tiny_cross_encoder_dir,
    tiny_distilbert_classifier_dir,
    tiny_embedding_dir,
    tiny_fill_mask_dir,
    tiny_ner_dir,
    tiny_xlmr_embedding_dir,
)


@pytest.mark.parametrize(
    ("architecture", "task"),
    [
        ("BertForMaskedLM", "fill_mask"),
        ("DistilBertForSequenceClassification", "sequence_classification"),
        ("BertForTokenClassification", "token_classification"),
        ("LlamaForCausalLM", "text_generation"),
        ("GPT2LMHeadModel", "text_generation"),
        ("T5ForConditionalGeneration", "text2text_generation"),
        ("MarianMTModel", "text2text_generation"),
        ("BertModel", "text_embedding"),
        ("XLMRobertaModel", "text_embedding"),
        ("Qwen2Model", "text_embedding"),
        ("BertForQuestionAnswering", None),
        ("TapasForQuestionAnswering", None),
        ("BertForPreTraining", None),
    ],
)
def test_architecture_suffixes(architecture: str, task: str | None) -> None:
    assert tasks.task_for_architecture(architecture) == task


def test_single_label_classifier_is_a_cross_encoder() -> None:
    assert tasks.infer_task({"architectures": ["BertForSequenceClassification"], "num_labels": 1}) == "rerank"
    assert tasks.infer_task({"architectures": ["BertForSequenceClassification"], "id2label": {"0": "x"}}) == "rerank"
    two = {"architectures": ["BertForSequenceClassification"], "id2label": {"0": "NEG", "1": "POS"}}
    assert tasks.infer_task(two) == "sequence_classification"
    assert tasks.infer_task({"architectures": ["BertForSequenceClassification"]}) == "sequence_classification"
    assert tasks.infer_task({"architectures": []}) is None and tasks.infer_task({}) is None


def test_conditional_generation_is_text2text_only_for_an_encoder_decoder() -> None:
    t5 = {"architectures": ["T5ForConditionalGeneration"], "is_encoder_decoder": True}
    assert tasks.infer_task(t5) == "text2text_generation"
    # multimodal decoders are *ForConditionalGeneration too: their task must be named, not guessed
    assert tasks.infer_task({"architectures": ["LlavaForConditionalGeneration"]}) is None
    assert tasks.infer_task({"architectures": ["Gemma3ForConditionalGeneration"], "is_encoder_decoder": False}) is None


def test_folder(tmp_path: Path) -> None:
    assert tasks.infer_task_from_folder(tmp_path) is None  # no config.json
    (tmp_path / "config.json").write_text("{not json")
    assert tasks.infer_task_from_folder(tmp_path) is None and tasks.architecture_of(tmp_path) is None
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["BertForMaskedLM"]}))
    assert tasks.infer_task_from_folder(tmp_path) == "fill_mask"
    (tmp_path / "modules.json").write_text("[]")  # a sentence-transformers folder embeds, whatever is inside
    assert tasks.infer_task_from_folder(tmp_path) == "text_embedding"
    assert tasks.architecture_of(tmp_path) == "BertForMaskedLM"


def test_task_names_are_the_serve_flags_names() -> None:
    assert tasks.TASKS == runtime_args.TASKS
    assert set(tasks.ALIASES.values()) <= set(tasks.TASKS)
    assert tasks.routes("text_embedding", "m")[0] == "POST /openai/v1/embeddings"
    assert tasks.routes("fill_mask", "m") == ["POST /v1/models/m:predict", "POST /v2/models/m/infer"]


@pytest.mark.parametrize(
    "fixture",
    [
        "tiny_embedding_dir",
        "tiny_classifier_dir",
        "tiny_cross_encoder_dir",
        "tiny_ner_dir",
        "tiny_fill_mask_dir",
        "tiny_distilbert_classifier_dir",
        "tiny_xlmr_embedding_dir",
        "tiny_model_dir",
    ],
)
def test_the_dry_run_and_the_engine_infer_the_same_task(fixture: str, request: pytest.FixtureRequest) -> None:
    """What `apply --dry-run` says (isvc.tasks) is what `isvc serve` serves (the engine's own resolution)."""
    from isvc.engine.encoder.task import resolve_task

    folder: Path = request.getfixturevalue(fixture)
    assert tasks.infer_task_from_folder(folder) == resolve_task(folder, None).value
