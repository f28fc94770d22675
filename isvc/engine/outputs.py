"""What the engine hands back per request per step."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(slots=True)
class TokenLogprob:
    token_id: int
    token: str
    logprob: float
    top: list[tuple[int, str, float]] = field(default_factory=list)


@dataclass(slots=True)
class RequestOutput:
    """A delta: new text and tokens since the last output, and, at the end, the finish reason."""

    request_id: str
    text: str
    token_ids: list[int]
    num_prompt_tokens: int
    num_output_tokens: int
    finish_reason: str | None = None
    stop_reason: int | str | None = None
    """What stopped it when ``finish_reason`` is "stop": the stop string or stop token id; None for EOS."""
    logprobs: list[TokenLogprob] | None = None
    prompt_logprobs: list[TokenLogprob | None] | None = None
    error: BaseException | None = None

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None
