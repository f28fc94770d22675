"""KServe manifests: load YAML, validate against the CRDs and webhook rules, expose typed models."""

from __future__ import annotations

from isvc.manifest.errors import ManifestError, Problem
from isvc.manifest.loader import Document, load_paths, load_text
from isvc.manifest.models import InferenceService, LLMInferenceService, ServingRuntime
from isvc.manifest.parse import SERVICE_KINDS, SHORT_NAMES, Resource, parse_documents, parse_one

__all__ = [
    "SERVICE_KINDS",
    "SHORT_NAMES",
    "Document",
    "InferenceService",
    "LLMInferenceService",
    "ManifestError",
    "Problem",
    "Resource",
    "ServingRuntime",
    "load_paths",
    "load_text",
    "parse_documents",
    "parse_one",
]
