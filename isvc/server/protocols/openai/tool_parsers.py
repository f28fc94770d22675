"""Tool-call parsers (vLLM's ``--tool-call-parser``): a model's text -> its content and its tool calls.

``hermes`` reads ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>`` blocks (Hermes, Qwen2.5,
and isvc's own tool ChatML template); ``llama3_json`` reads ``{"name": ..., "parameters": {...}}``
objects, optionally after ``<|python_tag|>`` and separated by ``;``; ``mistral`` reads
``[TOOL_CALLS][{"name": ..., "arguments": {...}}, ...]``. Text that does not parse as a call stays
content, as vLLM keeps it.

For streams, ``held_from`` says where content must stop being sent: at the first marker of a
call, or at a trailing piece of text that could still grow into one.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class ParsedCall:
    name: str
    arguments: str
    """The arguments as JSON text (OpenAI's ``function.arguments``)."""


@dataclass(frozen=True, slots=True)
class Parsed:
    content: str | None
    calls: list[ParsedCall]


class ToolParser:
    name = ""
    markers: tuple[str, ...] = ()
    """Text that starts a call."""
    keeps_special_tokens = False
    """The markers are special tokens: the output must be detokenized with them."""

    def parse(self, text: str) -> Parsed:
        raise NotImplementedError

    def held_from(self, text: str) -> int:
        """How much of ``text`` may be streamed as content: up to the first marker, or up to a
        trailing prefix of one (it may still become a marker)."""
        found = [i for i in (text.find(m) for m in self.markers) if i >= 0]
        if found:
            return min(found)
        for marker in self.markers:
            for size in range(min(len(marker) - 1, len(text)), 0, -1):
                if text.endswith(marker[:size]):
                    return len(text) - size
        return len(text)


def _call(obj: Any, arguments_key: str) -> ParsedCall | None:
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
        return None
    arguments = obj.get(arguments_key, obj.get("arguments", obj.get("parameters", {})))
    text = arguments if isinstance(arguments, str) else json.dumps(arguments, ensure_ascii=False)
    return ParsedCall(obj["name"], text)


class HermesParser(ToolParser):
    name = "hermes"
    markers = ("<tool_call>",)
    _block = re.compile(r"<tool_call>\s*(.*?)\s*(?:</tool_call>|$)", re.DOTALL)

    def parse(self, text: str) -> Parsed:
        start = text.find("<tool_call>")
        if start < 0:
            return Parsed(text, [])
        calls = []
        for body in self._block.findall(text[start:]):
            try:
                call = _call(json.loads(body), "arguments")
            except ValueError:
                call = None
            if call is None:
                return Parsed(text, [])  # not a well-formed call: the text stays content
            calls.append(call)
        content = text[:start].strip()
        return Parsed(content or None, calls)


class Llama3JsonParser(ToolParser):
    name = "llama3_json"
    markers = ("<|python_tag|>",)
    keeps_special_tokens = True

    def parse(self, text: str) -> Parsed:
        body = text.strip()
        if body.startswith("<|python_tag|>"):
            body = body[len("<|python_tag|>") :].strip()
        if not body.startswith("{"):
            return Parsed(text, [])
        calls, decoder, at = [], json.JSONDecoder(), 0
        while at < len(body):
            try:
                obj, end = decoder.raw_decode(body, at)
            except ValueError:
                return Parsed(text, [])
            call = _call(obj, "parameters")
            if call is None:
                return Parsed(text, [])
            calls.append(call)
            at = end
            while at < len(body) and body[at] in " \n;":
                at += 1
        return Parsed(None, calls)

    def held_from(self, text: str) -> int:
        """A JSON call is the whole answer: text that starts (or may start) one is held from there."""
        body = text.lstrip()
        if body.startswith(("{", "<|python_tag|>")) or (body and "<|python_tag|>".startswith(body)):
            return len(text) - len(body)
        return len(text)


class MistralParser(ToolParser):
    name = "mistral"
    markers = ("[TOOL_CALLS]",)
    keeps_special_tokens = True

    def parse(self, text: str) -> Parsed:
        start = text.find("[TOOL_CALLS]")
        if start < 0:
            return Parsed(text, [])
        body = text[start + len("[TOOL_CALLS]") :].strip()
        try:
            items, _ = json.JSONDecoder().raw_decode(body)
        except ValueError:
            return Parsed(text, [])
        items = items if isinstance(items, list) else [items]
        calls = [_call(item, "arguments") for item in items]
        if not calls or any(c is None for c in calls):
            return Parsed(text, [])
        content = text[:start].strip()
        return Parsed(content or None, [c for c in calls if c is not None])


PARSERS: dict[str, type[ToolParser]] = {p.name: p for p in (HermesParser, Llama3JsonParser, MistralParser)}
"""``--tool-call-parser`` names."""
