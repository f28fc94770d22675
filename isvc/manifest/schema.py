"""Validate documents against KServe's own CRD schemas (vendored in ``crds/``).

The CRD schemas are OpenAPI v3 structural schemas. Kubernetes prunes unknown fields;
``kubectl apply`` (strict field validation, the default since 1.27) refuses them, and so
do we: every object schema that lists ``properties`` and does not preserve unknown fields
is closed with ``additionalProperties: false`` before validation.
"""

from __future__ import annotations

import copy
import json
from functools import cache
from importlib import resources
from typing import Any

from jsonschema import Draft7Validator
from jsonschema.exceptions import ValidationError

GROUP = "serving.kserve.io"
KINDS: dict[str, str] = {
    "InferenceService": "v1beta1",
    "ServingRuntime": "v1alpha1",
    "ClusterServingRuntime": "v1alpha1",
    "LLMInferenceService": "v1alpha2",
}


def _close(node: Any) -> None:
    if isinstance(node, dict):
        if (
            "properties" in node
            and "additionalProperties" not in node
            and not node.get("x-kubernetes-preserve-unknown-fields")
        ):
            node["additionalProperties"] = False
        for value in node.values():
            _close(value)
    elif isinstance(node, list):
        for value in node:
            _close(value)


@cache
def crd_schema(kind: str, version: str) -> dict[str, Any]:
    """The closed openAPIV3Schema of ``kind`` at ``version``; KeyError if not served."""
    text = resources.files("isvc.manifest.crds").joinpath(f"{kind}.json").read_text(encoding="utf-8")
    schema = copy.deepcopy(json.loads(text)["versions"][version])
    # metadata is `type: object` in every CRD; the API server validates it, we do in webhook.py
    _close(schema)
    return schema


@cache
def _validator(kind: str, version: str) -> Draft7Validator:
    return Draft7Validator(crd_schema(kind, version))


def field_path(parts: Any) -> str:
    out = ""
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _describe(error: ValidationError) -> tuple[str, str]:
    path = field_path(error.absolute_path)
    if error.validator == "additionalProperties" and isinstance(error.instance, dict):
        allowed = set(error.schema.get("properties", {}))
        extra = sorted(k for k in error.instance if k not in allowed)
        name = extra[0] if extra else "?"
        return (f"{path}.{name}" if path else name), f'unknown field "{name}"'
    if error.validator == "required":
        missing = str(error.message).split("'")[1] if "'" in error.message else "?"
        return (f"{path}.{missing}" if path else missing), "Required value"
    if error.validator == "enum":
        return (
            path,
            f"Unsupported value: {error.instance!r}: supported values: {', '.join(map(repr, error.validator_value))}",
        )
    if error.validator == "type":
        return (
            path,
            f"Invalid value: {type(error.instance).__name__} {error.instance!r}: must be of type {error.validator_value}",
        )
    if error.validator == "anyOf" and error.schema.get("x-kubernetes-int-or-string"):
        return path, f'Invalid value: {error.instance!r}: must be an integer or a string (e.g. 6 or "24Gi")'
    return path, error.message


def validate(kind: str, version: str, body: dict[str, Any]) -> list[tuple[str, str]]:
    """Schema problems of one document as ``(field_path, message)``, sorted by path."""
    problems = {_describe(e) for e in _validator(kind, version).iter_errors(body)}
    return sorted(problems)
