"""Encoder tasks on live `isvc serve` processes (tiny random encoder folders), checked against references.

Embeddings through the official ``openai`` client equal sentence-transformers' for the same
folder; rerank orders documents as the cross-encoder's own logits do; KServe V1/V2 answers for
classification, token classification and fill-mask equal transformers' pipelines'. The wrong
route for a model's task is a 400 naming the task, on a real server too.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import numpy as np
import openai
import pytest

from tests.encoder_fixtures import *  # noqa: F403 (the session fixtures of tiny encoder folders)

DOCS = [
    "The capital of France is Paris.",
    "Hello world! How are you today?",
    "Embeddings map sentences to vectors.",
    "A cross encoder reads the query and the document together.",
    "George Washington lived in Virginia.",
    "The movie was great, the music was fine.",
]


def serve_folder(start_server: Any, folder: Path, name: str, *extra: str) -> Any:
    return start_server(["--model_dir", str(folder), "--model_name", name, *extra])


@pytest.fixture(scope="module")
def embedding_server(start_server: Any, tiny_embedding_dir: Path) -> Any:
    return serve_folder(start_server, tiny_embedding_dir, "emb")


@pytest.fixture(scope="module")
def cross_encoder_server(start_server: Any, tiny_cross_encoder_dir: Path) -> Any:
    return serve_folder(start_server, tiny_cross_encoder_dir, "rerank")


def test_openai_client_embeddings_equal_sentence_transformers(embedding_server: Any, tiny_embedding_dir: Path) -> None:
    st = pytest.importorskip("sentence_transformers")
    client = openai.OpenAI(base_url=embedding_server.base_url + "/v1", api_key="unused", max_retries=0)
    out = client.embeddings.create(model="emb", input=DOCS)  # the client asks for base64 and decodes it
    floats = client.embeddings.create(model="emb", input=DOCS, encoding_format="float")
    expected = st.SentenceTransformer(str(tiny_embedding_dir), device="cpu").encode(DOCS)
    got = np.array([d.embedding for d in out.data])
    assert [d.index for d in out.data] == list(range(len(DOCS)))
    cosines = (got * expected).sum(1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(expected, axis=1))
    assert cosines.min() >= 0.9999, cosines
    assert np.allclose(got, np.array([d.embedding for d in floats.data]), atol=1e-6)
    assert out.usage.prompt_tokens == out.usage.total_tokens > len(DOCS)


def test_openai_client_dimensions_and_token_ids(embedding_server: Any) -> None:
    client = openai.OpenAI(base_url=embedding_server.base_url + "/openai/v1", api_key="unused", max_retries=0)
    full = client.embeddings.create(model="emb", input=DOCS[0], encoding_format="float").data[0].embedding
    short = client.embeddings.create(model="emb", input=DOCS[0], dimensions=8, encoding_format="float")
    vector = np.array(short.data[0].embedding)
    assert len(vector) == 8 and np.isclose(np.linalg.norm(vector), 1.0)
    assert np.allclose(vector, np.array(full[:8]) / np.linalg.norm(full[:8]), atol=1e-5)
    with pytest.raises(openai.BadRequestError) as err:
        client.embeddings.create(model="emb", input=DOCS[0], dimensions=33)
    assert "dimensions" in str(err.value)


def test_rerank_orders_documents_as_the_cross_encoders_logits(
    cross_encoder_server: Any, tiny_cross_encoder_dir: Path
) -> None:
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    query = "What is the capital of France?"
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_cross_encoder_dir))
    model = AutoModelForSequenceClassification.from_pretrained(str(tiny_cross_encoder_dir)).eval()
    with torch.no_grad():
        logits = model(**tokenizer([query] * len(DOCS), DOCS, padding=True, return_tensors="pt")).logits[:, 0]
    expected = sorted(range(len(DOCS)), key=lambda i: -float(logits[i]))
    for path in ("/v1/rerank", "/rerank"):
        r = httpx.post(
            cross_encoder_server.base_url + path, json={"model": "rerank", "query": query, "documents": DOCS}
        )
        assert r.status_code == 200, r.text
        results = r.json()["results"]
        assert [x["index"] for x in results] == expected
        assert [x["relevance_score"] for x in results] == pytest.approx(
            [float(torch.sigmoid(logits[i])) for i in expected], abs=1e-5
        )
    score = httpx.post(cross_encoder_server.base_url + "/score", json={"text_1": query, "text_2": DOCS}).json()
    assert [d["score"] for d in score["data"]] == pytest.approx(torch.sigmoid(logits).tolist(), abs=1e-5)


def test_the_wrong_task_is_a_400_naming_it_on_live_servers(embedding_server: Any, tiny_server: Any) -> None:
    chat = httpx.post(
        embedding_server.base_url + "/v1/chat/completions",
        json={"model": "emb", "messages": [{"role": "user", "content": "hi"}]},
    )
    assert chat.status_code == 400 and "text_embedding" in chat.json()["error"]["message"]
    embed = httpx.post(tiny_server.base_url + "/v1/embeddings", json={"model": "tiny", "input": "hi"})
    assert embed.status_code == 400 and "text_generation" in embed.json()["error"]["message"]
    rerank = httpx.post(tiny_server.base_url + "/rerank", json={"query": "hi", "documents": ["a"]})
    assert rerank.status_code == 400 and rerank.json()["error"]["code"] == "wrong_task"


def v1(server: Any, name: str, instances: list[Any]) -> Any:
    r = httpx.post(f"{server.base_url}/v1/models/{name}:predict", json={"instances": instances})
    assert r.status_code == 200, r.text
    return r.json()["predictions"]


def v2(server: Any, name: str, texts: list[str]) -> dict[str, Any]:
    body = {"inputs": [{"name": "input-0", "datatype": "BYTES", "shape": [len(texts)], "data": texts}]}
    r = httpx.post(f"{server.base_url}/v2/models/{name}/infer", json=body)
    assert r.status_code == 200, r.text
    return dict(r.json()["outputs"][0])


TEXTS = ["The movie was great.", "Hello world, how are you today?", "George Washington lived in New York City."]


def test_sequence_classification_equals_transformers_pipeline(start_server: Any, tiny_classifier_dir: Path) -> None:
    from transformers import pipeline

    server = serve_folder(start_server, tiny_classifier_dir, "sentiment")
    classify = pipeline("text-classification", model=str(tiny_classifier_dir), device="cpu")
    label2id = {v: k for k, v in classify.model.config.id2label.items()}
    expected = [label2id[x["label"]] for x in classify(TEXTS)]
    assert v1(server, "sentiment", TEXTS) == expected
    assert v2(server, "sentiment", TEXTS) == {"name": "output-0", "datatype": "INT64", "shape": [3], "data": expected}
    probs = start_server(["--model_dir", str(tiny_classifier_dir), "--model_name", "p", "--return_probabilities"])
    answers = v1(probs, "p", TEXTS)
    for answer, scores in zip(answers, classify(TEXTS, top_k=None), strict=True):
        by_label = {label2id[s["label"]]: s["score"] for s in scores}
        assert {int(k): v for k, v in answer.items()} == pytest.approx(by_label, abs=1e-4)


def test_classify_names_the_label_and_equals_transformers_pipeline(
    start_server: Any, tiny_classifier_dir: Path
) -> None:
    """vLLM's ``/classify`` (and under /v1, /openai/v1): the label's name from id2label and every class's
    probability, as transformers' text-classification pipeline gives them."""
    from transformers import pipeline

    server = serve_folder(start_server, tiny_classifier_dir, "sentiment")
    classify = pipeline("text-classification", model=str(tiny_classifier_dir), device="cpu")
    label2id = {v: k for k, v in classify.model.config.id2label.items()}
    expected = classify(TEXTS, top_k=None)
    for path in ("/classify", "/v1/classify", "/openai/v1/classify"):
        r = httpx.post(server.base_url + path, json={"model": "sentiment", "input": TEXTS})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["object"] == "list" and body["model"] == "sentiment"
        assert body["usage"]["prompt_tokens"] == body["usage"]["total_tokens"] > len(TEXTS)
        for i, (row, scores) in enumerate(zip(body["data"], expected, strict=True)):
            assert row["index"] == i and row["num_classes"] == len(label2id)
            assert row["label"] == scores[0]["label"]  # the pipeline sorts by score: its first is the best
            by_id = {label2id[s["label"]]: s["score"] for s in scores}
            assert row["probs"] == pytest.approx([by_id[k] for k in range(len(by_id))], abs=1e-5)
    one = httpx.post(server.base_url + "/classify", json={"input": TEXTS[0]}).json()
    assert [d["index"] for d in one["data"]] == [0]
    wrong = httpx.post(server.base_url + "/classify", json={"model": "nope", "input": "hi"})
    assert wrong.status_code == 404 and wrong.json()["error"]["param"] == "model"


def test_token_classification_equals_transformers_pipeline(start_server: Any, tiny_ner_dir: Path) -> None:
    from transformers import pipeline

    server = serve_folder(start_server, tiny_ner_dir, "ner")
    ner = pipeline("token-classification", model=str(tiny_ner_dir), device="cpu", ignore_labels=[])
    id2label = ner.model.config.id2label
    answers = v1(server, "ner", TEXTS)
    for text, [labels] in zip(TEXTS, answers, strict=True):
        tokens = ner(text)  # every token but the specials, each with its best label
        assert len(labels) == len(tokens) + 2  # KServe's answer covers [CLS] and [SEP] too
        assert [id2label[labels[t["index"]]] for t in tokens] == [t["entity"] for t in tokens]
    tensor = v2(server, "ner", TEXTS[:1])
    assert tensor["datatype"] == "INT64" and tensor["shape"] == [1, 1, len(answers[0][0])]
    assert tensor["data"] == answers[0][0]


def test_fill_mask_equals_transformers_pipeline(start_server: Any, tiny_fill_mask_dir: Path) -> None:
    from transformers import pipeline

    server = serve_folder(start_server, tiny_fill_mask_dir, "mlm")
    fill = pipeline("fill-mask", model=str(tiny_fill_mask_dir), device="cpu")
    texts = ["The capital of France is [MASK].", "Hello [MASK]! How are you today?"]
    expected = [fill(t)[0]["token_str"] for t in texts]
    assert v1(server, "mlm", texts) == expected
    assert v2(server, "mlm", texts)["data"] == expected
    no_mask = httpx.post(f"{server.base_url}/v1/models/mlm:predict", json={"instances": ["no mask"]})
    assert no_mask.status_code == 400 and "mask" in no_mask.json()["error"]
