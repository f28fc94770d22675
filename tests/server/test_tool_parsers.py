"""Tool-call parsers and the tool ChatML template, without a model: text in, calls out."""

from __future__ import annotations

import json

import pytest

from isvc.runtime_args import TOOL_CALL_PARSERS
from isvc.server.protocols.chat_template import RenderLimits, render
from isvc.server.protocols.openai.schema import ChatCompletionRequest
from isvc.server.protocols.openai.tool_parsers import PARSERS, HermesParser, Llama3JsonParser, MistralParser
from isvc.server.protocols.openai.tools import ToolPlan, ToolSettings, ToolStream, plan_tools, template_message
from isvc.server.protocols.templates import tool_template

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


def test_the_flag_names_every_parser() -> None:
    assert set(TOOL_CALL_PARSERS) == set(PARSERS)


def test_hermes_reads_content_then_calls() -> None:
    text = (
        'Let me check.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>\n'
        '<tool_call>\n{"name": "get_time", "arguments": {}}\n</tool_call>'
    )
    parsed = HermesParser().parse(text)
    assert parsed.content == "Let me check."
    assert [(c.name, json.loads(c.arguments)) for c in parsed.calls] == [
        ("get_weather", {"city": "Paris"}),
        ("get_time", {}),
    ]
    # a call the model did not close before EOS still counts; a malformed one leaves the text as content
    assert HermesParser().parse('<tool_call>{"name": "f", "arguments": {"a": 1}}').calls[0].name == "f"
    assert HermesParser().parse("<tool_call>{not json}</tool_call>").calls == []


def test_llama3_json_and_mistral() -> None:
    parsed = Llama3JsonParser().parse(
        '<|python_tag|>{"name": "f", "parameters": {"x": 1}}; {"name": "g", "parameters": {}}'
    )
    assert [(c.name, json.loads(c.arguments)) for c in parsed.calls] == [("f", {"x": 1}), ("g", {})]
    assert Llama3JsonParser().parse("Hello {there}").calls == []
    parsed = MistralParser().parse('[TOOL_CALLS][{"name": "f", "arguments": {"x": "y"}}]')
    assert parsed.content is None and json.loads(parsed.calls[0].arguments) == {"x": "y"}


@pytest.mark.parametrize(
    ("text", "sendable"),
    [
        ("Sure, here", "Sure, here"),
        ("Sure <tool", "Sure "),  # may become <tool_call>: held
        ("Sure <tool_call>{", "Sure "),
        ("a < b", "a < b"),
    ],
)
def test_a_stream_sends_content_only_up_to_where_a_call_may_begin(text: str, sendable: str) -> None:
    assert text[: HermesParser().held_from(text)] == sendable


def test_a_stream_sends_calls_whole_at_the_end() -> None:
    request = ChatCompletionRequest(model="m", messages=[{"role": "user", "content": "hi"}], tools=[WEATHER])
    plan = plan_tools(request, ToolSettings(enable_auto_tool_choice=True, tool_call_parser="hermes"))
    stream = ToolStream(plan)
    sent = "".join(
        stream.feed(piece)
        for piece in ["One moment", " <tool", '_call>{"name": "get_weather", ', '"arguments": {"city": "Oslo"}}']
    )
    assert sent == "One moment "
    last = stream.close()
    assert last is not None and last.tool_calls is not None
    call = last.tool_calls[0]
    assert call.index == 0 and call.id and call.function is not None
    assert call.function.name == "get_weather" and json.loads(call.function.arguments or "") == {"city": "Oslo"}
    assert plan.finish_reason("stop", stream.calls) == "tool_calls"


def test_required_and_named_choices_constrain_the_output() -> None:
    def plan(choice: object, parallel: bool = True) -> ToolPlan:
        body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "tools": [WEATHER]}
        return plan_tools(
            ChatCompletionRequest(**body, tool_choice=choice, parallel_tool_calls=parallel), ToolSettings()
        )

    named = plan({"type": "function", "function": {"name": "get_weather"}})
    assert json.loads(named.constraint().spec) == WEATHER["function"]["parameters"]  # type: ignore[index, union-attr]
    content, calls = named.read('{"city": "Rome"}')
    assert content == "" and calls[0].function.name == "get_weather"
    required = json.loads(plan("required", parallel=False).constraint().spec)  # type: ignore[union-attr]
    assert required["maxItems"] == 1 and required["items"]["anyOf"][0]["properties"]["name"]["enum"] == ["get_weather"]
    _, calls = plan("required").read('[{"name": "get_weather", "parameters": {"city": "Lima"}}]')
    assert json.loads(calls[0].function.arguments) == {"city": "Lima"}


def test_the_tool_template_renders_tools_calls_and_results() -> None:
    request = ChatCompletionRequest(
        model="m",
        tools=[WEATHER],
        messages=[
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Weather in Paris?"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "c1",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "c1", "content": "18 C, sunny"},
        ],
    )
    variables = {
        "messages": [template_message(m) for m in request.messages],
        "tools": [WEATHER],
        "add_generation_prompt": True,
    }
    text = render(tool_template(), variables, RenderLimits(max_chars=100_000))
    assert text.startswith("<|im_start|>system\nBe brief.\n\n# Tools")
    assert '"name": "get_weather"' in text and "<tools>" in text
    assert '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call><|im_end|>' in text
    assert "<|im_start|>user\n<tool_response>\n18 C, sunny\n</tool_response><|im_end|>" in text
    assert text.endswith("<|im_start|>assistant\n")
    # what the model writes back in that format is what the hermes parser reads
    assert (
        HermesParser().parse('<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>').calls
    )


def test_chat_template_flag_replaces_the_models_template(start_server, tiny_model_dir, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """vLLM's --chat-template: a file's path (or the template itself) renders every chat request."""
    import httpx

    template = tmp_path / "template.jinja"
    template.write_text("{% for m in messages %}<<{{ m.content }}>>{% endfor %}")
    server = start_server(
        ["--model_dir", str(tiny_model_dir), "--model_name", "tiny", "--chat-template", str(template)]
    )
    ids = httpx.post(f"{server.base_url}/tokenize", json={"messages": [{"role": "user", "content": "hi"}]}).json()
    text = httpx.post(f"{server.base_url}/detokenize", json={"tokens": ids["tokens"]}).json()["prompt"]
    assert text == "<<hi>>"
