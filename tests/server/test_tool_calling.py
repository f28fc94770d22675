"""Tool calling over HTTP with the real SmolLM2-135M and the official ``openai`` client.

SmolLM2's own chat template cannot render tools, so the server uses its tool ChatML template
(and says so in its log); calls come back in OpenAI's shape, and the loop — the model asks for a
tool, the client answers with a ``tool`` message, the model goes on — runs streamed and not.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import httpx
import openai
import pytest

from tests.conftest import ServerProcess

pytestmark = pytest.mark.slow

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "maxLength": 40}},
            "required": ["city"],
            "additionalProperties": False,
        },
    },
}
TIME = {
    "type": "function",
    "function": {
        "name": "get_time",
        "description": "The time now",
        "parameters": {"type": "object", "properties": {}, "additionalProperties": False},
    },
}
QUESTION = [{"role": "user", "content": "What is the weather like in Paris today?"}]


@pytest.fixture(scope="module")
def tool_server(start_server: Callable[..., ServerProcess], smollm2_dir: Path) -> ServerProcess:
    return start_server(
        [
            f"--model_dir={smollm2_dir}",
            "--model_name=llama2",
            "--max_length=2048",
            "--enable-auto-tool-choice",
            "--tool-call-parser",
            "hermes",
        ]
    )


def _client(server: ServerProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base_url + "/v1", api_key="unused", max_retries=0, timeout=300)


def _answer(call: object) -> dict[str, object]:
    """The client runs the tool and sends back its result."""
    return {"role": "tool", "tool_call_id": call.id, "content": json.dumps({"temperature_c": 18, "sky": "sunny"})}  # type: ignore[attr-defined]


def test_the_tool_loop_runs_through_the_openai_client(tool_server: ServerProcess) -> None:
    client = _client(tool_server)
    first = client.chat.completions.create(
        model="llama2", messages=QUESTION, tools=[WEATHER, TIME], tool_choice="required", max_tokens=400
    )
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls"
    call = choice.message.tool_calls[0]
    assert call.type == "function" and call.id.startswith("chatcmpl-tool-")
    if call.function.name == "get_weather":
        assert isinstance(json.loads(call.function.arguments)["city"], str)
    history = [*QUESTION, choice.message.model_dump(exclude_none=True), _answer(call)]
    second = client.chat.completions.create(model="llama2", messages=history, tools=[WEATHER, TIME], max_tokens=60)
    assert second.choices[0].message.content or second.choices[0].message.tool_calls
    assert second.choices[0].finish_reason in ("stop", "length", "tool_calls")
    assert "isvc's tool ChatML template" in tool_server.output()


def test_the_tool_loop_streams(tool_server: ServerProcess) -> None:
    client = _client(tool_server)
    stream = client.chat.completions.create(
        model="llama2",
        messages=QUESTION,
        tools=[WEATHER],
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
        max_tokens=400,  # the schema bounds the call: it ends well before
        stream=True,
    )
    calls: dict[int, dict[str, str]] = {}
    reasons = []
    for chunk in stream:
        for choice in chunk.choices:
            reasons.append(choice.finish_reason)
            for delta in choice.delta.tool_calls or []:
                entry = calls.setdefault(delta.index, {"id": "", "name": "", "arguments": ""})
                entry["id"] += delta.id or ""
                entry["name"] += (delta.function.name or "") if delta.function else ""
                entry["arguments"] += (delta.function.arguments or "") if delta.function else ""
    assert reasons[-1] == "stop"  # a named call keeps the engine's reason, as vLLM and OpenAI do
    assert calls[0]["name"] == "get_weather" and isinstance(json.loads(calls[0]["arguments"])["city"], str)
    history = [
        *QUESTION,
        {
            "role": "assistant",
            "tool_calls": [
                {
                    "id": calls[0]["id"],
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": calls[0]["arguments"]},
                }
            ],
        },
        {"role": "tool", "tool_call_id": calls[0]["id"], "content": '{"temperature_c": 18, "sky": "sunny"}'},
    ]
    stream = client.chat.completions.create(
        model="llama2", messages=history, tools=[WEATHER], tool_choice="none", max_tokens=40, stream=True
    )
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert text.strip()


def test_auto_answers_with_text_or_calls(tool_server: ServerProcess) -> None:
    out = _client(tool_server).chat.completions.create(
        model="llama2", messages=QUESTION, tools=[WEATHER], max_tokens=80, temperature=0
    )
    message, reason = out.choices[0].message, out.choices[0].finish_reason
    if message.tool_calls:
        assert reason == "tool_calls" and message.tool_calls[0].function.name == "get_weather"
    else:
        assert message.content and reason in ("stop", "length")


@pytest.mark.parametrize(
    ("extra", "words"),
    [
        ({"tools": [WEATHER]}, "--enable-auto-tool-choice"),  # auto by default, and this server has no parser
        ({"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "not in tools"),
        ({"tool_choice": "required"}, "needs tools"),
        (
            {"tools": [WEATHER], "tool_choice": "required", "response_format": {"type": "json_object"}},
            "response_format",
        ),
    ],
)
def test_a_tool_choice_the_server_cannot_serve_is_a_400(smollm2_server: ServerProcess, extra: dict, words: str) -> None:
    body = {"model": "llama2", "messages": QUESTION, "max_tokens": 5, **extra}
    response = httpx.post(f"{smollm2_server.base_url}/v1/chat/completions", json=body, timeout=60)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == "tool_choice" and words in error["message"], error
