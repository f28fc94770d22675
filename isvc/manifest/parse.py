"""Documents → typed resources: kind/version check, CRD schema, pydantic, KServe webhook rules."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from isvc.manifest import llmisvc, schema, webhook
from isvc.manifest.errors import ManifestError, Problem
from isvc.manifest.loader import Document
from isvc.manifest.models import InferenceService, LLMInferenceService, ServingRuntime

SHORT_NAMES: dict[str, str] = {
    "isvc": "InferenceService",
    "inferenceservice": "InferenceService",
    "inferenceservices": "InferenceService",
    "servingruntime": "ServingRuntime",
    "servingruntimes": "ServingRuntime",
    "clusterservingruntime": "ClusterServingRuntime",
    "clusterservingruntimes": "ClusterServingRuntime",
    "llmisvc": "LLMInferenceService",
    "llminferenceservice": "LLMInferenceService",
    "llminferenceservices": "LLMInferenceService",
}
SERVICE_KINDS = ("InferenceService", "LLMInferenceService")
"""The kinds that run predictors; they share one name space per namespace (the gateway routes by name)."""


@dataclass(slots=True)
class Resource:
    """A validated document: its identity, the original body, the typed view and its warnings."""

    kind: str
    namespace: str
    name: str
    body: dict[str, Any]
    obj: InferenceService | ServingRuntime | LLMInferenceService
    warnings: list[str] = field(default_factory=list)
    source: str = "<string>"
    index: int = 0
    derived: llmisvc.Derived | None = None
    """For an LLMInferenceService: the InferenceService it runs as."""

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.kind, self.namespace, self.name)

    @property
    def predictor(self) -> InferenceService | None:
        """The InferenceService whose predictor serves this resource (None for a runtime)."""
        if self.derived is not None:
            return self.derived.isvc
        return self.obj if isinstance(self.obj, InferenceService) else None


def _pydantic_problems(doc: Document, exc: ValidationError) -> list[Problem]:
    return [doc.problem(schema.field_path(e["loc"]), e["msg"]) for e in exc.errors()]


def _identity(doc: Document) -> tuple[str, list[Problem]]:
    body = doc.body
    kind, api = body.get("kind"), body.get("apiVersion")
    if kind not in schema.KINDS:
        return "", [doc.problem("kind", f"unsupported kind {kind!r}: isvc accepts {', '.join(schema.KINDS)}")]
    want = f"{schema.GROUP}/{schema.KINDS[kind]}"
    if api != want:
        return kind, [doc.problem("apiVersion", f"unsupported apiVersion {api!r} for {kind}: use {want!r}")]
    meta = body.get("metadata")
    if not isinstance(meta, dict):
        return kind, [doc.problem("metadata", "Required value: metadata with a name is required")]
    return kind, [doc.problem(p, m) for p, m in webhook.check_name(kind, meta)]


def parse_one(doc: Document, runtimes: Iterable[ServingRuntime] = ()) -> Resource:
    """Validate one document; raise ManifestError with every problem found in it."""
    kind, problems = _identity(doc)
    if problems:
        raise ManifestError(problems)
    body = doc.body
    problems = [doc.problem(p, m) for p, m in schema.validate(kind, schema.KINDS[kind], body)]
    if problems:
        raise ManifestError(problems)
    if kind == "ClusterServingRuntime":
        body.setdefault("metadata", {})["namespace"] = ""
    if kind == "LLMInferenceService":
        return _parse_llm(doc)
    try:
        obj: InferenceService | ServingRuntime = (
            InferenceService.model_validate(body) if kind == "InferenceService" else ServingRuntime.model_validate(body)
        )
    except ValidationError as exc:
        raise ManifestError(_pydantic_problems(doc, exc)) from exc
    warnings: list[str] = []
    if isinstance(obj, InferenceService):
        rules = webhook.check_inference_service(obj)
        warnings = webhook.inference_service_warnings(body, obj)
    else:
        rules = webhook.check_serving_runtime(obj, list(runtimes))
    if rules:
        raise ManifestError([doc.problem(p, m) for p, m in rules])
    meta = obj.metadata
    return Resource(kind, meta.namespace, meta.name, body, obj, warnings, doc.source, doc.index)


def _parse_llm(doc: Document) -> Resource:
    """An LLMInferenceService: its own rules, then those of the InferenceService it runs as (named as its fields)."""
    try:
        llm = LLMInferenceService.model_validate(doc.body)
    except ValidationError as exc:
        raise ManifestError(_pydantic_problems(doc, exc)) from exc
    rules = webhook.check_llm_inference_service(llm)
    derived = llmisvc.to_inference_service(llm)
    seen = {p for p, _ in rules}
    for path, message in webhook.check_inference_service(derived.isvc):
        path = derived.rename(path)
        if path not in seen:
            rules.append((path, derived.rename(message)))
    if rules:
        raise ManifestError([doc.problem(p, m) for p, m in rules])
    meta = llm.metadata
    warnings = llmisvc.warnings(doc.body, llm)
    return Resource(
        "LLMInferenceService", meta.namespace, meta.name, doc.body, llm, warnings, doc.source, doc.index, derived
    )


def parse_documents(docs: Iterable[Document], runtimes: Iterable[ServingRuntime] = ()) -> list[Resource]:
    """Validate every document; collect all problems across documents before raising."""
    out: list[Resource] = []
    problems: list[Problem] = []
    known = list(runtimes)
    for doc in docs:
        try:
            res = parse_one(doc, known)
        except ManifestError as exc:
            problems += exc.problems
            continue
        if isinstance(res.obj, ServingRuntime):
            known = [r for r in known if (r.kind, r.metadata.namespace, r.metadata.name) != res.key] + [res.obj]
        out.append(res)
    if problems:
        raise ManifestError(problems)
    return out
