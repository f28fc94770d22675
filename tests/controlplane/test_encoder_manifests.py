"""KServe's documented encoder examples through `isvc apply`: task, engine and routes before anything starts.

The manifests are KServe's docs examples (BERT fill-mask, DistilBERT sentiment, BERT NER, a
sentence-transformers embedding model, T5 text-to-text), resources and GPU lines kept, with the model folder
mapped locally (``pvc://`` or ``file://``) instead of a hub id. The dry-run tests only need the
folders' config.json; the live test runs a tiny random sentence-transformers folder to READY.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from cp_helpers import ControlPlane

from tests.encoder_fixtures import tiny_embedding_dir  # noqa: F401
from tests.seq2seq_fixtures import tiny_t5_dir  # noqa: F401

RESOURCES = """\
      resources:
        limits:
          cpu: "1"
          memory: 2Gi
          nvidia.com/gpu: "1"
        requests:
          cpu: "1"
          memory: 2Gi
          nvidia.com/gpu: "1"
"""


def manifest(name: str, args: list[str], storage_uri: str | None) -> str:
    lines = "".join(f"        - {a}\n" for a in args)
    storage = f'      storageUri: "{storage_uri}"\n' if storage_uri else ""
    return f"""apiVersion: serving.kserve.io/v1beta1
kind: InferenceService
metadata:
  name: {name}
spec:
  predictor:
    model:
      modelFormat:
        name: huggingface
      args:
{lines}{storage}{RESOURCES}"""


# KServe docs: fill-mask (huggingface-bert), sequence classification (huggingface-distilbert),
# token classification (bert NER), text embedding (embedding-model, Hugging Face backend).
FILL_MASK = manifest("huggingface-bert", ["--model_name=bert"], "pvc://hf-models/bert-base-uncased")
SENTIMENT = manifest(
    "huggingface-distilbert",
    ["--model_name=distilbert", "--task=sequence_classification"],
    "pvc://hf-models/distilbert-base-uncased-finetuned-sst-2-english",
)
NER = manifest("huggingface-bert-ner", ["--model_name=bert", "--task=token_classification"], "file://{ner}")
EMBEDDING = manifest(
    "embedding-model",
    ["--model_name=sentence-transformer", "--task=text_embedding", "--backend=huggingface"],
    "pvc://hf-models/all-MiniLM-L6-v2",
)
# KServe docs: text-to-text generation (huggingface-t5, the Hugging Face backend; vLLM serves no T5)
T5 = manifest("huggingface-t5", ["--model_name=t5", "--backend=huggingface"], "pvc://hf-models/t5-small")

FOLDERS = {
    "bert-base-uncased": {"architectures": ["BertForMaskedLM"]},
    "distilbert-base-uncased-finetuned-sst-2-english": {
        "architectures": ["DistilBertForSequenceClassification"],
        "id2label": {"0": "NEGATIVE", "1": "POSITIVE"},
    },
    "bert-base-NER": {"architectures": ["BertForTokenClassification"]},
    "all-MiniLM-L6-v2": {"architectures": ["BertModel"]},
    "ms-marco-MiniLM-L-6-v2": {"architectures": ["BertForSequenceClassification"], "id2label": {"0": "LABEL_0"}},
    "t5-small": {"architectures": ["T5ForConditionalGeneration"], "is_encoder_decoder": True},
}


@pytest.fixture
def models(pvc_root: Path) -> Path:
    """`pvc://hf-models/<name>`: folders holding each example's config.json (what the dry run reads)."""
    root = pvc_root / "hf-models"
    for name, config in FOLDERS.items():
        (root / name).mkdir(parents=True)
        (root / name / "config.json").write_text(json.dumps(config))
    (root / "all-MiniLM-L6-v2" / "modules.json").write_text("[]")
    return root


def isvc(*args: str, stdin: str, state: Path) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "isvc", *args, "--state-dir", str(state)]
    return subprocess.run(cmd, input=stdin, capture_output=True, text=True, timeout=60)


def dry_run(text: str, state: Path) -> dict[str, list[str]]:
    """`isvc apply --dry-run -f -`, its `label: value` lines by label (continuation lines join the last label)."""
    done = isvc("apply", "--dry-run", "-f", "-", stdin=text, state=state)
    assert done.returncode == 0, done.stderr
    out: dict[str, list[str]] = {}
    label = ""
    for line in done.stdout.splitlines()[1:]:
        head, _, value = line.strip().partition(": ")
        if line[2] != " " and value:
            label = head
            out.setdefault(label, []).append(value.strip())
        else:
            out[label].append(line.strip())
    return out


ENCODER = "isvc encoder engine (dynamic length-bucketed batches, pooling/classification heads)"


def test_fill_mask_task_comes_from_the_mapped_folders_config(models: Path, tmp_path: Path) -> None:
    out = dry_run(FILL_MASK, tmp_path / "state")
    assert out["task"] == ["fill_mask (from config.json architectures: BertForMaskedLM)"]
    assert out["engine"] == [ENCODER]
    assert out["routes"] == ["POST /v1/models/bert:predict", "POST /v2/models/bert/infer"]
    assert out["storage"] == ["pvc://hf-models/bert-base-uncased -> /mnt/models"]
    assert out["resources"] == ["gpus=1 threads=1 memory_limit=2147483648"]


def test_sentiment_and_ner_tasks_come_from_their_task_flag(models: Path, tmp_path: Path) -> None:
    out = dry_run(SENTIMENT, tmp_path / "state")
    assert out["task"] == ["sequence_classification (from --task)"]
    assert out["routes"] == [  # a classifier scores text pairs too, as vLLM's score and rerank do
        "POST /openai/v1/rerank",
        "POST /openai/v1/score",
        "POST /openai/v1/classify",
        "POST /v1/models/distilbert:predict",
        "POST /v2/models/distilbert/infer",
    ]
    out = dry_run(NER.format(ner=models / "bert-base-NER"), tmp_path / "state")
    assert out["task"] == ["token_classification (from --task)"] and out["engine"] == [ENCODER]
    assert out["routes"] == ["POST /v1/models/bert:predict", "POST /v2/models/bert/infer"]


def test_embedding_model_answers_the_openai_embeddings_route(models: Path, tmp_path: Path) -> None:
    out = dry_run(EMBEDDING, tmp_path / "state")
    assert out["task"] == ["text_embedding (from --task)"] and out["engine"] == [ENCODER]
    assert out["routes"] == [
        "POST /openai/v1/embeddings",
        "POST /openai/v1/rerank",  # by the cosine of the embeddings
        "POST /openai/v1/score",
        "POST /v1/models/sentence-transformer:predict",
        "POST /v2/models/sentence-transformer/infer",
    ]
    # without --task, the sentence-transformers folder says it
    bare = EMBEDDING.replace("        - --task=text_embedding\n", "")
    assert dry_run(bare, tmp_path / "state")["task"] == [
        "text_embedding (from modules.json: a sentence-transformers folder (BertModel))"
    ]


def test_cross_encoder_serves_rerank_and_a_chat_model_serves_chat(models: Path, tmp_path: Path) -> None:
    reranker = manifest("reranker", ["--model_name=reranker"], "pvc://hf-models/ms-marco-MiniLM-L-6-v2")
    out = dry_run(reranker, tmp_path / "state")
    assert out["task"] == ["rerank (from config.json architectures: BertForSequenceClassification)"]
    assert out["routes"][:2] == ["POST /openai/v1/rerank", "POST /openai/v1/score"]
    (models / "smollm2").mkdir()
    (models / "smollm2" / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"]}))
    chat = manifest("chat", ["--model_name=llama"], "pvc://hf-models/smollm2").replace(RESOURCES, "")
    out = dry_run(chat, tmp_path / "state")
    assert out["task"] == ["text_generation (from config.json architectures: LlamaForCausalLM)"]
    assert out["engine"] == ["isvc generative engine (continuous batching, sampling)"]
    assert out["routes"][:2] == ["POST /openai/v1/chat/completions", "POST /openai/v1/completions"]


def test_task_is_inferred_at_start_when_the_folder_is_not_local(models: Path, tmp_path: Path) -> None:
    # KServe's docs as written: the model comes from the hub when the predictor starts
    hub = manifest("huggingface-distilbert", ["--model_name=distilbert"], "hf://distilbert/distilbert-base-uncased")
    out = dry_run(hub, tmp_path / "state")
    assert out["task"] == [
        "inferred at start (hf://distilbert/distilbert-base-uncased is fetched when the predictor starts)"
    ]
    assert "routes" not in out
    by_id = manifest("huggingface-bert", ["--model_name=bert", "--model_id=dslim/bert-base-NER"], None)
    assert dry_run(by_id, tmp_path / "state")["task"] == ["inferred at start (--model_id dslim/bert-base-NER)"]
    odd = manifest("qa", ["--model_name=qa"], "pvc://hf-models/qa")
    (models / "qa").mkdir()
    (models / "qa" / "config.json").write_text(json.dumps({"architectures": ["BertForQuestionAnswering"]}))
    assert dry_run(odd, tmp_path / "state")["task"] == [
        "inferred at start (architecture BertForQuestionAnswering names no task isvc serves; add --task)"
    ]


def test_describe_names_task_engine_routes_and_an_embeddings_request(models: Path, tmp_path: Path) -> None:
    state = tmp_path / "state"
    assert isvc("apply", "-f", "-", stdin=EMBEDDING, state=state).returncode == 0
    text = isvc("describe", "isvc", "embedding-model", stdin="", state=state).stdout
    assert "Model name:   sentence-transformer" in text
    assert "Task:         text_embedding (from --task)" in text
    assert f"Engine:       {ENCODER}" in text
    assert (
        "Routes:       POST /openai/v1/embeddings\n              POST /openai/v1/rerank\n              POST /openai/v1/score\n              POST /v1/models/sentence-transformer:predict"
        in text
    )
    assert '/serving/default/embedding-model/v1/embeddings -d \'{"model": "sentence-transformer"' in text


def test_embedding_manifest_becomes_ready_and_embeds_through_the_gateway(
    start_control_plane,  # type: ignore[no-untyped-def]
    pvc_root: Path,
    tiny_embedding_dir: Path,  # noqa: F811
) -> None:
    """KServe's embedding example as documented (GPU line kept, so --cpu-fallback), its folder on a PVC."""
    cp: ControlPlane = start_control_plane("--cpu-fallback")
    (pvc_root / "hf-models").mkdir()
    (pvc_root / "hf-models" / "all-MiniLM-L6-v2").symlink_to(tiny_embedding_dir, target_is_directory=True)
    assert cp.apply(EMBEDDING) == 0
    cp.wait_ready("embedding-model", timeout_s=120)
    host = "embedding-model.default.example.com"
    body = {"model": "sentence-transformer", "input": ["hello world", "the capital of France"]}
    r = httpx.post(f"{cp.url}/openai/v1/embeddings", headers={"Host": host}, json=body, timeout=60)
    assert r.status_code == 200, r.text
    data = r.json()["data"]
    assert [d["index"] for d in data] == [0, 1] and len(data[0]["embedding"]) == 32
    chat = {"model": "sentence-transformer", "messages": [{"role": "user", "content": "hi"}]}
    refused = httpx.post(f"{cp.url}/openai/v1/chat/completions", headers={"Host": host}, json=chat, timeout=60)
    assert refused.status_code == 400 and "text_embedding" in refused.json()["error"]["message"]
    # describe of the running service reads its revision's plan: the same task, engine and routes
    text = isvc("describe", "isvc", "embedding-model", stdin="", state=cp.state_dir).stdout
    assert "Task:         text_embedding (from --task)" in text
    assert "Routes:       POST /openai/v1/embeddings" in text


T5_ENGINE = "isvc generative engine (encoder-decoder: continuous batching, sampling)"


def test_t5_serves_text2text_completions(models: Path, tmp_path: Path) -> None:
    out = dry_run(T5, tmp_path / "state")
    assert out["task"] == ["text2text_generation (from config.json architectures: T5ForConditionalGeneration)"]
    assert out["engine"] == [T5_ENGINE]
    assert out["routes"][:2] == [
        "POST /openai/v1/completions",
        "POST /openai/v1/chat/completions (with a chat template)",
    ]


def test_t5_manifest_becomes_ready_and_completes_through_the_gateway(
    start_control_plane,  # type: ignore[no-untyped-def]
    pvc_root: Path,
    tiny_t5_dir: Path,  # noqa: F811
) -> None:
    """KServe's T5 example as documented (GPU line kept, so --cpu-fallback), a tiny T5 on the PVC."""
    cp: ControlPlane = start_control_plane("--cpu-fallback")
    (pvc_root / "hf-models").mkdir()
    (pvc_root / "hf-models" / "t5-small").symlink_to(tiny_t5_dir, target_is_directory=True)
    assert cp.apply(T5) == 0
    cp.wait_ready("huggingface-t5", timeout_s=120)
    host = "huggingface-t5.default.example.com"
    # the doc's curl: a completion, not streamed, 30 tokens at most
    body = {"model": "t5", "prompt": "translate English to German: The house is wonderful.", "max_tokens": 30}
    r = httpx.post(f"{cp.url}/openai/v1/completions", headers={"Host": host}, json={**body, "stream": False})
    assert r.status_code == 200, r.text
    answer = r.json()
    assert answer["object"] == "text_completion" and answer["choices"][0]["finish_reason"] in ("stop", "length")
    assert 0 < answer["usage"]["completion_tokens"] <= 30
    text = isvc("describe", "isvc", "huggingface-t5", stdin="", state=cp.state_dir).stdout
    assert "Task:         text2text_generation" in text and f"Engine:       {T5_ENGINE}" in text
