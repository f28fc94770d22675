"""The encoder engine in-process: task inference, answers equal to transformers' own, dynamic batching, limits."""

from __future__ import annotations

import asyncio
import json
import shutil
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from isvc.engine.client import EncodeInput, PoolingParams, Task, WrongTask
from isvc.engine.config import EngineConfig
from isvc.engine.encoder import AsyncEncoderEngine
from isvc.engine.encoder.task import resolve_task
from isvc.engine.errors import ContextLengthExceeded
from isvc.engine.factory import build_engine
from isvc.engine.params import SamplingParams
from isvc.errors import ConfigError, InvalidRequest
from tests.encoder_fixtures import *  # noqa: F403 (the session fixtures of tiny encoder folders)
from tests.encoder_fixtures import NER_LABELS, SENTIMENT_LABELS, build_sentence_transformer

DOCS = [
    "The capital of France is Paris.",
    "Hello world!",
    "A cross encoder reads the query and the document together and scores them, the movie was great.",
    "George Washington lived in Virginia.",
    "0123456789",
]

Started = Callable[..., AsyncEncoderEngine]


@pytest.fixture
async def started() -> AsyncIterator[Started]:
    engines: list[AsyncEncoderEngine] = []

    def start(model_dir: Path, task: str | None = None, **overrides: Any) -> AsyncEncoderEngine:
        engine = build_engine(EngineConfig(model_dir=str(model_dir), task=task, num_threads=1, **overrides))
        assert isinstance(engine, AsyncEncoderEngine)
        engine.load()
        engines.append(engine)
        return engine

    yield start
    for engine in engines:
        engine.shutdown()


def _tokenize(engine: AsyncEncoderEngine, text: str, pair: str | None = None) -> EncodeInput:
    enc = engine.tokenizer(text, pair) if pair is not None else engine.tokenizer(text)
    return EncodeInput(list(enc["input_ids"]), list(enc["token_type_ids"]) if "token_type_ids" in enc else None)


def _cosine(a: list[float], b: list[float]) -> float:
    return float(torch.nn.functional.cosine_similarity(torch.tensor(a), torch.tensor(b), dim=0))


def _reference(model_dir: Path, head: str, text: str, pair: str | None = None) -> torch.Tensor:
    """transformers' own model and tokenizer, one input alone, no padding."""
    import transformers

    tok = transformers.AutoTokenizer.from_pretrained(str(model_dir))
    model = getattr(transformers, head).from_pretrained(str(model_dir)).eval()
    with torch.inference_mode():
        out = model(**tok(text, pair, return_tensors="pt"))
    return out.last_hidden_state if head == "AutoModel" else out.logits


# -- task inference ------------------------------------------------------------------------


def _folder(tmp_path: Path, name: str, config: dict[str, Any], modules: bool = False) -> Path:
    path = tmp_path / name
    path.mkdir()
    (path / "config.json").write_text(json.dumps(config))
    if modules:
        (path / "modules.json").write_text("[]")
    return path


@pytest.mark.parametrize(
    ("architecture", "extra", "modules", "task"),
    [
        ("BertForMaskedLM", {}, False, Task.FILL_MASK),
        (
            "DistilBertForSequenceClassification",
            {"id2label": {"0": "NEG", "1": "POS"}},
            False,
            "sequence_classification",
        ),
        ("BertForSequenceClassification", {"id2label": {"0": "LABEL_0"}}, False, Task.RERANK),
        ("XLMRobertaForSequenceClassification", {"num_labels": 1}, False, Task.RERANK),
        ("BertForTokenClassification", {}, False, Task.TOKEN_CLASSIFICATION),
        ("BertModel", {}, False, Task.TEXT_EMBEDDING),
        ("XLMRobertaModel", {}, False, Task.TEXT_EMBEDDING),
        ("BertForMaskedLM", {}, True, Task.TEXT_EMBEDDING),  # a sentence-transformers folder
        ("LlamaForCausalLM", {}, False, Task.TEXT_GENERATION),
        ("T5ForConditionalGeneration", {"is_encoder_decoder": True}, False, Task.TEXT2TEXT_GENERATION),
        ("MarianMTModel", {"is_encoder_decoder": True}, False, Task.TEXT2TEXT_GENERATION),
    ],
)
def test_task_is_inferred_from_the_architecture(
    tmp_path: Path, architecture: str, extra: dict[str, Any], modules: bool, task: str
) -> None:
    folder = _folder(tmp_path, "m", {"architectures": [architecture], **extra}, modules)
    assert resolve_task(folder, None) == task


@pytest.mark.parametrize(
    ("architecture", "requested", "task"),
    [
        ("BertForSequenceClassification", "rerank", Task.RERANK),
        ("BertForSequenceClassification", "text_embedding", Task.TEXT_EMBEDDING),
        ("BertForMaskedLM", "text-embedding", Task.TEXT_EMBEDDING),
        ("BertModel", "embed", Task.TEXT_EMBEDDING),
        ("XLMRobertaForSequenceClassification", "score", Task.RERANK),
        ("Qwen2ForCausalLM", "text_embedding", Task.TEXT_EMBEDDING),
    ],
)
def test_task_flag_overrides_within_what_the_weights_serve(
    tmp_path: Path, architecture: str, requested: str, task: Task
) -> None:
    assert resolve_task(_folder(tmp_path, "m", {"architectures": [architecture]}), requested) is task


@pytest.mark.parametrize(
    ("architecture", "requested", "message"),
    [
        ("BertModel", "fill_mask", "--task fill_mask cannot be served by a BertModel model"),
        ("BertForMaskedLM", "sequence_classification", "cannot be served by a BertForMaskedLM"),
        ("LlamaForCausalLM", "rerank", "cannot be served by a LlamaForCausalLM"),
        ("BertForMaskedLM", "text_generation", "cannot be served"),
        ("BertModel", "translation", "--task translation is unknown"),
        ("BertForQuestionAnswering", None, "could not be inferred; pass --task"),
    ],
)
def test_a_task_the_model_cannot_serve_is_a_config_error(
    tmp_path: Path, architecture: str, requested: str | None, message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        resolve_task(_folder(tmp_path, "m", {"architectures": [architecture]}), requested)


def test_the_factory_builds_the_engine_of_the_task(tiny_model_dir: Path, tiny_embedding_dir: Path) -> None:
    from isvc.engine.async_engine import AsyncEngine

    assert isinstance(build_engine(EngineConfig(model_dir=str(tiny_model_dir))), AsyncEngine)
    assert isinstance(build_engine(EngineConfig(model_dir=str(tiny_embedding_dir))), AsyncEncoderEngine)
    with pytest.raises(ConfigError, match="text2text_generation"):
        build_engine(EngineConfig(model_dir=str(tiny_model_dir), task="text2text_generation"))


# -- answers equal transformers' ----------------------------------------------------------


async def test_embeddings_equal_transformers_with_the_folders_pooling(
    started: Started, tiny_embedding_dir: Path
) -> None:
    engine = started(tiny_embedding_dir)
    info = engine.model_info
    assert (info.task, info.embedding_dim, info.pooling, info.normalize) == (Task.TEXT_EMBEDDING, 32, "mean", True)
    assert info.max_model_len == 64  # sentence_bert_config.json's max_seq_length
    for text in DOCS:
        out = await engine.encode("r", _tokenize(engine, text), PoolingParams("embed"))
        states = _reference(tiny_embedding_dir, "AutoModel", text)[0]
        expected = torch.nn.functional.normalize(states.mean(dim=0), dim=-1)
        assert _cosine(out.data, expected.tolist()) >= 0.9999  # type: ignore[arg-type]
        assert abs(float(torch.tensor(out.data).norm()) - 1.0) < 1e-5
        assert out.num_prompt_tokens == len(out.token_ids)


async def test_embeddings_equal_sentence_transformers(started: Started, tiny_embedding_dir: Path) -> None:
    st = pytest.importorskip("sentence_transformers")
    engine = started(tiny_embedding_dir)
    expected = st.SentenceTransformer(str(tiny_embedding_dir), device="cpu").encode(DOCS)
    for text, vector in zip(DOCS, expected, strict=True):
        out = await engine.encode("r", _tokenize(engine, text), PoolingParams("embed"))
        assert _cosine(out.data, vector.tolist()) >= 0.9999  # type: ignore[arg-type]


@pytest.mark.parametrize("pooling", ["cls", "max", "lasttoken"])
async def test_each_pooling_mode_equals_its_math(
    started: Started, tmp_path_factory: pytest.TempPathFactory, pooling: str
) -> None:
    folder = build_sentence_transformer(tmp_path_factory.mktemp(pooling), pooling=pooling, normalize=False)
    engine = started(folder)
    assert engine.model_info.normalize is False
    text = DOCS[0]
    out = await engine.encode("r", _tokenize(engine, text), PoolingParams("embed"))
    states = _reference(folder, "AutoModel", text)[0]
    expected = {"cls": states[0], "max": states.max(dim=0).values, "lasttoken": states[-1]}[pooling]
    assert torch.allclose(torch.tensor(out.data), expected, atol=1e-5)


async def test_dimensions_truncate_then_renormalize(started: Started, tiny_embedding_dir: Path) -> None:
    engine = started(tiny_embedding_dir)
    inputs = _tokenize(engine, DOCS[0])
    full = (await engine.encode("a", inputs, PoolingParams("embed", normalize=False))).data
    short = (await engine.encode("b", inputs, PoolingParams("embed", dimensions=8))).data
    assert len(short) == 8
    expected = torch.nn.functional.normalize(torch.tensor(full[:8]), dim=-1)
    assert torch.allclose(torch.tensor(short), expected, atol=1e-6)
    with pytest.raises(InvalidRequest, match="dimensions must be between 1 and the model's 32"):
        await engine.encode("c", inputs, PoolingParams("embed", dimensions=33))


async def test_xlm_roberta_embeddings_equal_transformers(started: Started, tiny_xlmr_embedding_dir: Path) -> None:
    engine = started(tiny_xlmr_embedding_dir)
    assert engine.model_info.pooling == "cls"
    for text in DOCS:
        out = await engine.encode("r", _tokenize(engine, text), PoolingParams("embed"))
        expected = torch.nn.functional.normalize(_reference(tiny_xlmr_embedding_dir, "AutoModel", text)[0, 0], dim=-1)
        assert _cosine(out.data, expected.tolist()) >= 0.9999  # type: ignore[arg-type]


@pytest.mark.parametrize("fixture", ["tiny_classifier_dir", "tiny_distilbert_classifier_dir"])
async def test_classification_logits_equal_transformers(
    started: Started, request: pytest.FixtureRequest, fixture: str
) -> None:
    folder: Path = request.getfixturevalue(fixture)
    engine = started(folder)
    info = engine.model_info
    assert info.task is Task.SEQUENCE_CLASSIFICATION
    assert info.id2label == SENTIMENT_LABELS
    for text in DOCS:
        out = await engine.encode("r", _tokenize(engine, text), PoolingParams("classify"))
        expected = _reference(folder, "AutoModelForSequenceClassification", text)[0]
        assert torch.allclose(torch.tensor(out.data), expected, atol=1e-5)


@pytest.mark.parametrize("fixture", ["tiny_cross_encoder_dir", "tiny_xlmr_cross_encoder_dir"])
async def test_rerank_scores_pairs_like_transformers(
    started: Started, request: pytest.FixtureRequest, fixture: str
) -> None:
    folder: Path = request.getfixturevalue(fixture)
    engine = started(folder)
    assert engine.model_info.task is Task.RERANK
    query = "what is the capital of france?"
    for doc in DOCS:
        out = await engine.encode("r", _tokenize(engine, query, doc), PoolingParams("score"))
        expected = _reference(folder, "AutoModelForSequenceClassification", query, doc)[0]
        assert len(out.data) == 1
        assert torch.allclose(torch.tensor(out.data), expected, atol=1e-5)


async def test_token_classification_logits_equal_transformers(started: Started, tiny_ner_dir: Path) -> None:
    engine = started(tiny_ner_dir)
    assert engine.model_info.id2label == NER_LABELS
    text = DOCS[3]
    out = await engine.encode("r", _tokenize(engine, text), PoolingParams("token_classify"))
    expected = _reference(tiny_ner_dir, "AutoModelForTokenClassification", text)[0]
    assert len(out.data) == len(out.token_ids) == expected.shape[0]
    assert torch.allclose(torch.tensor(out.data), expected, atol=1e-5)


async def test_fill_mask_logits_at_each_mask_equal_transformers(started: Started, tiny_fill_mask_dir: Path) -> None:
    engine = started(tiny_fill_mask_dir)
    mask = engine.model_info.mask_token
    assert mask == "[MASK]"
    text = f"The capital of {mask} is {mask}."
    out = await engine.encode("r", _tokenize(engine, text), PoolingParams("fill_mask"))
    logits = _reference(tiny_fill_mask_dir, "AutoModelForMaskedLM", text)[0]
    at_masks = logits[torch.tensor(out.token_ids) == engine.tokenizer.mask_token_id]
    assert len(out.data) == 2
    assert torch.allclose(torch.tensor(out.data), at_masks, atol=1e-4)
    with pytest.raises(InvalidRequest, match=r"no mask token \[MASK\]"):
        await engine.encode("r", _tokenize(engine, "no mask here"), PoolingParams("fill_mask"))


# -- batching, limits, wrong task ----------------------------------------------------------


async def test_concurrent_requests_share_forwards_and_equal_their_answers_alone(
    started: Started, tiny_embedding_dir: Path
) -> None:
    engine = started(tiny_embedding_dir)
    texts = [DOCS[i % len(DOCS)] + " extra" * (i % 7) for i in range(48)]
    alone = [
        (await engine.encode(f"a{i}", _tokenize(engine, t), PoolingParams("embed"))).data for i, t in enumerate(texts)
    ]
    before = engine.stats()
    together = await asyncio.gather(
        *(engine.encode(f"b{i}", _tokenize(engine, t), PoolingParams("embed")) for i, t in enumerate(texts))
    )
    after = engine.stats()
    assert after["max_batch_seen"] > 1
    assert after["batches"] - before["batches"] < len(texts)  # never one forward per request
    for one, out in zip(alone, together, strict=True):
        assert torch.allclose(torch.tensor(out.data), torch.tensor(one), atol=1e-5)


async def test_a_batch_respects_the_token_budget(started: Started, tiny_embedding_dir: Path) -> None:
    engine = started(tiny_embedding_dir, max_batch_tokens=64, max_num_seqs=4)
    inputs = [_tokenize(engine, DOCS[2]) for _ in range(12)]  # ~20 tokens each: 3 rows fit 64
    await asyncio.gather(*(engine.encode(f"r{i}", x, PoolingParams("embed")) for i, x in enumerate(inputs)))
    assert 1 < engine.stats()["max_batch_seen"] <= 64 // len(inputs[0].token_ids)


async def test_too_long_is_refused_naming_the_limit_unless_truncated(
    started: Started, tiny_embedding_dir: Path, tiny_cross_encoder_dir: Path
) -> None:
    engine = started(tiny_embedding_dir)
    long = _tokenize(engine, " ".join(["paris"] * 100))
    with pytest.raises(ContextLengthExceeded, match="maximum input length is 64 tokens") as refused:
        await engine.encode("r", long, PoolingParams("embed"))
    assert refused.value.http_status == 400
    out = await engine.encode("r", long, PoolingParams("embed", truncate=True))
    assert out.num_prompt_tokens == 64
    assert out.token_ids[-1] == engine.tokenizer.sep_token_id  # the closing [SEP] is kept
    ranker = started(tiny_cross_encoder_dir, max_model_len=32)
    pair = _tokenize(ranker, "query", " ".join(["paris"] * 100))
    scored = await ranker.encode("r", pair, PoolingParams("score", truncate=True))
    assert scored.num_prompt_tokens == 32


async def test_bad_inputs_are_400s(started: Started, tiny_embedding_dir: Path) -> None:
    engine = started(tiny_embedding_dir)
    with pytest.raises(InvalidRequest, match="empty"):
        await engine.encode("r", EncodeInput([]), PoolingParams("embed"))
    with pytest.raises(InvalidRequest, match="token id 100000 is out of range"):
        await engine.encode("r", EncodeInput([2, 100000, 3]), PoolingParams("embed"))


async def test_the_wrong_task_is_a_400_naming_the_models_task(started: Started, tiny_embedding_dir: Path) -> None:
    engine = started(tiny_embedding_dir)
    with pytest.raises(WrongTask, match="serves the text_embedding task"):
        await engine.encode("r", _tokenize(engine, "hi"), PoolingParams("score"))
    with pytest.raises(WrongTask, match="text_embedding task; it does not answer chat"):
        async for _ in engine.generate("r", [2, 3], SamplingParams(max_tokens=4)):
            pass
    with pytest.raises(WrongTask):
        engine.check_request([2, 3], 4)


async def test_a_cancelled_request_is_skipped_and_the_engine_goes_on(
    started: Started, tiny_embedding_dir: Path
) -> None:
    engine = started(tiny_embedding_dir)
    task = asyncio.ensure_future(engine.encode("gone", _tokenize(engine, DOCS[0]), PoolingParams("embed")))
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    out = await engine.encode("next", _tokenize(engine, DOCS[1]), PoolingParams("embed"))
    assert len(out.data) == 32
    assert engine.ready and not engine.dead


def test_a_folder_without_weights_fails_load_with_a_config_error(tmp_path: Path, tiny_embedding_dir: Path) -> None:
    folder = tmp_path / "broken"
    shutil.copytree(tiny_embedding_dir, folder)
    (folder / "model.safetensors").unlink()
    engine = build_engine(EngineConfig(model_dir=str(folder)))
    with pytest.raises(ConfigError, match="cannot load BertModel"):
        engine.load()


async def test_a_bert_pair_gets_its_segment_ids(started: Started, tmp_path: Path, tiny_cross_encoder_dir: Path) -> None:
    """A tokenizer_config.json without token_type_ids (like all-MiniLM's) still yields them for
    pairs, as BertTokenizer does; an input sent without them runs as one segment (zeros)."""
    folder = tmp_path / "no-types"
    shutil.copytree(tiny_cross_encoder_dir, folder)
    config_file = folder / "tokenizer_config.json"
    tokenizer_config = json.loads(config_file.read_text())
    tokenizer_config.pop("model_input_names", None)
    config_file.write_text(json.dumps(tokenizer_config))
    engine = started(folder)
    query, doc = "what is the capital of france?", DOCS[0]
    with_types = _tokenize(engine, query, doc)
    assert with_types.token_type_ids is not None and 1 in with_types.token_type_ids
    expected = _reference(tiny_cross_encoder_dir, "AutoModelForSequenceClassification", query, doc)[0]
    out = await engine.encode("r", with_types, PoolingParams("score"))
    assert torch.allclose(torch.tensor(out.data), expected, atol=1e-5)
    one_segment = await engine.encode("r", EncodeInput(with_types.token_ids), PoolingParams("score"))
    assert not torch.allclose(torch.tensor(one_segment.data), expected, atol=1e-5)


async def test_a_decoder_embeds_with_its_last_token(started: Started, tiny_model_dir: Path) -> None:
    """--task text_embedding on a *ForCausalLM folder: the last token's hidden state, L2-normalized."""
    import transformers

    engine = started(tiny_model_dir, task="text_embedding")
    info = engine.model_info
    assert (info.task, info.pooling, info.normalize, info.embedding_dim) == (Task.TEXT_EMBEDDING, "last", True, 64)
    model = transformers.LlamaModel.from_pretrained(str(tiny_model_dir)).eval()
    texts = [DOCS[0], DOCS[1], DOCS[2]]
    inputs = [EncodeInput(list(engine.tokenizer(t)["input_ids"])) for t in texts]
    together = await asyncio.gather(*(engine.encode(f"r{i}", x, PoolingParams("embed")) for i, x in enumerate(inputs)))
    for x, out in zip(inputs, together, strict=True):
        with torch.inference_mode():
            states = model(input_ids=torch.tensor([x.token_ids])).last_hidden_state[0]
        expected = torch.nn.functional.normalize(states[-1], dim=-1)
        assert _cosine(out.data, expected.tolist()) >= 0.9999  # type: ignore[arg-type]


async def test_a_failed_forward_fails_its_batch_and_the_engine_goes_on(
    started: Started, tiny_embedding_dir: Path
) -> None:
    from isvc.engine.encoder.engine import EncodeFailed

    engine = started(tiny_embedding_dir)
    runner = engine._runner
    real_run = runner.run

    def fail_once(*args: Any) -> Any:
        runner.run = real_run
        raise RuntimeError("out of memory")

    runner.run = fail_once
    with pytest.raises(EncodeFailed, match="the forward pass failed: RuntimeError: out of memory") as failed:
        await engine.encode("r", _tokenize(engine, DOCS[0]), PoolingParams("embed"))
    assert failed.value.http_status == 500
    out = await engine.encode("r", _tokenize(engine, DOCS[0]), PoolingParams("embed"))
    assert len(out.data) == 32 and engine.ready


async def test_a_full_queue_is_refused_before_any_work(started: Started, tiny_embedding_dir: Path) -> None:
    from isvc.engine.errors import EngineOverloaded

    engine = started(tiny_embedding_dir, max_queue=4)
    assert engine.max_queue == 4
    engine.check_capacity(4)
    with pytest.raises(EngineOverloaded, match="max_queue 4"):
        engine.check_capacity(5)


@pytest.mark.parametrize(
    ("arch", "head", "kind", "auto"),
    [
        ("distilbert", "mlm", "fill_mask", "AutoModelForMaskedLM"),
        ("xlm-roberta", "mlm", "fill_mask", "AutoModelForMaskedLM"),
        ("distilbert", "token", "token_classify", "AutoModelForTokenClassification"),
        ("xlm-roberta", "token", "token_classify", "AutoModelForTokenClassification"),
    ],
)
async def test_distilbert_and_xlm_roberta_heads_equal_transformers(
    started: Started, tmp_path_factory: pytest.TempPathFactory, arch: str, head: str, kind: str, auto: str
) -> None:
    from tests.encoder_fixtures import build_tiny_encoder

    labels = NER_LABELS if head == "token" else None
    folder = build_tiny_encoder(tmp_path_factory.mktemp(f"{arch}-{head}"), head, arch=arch, id2label=labels)
    engine = started(folder)
    mask = engine.model_info.mask_token
    text = f"George Washington lived in {mask}." if head == "mlm" else DOCS[3]
    out = await engine.encode("r", _tokenize(engine, text), PoolingParams(kind))  # type: ignore[arg-type]
    logits = _reference(folder, auto, text)[0]
    if head == "mlm":
        logits = logits[torch.tensor(out.token_ids) == engine.tokenizer.mask_token_id]
    assert torch.allclose(torch.tensor(out.data), logits, atol=1e-4)


def test_the_bert_family_runs_on_the_native_encoder_and_the_rest_on_transformers(
    started: Started,
    tiny_embedding_dir: Path,
    tiny_classifier_dir: Path,
    tiny_ner_dir: Path,
    tiny_xlmr_embedding_dir: Path,
    tiny_xlmr_cross_encoder_dir: Path,
    tiny_distilbert_classifier_dir: Path,
    tiny_fill_mask_dir: Path,
) -> None:
    """Which forward runs each folder; the tests above check every one of them against transformers."""
    native = [
        tiny_embedding_dir,
        tiny_classifier_dir,
        tiny_ner_dir,
        tiny_xlmr_embedding_dir,
        tiny_xlmr_cross_encoder_dir,
    ]
    assert [started(folder)._runner.native is not None for folder in native] == [True] * len(native)
    for folder in (tiny_distilbert_classifier_dir, tiny_fill_mask_dir):
        assert started(folder)._runner.native is None and started(folder)._runner.model is not None
    # a classifier asked for embeddings: the native encoder without its head
    assert started(tiny_classifier_dir, task="text_embedding")._runner.native.head == []


async def test_fill_mask_rows_in_a_batch_equal_them_alone(started: Started, tiny_fill_mask_dir: Path) -> None:
    engine = started(tiny_fill_mask_dir)
    assert engine._runner._mlm_head is not None  # logits at the mask positions only
    texts = ["The capital of [MASK] is Paris.", "[MASK] world, [MASK] are you today?", "Hello [MASK]!"]
    inputs = [_tokenize(engine, t) for t in texts]
    alone = [(await engine.encode("a", x, PoolingParams("fill_mask"))).data for x in inputs]
    together = await asyncio.gather(
        *(engine.encode(f"b{i}", x, PoolingParams("fill_mask")) for i, x in enumerate(inputs))
    )
    assert [len(out.data) for out in together] == [1, 2, 1]
    for one, out in zip(alone, together, strict=True):
        assert torch.allclose(torch.tensor(out.data), torch.tensor(one), atol=1e-4)


async def test_a_failed_loop_marks_the_engine_dead_and_fails_every_request(
    started: Started, tiny_embedding_dir: Path
) -> None:
    from isvc.engine.errors import EngineDeadError

    engine = started(tiny_embedding_dir)
    deaths: list[BaseException] = []
    engine.on_dead = deaths.append

    def broken_step(batch: Any) -> None:
        raise SystemError("the loop broke")

    engine._step = broken_step  # type: ignore[method-assign]
    results = await asyncio.gather(
        *(engine.encode(f"r{i}", _tokenize(engine, t), PoolingParams("embed")) for i, t in enumerate(DOCS)),
        return_exceptions=True,
    )
    assert all(isinstance(r, EngineDeadError) for r in results)
    assert len(deaths) == 1 and engine.dead and not engine.ready
    with pytest.raises(EngineDeadError):
        await engine.encode("late", _tokenize(engine, DOCS[0]), PoolingParams("embed"))


async def test_a_shut_down_engine_answers_instead_of_leaving_requests_waiting(
    started: Started, tiny_embedding_dir: Path
) -> None:
    from isvc.engine.errors import EngineDeadError

    engine = started(tiny_embedding_dir)
    engine.shutdown()
    with pytest.raises(EngineDeadError, match="shut down"):
        await asyncio.wait_for(engine.encode("late", _tokenize(engine, DOCS[0]), PoolingParams("embed")), 5)
