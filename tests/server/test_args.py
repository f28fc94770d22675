"""KServe's flags as users write them in manifests."""

from __future__ import annotations

import subprocess
import sys

import pytest

from isvc.runtime_args import ArgsError, parse


def test_seed_manifest_args_parse() -> None:
    args = parse(
        [
            "--model_dir=/mnt/models/Qwen2-72B-Instruct-GPTQ-Int4",
            "--model_name=qwen2-72b",
            "--max_length=6144",
            "--trust-remote-code",
            "--gpu-memory-utilization=0.95",
            "--quantization gptq",
        ]
    )
    assert args.model_dir == "/mnt/models/Qwen2-72B-Instruct-GPTQ-Int4"
    assert args.model_name == "qwen2-72b"
    assert args.max_model_len == 6144
    assert args.trust_remote_code is True
    assert args.gpu_memory_utilization == 0.95
    assert args.quantization == "gptq"


def test_defaults_match_kserve() -> None:
    args = parse([])
    assert args.http_port == 8080 and args.model_dir == "/mnt/models" and args.model_name == "model"
    assert args.backend == "auto"


def test_unknown_flag_is_named_with_the_nearest_known_one() -> None:
    with pytest.raises(ArgsError) as err:
        parse(["--model_dir=/x", "--max_lenght=100"])
    assert "--max_lenght" in str(err.value) and "--max_length" in str(err.value)


def test_serve_exits_nonzero_on_unknown_flag() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "isvc", "serve", "--trust_remote_cod"], capture_output=True, text=True
    )
    assert result.returncode == 2
    assert "unknown flag --trust_remote_cod" in result.stderr and "--trust_remote_code" in result.stderr


def test_serve_explains_a_missing_model_folder(tmp_path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "isvc", "serve", f"--model_dir={tmp_path}/nope"], capture_output=True, text=True
    )
    assert result.returncode == 1
    assert "nope" in result.stderr and "Traceback" not in result.stderr


def test_gptq_on_a_float_folder_says_what_to_do(tiny_model_dir) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "isvc",
            "serve",
            f"--model_dir={tiny_model_dir}",
            "--quantization gptq",
            "--backend",
            "huggingface",
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "--quantization gptq loads a gptq checkpoint, and config.json has no quantization_config" in result.stderr
    assert "--quantization int8" in result.stderr  # what the CPU engine offers for a float folder


def test_a_gpu_only_method_on_the_cpu_engine_says_what_to_do(tiny_model_dir) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "isvc", "serve", f"--model_dir={tiny_model_dir}", "--quantization=fp8"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "--quantization fp8 needs the vLLM backend" in result.stderr
    assert "gptq and awq checkpoints" in result.stderr and "--quantization int8" in result.stderr


def test_vllm_backend_without_vllm_is_a_clear_error(tiny_model_dir) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "isvc", "serve", f"--model_dir={tiny_model_dir}", "--backend=vllm"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 1
    assert "vllm is not installed" in result.stderr


def test_vllm_flags_map_from_kserve_flags(monkeypatch) -> None:
    from pathlib import Path

    from isvc.server.vllm_backend import vllm_argv

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    args = parse(
        [
            "--model_name=qwen2-72b",
            "--max_length=6144",
            "--trust-remote-code",
            "--gpu-memory-utilization=0.95",
            "--quantization gptq",
        ]
    )
    argv = vllm_argv(args, Path("/models/qwen"))
    pairs = dict(zip(argv, argv[1:]))
    assert pairs["--model"] == "/models/qwen" and pairs["--served-model-name"] == "qwen2-72b"
    assert pairs["--tensor-parallel-size"] == "2"  # from the visible GPUs
    assert pairs["--quantization"] == "gptq" and pairs["--gpu-memory-utilization"] == "0.95"
    assert pairs["--max-model-len"] == "6144" and "--trust-remote-code" in argv
    assert "--trust-request-chat-template" not in argv  # vLLM refuses request templates by default too
    trusted = vllm_argv(parse(["--model_name=m", "--trust-request-chat-template"]), Path("/models/m"))
    assert "--trust-request-chat-template" in trusted


def test_serve_names_an_engine_flag_out_of_bounds(tiny_model_dir) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "isvc",
            "serve",
            f"--model_dir={tiny_model_dir}",
            "--num_speculative_tokens",
            "20",
            "--kv_cache_space",
            "0",
            "--max_batch_tokens",
            "8",
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "--num_speculative_tokens: Input should be less than or equal to 8" in result.stderr
    assert "--kv_cache_space: Input should be greater than 0" in result.stderr
    assert "--max_batch_tokens: Input should be greater than or equal to 16" in result.stderr


def test_engine_flags_take_vllm_spellings() -> None:
    args = parse(
        ["--model_dir=/x", "--no-enable-prefix-caching", "--kv-cache-dtype", "float32", "--num-speculative-tokens=0"]
    )
    assert (args.enable_prefix_caching, args.kv_cache_dtype, args.num_speculative_tokens) == (False, "float32", 0)
    defaults = parse(["--model_dir=/x"])
    assert (defaults.enable_prefix_caching, defaults.kv_cache_dtype, defaults.num_speculative_tokens) == (
        True,
        "auto",
        3,
    )
