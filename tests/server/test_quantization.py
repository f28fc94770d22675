"""`isvc serve --quantization int8`: the real model answers from int8 weights; other methods are refused clearly."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import openai

from tests.conftest import ServerProcess, metric
from tests.encoder_fixtures import *  # noqa: F403 (the session fixtures of tiny encoder folders)


def test_smollm2_in_int8_answers_the_seed_question(
    start_server: Callable[..., ServerProcess], smollm2_dir: Path
) -> None:
    server = start_server([f"--model_dir={smollm2_dir}", "--model_name=llama2", "--quantization", "int8"])
    client = openai.OpenAI(base_url=server.base_url + "/openai/v1", api_key="unused", max_retries=0, timeout=120)
    answer = client.chat.completions.create(
        model="llama2",
        messages=[{"role": "user", "content": "What is the capital of France?"}],
        max_tokens=20,
        temperature=0,
    )
    assert "Paris" in (answer.choices[0].message.content or "")
    server.log.seek(0)
    assert "int8 weights" in server.log.read()
    # a quarter of the float32 weights' bytes: the process holds well under the 517 MiB float folder
    assert metric(server.base_url, "process_resident_memory_bytes") < 700 * 2**20


def _serve(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "isvc", "serve", *args], capture_output=True, text=True, timeout=120)


def test_int8_on_an_encoder_model_is_refused_before_loading(tiny_embedding_dir: Path) -> None:
    result = _serve(f"--model_dir={tiny_embedding_dir}", "--quantization", "int8")
    assert result.returncode == 1
    assert "--quantization int8 applies to decoder LLMs" in result.stderr and "Traceback" not in result.stderr
