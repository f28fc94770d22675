"""`isvc serve` on encoder folders: the factory picks the engine by task; a task the weights cannot serve stops the start."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from tests.conftest import ServerProcess
from tests.encoder_fixtures import *  # noqa: F403 (the session fixtures of tiny encoder folders)


def test_serve_starts_on_a_sentence_transformers_folder(
    start_server: Callable[..., ServerProcess], tiny_embedding_dir: Path
) -> None:
    server = start_server(["--model_dir", str(tiny_embedding_dir), "--model_name", "emb"])
    assert httpx.get(f"{server.base_url}/v2/health/ready", timeout=5).status_code == 200
    assert httpx.get(f"{server.base_url}/v2/models/emb/ready", timeout=5).status_code == 200


@pytest.mark.parametrize(
    ("task", "words"),
    [
        ("fill_mask", ["--task fill_mask cannot be served by a BertModel model", "text_embedding"]),
        ("text_generation", ["--task text_generation cannot be served by a BertModel"]),
        ("translation", ["--task"]),  # refused by the flag parser or the factory, named either way
    ],
)
def test_serve_refuses_a_task_the_weights_cannot_serve(tiny_embedding_dir: Path, task: str, words: list[str]) -> None:
    cmd = [sys.executable, "-m", "isvc", "serve", "--model_dir", str(tiny_embedding_dir), f"--task={task}"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert done.returncode in (1, 2)
    assert "Traceback" not in done.stderr
    for word in words:
        assert word in done.stderr
