"""Server-sent events framing, shared by the model server and the gateway (a leaf: nothing of isvc above it).

Each event is ``data: {json}\\n\\n``; a stream ends with ``data: [DONE]``. A stream that fails after
its first byte (the status is on the wire already) ends with ``error_events``: one
``data: {"error": ...}`` event, then ``[DONE]``, as OpenAI clients expect.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel

DONE = "data: [DONE]\n\n"


def event(payload: BaseModel | Mapping[str, Any]) -> str:
    body = payload.model_dump_json(exclude_unset=False) if isinstance(payload, BaseModel) else json.dumps(payload)
    return f"data: {body}\n\n"


def error_events(error_body: Mapping[str, Any]) -> str:
    """The last two events of a stream that failed after its first byte: the error, then ``[DONE]``."""
    return event(error_body) + DONE
