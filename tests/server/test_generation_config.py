"""vLLM's --generation-config / --override-generation-config: a model folder's defaults and output cap."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import openai
import pytest

from isvc.errors import ConfigError
from isvc.server.generation_defaults import GenerationDefaults, load_generation_defaults
from tests.conftest import ServerProcess


@pytest.fixture(scope="module")
def capped_model_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model whose generation_config.json says: greedy, at most 5 new tokens."""
    folder = tmp_path_factory.mktemp("capped") / "tiny"
    shutil.copytree(tiny_model_dir, folder)
    config = json.loads((folder / "generation_config.json").read_text())
    (folder / "generation_config.json").write_text(json.dumps({**config, "temperature": 0.0, "max_new_tokens": 5}))
    return folder


def _client(server: ServerProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base_url + "/v1", api_key="unused", max_retries=0, timeout=60)


def _chat(client: openai.OpenAI, **kw: object):
    return client.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "Hello there"}], extra_body={"ignore_eos": True}, **kw
    )


def test_the_model_folders_generation_config_caps_and_defaults_requests(
    start_server: Callable[..., ServerProcess], capped_model_dir: Path
) -> None:
    client = _client(start_server([f"--model_dir={capped_model_dir}", "--model_name=tiny"]))
    unset = _chat(client)  # no max_tokens: the server-wide cap, not the end of the context
    assert unset.usage.completion_tokens == 5 and unset.choices[0].finish_reason == "length"
    assert _chat(client, max_tokens=3).usage.completion_tokens == 3
    assert _chat(client, max_tokens=50).usage.completion_tokens == 5
    # temperature 0 from the file: an unseeded request without temperature is greedy
    greedy = _chat(client, temperature=0).choices[0].message.content
    assert [_chat(client).choices[0].message.content for _ in range(3)] == [greedy] * 3
    completion = client.completions.create(model="tiny", prompt="Hi", max_tokens=100, extra_body={"ignore_eos": True})
    assert completion.usage.completion_tokens == 5
    # a prompt 3 tokens short of the context and no max_tokens: 3 tokens (the context is checked
    # first, then the cap), not a context-length error
    long = client.completions.create(model="tiny", prompt=[7] * 253, max_tokens=None, extra_body={"ignore_eos": True})
    assert long.usage.completion_tokens == 3 and long.choices[0].finish_reason == "length"


def test_vllm_ignores_the_file_and_the_override_applies(
    start_server: Callable[..., ServerProcess], capped_model_dir: Path
) -> None:
    plain = _client(
        start_server([f"--model_dir={capped_model_dir}", "--model_name=tiny", "--generation-config", "vllm"])
    )
    assert _chat(plain, max_tokens=12).usage.completion_tokens == 12
    samples = {_chat(plain, max_tokens=8).choices[0].message.content for _ in range(4)}
    assert len(samples) > 1  # temperature 1: the file's 0.0 is not used
    overridden = _client(
        start_server(
            [
                f"--model_dir={capped_model_dir}",
                "--model_name=tiny",
                "--override-generation-config",
                '{"max_new_tokens": 2}',
            ]
        )
    )
    assert _chat(overridden, max_tokens=12).usage.completion_tokens == 2


@pytest.mark.parametrize(
    "args,message",
    [
        (["--override-generation-config", "{temperature: 1}"], "--override_generation_config"),
        (["--override-generation-config", '{"max_new_tokens": -1}'], "max_new_tokens must be a positive integer"),
        (["--generation-config", "/no/such/folder"], "--generation-config /no/such/folder: not a folder"),
        (["--override-generation-config", '{"top_p": 1.5}'], "top_p must be in [0.0, 1.0]"),
    ],
)
def test_bad_generation_config_flags_are_clear_errors(tiny_model_dir: Path, args: list[str], message: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "isvc", "serve", f"--model_dir={tiny_model_dir}", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr


def test_defaults_from_a_folder_merge_with_the_override(tmp_path: Path) -> None:
    (tmp_path / "generation_config.json").write_text(json.dumps({"temperature": 0.6, "top_p": 0.9, "do_sample": True}))
    got = load_generation_defaults(str(tmp_path), Path("/unused"), {"top_p": 0.5, "max_new_tokens": 64})
    assert got == GenerationDefaults({"temperature": 0.6, "top_p": 0.5}, 64)
    assert got.cap(10) == 10 and got.cap(100) == 64
    assert load_generation_defaults("vllm", tmp_path) == GenerationDefaults()
    with pytest.raises(ConfigError, match="no generation_config.json"):
        load_generation_defaults(str(tmp_path / "empty"), tmp_path) if (tmp_path / "empty").mkdir() is None else None
    with pytest.raises(ConfigError, match="temperature must be a number"):
        load_generation_defaults("vllm", tmp_path, {"temperature": "hot"})
