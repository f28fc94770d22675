"""Reasoning parsers: ``<think>`` text to ``reasoning_content``, whole answers and streamed deltas."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import openai
import pytest

from isvc.runtime_args import REASONING_PARSERS as FLAG_VALUES
from isvc.server.protocols.openai.reasoning import REASONING_PARSERS, ReasoningStream
from tests.conftest import ServerProcess

R1, QWEN3 = REASONING_PARSERS["deepseek_r1"], REASONING_PARSERS["qwen3"]


def test_the_flag_names_every_parser() -> None:
    assert set(FLAG_VALUES) == set(REASONING_PARSERS)


@pytest.mark.parametrize(
    ("parser", "text", "reasoning", "content"),
    [
        (R1, "<think>add 2 and 2</think>\n\nIt is 4.", "add 2 and 2", "It is 4."),
        (R1, "add 2 and 2</think>It is 4.", "add 2 and 2", "It is 4."),  # R1's template opened the tag
        (R1, "still thinking", "still thinking", None),  # cut before </think>
        (QWEN3, "<think>hmm</think>Yes.", "hmm", "Yes."),
        (QWEN3, "Yes, no thinking asked.", None, "Yes, no thinking asked."),
    ],
)
def test_a_whole_answer_splits(parser, text: str, reasoning: str | None, content: str | None) -> None:
    assert parser.split(text) == (reasoning, content)


@pytest.mark.parametrize("size", [1, 2, 3, 5, 100])
def test_a_stream_splits_the_same_whatever_the_deltas(size: int) -> None:
    text = "<think>weigh it: 2 < 3</think>\n\nThree is more."
    for parser in (R1, QWEN3):
        stream = ReasoningStream(parser)
        pieces = [stream.feed(text[i : i + size]) for i in range(0, len(text), size)] + [stream.close()]
        assert "".join(r for r, _ in pieces) == "weigh it: 2 < 3"
        assert "".join(c for _, c in pieces) == "Three is more."


@pytest.mark.slow
def test_reasoning_content_over_http_streamed_and_not(
    start_server: Callable[..., ServerProcess], smollm2_dir: Path
) -> None:
    server = start_server(
        [f"--model_dir={smollm2_dir}", "--model_name=llama2", "--max_length=2048", "--reasoning-parser", "deepseek_r1"]
    )
    client = openai.OpenAI(base_url=server.base_url + "/v1", api_key="unused", max_retries=0, timeout=120)
    # a grammar makes SmolLM2 write a <think> block, as a reasoning model would
    body = dict(
        model="llama2",
        messages=[{"role": "user", "content": "Is 7 prime? Think first."}],
        max_tokens=60,
        extra_body={"guided_regex": r"<think>[a-z ]{3,30}</think>(Yes|No)\."},
    )
    out = client.chat.completions.create(**body)
    message = out.choices[0].message
    assert message.content in ("Yes.", "No.")
    assert message.model_extra["reasoning_content"].strip()
    reasoning, content = "", ""
    for chunk in client.chat.completions.create(**body, stream=True):
        if chunk.choices:
            delta = chunk.choices[0].delta
            reasoning += (delta.model_extra or {}).get("reasoning_content") or ""
            content += delta.content or ""
    assert content in ("Yes.", "No.") and reasoning.strip() and "<think>" not in reasoning + content
