"""Pydantic models for the subset of KServe resources isvc acts on.

Documents are validated against the CRD schema first (schema.py), so these models only
give typed access to the fields the control plane uses; everything else is kept in
``model_extra`` (and reported by webhook.py as a warning, never silently dropped).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

FRAMEWORKS = (
    "huggingface",
    "sklearn",
    "xgboost",
    "tensorflow",
    "pytorch",
    "triton",
    "onnx",
    "pmml",
    "lightgbm",
    "paddle",
)


class _Model(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True, alias_generator=to_camel)


class ObjectMeta(_Model):
    name: str
    namespace: str = "default"
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)


class EnvVar(_Model):
    name: str
    value: str | None = None
    value_from: dict[str, Any] | None = None


class ContainerPort(_Model):
    container_port: int
    name: str | None = None
    protocol: str = "TCP"


class Resources(_Model):
    limits: dict[str, int | str] = Field(default_factory=dict)
    requests: dict[str, int | str] = Field(default_factory=dict)


class TCPSocketAction(_Model):
    port: int | str
    host: str | None = None


class HTTPGetAction(_Model):
    port: int | str
    path: str = "/"
    scheme: str = "HTTP"
    host: str | None = None


class Probe(_Model):
    tcp_socket: TCPSocketAction | None = None
    http_get: HTTPGetAction | None = None
    exec_: dict[str, Any] | None = Field(default=None, alias="exec")
    initial_delay_seconds: int = 0
    period_seconds: int = 10
    timeout_seconds: int = 1
    success_threshold: int = 1
    failure_threshold: int = 3


class Container(_Model):
    name: str | None = None
    image: str | None = None
    command: list[str] = Field(default_factory=list)
    args: list[str] = Field(default_factory=list)
    env: list[EnvVar] = Field(default_factory=list)
    resources: Resources = Field(default_factory=Resources)
    ports: list[ContainerPort] = Field(default_factory=list)
    readiness_probe: Probe | None = None
    working_dir: str | None = None


class ModelFormat(_Model):
    name: str
    version: str | None = None


class ModelSpec(Container):
    model_format: ModelFormat | None = None
    runtime: str | None = None
    storage_uri: str | None = None
    protocol_version: str | None = None


class PredictorSpec(_Model):
    model: ModelSpec | None = None
    containers: list[Container] = Field(default_factory=list)
    min_replicas: int | None = None
    max_replicas: int | None = None
    canary_traffic_percent: int | None = None
    timeout: int | None = None
    huggingface: ModelSpec | None = None

    def framework(self) -> tuple[str, dict[str, Any]] | None:
        """The old-style framework shortcut (`predictor.sklearn: {...}`), if one is used."""
        extra = self.model_extra or {}
        for name in FRAMEWORKS:
            body = getattr(self, name, None) if name == "huggingface" else extra.get(name)
            if body is not None:
                return name, body.model_dump(by_alias=True, exclude_unset=True) if isinstance(body, BaseModel) else body
        return None

    def model_spec(self) -> ModelSpec | None:
        """The model to serve: ``model``, or a framework shortcut read as ``model`` with that format."""
        if self.model is not None:
            return self.model
        found = self.framework()
        if found is None:
            return None
        name, body = found
        spec = ModelSpec.model_validate(body)
        if spec.model_format is None:
            spec.model_format = ModelFormat(name=name)
        return spec


class InferenceServiceSpec(_Model):
    predictor: PredictorSpec


class InferenceService(_Model):
    api_version: str
    kind: Literal["InferenceService"]
    metadata: ObjectMeta
    spec: InferenceServiceSpec


class SupportedModelFormat(_Model):
    name: str
    version: str | None = None
    auto_select: bool | None = None
    priority: int | None = None


class ServingRuntimeSpec(_Model):
    supported_model_formats: list[SupportedModelFormat] = Field(default_factory=list)
    containers: list[Container] = Field(default_factory=list)
    protocol_versions: list[str] = Field(default_factory=list)
    disabled: bool | None = None
    multi_model: bool | None = None


class ServingRuntime(_Model):
    api_version: str
    kind: Literal["ServingRuntime", "ClusterServingRuntime"]
    metadata: ObjectMeta
    spec: ServingRuntimeSpec


class LLMModel(_Model):
    uri: str
    name: str | None = None


class Parallelism(_Model):
    tensor: int | None = None
    pipeline: int | None = None
    data: int | None = None
    data_local: int | None = None
    expert: bool | None = None


class PodTemplate(_Model):
    containers: list[Container] = Field(default_factory=list)


class LLMInferenceServiceSpec(_Model):
    model: LLMModel
    replicas: int | None = None
    parallelism: Parallelism | None = None
    template: PodTemplate | None = None


class LLMInferenceService(_Model):
    """KServe's LLM API (``serving.kserve.io/v1alpha2``, on llm-d); locally it runs as the
    InferenceService it amounts to (isvc.manifest.llmisvc)."""

    api_version: str
    kind: Literal["LLMInferenceService"]
    metadata: ObjectMeta
    spec: LLMInferenceServiceSpec
