"""Tool calling as vLLM does it: ``tools``, ``tool_choice``, ``parallel_tool_calls`` -> a plan per request.

- ``none``: the tools are shown to the template, the answer is text.
- ``auto``: the model decides; its text is read back by the server's ``--tool-call-parser`` (needs
  ``--enable-auto-tool-choice``, as in vLLM). Calls found give ``finish_reason: "tool_calls"``.
- ``required``: the output is constrained (structured outputs) to a JSON array of
  ``{"name", "parameters"}`` objects, one per call (one only without ``parallel_tool_calls``),
  each matching its function's parameters schema; ``finish_reason: "tool_calls"``.
- a named function: the output is constrained to that function's parameters: the call's arguments.

A stream sends content until a call may begin, then holds the rest and sends each call whole
(id, name and all its arguments in one delta) when the output ends: an OpenAI client
accumulates deltas the same way either way.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from typing import Any, Literal

from isvc.engine.params import StructuredOutput
from isvc.errors import InvalidRequest
from isvc.server.protocols.openai.schema import (
    ChatCompletionRequest,
    DeltaFunctionCall,
    DeltaMessage,
    DeltaToolCall,
    FunctionCall,
    Tool,
    ToolCall,
)
from isvc.server.protocols.openai.tool_parsers import PARSERS, ParsedCall, ToolParser

Choice = Literal["none", "auto", "required", "named"]


@dataclass(frozen=True, slots=True)
class ToolSettings:
    """The server's flags: ``--enable-auto-tool-choice`` and ``--tool-call-parser``."""

    enable_auto_tool_choice: bool = False
    tool_call_parser: str | None = None


@dataclass(slots=True)
class ToolPlan:
    choice: Choice
    tools: list[Tool]
    parser: ToolParser | None = None
    named: str | None = None
    parallel: bool = True
    _calls: list[ToolCall] = field(default_factory=list)

    @property
    def active(self) -> bool:
        """Whether the answer may hold calls (the output is parsed or constrained)."""
        return self.choice != "none"

    @property
    def keeps_special_tokens(self) -> bool:
        return self.choice == "auto" and self.parser is not None and self.parser.keeps_special_tokens

    def constraint(self) -> StructuredOutput | None:
        """The output constraint ``required`` and a named choice need (None for auto and none)."""
        if self.choice == "named":
            function = next(t.function for t in self.tools if t.function.name == self.named)
            return StructuredOutput("json", _schema_text(function.parameters), source="tool_choice")
        if self.choice != "required":
            return None
        calls = [
            {
                "type": "object",
                "properties": {
                    "name": {"type": "string", "enum": [t.function.name]},
                    "parameters": t.function.parameters or {"type": "object"},
                },
                "required": ["name", "parameters"],
                "additionalProperties": False,
            }
            for t in self.tools
        ]
        array: dict[str, Any] = {"type": "array", "minItems": 1, "items": {"anyOf": calls}}
        if not self.parallel:
            array["maxItems"] = 1
        return StructuredOutput("json", json.dumps(array), source="tool_choice")

    def read(self, text: str) -> tuple[str | None, list[ToolCall]]:
        """The final answer's content and calls."""
        if self.choice == "named":
            assert self.named is not None
            return "", [_tool_call(ParsedCall(self.named, text))]
        if self.choice == "required":
            try:
                items = json.loads(text)
            except ValueError:  # cut by max_tokens: the text is all there is
                return text, []
            calls = [ParsedCall(i["name"], json.dumps(i["parameters"], ensure_ascii=False)) for i in items]
            return None, [_tool_call(c) for c in calls]
        if self.choice == "auto" and self.parser is not None:
            parsed = self.parser.parse(text)
            return parsed.content, [_tool_call(c) for c in parsed.calls]
        return text, []

    def finish_reason(self, reason: str | None, calls: list[ToolCall]) -> str | None:
        """vLLM's: "tool_calls" when auto or required produced calls; a named call keeps the engine's reason."""
        if calls and self.choice in ("auto", "required") and reason == "stop":
            return "tool_calls"
        return reason


def plan_tools(req: ChatCompletionRequest, settings: ToolSettings) -> ToolPlan:
    """The request's plan; a 400 naming the field for a choice the server or the request cannot serve."""
    tools = req.tools or []
    choice = req.tool_choice if req.tool_choice is not None else ("auto" if tools else "none")
    if not isinstance(choice, str):  # a named function
        names = [t.function.name for t in tools]
        if choice.function.name not in names:
            raise InvalidRequest(
                f"tool_choice names the function {choice.function.name!r}, which is not in tools ({', '.join(names)})",
                param="tool_choice",
            )
        return ToolPlan("named", tools, named=choice.function.name, parallel=req.parallel_tool_calls)
    if choice in ("auto", "required") and not tools:
        raise InvalidRequest(f'tool_choice "{choice}" needs tools', param="tool_choice")
    if choice == "auto":
        if not (settings.enable_auto_tool_choice and settings.tool_call_parser):
            raise InvalidRequest(
                '"auto" tool choice requires --enable-auto-tool-choice and --tool-call-parser to be set',
                param="tool_choice",
            )
        parser = PARSERS[settings.tool_call_parser]()
        return ToolPlan("auto", tools, parser=parser, parallel=req.parallel_tool_calls)
    return ToolPlan(choice, tools, parallel=req.parallel_tool_calls)


class ToolStream:
    """Turns a stream's text deltas into content and tool-call deltas for one choice."""

    def __init__(self, plan: ToolPlan) -> None:
        self.plan = plan
        self.text = ""
        self.sent = 0
        self.calls: list[ToolCall] = []

    def feed(self, delta: str) -> str:
        """The content that may be sent now."""
        self.text += delta
        if self.plan.choice in ("named", "required"):
            return ""  # the whole output is the calls
        upto = self.plan.parser.held_from(self.text) if self.plan.parser is not None else len(self.text)
        upto = max(upto, self.sent)
        out, self.sent = self.text[self.sent : upto], upto
        return out

    def close(self) -> DeltaMessage | None:
        """At the end: the held text as the calls (or as content when it holds none)."""
        content, calls = self.plan.read(self.text)
        self.calls = calls
        if calls:
            deltas = [
                DeltaToolCall(
                    index=i,
                    id=c.id,
                    type="function",
                    function=DeltaFunctionCall(name=c.function.name, arguments=c.function.arguments),
                )
                for i, c in enumerate(calls)
            ]
            return DeltaMessage(tool_calls=deltas)
        rest = self.text[self.sent :]
        self.sent = len(self.text)
        return DeltaMessage(content=rest) if rest else None


def template_tools(tools: list[Tool]) -> list[dict[str, Any]]:
    """Tools as chat templates read them (transformers' / vLLM's: the OpenAI objects as dicts)."""
    return [t.model_dump(exclude_none=True) for t in tools]


def template_message(message: Any) -> dict[str, Any]:
    """A history message as templates read it: text content, and a call's arguments as a dict."""
    out: dict[str, Any] = {"role": message.role, "content": message.text()}
    if message.tool_calls:
        out["tool_calls"] = [
            {
                "id": c.id,
                "type": "function",
                "function": {"name": c.function.name, "arguments": _arguments(c.function.arguments)},
            }
            for c in message.tool_calls
        ]
    if message.tool_call_id is not None:
        out["tool_call_id"] = message.tool_call_id
    if message.name is not None:
        out["name"] = message.name
    return out


def _arguments(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def _tool_call(call: ParsedCall) -> ToolCall:
    return ToolCall(
        id=f"chatcmpl-tool-{uuid.uuid4().hex}", function=FunctionCall(name=call.name, arguments=call.arguments)
    )


def _schema_text(parameters: dict[str, Any] | None) -> str:
    return json.dumps(parameters or {"type": "object"}, separators=(",", ":"))
