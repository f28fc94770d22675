"""`--backend vllm`: hand the model to vLLM's own OpenAI server with the vLLM flags.

vLLM is an optional extra, never imported by isvc's CPU path. The KServe flags map to
vLLM's: tensor parallel size (default: the visible GPUs), quantization, GPU memory
utilization, max model length, trust-remote-code, served model name and port.

vLLM runs in this interpreter, or in the one env ``ISVC_VLLM_PYTHON`` names: a venv of its own,
since vLLM pins torch, transformers and fastapi apart from isvc (the GPU image,
deploy/image/Containerfile.gpu, keeps it in /opt/vllm).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

logger = logging.getLogger(__name__)

VLLM_PYTHON_ENV = "ISVC_VLLM_PYTHON"


def vllm_python() -> str:
    """The interpreter that runs vLLM's server: env ``ISVC_VLLM_PYTHON``, else this one."""
    return os.environ.get(VLLM_PYTHON_ENV) or sys.executable


def vllm_installed() -> bool:
    """Whether ``vllm_python()`` can import vllm (asked without importing it)."""
    python = os.environ.get(VLLM_PYTHON_ENV)
    if not python:
        return importlib.util.find_spec("vllm") is not None
    probe = "import importlib.util, sys; sys.exit(importlib.util.find_spec('vllm') is None)"
    try:
        return subprocess.run([python, "-c", probe], capture_output=True, timeout=60).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def vllm_argv(args: argparse.Namespace, model_dir: Path) -> list[str]:
    argv = [
        vllm_python(),
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        str(model_dir),
        "--served-model-name",
        args.model_name,
        "--host",
        args.host,
        "--port",
        str(args.http_port),
        "--tensor-parallel-size",
        str(args.tensor_parallel_size or _visible_gpus() or 1),
        "--max-num-seqs",
        str(args.max_num_seqs),
    ]
    if args.dtype != "auto":
        argv += ["--dtype", args.dtype]
    if args.max_model_len:
        argv += ["--max-model-len", str(args.max_model_len)]
    if args.quantization:
        argv += ["--quantization", args.quantization]
    if not args.enable_prefix_caching:
        argv.append("--no-enable-prefix-caching")
    if args.kv_cache_dtype != "auto":
        argv += ["--kv-cache-dtype", args.kv_cache_dtype]
    if args.gpu_memory_utilization is not None:
        argv += ["--gpu-memory-utilization", str(args.gpu_memory_utilization)]
    if args.trust_remote_code:
        argv.append("--trust-remote-code")
    if args.enforce_eager:
        argv.append("--enforce-eager")
    if args.trust_request_chat_template:
        argv.append("--trust-request-chat-template")
    if args.seed:
        argv += ["--seed", str(args.seed)]
    if args.generation_config != "auto":
        argv += ["--generation-config", args.generation_config]
    if args.override_generation_config:
        argv += ["--override-generation-config", json.dumps(args.override_generation_config)]
    return argv


def exec_vllm(args: argparse.Namespace, model_dir: Path) -> int:
    argv = vllm_argv(args, model_dir)
    logger.info("handing %s to vLLM: %s", model_dir, " ".join(argv))
    os.execv(argv[0], argv)
    return 1  # not reached


def _visible_gpus() -> int:
    from isvc.devices import visible_gpus

    return visible_gpus()
