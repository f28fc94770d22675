"""SamplingParams: what one request asks of the sampler and the stop logic.

Construction refuses (InvalidRequest, naming the field) any value the engine cannot
represent, so a bad value is a 400 before any work and never reaches the shared step.
These are the engine's limits (torch's int64 and seed ranges, finite floats); the wire
schemas apply the narrower API ranges (vLLM's) on top.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

from isvc.errors import InvalidRequest

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
SEED_MIN, SEED_MAX = INT64_MIN, 2**64 - 1  # what torch.Generator.manual_seed accepts


StructuredKind = Literal["json", "json_object", "regex", "choice", "grammar"]


@dataclass(frozen=True, slots=True)
class StructuredOutput:
    """What a request's output must match, constrained token by token (vLLM's ``structured_outputs``).

    ``json``: ``spec`` is a JSON schema (as JSON text); ``json_object``: any JSON object;
    ``regex``: a regular expression the whole output matches; ``choice``: exactly one of
    ``choices``; ``grammar``: an EBNF grammar (xgrammar's / GBNF syntax, ``root`` first).
    """

    kind: StructuredKind
    spec: str = ""
    choices: tuple[str, ...] = ()
    source: str = field(default="structured_outputs", compare=False)
    """The request field it came from, named by errors (not part of the grammar's identity)."""


@dataclass(frozen=True, slots=True)
class SamplingParams:
    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0 or -1: disabled
    seed: int | None = None
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    ignore_eos: bool = False
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logprobs: int | None = None  # None: none; k >= 0: sampled token + top k
    prompt_logprobs: int | None = None  # echo + logprobs on completions
    skip_special_tokens: bool = True
    min_p: float = 0.0
    """Drop tokens whose probability is below ``min_p`` x the most likely token's (after temperature)."""
    repetition_penalty: float = 1.0
    """Tokens of the prompt or the output so far: a positive logit divided by it, a negative one
    multiplied (the CTRL / transformers / vLLM rule); 1 is off."""
    logit_bias: tuple[tuple[int, float], ...] = ()
    """(token id, bias) added to that token's logit before sampling (OpenAI's logit_bias, -100..100)."""
    allowed_token_ids: tuple[int, ...] | None = None
    """Only these tokens may be generated (vLLM's allowed_token_ids)."""
    min_tokens: int = 0
    """No EOS, stop token id or stop string ends the output before this many tokens (vLLM's)."""
    include_stop_str_in_output: bool = False
    """Keep the matched stop string at the end of the text (vLLM's)."""
    structured: StructuredOutput | None = None
    """Constrain the output to a grammar (a token mask per step); None: free text."""
    extra: dict[str, object] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        _int("max_tokens", self.max_tokens, 0, INT64_MAX)
        _float("temperature", self.temperature, 0.0, math.inf)
        _float("top_p", self.top_p, 0.0, 1.0)  # 0 keeps the most likely token only
        _int("top_k", self.top_k, -1, INT64_MAX)
        if self.seed is not None:
            _int("seed", self.seed, SEED_MIN, SEED_MAX)
        if not isinstance(self.stop, tuple) or not all(isinstance(s, str) for s in self.stop):
            raise InvalidRequest("stop must be a string or a list of strings", param="stop")
        if not isinstance(self.stop_token_ids, tuple):
            raise InvalidRequest("stop_token_ids must be a list of integers", param="stop_token_ids")
        for token_id in self.stop_token_ids:
            _int("stop_token_ids", token_id, INT64_MIN, INT64_MAX)
        _float("presence_penalty", self.presence_penalty, -math.inf, math.inf)
        _float("frequency_penalty", self.frequency_penalty, -math.inf, math.inf)
        if self.logprobs is not None:
            _int("logprobs", self.logprobs, 0, INT64_MAX)
        if self.prompt_logprobs is not None:
            _int("prompt_logprobs", self.prompt_logprobs, 0, INT64_MAX)
        _float("min_p", self.min_p, 0.0, 1.0)
        _float("repetition_penalty", self.repetition_penalty, 0.0, math.inf)
        if self.repetition_penalty <= 0.0:
            raise InvalidRequest(
                f"repetition_penalty must be > 0, got {self.repetition_penalty}", param="repetition_penalty"
            )
        for token_id, bias in self.logit_bias:
            _int("logit_bias", token_id, 0, INT64_MAX)
            _float("logit_bias", bias, -100.0, 100.0)
        if self.allowed_token_ids is not None:
            if not self.allowed_token_ids:
                raise InvalidRequest("allowed_token_ids must not be empty", param="allowed_token_ids")
            for token_id in self.allowed_token_ids:
                _int("allowed_token_ids", token_id, 0, INT64_MAX)
        _int("min_tokens", self.min_tokens, 0, INT64_MAX)
        if self.min_tokens > self.max_tokens:
            raise InvalidRequest(
                f"min_tokens ({self.min_tokens}) must be at most max_tokens ({self.max_tokens})", param="min_tokens"
            )

    @property
    def greedy(self) -> bool:
        return self.temperature <= 1e-5 or self.top_k == 1

    @property
    def has_penalties(self) -> bool:
        return self.presence_penalty != 0.0 or self.frequency_penalty != 0.0

    @property
    def shapes_logits(self) -> bool:
        """Whether anything changes this request's logits before the pick (so even greedy needs the sampler)."""
        return self.shapes_beyond_grammar or self.structured is not None

    @property
    def shapes_beyond_grammar(self) -> bool:
        """Penalties, biases, allowed ids or min_tokens: shaping that depends on more than the grammar's state."""
        return (
            self.has_penalties
            or self.repetition_penalty != 1.0
            or bool(self.logit_bias)
            or self.allowed_token_ids is not None
            or self.min_tokens > 0
        )


def _int(name: str, value: object, lo: int, hi: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise InvalidRequest(f"{name} must be an integer, got {value!r}", param=name)
    if not lo <= value <= hi:
        raise InvalidRequest(f"{name} must be between {lo} and {hi}, got {value}", param=name)
    return value


def _float(name: str, value: object, lo: float, hi: float) -> float:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise InvalidRequest(f"{name} must be a number, got {value!r}", param=name)
    if not math.isfinite(value) or not lo <= value <= hi:
        bounds = f">= {lo}" if hi == math.inf else "any finite number" if lo == -math.inf else f"in [{lo}, {hi}]"
        raise InvalidRequest(f"{name} must be {bounds}, got {value}", param=name)
    return float(value)
