"""Encoder routes in process: the real app over httpx's ASGI transport, a FakeEngine behind it.

Embeddings, rerank and score (OpenAI/vLLM shapes), KServe V1/V2 per encoder task, the refusals
(wrong task, empty, too many, too long, wrong types) in each protocol's format, and the flags
that shape tokenizing and answers. Live servers on the tiny encoder folders are in
``test_encoder_serve.py``.
"""

from __future__ import annotations

import base64
import math
import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest

from isvc.engine.client import Task
from isvc.runtime_args import parse
from isvc.server.app import ServerSettings, create_app
from isvc.server.protocols.encode import MAX_INPUTS, EncoderOptions
from tests.server.fake_engine import FakeEngine, fake_tokenizer

MODEL = "enc"
OPENAI_PREFIXES = ("/v1", "/openai/v1")


@asynccontextmanager
async def serve(engine: FakeEngine, encoder: EncoderOptions | None = None) -> AsyncIterator[httpx.AsyncClient]:
    engine.load()
    settings = ServerSettings(
        model_name=MODEL,
        model_root="/models/enc",
        log_requests=False,
        exit_on_engine_death=False,
        encoder=encoder or EncoderOptions(),
    )
    transport = httpx.ASGITransport(app=create_app(settings, engine))
    async with httpx.AsyncClient(transport=transport, base_url="http://isvc") as client:
        yield client


def ids_of(text: str, pair: str | None = None) -> list[int]:
    return list(fake_tokenizer()(text, pair)["input_ids"])


def assert_openai_error(response: httpx.Response, status: int, *words: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert isinstance(error, dict) and error["type"] and isinstance(error["message"], str), error
    for word in words:
        assert word in error["message"], (word, error["message"])
    return error


def assert_kserve_error(response: httpx.Response, status: int, *words: str) -> str:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert isinstance(error, str), error
    for word in words:
        assert word in error, (word, error)
    return error


# -- embeddings ----------------------------------------------------------------------------


@pytest.mark.parametrize("prefix", OPENAI_PREFIXES)
async def test_embedding_of_one_string_has_openais_shape(prefix: str) -> None:
    engine = FakeEngine()
    async with serve(engine) as client:
        r = await client.post(f"{prefix}/embeddings", json={"model": MODEL, "input": "hello world"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "list" and body["model"] == MODEL
    [item] = body["data"]
    assert item["object"] == "embedding" and item["index"] == 0
    ids = ids_of("hello world")
    assert item["embedding"] == pytest.approx(engine.vector(ids))
    assert body["usage"] == {"prompt_tokens": len(ids), "total_tokens": len(ids)}


async def test_embedding_inputs_as_strings_token_ids_and_lists_of_token_ids() -> None:
    engine = FakeEngine()
    texts = ["hello world", "the capital of france is paris", "thank you"]
    ids = [ids_of(t) for t in texts]
    async with serve(engine) as client:
        strings = (await client.post("/v1/embeddings", json={"input": texts})).json()
        one_ids = (await client.post("/v1/embeddings", json={"input": ids[1]})).json()
        many_ids = (await client.post("/v1/embeddings", json={"input": ids})).json()
    assert [d["index"] for d in strings["data"]] == [0, 1, 2]
    for i, row in enumerate(ids):
        assert strings["data"][i]["embedding"] == pytest.approx(engine.vector(row))
        assert many_ids["data"][i]["embedding"] == pytest.approx(engine.vector(row))
    assert one_ids["data"][0]["embedding"] == pytest.approx(engine.vector(ids[1]))
    assert strings["usage"]["prompt_tokens"] == many_ids["usage"]["prompt_tokens"] == sum(map(len, ids))


async def test_all_inputs_of_a_request_are_submitted_together() -> None:
    engine = FakeEngine()
    async with serve(engine) as client:
        r = await client.post("/v1/embeddings", json={"input": [f"text number {i}" for i in range(12)]})
    assert r.status_code == 200
    assert engine.max_in_flight == 12  # one batch's worth in the engine at once, not one after another


async def test_base64_is_little_endian_float32_of_the_same_vector() -> None:
    async with serve(FakeEngine()) as client:
        floats = (await client.post("/v1/embeddings", json={"input": ["a", "b c"]})).json()
        b64 = (await client.post("/v1/embeddings", json={"input": ["a", "b c"], "encoding_format": "base64"})).json()
    for f, b in zip(floats["data"], b64["data"], strict=True):
        raw = base64.b64decode(b["embedding"])
        decoded = struct.unpack(f"<{len(raw) // 4}f", raw)
        assert decoded == pytest.approx(f["embedding"], rel=1e-6)


async def test_dimensions_keep_the_first_numbers_renormalized() -> None:
    engine = FakeEngine(embedding_dim=8)
    async with serve(engine) as client:
        r = await client.post("/v1/embeddings", json={"input": "hello world", "dimensions": 3})
        too_many = await client.post("/v1/embeddings", json={"input": "hello world", "dimensions": 9})
    vector = r.json()["data"][0]["embedding"]
    assert len(vector) == 3 and math.isclose(sum(x * x for x in vector), 1.0, rel_tol=1e-6)
    assert vector == pytest.approx(engine.vector(ids_of("hello world"), dimensions=3))
    error = assert_openai_error(too_many, 400, "dimensions 9", "8")
    assert error["param"] == "dimensions"


async def test_embedding_inputs_longer_than_the_model_reads_are_refused_unless_truncated() -> None:
    engine = FakeEngine(max_model_len=8)
    long_text = "the capital of france is paris the capital of italy is rome"
    async with serve(engine) as client:
        refused = await client.post("/v1/embeddings", json={"input": long_text})
        cut = await client.post("/v1/embeddings", json={"input": long_text, "truncate_prompt_tokens": -1})
        cut5 = await client.post("/v1/embeddings", json={"input": long_text, "truncate_prompt_tokens": 5})
        long_ids = await client.post("/v1/embeddings", json={"input": list(range(5, 20))})
    error = assert_openai_error(refused, 400, "reads at most 8", "truncate_prompt_tokens")
    assert error["code"] == "context_length_exceeded" and error["param"] == "input"
    assert cut.status_code == 200 and cut.json()["usage"]["prompt_tokens"] == 8
    assert cut5.json()["usage"]["prompt_tokens"] == 5
    assert engine.encoded[-1][0].token_ids[-1] == fake_tokenizer().sep_token_id  # cut by the tokenizer: [SEP] kept
    assert_openai_error(long_ids, 400, "reads at most 8")


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ({"input": []}, ["input is empty"]),
        ({"input": [[]]}, ["no tokens"]),
        ({"input": 5}, ["input", "a string, a list of strings"]),
        ({"input": ["a", 3]}, ["input"]),
        ({"input": [1, -2]}, ["input"]),
        ({"input": [True, 3]}, ["input"]),
        ({"input": [1, 100000]}, ["token id 100000 is out of range"]),
        ({"input": "a", "encoding_format": "hex"}, ["encoding_format"]),
        ({"input": "a", "dimensions": 0}, ["dimensions"]),
        ({"input": "a", "model": "other"}, ["`other` does not exist"]),
        ({}, ["input"]),
    ],
)
async def test_bad_embedding_requests_get_a_4xx_in_the_openai_envelope(body: dict[str, Any], words: list[str]) -> None:
    async with serve(FakeEngine()) as client:
        r = await client.post("/v1/embeddings", json=body)
    assert_openai_error(r, 404 if "model" in body else 400, *words)


async def test_too_many_inputs_are_refused_naming_the_limit() -> None:
    async with serve(FakeEngine(max_queue=10)) as client:
        over_queue = await client.post("/v1/embeddings", json={"input": ["a"] * 11})
    async with serve(FakeEngine(max_queue=100_000)) as client:
        over_limit = await client.post("/v1/embeddings", json={"input": ["a"] * (MAX_INPUTS + 1)})
    assert_openai_error(over_queue, 400, "11 inputs", "at most 10")
    assert_openai_error(over_limit, 400, f"{MAX_INPUTS + 1} inputs", f"at most {MAX_INPUTS}")


async def test_a_full_queue_is_429_on_openai_routes_and_503_on_kserve_routes() -> None:
    engine = FakeEngine()
    engine.overloaded = True
    async with serve(engine) as client:
        openai = await client.post("/v1/embeddings", json={"input": "a"})
        kserve = await client.post(f"/v1/models/{MODEL}:predict", json={"instances": ["a"]})
    assert_openai_error(openai, 429)
    assert_kserve_error(kserve, 503)
    assert openai.headers["retry-after"] == kserve.headers["retry-after"] == "1"


# -- the wrong task ------------------------------------------------------------------------


async def test_an_embedding_model_asked_for_chat_or_completions_gets_a_400_naming_its_task() -> None:
    async with serve(FakeEngine(Task.TEXT_EMBEDDING)) as client:
        chat = await client.post(
            "/v1/chat/completions", json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}
        )
        completion = await client.post("/openai/v1/completions", json={"model": MODEL, "prompt": "hi"})
    for r in (chat, completion):
        error = assert_openai_error(r, 400, "text_embedding", "/v1/embeddings")
        assert error["code"] == "wrong_task" and error["param"] == "model"


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/embeddings", {"input": "hi"}),
        ("/v1/rerank", {"query": "hi", "documents": ["a"]}),
        ("/score", {"text_1": "hi", "text_2": "a"}),
    ],
)
async def test_a_generative_model_asked_for_pooling_gets_a_400_naming_its_task(path: str, body: dict[str, Any]) -> None:
    async with serve(FakeEngine(Task.TEXT_GENERATION)) as client:
        r = await client.post(path, json=body)
    error = assert_openai_error(r, 400, "text_generation", "/v1/chat/completions")
    assert error["code"] == "wrong_task"


async def test_a_fill_mask_model_asked_for_rerank_or_embeddings_gets_a_400() -> None:
    async with serve(FakeEngine(Task.FILL_MASK)) as client:
        rerank = await client.post("/v1/rerank", json={"query": "hi", "documents": ["a"]})
        embed = await client.post("/v1/embeddings", json={"input": "hi"})
    assert_openai_error(rerank, 400, "fill_mask")
    assert_openai_error(embed, 400, "fill_mask")


# -- rerank and score ----------------------------------------------------------------------

QUERY = "capital of france"
DOCS = [
    "hello world",  # no query word
    "the capital of france is paris",  # three
    "the capital of italy is rome",  # two
    {"text": "france"},  # one
]


@pytest.mark.parametrize("path", ["/rerank", "/v1/rerank", "/v2/rerank", "/openai/v1/rerank"])
async def test_rerank_sorts_documents_by_relevance(path: str) -> None:
    async with serve(FakeEngine(Task.RERANK)) as client:
        r = await client.post(path, json={"model": MODEL, "query": QUERY, "documents": DOCS})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == MODEL and body["id"]
    assert [x["index"] for x in body["results"]] == [1, 2, 3, 0]
    scores = [x["relevance_score"] for x in body["results"]]
    assert scores == sorted(scores, reverse=True) and all(0 < s < 1 for s in scores)
    assert scores[0] == pytest.approx(1 / (1 + math.exp(-3)))  # the sigmoid of the cross-encoder's logit
    assert body["results"][0]["document"] == {"text": DOCS[1]}
    assert body["results"][2]["document"] == {"text": "france"}
    tokens = sum(len(ids_of(QUERY, d if isinstance(d, str) else d["text"])) for d in DOCS)
    assert body["usage"]["total_tokens"] == tokens


async def test_rerank_top_n_and_return_documents() -> None:
    async with serve(FakeEngine(Task.RERANK)) as client:
        top = (await client.post("/v1/rerank", json={"query": QUERY, "documents": DOCS, "top_n": 2})).json()
        bare = (
            await client.post("/v1/rerank", json={"query": QUERY, "documents": DOCS, "return_documents": False})
        ).json()
        all_ = (await client.post("/v1/rerank", json={"query": QUERY, "documents": DOCS, "top_n": 0})).json()
    assert [x["index"] for x in top["results"]] == [1, 2]
    assert all("document" not in x for x in bare["results"]) and len(bare["results"]) == 4
    assert len(all_["results"]) == 4


async def test_the_cross_encoder_reads_query_and_document_as_one_pair() -> None:
    engine = FakeEngine(Task.RERANK)
    async with serve(engine) as client:
        await client.post("/v1/rerank", json={"query": QUERY, "documents": ["paris"]})
    [(inputs, params)] = engine.encoded
    assert params.kind == "score"
    assert inputs.token_ids == ids_of(QUERY, "paris")
    assert inputs.token_type_ids == list(fake_tokenizer()(QUERY, "paris")["token_type_ids"])


async def test_rerank_on_an_embedding_model_is_cosine_similarity() -> None:
    engine = FakeEngine(Task.TEXT_EMBEDDING)
    docs = ["hello world", "capital of france", "thank you"]
    async with serve(engine) as client:
        body = (await client.post("/v1/rerank", json={"query": "capital of france", "documents": docs})).json()
    q = engine.vector(ids_of("capital of france"))

    def cosine(d: str) -> float:
        v = engine.vector(ids_of(d))
        return sum(a * b for a, b in zip(q, v, strict=True))

    expected = sorted(range(3), key=lambda i: -cosine(docs[i]))
    assert [x["index"] for x in body["results"]] == expected
    assert body["results"][0]["relevance_score"] == pytest.approx(1.0)


@pytest.mark.parametrize("path", ["/score", "/v1/score", "/openai/v1/score"])
async def test_score_pairs_one_text_1_with_every_text_2(path: str) -> None:
    async with serve(FakeEngine(Task.RERANK)) as client:
        one = (await client.post(path, json={"text_1": QUERY, "text_2": ["hello", "capital of france"]})).json()
        pairs = (
            await client.post(path, json={"text_1": ["capital", "france is"], "text_2": ["the capital", "france"]})
        ).json()
        single = (await client.post(path, json={"text_1": QUERY, "text_2": "france"})).json()
    assert one["object"] == "list" and one["model"] == MODEL
    assert [d["object"] for d in one["data"]] == ["score", "score"] and [d["index"] for d in one["data"]] == [0, 1]
    assert one["data"][1]["score"] == pytest.approx(1 / (1 + math.exp(-3)))
    assert [d["score"] for d in pairs["data"]] == pytest.approx([1 / (1 + math.exp(-1))] * 2)
    assert len(single["data"]) == 1


@pytest.mark.parametrize(
    ("path", "body", "words"),
    [
        ("/v1/rerank", {"query": "q", "documents": []}, ["documents is empty"]),
        ("/v1/rerank", {"query": "q", "documents": [{"txt": "a"}]}, ["documents", '{"text": ...}']),
        ("/v1/rerank", {"query": "q", "documents": ["a"], "top_n": -1}, ["top_n"]),
        ("/v1/rerank", {"documents": ["a"]}, ["query"]),
        ("/rerank", {"query": 3, "documents": ["a"]}, ["query"]),
        ("/v2/rerank", {"query": "q", "documents": "a"}, ["documents"]),
        ("/score", {"text_1": ["a", "b"], "text_2": ["a", "b", "c"]}, ["text_1 has 2 texts", "text_2 has 3"]),
        ("/v1/score", {"text_1": [], "text_2": "a"}, ["at least one"]),
        ("/v1/score", {"text_1": "a", "text_2": 7}, ["text_2"]),
    ],
)
async def test_bad_rerank_and_score_requests_get_a_400_in_the_openai_envelope(
    path: str, body: dict[str, Any], words: list[str]
) -> None:
    async with serve(FakeEngine(Task.RERANK)) as client:
        r = await client.post(path, json=body)
    assert_openai_error(r, 400, *words)


async def test_a_pair_longer_than_the_model_reads_is_refused_unless_truncated() -> None:
    long_doc = "the capital of france is paris the capital of italy is rome " * 3
    async with serve(FakeEngine(Task.RERANK, max_model_len=16)) as client:
        refused = await client.post("/v1/rerank", json={"query": QUERY, "documents": [long_doc]})
        cut = await client.post(
            "/v1/rerank", json={"query": QUERY, "documents": [long_doc], "truncate_prompt_tokens": -1}
        )
    assert_openai_error(refused, 400, "documents[0]", "reads at most 16")
    assert cut.status_code == 200 and cut.json()["usage"]["total_tokens"] == 16


# -- KServe V1 and V2 per task -------------------------------------------------------------


async def predict_v1(engine: FakeEngine, instances: list[Any], options: EncoderOptions | None = None) -> httpx.Response:
    async with serve(engine, options) as client:
        return await client.post(f"/v1/models/{MODEL}:predict", json={"instances": instances})


async def infer_v2(engine: FakeEngine, texts: list[str], options: EncoderOptions | None = None) -> dict[str, Any]:
    body = {"inputs": [{"name": "input-0", "datatype": "BYTES", "shape": [len(texts)], "data": texts}]}
    async with serve(engine, options) as client:
        r = await client.post(f"/v2/models/{MODEL}/infer", json=body)
    assert r.status_code == 200, r.text
    [output] = r.json()["outputs"]
    return dict(output)


async def test_fill_mask_answers_the_filled_token_per_instance() -> None:
    texts = ["the capital of france is [MASK].", "hello [MASK] world"]
    v1 = await predict_v1(FakeEngine(Task.FILL_MASK), texts)
    assert v1.json() == {"predictions": ["is", "hello"]}  # the fake fills a mask with the token before it
    v2 = await infer_v2(FakeEngine(Task.FILL_MASK), texts)
    assert v2 == {"name": "output-0", "datatype": "BYTES", "shape": [2], "data": ["is", "hello"]}
    missing = await predict_v1(FakeEngine(Task.FILL_MASK), ["no mask here"])
    assert_kserve_error(missing, 400, "instances[0] has no mask token [MASK]")


async def test_fill_mask_probabilities_are_one_map_per_vocabulary_token() -> None:
    engine = FakeEngine(Task.FILL_MASK)
    r = await predict_v1(engine, ["hello [MASK]"], EncoderOptions(return_probabilities=True))
    [[per_token]] = r.json()["predictions"]  # one instance, one mask
    assert len(per_token) == engine.vocab_size
    hello = fake_tokenizer().convert_tokens_to_ids("hello")
    assert list(per_token[hello]) == [str(hello)] and float(per_token[hello][str(hello)]) > 0.02
    assert math.isclose(sum(float(next(iter(m.values()))) for m in per_token), 1.0, abs_tol=0.02)  # 4-digit rounding


async def test_sequence_classification_answers_the_label_index_probabilities_or_logits() -> None:
    texts = ["hello", "hello world"]  # 3 and 4 tokens: labels 0 and 1 (the fake's rule)
    assert (await predict_v1(FakeEngine(Task.SEQUENCE_CLASSIFICATION), texts)).json() == {"predictions": [0, 1]}
    probs = (
        await predict_v1(FakeEngine(Task.SEQUENCE_CLASSIFICATION), texts, EncoderOptions(return_probabilities=True))
    ).json()
    first = probs["predictions"][0]
    assert set(first) == {"0", "1", "2"} and max(first, key=first.get) == "0"
    assert all(round(v, 4) == v for v in first.values()) and math.isclose(sum(first.values()), 1.0, abs_tol=1e-3)
    raw = (
        await predict_v1(FakeEngine(Task.SEQUENCE_CLASSIFICATION), texts, EncoderOptions(return_raw_logits=True))
    ).json()
    assert raw["predictions"][1] == {"0": -0.5, "1": 1.0, "2": -0.5}
    v2 = await infer_v2(FakeEngine(Task.SEQUENCE_CLASSIFICATION), texts)
    assert v2 == {"name": "output-0", "datatype": "INT64", "shape": [2], "data": [0, 1]}
    v2_probs = await infer_v2(
        FakeEngine(Task.SEQUENCE_CLASSIFICATION), texts, EncoderOptions(return_probabilities=True)
    )
    assert v2_probs["datatype"] == "FP64" and v2_probs["shape"] == [2, 3]


async def test_classify_answers_label_and_probabilities_and_refuses_other_tasks() -> None:
    async with serve(FakeEngine(Task.SEQUENCE_CLASSIFICATION)) as client:
        r = await client.post("/v1/classify", json={"model": MODEL, "input": ["hello", "hello world"]})
        assert r.status_code == 200, r.text
        data = r.json()["data"]
        assert [d["label"] for d in data] == ["LABEL_0", "LABEL_1"]  # no id2label: vLLM's default names
        assert all(d["num_classes"] == 3 and math.isclose(sum(d["probs"]), 1.0) for d in data)
        empty = await client.post("/classify", json={"model": MODEL, "input": []})
        assert_openai_error(empty, 400)
        missing = await client.post("/classify", json={"model": MODEL})
        assert_openai_error(missing, 400, "input")
    async with serve(FakeEngine(Task.TEXT_EMBEDDING)) as client:
        r = await client.post("/classify", json={"input": "hello"})
        assert assert_openai_error(r, 400, "text_embedding")["code"] == "wrong_task"


async def test_token_classification_answers_label_ids_per_token_in_kserves_nesting() -> None:
    engine = FakeEngine(Task.TOKEN_CLASSIFICATION)
    texts = ["hello world", "the capital of france"]
    ids = [ids_of(t) for t in texts]
    r = await predict_v1(engine, texts)
    assert r.json() == {"predictions": [[[t % 3 for t in row]] for row in ids]}
    v2 = await infer_v2(FakeEngine(Task.TOKEN_CLASSIFICATION), texts)
    width = max(map(len, ids))
    assert v2["datatype"] == "INT64" and v2["shape"] == [2, 1, width]
    padded = [t % 3 for t in ids[0]] + [-1] * (width - len(ids[0]))  # ragged rows padded with -1
    assert v2["data"] == padded + [t % 3 for t in ids[1]]


async def test_token_classification_special_tokens_and_offsets_follow_the_flags() -> None:
    options = EncoderOptions(add_special_tokens=False, return_offsets_mapping=True)
    async with serve(FakeEngine(Task.TOKEN_CLASSIFICATION), options) as client:
        r = await client.post(f"/v1/models/{MODEL}:predict", json={"instances": ["hello world"]})
    body = r.json()
    assert len(body["predictions"][0][0]) == 2  # no [CLS]/[SEP]
    [offsets] = body["outputs"]
    assert offsets["name"] == "offset_mapping" and offsets["shape"] == [1, 2, 2]
    assert offsets["data"] == [0, 5, 6, 11]


async def test_text_embedding_answers_vectors() -> None:
    engine = FakeEngine(Task.TEXT_EMBEDDING, embedding_dim=4)
    texts = ["hello", "hello world"]
    r = await predict_v1(engine, texts)
    assert r.json()["predictions"] == [pytest.approx(engine.vector(ids_of(t))) for t in texts]
    v2 = await infer_v2(engine, texts)
    assert v2["datatype"] == "FP64" and v2["shape"] == [2, 4]


async def test_v1_pairs_on_a_cross_encoder_answer_relevance_scores() -> None:
    instances = [{"text": QUERY, "text_pair": "paris"}, {"text": QUERY, "text_pair": "capital of france"}]
    r = await predict_v1(FakeEngine(Task.RERANK), instances)
    assert r.json()["predictions"] == pytest.approx([0.5, 1 / (1 + math.exp(-3))])
    mixed = await predict_v1(FakeEngine(Task.RERANK), [instances[0], "alone"])
    assert_kserve_error(mixed, 400, "text_pair")


async def test_kserve_inputs_longer_than_the_model_reads_are_cut_like_kserve() -> None:
    engine = FakeEngine(Task.SEQUENCE_CLASSIFICATION, max_model_len=6)
    r = await predict_v1(engine, ["the capital of france is paris and the capital of italy is rome"])
    assert r.status_code == 200
    assert len(engine.encoded[0][0].token_ids) == 6


@pytest.mark.parametrize(
    ("task", "output"),
    [
        (Task.FILL_MASK, {"name": "output-0", "datatype": "BYTES", "shape": [-1]}),
        (Task.SEQUENCE_CLASSIFICATION, {"name": "output-0", "datatype": "INT64", "shape": [-1]}),
        (Task.TOKEN_CLASSIFICATION, {"name": "output-0", "datatype": "INT64", "shape": [-1, 1, -1]}),
        (Task.TEXT_EMBEDDING, {"name": "output-0", "datatype": "FP64", "shape": [-1, 8]}),
        (Task.TEXT_GENERATION, {"name": "text_output", "datatype": "BYTES", "shape": [-1]}),
    ],
)
async def test_v2_model_metadata_names_the_task_and_its_tensors(task: Task, output: dict[str, Any]) -> None:
    async with serve(FakeEngine(task)) as client:
        body = (await client.get(f"/v2/models/{MODEL}")).json()
    assert body["parameters"] == {"task": task.value}
    assert body["outputs"] == [output]


async def test_a_generative_model_still_generates_on_v1_and_v2() -> None:
    body = {"inputs": [{"name": "text_input", "datatype": "BYTES", "shape": [1], "data": ["hello"]}]}
    async with serve(FakeEngine(Task.TEXT_GENERATION, max_model_len=128)) as client:
        v1 = await client.post(f"/v1/models/{MODEL}:predict", json={"instances": ["hello"]})
        v2 = await client.post(f"/v2/models/{MODEL}/infer", json=body)
    assert v1.json() == {"predictions": [" ok"]}
    assert v2.json()["outputs"] == [{"name": "text_output", "datatype": "BYTES", "shape": [1], "data": [" ok"]}]


# -- flags ---------------------------------------------------------------------------------


def test_kserve_encoder_flags_become_encoder_options() -> None:
    args = parse(
        [
            "--task=text-embedding",
            "--disable_special_tokens",
            "--return-token-type-ids",
            "--tensor_input_names=input_ids,attention_mask",
            "--return_raw_logits",
            "--max_length=256",
        ]
    )
    assert args.task == "text_embedding" and args.max_model_len == 256
    options = EncoderOptions.from_args(args)
    assert options == EncoderOptions(
        add_special_tokens=False,
        return_token_type_ids=True,
        tensor_input_names=("input_ids", "attention_mask"),
        return_raw_logits=True,
    )
    assert EncoderOptions.from_args(parse([])) == EncoderOptions()


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["--task=text_embeding"], ["unknown task", "did you mean text_embedding"]),
        (["--task=sentiment"], ["unknown task", "choose one of: text_generation"]),
        (["--return_probabilities", "--return_raw_logits"], ["not allowed with"]),
    ],
)
def test_bad_encoder_flags_are_named(argv: list[str], words: list[str]) -> None:
    from isvc.runtime_args import ArgsError

    with pytest.raises(ArgsError) as err:
        parse(argv)
    for word in words:
        assert word in str(err.value)


async def test_tensor_input_names_without_token_type_ids_send_none() -> None:
    engine = FakeEngine(Task.RERANK)
    options = EncoderOptions(tensor_input_names=("input_ids", "attention_mask"))
    async with serve(engine, options) as client:
        await client.post("/v1/score", json={"text_1": "a", "text_2": "b"})
    assert engine.encoded[0][0].token_type_ids is None


async def test_disable_special_tokens_and_the_request_field_shape_embedding_inputs() -> None:
    engine = FakeEngine()
    async with serve(engine, EncoderOptions(add_special_tokens=False)) as client:
        plain = (await client.post("/v1/embeddings", json={"input": "hello world"})).json()
        asked = (await client.post("/v1/embeddings", json={"input": "hello world", "add_special_tokens": True})).json()
    assert plain["usage"]["prompt_tokens"] == 2 and asked["usage"]["prompt_tokens"] == 4
