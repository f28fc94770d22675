"""OpenAI wire models (the subset vLLM and KServe serve). Pydantic only: nothing from the engine."""

from __future__ import annotations

import logging
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt, field_validator, model_validator

from isvc.errors import InvalidRequest
from isvc.server.protocols.bounds import (
    INT64_MAX,
    MAX_LOGPROBS,
    MAX_N,
    MaxTokens,
    Penalty,
    Seed,
    Stop,
    StopTokenIds,
    Temperature,
    TopK,
    TopP,
    one_of,
)

logger = logging.getLogger(__name__)


NOT_IMPLEMENTED = frozenset(
    {
        # structured outputs' free-whitespace pattern (isvc's JSON is compact)
        "guided_whitespace_pattern",
        # OpenAI's legacy function calling (``tools`` replaced it)
        "functions",
        "function_call",
        # sampling and output fields of OpenAI / vLLM that change the answer
        "use_beam_search",
        "length_penalty",
        "bad_words",
        "prompt_logprobs",
        "truncate_prompt_tokens",
        "logits_processors",
        "continue_final_message",
        "documents",
        "audio",
        "modalities",
        "prediction",
        "reasoning_effort",
        "web_search_options",
    }
)
"""OpenAI and vLLM request fields that would change the answer and isvc does not implement: a
request that sets one (to anything but its "off" value, see ``_OFF``) gets a 400 naming it."""

_OFF: dict[str, tuple[object, ...]] = {
    "functions": ([],),
    "function_call": ("none",),
    "use_beam_search": (False,),
    "length_penalty": (1, 1.0),
    "bad_words": ([],),
    "continue_final_message": (False,),
    "modalities": (["text"],),
}


class OpenAIBaseModel(BaseModel):
    # OpenAI clients send fields we don't use; accept them and log what was ignored, unless
    # ignoring would change the answer (NOT_IMPLEMENTED).
    model_config = ConfigDict(extra="allow")

    @model_validator(mode="after")
    def _log_extra(self) -> OpenAIBaseModel:
        if self.model_extra:
            logger.debug("ignoring unsupported fields: %s", sorted(self.model_extra))
        return self

    def refuse_unimplemented(self) -> None:
        """A 400 naming the first field in ``NOT_IMPLEMENTED`` that this request sets to something on."""
        for name, value in (self.model_extra or {}).items():
            if name in NOT_IMPLEMENTED and value is not None and value not in _OFF.get(name, ()):
                raise InvalidRequest(f"{name} is not supported by this server", param=name)


class StreamOptions(OpenAIBaseModel):
    include_usage: bool = False
    continuous_usage_stats: bool = False


class JsonSchemaFormat(OpenAIBaseModel):
    """OpenAI's ``response_format.json_schema``."""

    name: str | None = None
    description: str | None = None
    json_schema: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: bool | None = None


class ResponseFormat(OpenAIBaseModel):
    type: Literal["text", "json_object", "json_schema", "structural_tag"]
    json_schema: JsonSchemaFormat | None = None


class StructuredOutputsParams(OpenAIBaseModel):
    """vLLM's ``structured_outputs`` request field: exactly one constraint."""

    json_: str | dict[str, Any] | None = Field(default=None, alias="json")
    regex: str | None = None
    choice: list[str] | None = Field(default=None, min_length=1)
    grammar: str | None = None
    json_object: bool | None = None
    structural_tag: str | None = None
    whitespace_pattern: str | None = None
    disable_any_whitespace: bool = False
    disable_additional_properties: bool = False
    disable_fallback: bool = False


class _SamplingFields(OpenAIBaseModel):
    model: str
    temperature: Temperature | None = None
    top_p: TopP | None = None
    top_k: TopK | None = None
    n: int = Field(default=1, ge=1, le=MAX_N)
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: Stop | None = None
    stop_token_ids: StopTokenIds | None = None
    seed: Seed | None = None
    presence_penalty: Penalty = 0.0
    frequency_penalty: Penalty = 0.0
    ignore_eos: bool = False
    skip_special_tokens: bool = True
    user: str | None = None
    min_p: float = Field(default=0.0, ge=0.0, le=1.0)
    repetition_penalty: float = Field(default=1.0, gt=0.0, le=100.0)
    logit_bias: dict[int, Annotated[float, Field(ge=-100.0, le=100.0)]] | None = None
    """OpenAI's: token id (a string key on the wire) -> bias added to its logit."""
    allowed_token_ids: list[Annotated[StrictInt, Field(ge=0, le=INT64_MAX)]] | None = Field(default=None, min_length=1)
    min_tokens: int = Field(default=0, ge=0, le=INT64_MAX)
    include_stop_str_in_output: bool = False
    # structured outputs: OpenAI's response_format, vLLM's structured_outputs and its older guided_* fields
    response_format: ResponseFormat | None = None
    structured_outputs: StructuredOutputsParams | None = None
    guided_json: str | dict[str, Any] | None = None
    guided_regex: str | None = None
    guided_choice: list[str] | None = Field(default=None, min_length=1)
    guided_grammar: str | None = None
    guided_decoding_backend: str | None = None
    """Accepted and ignored, as vLLM does since its V1 engine: the server picks the grammar engine."""

    @field_validator("logit_bias", mode="before")
    @classmethod
    def _token_id_keys(cls, value: Any) -> Any:
        """JSON object keys are strings: each must spell a token id (one error naming the field, not the key)."""
        if not isinstance(value, dict):
            return value
        biases = {}
        for key, bias in value.items():
            try:
                biases[int(key)] = bias
            except (TypeError, ValueError):
                raise ValueError(f"logit_bias keys must be token ids, got {key!r}") from None
        return biases

    def stop_list(self) -> tuple[str, ...]:
        if self.stop is None:
            return ()
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)


class CompletionRequest(_SamplingFields):
    prompt: Annotated[
        str | list[str] | list[int] | list[list[int]],
        one_of("a string, a list of strings, a list of token ids, or a list of lists of token ids"),
    ]
    max_tokens: MaxTokens | None = 16
    logprobs: int | None = Field(default=None, ge=0, le=MAX_LOGPROBS)
    echo: bool = False
    best_of: int | None = Field(default=None, ge=1, le=MAX_N)
    suffix: str | None = None


class TextPart(OpenAIBaseModel):
    type: Literal["text"] = "text"
    text: str


class FunctionDefinition(OpenAIBaseModel):
    name: str = Field(pattern=r"^[a-zA-Z0-9_.-]{1,64}$")
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class Tool(OpenAIBaseModel):
    type: Literal["function"] = "function"
    function: FunctionDefinition


class FunctionName(OpenAIBaseModel):
    name: str


class NamedToolChoice(OpenAIBaseModel):
    type: Literal["function"] = "function"
    function: FunctionName


class FunctionCall(OpenAIBaseModel):
    name: str
    arguments: str
    """The arguments as JSON text, as OpenAI sends them."""


class ToolCall(OpenAIBaseModel):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatMessage(OpenAIBaseModel):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: Annotated[
        str | list[TextPart] | None, one_of('a string or a list of {"type": "text", "text": ...} parts')
    ] = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None
    """An assistant turn's calls, sent back in the history."""
    tool_call_id: str | None = None
    """A ``tool`` turn: the call it answers."""

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class ChatCompletionRequest(_SamplingFields):
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1, le=INT64_MAX)
    max_completion_tokens: int | None = Field(default=None, ge=1, le=INT64_MAX)
    logprobs: bool = False
    top_logprobs: int | None = Field(default=None, ge=0, le=MAX_LOGPROBS)
    add_generation_prompt: bool = True
    chat_template: str | None = None
    """A Jinja template replacing the model's (vLLM's field); refused unless the server trusts request templates."""
    chat_template_kwargs: dict[str, Any] | None = None
    """Extra variables for the template; ``chat_template`` here counts as the request's template."""
    tools: list[Tool] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    """None: "auto" when the request has tools, else "none" (OpenAI's and vLLM's default)."""
    parallel_tool_calls: bool = True


class TokenizeCompletionRequest(OpenAIBaseModel):
    """vLLM's /tokenize for a prompt."""

    model: str | None = None
    prompt: str
    add_special_tokens: bool = True
    return_token_strs: bool = False


class TokenizeChatRequest(OpenAIBaseModel):
    """vLLM's /tokenize for chat messages, rendered by the chat template as /v1/chat/completions would."""

    model: str | None = None
    messages: list[ChatMessage] = Field(min_length=1)
    add_generation_prompt: bool = True
    add_special_tokens: bool = False
    return_token_strs: bool = False
    chat_template: str | None = None
    chat_template_kwargs: dict[str, Any] | None = None
    tools: list[Tool] | None = None


class TokenizeResponse(BaseModel):
    count: int
    max_model_len: int
    tokens: list[int]
    token_strs: list[str] | None = None


class DetokenizeRequest(OpenAIBaseModel):
    model: str | None = None
    tokens: list[Annotated[StrictInt, Field(ge=0, le=INT64_MAX)]]


class DetokenizeResponse(BaseModel):
    prompt: str


class UsageInfo(BaseModel):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0


class CompletionLogprobs(BaseModel):
    text_offset: list[int] = Field(default_factory=list)
    token_logprobs: list[float | None] = Field(default_factory=list)
    tokens: list[str] = Field(default_factory=list)
    top_logprobs: list[dict[str, float] | None] = Field(default_factory=list)


class CompletionChoice(BaseModel):
    index: int
    text: str
    logprobs: CompletionLogprobs | None = None
    finish_reason: str | None = None
    stop_reason: int | str | None = None


class CompletionResponse(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: UsageInfo | None = None
    system_fingerprint: str | None = None


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int] | None = None


class ChatTokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob] = Field(default_factory=list)


class ChatLogprobs(BaseModel):
    content: list[ChatTokenLogprob] | None = None


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None = None
    reasoning_content: str | None = None
    """The ``<think>`` part of the answer, with ``--reasoning-parser`` (vLLM's and DeepSeek's field)."""
    tool_calls: list[ToolCall] = Field(default_factory=list)


class ChatChoice(BaseModel):
    index: int
    message: AssistantMessage
    logprobs: ChatLogprobs | None = None
    finish_reason: str | None = None
    stop_reason: int | str | None = None


class ChatCompletionResponse(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: UsageInfo
    system_fingerprint: str | None = None


class DeltaFunctionCall(BaseModel):
    name: str | None = None
    arguments: str | None = None


class DeltaToolCall(BaseModel):
    index: int
    id: str | None = None
    type: Literal["function"] | None = None
    function: DeltaFunctionCall | None = None


class DeltaMessage(BaseModel):
    role: str | None = None
    content: str | None = None
    reasoning_content: str | None = None
    tool_calls: list[DeltaToolCall] | None = None


class ChatChunkChoice(BaseModel):
    index: int
    delta: DeltaMessage
    logprobs: ChatLogprobs | None = None
    finish_reason: str | None = None
    stop_reason: int | str | None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChatChunkChoice]
    usage: UsageInfo | None = None


class CompletionChunk(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: UsageInfo | None = None


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "isvc"
    root: str | None = None
    max_model_len: int | None = None


class ErrorInfo(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | int | None = None


class ErrorResponse(BaseModel):
    error: ErrorInfo


# -- pooling: embeddings, rerank, score (OpenAI's embeddings; vLLM's, Jina's and Cohere's rerank; vLLM's score)

TokenIdList = list[Annotated[StrictInt, Field(ge=0, le=INT64_MAX)]]
"""Token ids: integers, not booleans (which pydantic would read as 0 and 1)."""


class EmbeddingRequest(OpenAIBaseModel):
    model: str | None = None
    """The served model's name (vLLM: optional)."""
    input: Annotated[
        str | list[str] | TokenIdList | list[TokenIdList],
        one_of("a string, a list of strings, a list of token ids, or a list of lists of token ids"),
    ]
    encoding_format: Literal["float", "base64"] = "float"
    """base64: each vector as base64 of little-endian float32 (OpenAI's and vLLM's)."""
    dimensions: int | None = Field(default=None, ge=1, le=1 << 20)
    """Keep the first ``dimensions`` numbers of each vector (Matryoshka), re-normalized."""
    user: str | None = None
    truncate_prompt_tokens: int | None = Field(default=None, ge=-1, le=INT64_MAX)
    """vLLM's: cut each input to this many tokens (-1: to the model's limit); unset, longer inputs are a 400."""
    add_special_tokens: bool | None = None
    """vLLM's: None follows the server (``--disable_special_tokens``)."""


class ClassificationRequest(OpenAIBaseModel):
    """vLLM's ``POST /classify``: each input's class, with every class's probability."""

    model: str | None = None
    input: Annotated[
        str | list[str] | TokenIdList | list[TokenIdList],
        one_of("a string, a list of strings, a list of token ids, or a list of lists of token ids"),
    ]
    user: str | None = None
    truncate_prompt_tokens: int | None = Field(default=None, ge=-1, le=INT64_MAX)
    add_special_tokens: bool | None = None


class RerankDocument(OpenAIBaseModel):
    text: str


class RerankRequest(OpenAIBaseModel):
    model: str | None = None
    query: str
    documents: list[Annotated[str | RerankDocument, one_of('a string or {"text": ...}')]]
    top_n: int | None = Field(default=None, ge=0, le=INT64_MAX)
    """The best ``top_n`` results only (None or 0: all, as vLLM)."""
    return_documents: bool = True
    """Echo each result's document text (Jina/Cohere's field; vLLM always does)."""
    truncate_prompt_tokens: int | None = Field(default=None, ge=-1, le=INT64_MAX)


class ScoreRequest(OpenAIBaseModel):
    """vLLM's /score: text_1 against each text_2 (a single text_1 is paired with every text_2)."""

    model: str | None = None
    text_1: Annotated[str | list[str], one_of("a string or a list of strings")]
    text_2: Annotated[str | list[str], one_of("a string or a list of strings")]
    truncate_prompt_tokens: int | None = Field(default=None, ge=-1, le=INT64_MAX)
