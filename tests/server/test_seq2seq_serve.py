"""Encoder-decoder models (KServe's text2text_generation) on a live `isvc serve`: the official
``openai`` client's completions equal transformers' greedy output, streamed or not; KServe V1/V2
answer with the generated text; chat without a template and the encoder routes are 400s."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import torch

from isvc.server import main
from tests.seq2seq_fixtures import *  # noqa: F403 (the session fixtures of tiny encoder-decoder folders)

PROMPT = "translate English to German: The house is wonderful."


@pytest.fixture(scope="module")
def t5_server(start_server: Any, tiny_t5_dir: Path) -> Any:
    # the field's T5 args: KServe's doc serves t5 with --backend=huggingface
    return start_server(["--model_dir", str(tiny_t5_dir), "--model_name", "t5", "--backend=huggingface"])


def greedy(model_dir: Path, prompt: str, max_new_tokens: int) -> str:
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    model = AutoModelForSeq2SeqLM.from_pretrained(str(model_dir)).eval()
    ids = torch.tensor([tokenizer(prompt)["input_ids"]])
    out = model.generate(ids, max_new_tokens=max_new_tokens, do_sample=False)[0]
    return str(tokenizer.decode(out, skip_special_tokens=True))


def test_completions_equal_transformers_streamed_or_not(t5_server: Any, tiny_t5_dir: Path) -> None:
    client = openai.OpenAI(base_url=t5_server.base_url + "/openai/v1", api_key="unused", max_retries=0)
    expected = greedy(tiny_t5_dir, PROMPT, 10)
    out = client.completions.create(model="t5", prompt=PROMPT, max_tokens=10, temperature=0, logprobs=2)
    assert out.choices[0].text == expected
    assert out.usage.prompt_tokens == len(client_tokens(t5_server, PROMPT))
    assert 0 < out.usage.completion_tokens <= 10
    assert out.choices[0].logprobs is not None and len(out.choices[0].logprobs.tokens) == out.usage.completion_tokens
    stream = client.completions.create(model="t5", prompt=PROMPT, max_tokens=10, temperature=0, stream=True)
    assert "".join(c.choices[0].text for c in stream) == expected


def client_tokens(server: Any, text: str) -> list[int]:
    r = httpx.post(server.base_url + "/tokenize", json={"model": "t5", "prompt": text})
    assert r.status_code == 200, r.text
    return list(r.json()["tokens"])


def test_kserve_v1_and_v2_answer_with_the_generated_text(t5_server: Any, tiny_t5_dir: Path) -> None:
    expected = greedy(tiny_t5_dir, PROMPT, 6)
    v1 = httpx.post(
        f"{t5_server.base_url}/v1/models/t5:predict", json={"instances": [PROMPT], "parameters": {"max_new_tokens": 6}}
    )
    assert v1.status_code == 200 and v1.json()["predictions"] == [expected]
    v2 = httpx.post(
        f"{t5_server.base_url}/v2/models/t5/infer",
        json={
            "inputs": [{"name": "text_input", "shape": [1], "datatype": "BYTES", "data": [PROMPT]}],
            "parameters": {"max_tokens": 6},
        },
    )
    assert v2.status_code == 200 and v2.json()["outputs"][0]["data"] == [expected]
    meta = httpx.get(f"{t5_server.base_url}/v2/models/t5").json()
    assert meta["parameters"]["task"] == "text2text_generation"


def test_what_t5_does_not_do_is_a_400_saying_why(t5_server: Any) -> None:
    client = openai.OpenAI(base_url=t5_server.base_url + "/v1", api_key="unused", max_retries=0)
    with pytest.raises(openai.BadRequestError, match="chat template"):
        client.chat.completions.create(model="t5", messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(openai.BadRequestError, match="text2text_generation") as wrong:
        client.embeddings.create(model="t5", input="hi")
    assert wrong.value.code == "wrong_task"
    for stream in (False, True):  # no prompt to score (it is the encoder's): refused before a stream starts
        with pytest.raises(openai.BadRequestError, match="decoder-only"):
            client.completions.create(model="t5", prompt=PROMPT, max_tokens=2, echo=True, logprobs=1, stream=stream)
    schema = {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}}}
    with pytest.raises(openai.BadRequestError, match="not available for this model's tokenizer"):
        client.completions.create(model="t5", prompt=PROMPT, max_tokens=2, extra_body={"response_format": schema})
    with pytest.raises(openai.BadRequestError, match="maximum context length"):
        client.completions.create(model="t5", prompt=PROMPT * 20, max_tokens=2)


def test_auto_keeps_encoder_decoder_models_off_vllm(
    monkeypatch: pytest.MonkeyPatch, tiny_t5_dir: Path, tmp_path: Path
) -> None:
    """With vLLM and a GPU present (faked: neither is here), ``auto`` still serves T5 on isvc's engine."""
    monkeypatch.setattr(main, "_vllm_importable", lambda: True)
    monkeypatch.setattr(main, "_gpu_present", lambda: True)
    assert main._choose_backend("auto", tiny_t5_dir) == "isvc"
    assert main._choose_backend("vllm", tiny_t5_dir) == "vllm"  # asked for by name: the user's choice
    decoder = tmp_path
    (decoder / "config.json").write_text('{"architectures": ["LlamaForCausalLM"]}')
    assert main._choose_backend("auto", decoder) == "vllm"
