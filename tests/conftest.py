"""Shared fixtures: a tiny random Llama built in seconds, the real SmolLM2 folder, and live servers."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

_CORPUS = [
    "The capital of France is Paris. The capital of Italy is Rome.",
    "Hello world! How are you today? I am fine, thank you.",
    "Once upon a time there was a small model that served many users at once.",
    "Continuous batching decodes many requests together in one step.",
    "你好! 我们用中文打个招呼。我的孩子数学不太行，怎么办？",
    "0123456789 + - * / = ( ) [ ] { } < > , . ; : ! ?",
] * 20


def build_tiny_model(path: Path, seed: int = 0) -> Path:
    """A 2-layer Llama with a byte-level BPE tokenizer and a ChatML template; ~1 s."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(_CORPUS, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        unk_token="<|endoftext|>",
        pad_token="<|im_end|>",
    )
    fast.chat_template = CHATML
    path.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(str(path))
    eos = fast.convert_tokens_to_ids("<|im_end|>")
    config = LlamaConfig(
        vocab_size=len(fast),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        tie_word_embeddings=True,
        bos_token_id=fast.bos_token_id,
        eos_token_id=eos,
        pad_token_id=eos,
        initializer_range=0.5,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.save_pretrained(str(path), safe_serialization=True)
    GenerationConfig(eos_token_id=eos, bos_token_id=fast.bos_token_id).save_pretrained(str(path))
    return path


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def smollm2_dir() -> Path:
    """The real SmolLM2-135M-Instruct folder, prepared once per machine (cached under ~/.cache/isvc)."""
    from isvc.models.prepare import ensure_default_model

    return ensure_default_model(quiet=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServerProcess:
    """`isvc serve` as a real process on 127.0.0.1."""

    def __init__(self, args: list[str], env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        cmd = [sys.executable, "-m", "isvc", "serve", "--host", "127.0.0.1", "--http_port", str(self.port), *args]
        self.log = open(Path(os.environ.get("TMPDIR", "/tmp")) / f"isvc-serve-{self.port}.log", "w+")  # noqa: SIM115 (the server process owns it)
        self.proc = subprocess.Popen(
            cmd, stdout=self.log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}, start_new_session=True
        )

    def wait_ready(self, timeout_s: float = 120.0) -> ServerProcess:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.output()}")
            try:
                if httpx.get(f"{self.base_url}/v2/health/ready", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise TimeoutError(f"server not ready after {timeout_s}s:\n{self.output()}")

    def output(self) -> str:
        self.log.flush()
        self.log.seek(0)
        return self.log.read()

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.log.close()


@pytest.fixture(scope="session")
def start_server() -> Iterator[Callable[..., ServerProcess]]:
    started: list[ServerProcess] = []

    def start(args: list[str], env: dict[str, str] | None = None, wait: bool = True) -> ServerProcess:
        server = ServerProcess(args, env)
        started.append(server)
        return server.wait_ready() if wait else server

    yield start
    for server in started:
        server.stop()


@pytest.fixture(scope="session")
def tiny_server(start_server: Callable[..., ServerProcess], tiny_model_dir: Path) -> ServerProcess:
    return start_server(["--model_dir", str(tiny_model_dir), "--model_name", "tiny", "--max_queue", "64"])


@pytest.fixture(scope="session")
def smollm2_server(start_server: Callable[..., ServerProcess], smollm2_dir: Path) -> ServerProcess:
    return start_server([f"--model_dir={smollm2_dir}", "--model_name=llama2", "--max_length=2048"])


def metric(base_url: str, name: str) -> float:
    """Read one unlabelled sample from /metrics."""
    for line in httpx.get(f"{base_url}/metrics").text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise KeyError(name)


def counter_value(counter) -> float:  # type: ignore[no-untyped-def]
    """An in-process prometheus Counter's current value (engine tests without a server)."""
    return counter._value.get()


def read_json(path: Path) -> dict[str, object]:
    return json.loads(path.read_text())


def need_binary(name: str, package: str | None = None) -> str:
    """The path of a system program a test needs. Without it the test skips, naming the Debian
    package; with ISVC_REQUIRE_SYSTEM_DEPS=1 (set by .ci/run, which installs them) it fails."""
    import shutil

    path = shutil.which(name)
    if path is None:
        reason = f"{name} is not installed (apt-get install {package or name})"
        if os.environ.get("ISVC_REQUIRE_SYSTEM_DEPS") == "1":
            pytest.fail(f"{reason}; ISVC_REQUIRE_SYSTEM_DEPS=1 requires it", pytrace=False)
        pytest.skip(reason)
    return path
