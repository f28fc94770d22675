"""Bounds every protocol puts on sampling fields: what the engine can represent, in vLLM's ranges.

A value the engine cannot hold (a seed past int64, a top_k past int64) must be refused at the
wire with a 400 naming the field: past validation it would fail inside the shared step. The
OpenAI models and KServe's ``parameters`` use the same types, so the ranges are written once.
Pydantic only, like the wire schemas.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field, ValidationError, ValidatorFunctionWrapHandler, WrapValidator
from pydantic_core import PydanticCustomError

INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1

MAX_STOP_STRINGS = 16
"""Stop strings per request (OpenAI allows 4). Each step checks every one against the text's tail."""
MAX_STOP_CHARS = 256
"""Characters per stop string; the engine holds back up to this many characters of output."""
MAX_STOP_TOKEN_IDS = 256
MAX_LOGPROBS = 20
"""vLLM's default --max-logprobs and OpenAI's top_logprobs limit."""
MAX_N = 16


def one_of(expected: str) -> WrapValidator:
    """Report a failed union as one error on the field itself, saying what is expected.

    Pydantic reports each member of a union under its own location (``stop.str``,
    ``stop.list[...]``); a client wants ``stop`` and what it accepts.
    """

    def validate(value: Any, handler: ValidatorFunctionWrapHandler) -> Any:
        try:
            return handler(value)
        except ValidationError:
            raise PydanticCustomError("invalid_value", "must be {expected}", {"expected": expected}) from None

    return WrapValidator(validate)


Seed = Annotated[int, Field(ge=INT64_MIN, le=INT64_MAX, description="within int64, as vLLM")]
TopK = Annotated[int, Field(ge=-1, le=INT64_MAX, description="-1 or 0: disabled; else the k most likely tokens")]
TopP = Annotated[float, Field(gt=0.0, le=1.0)]
Temperature = Annotated[float, Field(ge=0.0, le=2.0)]
Penalty = Annotated[float, Field(ge=-2.0, le=2.0)]
MaxTokens = Annotated[int, Field(ge=0, le=INT64_MAX)]
StopString = Annotated[str, Field(max_length=MAX_STOP_CHARS)]
Stop = Annotated[
    StopString | Annotated[list[StopString], Field(max_length=MAX_STOP_STRINGS)],
    one_of(f"a string or a list of at most {MAX_STOP_STRINGS} strings, each at most {MAX_STOP_CHARS} characters"),
]
TokenId = Annotated[int, Field(ge=0, le=INT64_MAX)]
StopTokenIds = Annotated[list[TokenId], Field(max_length=MAX_STOP_TOKEN_IDS)]
