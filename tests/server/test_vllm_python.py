"""`--backend vllm` with vLLM in a venv of its own (env ISVC_VLLM_PYTHON), as the GPU image has it.

vLLM pins torch, transformers and fastapi apart from isvc, so deploy/image/Containerfile.gpu keeps it in
/opt/vllm; `isvc serve` then execs that interpreter. A stand-in `vllm` package on its path records the
argv it was started with, so the hand-over is checked across a real exec without vLLM.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

_API_SERVER = """
import json, os, sys
with open(os.environ["ARGV_OUT"], "w") as f:
    json.dump({"executable": sys.executable, "argv": sys.argv[1:]}, f)
"""


def _stand_in_vllm_python(root: Path) -> Path:
    """An interpreter whose path holds a `vllm` package with only an OpenAI server entry point."""
    server = root / "site" / "vllm" / "entrypoints" / "openai"
    server.mkdir(parents=True)
    for package in (root / "site" / "vllm", server.parent, server):
        (package / "__init__.py").write_text("")
    (server / "api_server.py").write_text(_API_SERVER)
    python = root / "bin" / "python"
    python.parent.mkdir()
    python.write_text(f'#!/bin/sh\nPYTHONPATH={root / "site"} exec {sys.executable} "$@"\n')
    python.chmod(0o755)
    return python


def _serve(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "isvc", "serve", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        timeout=120,
    )


def test_serve_execs_vllm_from_the_named_interpreter(tiny_model_dir: Path, tmp_path: Path) -> None:
    python = _stand_in_vllm_python(tmp_path / "vllm-venv")
    out = tmp_path / "argv.json"
    result = _serve(
        [
            f"--model_dir={tiny_model_dir}",
            "--model_name=llama2",
            "--backend=vllm",
            "--http_port=8123",
            "--max_length=512",
        ],
        {"ISVC_VLLM_PYTHON": str(python), "ARGV_OUT": str(out)},
    )
    assert result.returncode == 0, result.stderr
    started = json.loads(out.read_text())
    pairs = dict(zip(started["argv"], started["argv"][1:]))
    assert pairs["--model"] == str(tiny_model_dir) and pairs["--served-model-name"] == "llama2"
    assert pairs["--port"] == "8123" and pairs["--max-model-len"] == "512"
    assert f"handing {tiny_model_dir} to vLLM: {python} -m vllm.entrypoints.openai.api_server" in result.stderr


def test_a_named_interpreter_without_vllm_is_a_clear_error(tiny_model_dir: Path) -> None:
    result = _serve(
        [f"--model_dir={tiny_model_dir}", "--backend=vllm"],
        {"ISVC_VLLM_PYTHON": sys.executable},  # isvc's own venv: no vllm here
    )
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert f"vllm is not installed in ISVC_VLLM_PYTHON={sys.executable}" in result.stderr


def test_a_missing_interpreter_is_a_clear_error(tiny_model_dir: Path, tmp_path: Path) -> None:
    result = _serve(
        [f"--model_dir={tiny_model_dir}", "--backend=vllm"],
        {"ISVC_VLLM_PYTHON": str(tmp_path / "no-such-venv" / "bin" / "python")},
    )
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "vllm is not installed in ISVC_VLLM_PYTHON=" in result.stderr
