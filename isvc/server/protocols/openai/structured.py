"""Which output constraint a generation request asks for: OpenAI's ``response_format``, vLLM's
``structured_outputs``, or vLLM's older ``guided_json`` / ``guided_regex`` / ``guided_choice`` /
``guided_grammar`` — at most one of them, as the engine's ``StructuredOutput``.

A request that sets two, a form isvc does not build (``structural_tag``, a whitespace pattern),
or a JSON schema that is not JSON gets a 400 naming the field; a schema or grammar the grammar
engine cannot build is refused by the engine's ``check_structured``, also before any work.
"""

from __future__ import annotations

import json
from typing import Any

from isvc.engine.params import StructuredOutput
from isvc.errors import InvalidRequest
from isvc.server.protocols.openai.schema import ResponseFormat, StructuredOutputsParams


def structured_output(req: Any) -> StructuredOutput | None:
    """The one constraint ``req`` (a completion or chat request) sets, or None for free text."""
    found: list[StructuredOutput] = []
    if req.response_format is not None:
        found += _response_format(req.response_format)
    if req.structured_outputs is not None:
        found.append(_structured_outputs(req.structured_outputs))
    if req.guided_json is not None:
        found.append(StructuredOutput("json", _schema_text(req.guided_json, "guided_json"), source="guided_json"))
    if req.guided_regex is not None:
        found.append(StructuredOutput("regex", req.guided_regex, source="guided_regex"))
    if req.guided_choice is not None:
        found.append(StructuredOutput("choice", choices=tuple(req.guided_choice), source="guided_choice"))
    if req.guided_grammar is not None:
        found.append(StructuredOutput("grammar", req.guided_grammar, source="guided_grammar"))
    if len(found) > 1:
        fields = ", ".join(dict.fromkeys(s.source for s in found))
        raise InvalidRequest(f"set one output constraint per request, not several ({fields})", param=found[1].source)
    return found[0] if found else None


def _response_format(fmt: ResponseFormat) -> list[StructuredOutput]:
    if fmt.type == "text":
        return []
    if fmt.type == "structural_tag":
        raise InvalidRequest(
            'response_format type "structural_tag" is not supported; use "json_schema" or "json_object"',
            param="response_format",
        )
    if fmt.type == "json_object":
        return [StructuredOutput("json_object", source="response_format")]
    if fmt.json_schema is None:
        raise InvalidRequest(
            'response_format of type "json_schema" needs a "json_schema" object with the "schema"',
            param="response_format",
        )
    schema = fmt.json_schema.json_schema
    if schema is None:  # a name without a schema: any JSON object, as vLLM reads it
        return [StructuredOutput("json_object", source="response_format")]
    return [StructuredOutput("json", _schema_text(schema, "response_format"), source="response_format")]


def _structured_outputs(params: StructuredOutputsParams) -> StructuredOutput:
    field = "structured_outputs"
    if params.structural_tag is not None:
        raise InvalidRequest("structured_outputs.structural_tag is not supported", param=field)
    if params.whitespace_pattern is not None:
        raise InvalidRequest(
            "structured_outputs.whitespace_pattern is not supported (isvc's JSON is compact)", param=field
        )
    kinds: list[StructuredOutput] = []
    if params.json_ is not None:
        kinds.append(StructuredOutput("json", _schema_text(params.json_, field), source=field))
    if params.regex is not None:
        kinds.append(StructuredOutput("regex", params.regex, source=field))
    if params.choice is not None:
        kinds.append(StructuredOutput("choice", choices=tuple(params.choice), source=field))
    if params.grammar is not None:
        kinds.append(StructuredOutput("grammar", params.grammar, source=field))
    if params.json_object:
        kinds.append(StructuredOutput("json_object", source=field))
    if len(kinds) != 1:
        raise InvalidRequest(
            f"structured_outputs must set exactly one of json, regex, choice, grammar or json_object "
            f"(it sets {len(kinds)})",
            param=field,
        )
    return kinds[0]


def _schema_text(schema: str | dict[str, Any], field: str) -> str:
    """A JSON schema as compact JSON text, its keys in their order (``properties``' order is the output's)."""
    if isinstance(schema, str):
        try:
            schema = json.loads(schema)
        except ValueError as exc:
            raise InvalidRequest(f"{field}: the JSON schema is not valid JSON: {exc}", param=field) from None
    if not isinstance(schema, dict):
        raise InvalidRequest(f"{field}: a JSON schema must be a JSON object", param=field)
    return json.dumps(schema, separators=(",", ":"))
