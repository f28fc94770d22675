"""Reasoning parsers (vLLM's ``--reasoning-parser``): text inside ``<think>…</think>`` -> ``reasoning_content``.

``deepseek_r1``: the answer opens in reasoning (R1's template writes ``<think>`` into the prompt,
so the model may or may not repeat it) and ``</think>`` ends it; an answer cut before ``</think>``
is all reasoning. ``qwen3``: reasoning only when the answer opens with ``<think>`` (Qwen3 thinks
only when asked); without ``</think>`` after it, it is all reasoning too. What follows is the
content, which tool-call parsing then reads.

Streams hold back text that may be the start of a tag, so a tag split across deltas never leaks
into either field.
"""

from __future__ import annotations

from dataclasses import dataclass

START, END = "<think>", "</think>"


@dataclass(frozen=True, slots=True)
class ReasoningParser:
    name: str
    opens_in_reasoning: bool
    """deepseek_r1: the answer starts inside the reasoning, with or without the ``<think>`` tag."""

    def split(self, text: str) -> tuple[str | None, str | None]:
        """(reasoning, content) of a whole answer."""
        body = text.lstrip()
        if body.startswith(START):
            body = body[len(START) :]
        elif not self.opens_in_reasoning:
            return None, text
        reasoning, found, content = body.partition(END)
        if not found:
            return reasoning, None
        return reasoning, content.lstrip("\n") or None


REASONING_PARSERS = {p.name: p for p in (ReasoningParser("deepseek_r1", True), ReasoningParser("qwen3", False))}


class ReasoningStream:
    """Splits a stream's text deltas into reasoning and content deltas for one choice."""

    def __init__(self, parser: ReasoningParser) -> None:
        self.parser = parser
        self.buffer = ""
        self.state = "start"  # start -> reasoning -> content, or start -> content
        self.skip_newlines = False

    def feed(self, delta: str) -> tuple[str, str]:
        """(reasoning, content) that may be sent now."""
        self.buffer += delta
        reasoning = content = ""
        if self.state == "start":
            body = self.buffer.lstrip()
            if body.startswith(START):
                self.buffer, self.state = body[len(START) :], "reasoning"
            elif START.startswith(body):  # may still become the tag (or is only whitespace so far)
                return "", ""
            else:
                self.state = "reasoning" if self.parser.opens_in_reasoning else "content"
        if self.state == "reasoning":
            at = self.buffer.find(END)
            if at < 0:
                keep = _partial_tag(self.buffer, END)
                reasoning, self.buffer = self.buffer[: len(self.buffer) - keep], self.buffer[len(self.buffer) - keep :]
                return reasoning, ""
            reasoning, self.buffer = self.buffer[:at], self.buffer[at + len(END) :]
            self.state, self.skip_newlines = "content", True
        if self.skip_newlines:
            self.buffer = self.buffer.lstrip("\n")
            self.skip_newlines = not self.buffer
        content, self.buffer = self.buffer, ""
        return reasoning, content

    def close(self) -> tuple[str, str]:
        """What is still held at the end of the answer."""
        rest, self.buffer = self.buffer, ""
        if self.state == "reasoning" or (self.state == "start" and self.parser.opens_in_reasoning):
            return rest.removeprefix(START) if self.state == "start" else rest, ""
        return "", rest


def _partial_tag(text: str, tag: str) -> int:
    """Length of the longest end of ``text`` that is a proper start of ``tag``."""
    for size in range(min(len(tag) - 1, len(text)), 0, -1):
        if text.endswith(tag[:size]):
            return size
    return 0
