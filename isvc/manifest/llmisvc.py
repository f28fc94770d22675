"""LLMInferenceService (``serving.kserve.io/v1alpha2``, KServe's LLM API on llm-d) on one machine, and back.

Locally an LLMInferenceService runs as the InferenceService it amounts to (``to_inference_service``):
``spec.model.uri`` is the ``storageUri``, ``spec.model.name`` the served model name, ``replicas`` the
replica count, the ``main`` template container's ``args``/``env``/``resources`` go to isvc's
huggingface runtime (``isvc serve``; the flags in its ``VLLM_ADDITIONAL_ARGS`` env var too, as KServe's
template passes them to ``vllm serve``), and ``parallelism.tensor`` becomes ``--tensor_parallel_size``.
Its fields that need a cluster (router, scheduler, prefill/decode, workers) are accepted with a
warning (``warnings``). ``to_llm_inference_service`` goes the other way, for ``isvc export --to llmisvc``.

On a cluster the ``main`` container's args are appended to ``vllm serve`` (KServe's
``kserve-config-llm-template``), so args are written with vLLM's flag names; ``isvc serve`` takes
those names too.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from typing import Any

from isvc.errors import ConfigError
from isvc.manifest.deploy import MOUNT_PATH
from isvc.manifest.models import Container, InferenceService, LLMInferenceService
from isvc.runtime_args import normalize

API_VERSION = "serving.kserve.io/v1alpha2"
ISVC_API_VERSION = "serving.kserve.io/v1beta1"
MAIN = "main"
"""KServe's name for the model server container of an LLMInferenceService's pod template."""
ADDITIONAL_ARGS_ENV = "VLLM_ADDITIONAL_ARGS"
"""The ``main`` container's env var whose flags KServe's template adds to ``vllm serve`` (before the args)."""

_CLUSTER = "needs a cluster (Kubernetes with KServe and llm-d)"
_SPEC_WHY = {
    "router": f"the llm-d router {_CLUSTER}; here isvc's gateway serves it",
    "prefill": f"prefill/decode disaggregation {_CLUSTER}; here one server does both",
    "worker": f"multi-node workers (LeaderWorkerSet) {_CLUSTER}; here one process serves",
    "scaling": f"autoscaling {_CLUSTER}; `replicas` run",
    "baseRefs": "LLMInferenceServiceConfig presets are not read; isvc's huggingface runtime runs",
    "kvCacheOffloading": f"KV cache offloading {_CLUSTER}",
    "tracing": "tracing is not exported",
    "rolloutStrategy": "a changed spec rolls out as a new revision once it is ready",
    "storageInitializer": "isvc's storage initializer always runs",
    "labels": "there are no pods to label",
    "annotations": "there are no pods to annotate",
}
_ROUTER_WHY = {
    "scheduler": f"the llm-d inference scheduler (endpoint picker) {_CLUSTER}; here the gateway round-robins",
    "gateway": f"a Gateway API gateway {_CLUSTER}; here isvc's gateway serves it",
    "route": f"an HTTPRoute {_CLUSTER}; here isvc's gateway routes by Host, path and model",
    "ingress": f"an Ingress {_CLUSTER}; here isvc's gateway serves it",
}
_PARALLELISM_WHY = f"only tensor parallelism maps to one machine (--tensor_parallel_size); this {_CLUSTER}"
_MAIN_HONOURED = {"name", "args", "env", "resources"}
_MAIN_WHY = {
    "image": "recorded, not pulled; isvc's huggingface runtime (isvc serve) runs on the host",
    "command": "not run; isvc's huggingface runtime (isvc serve) runs the model, with the args",
    "ports": "the server gets a free port of its own behind the gateway",
    "readinessProbe": "the huggingface runtime's probe (/v2/health/ready) is used",
    "livenessProbe": "a predictor is restarted when its process exits",
    "startupProbe": "the readiness probe and the process exit are watched instead",
}


@dataclass(frozen=True, slots=True)
class Derived:
    """The InferenceService an LLMInferenceService runs as, and where its fields came from."""

    body: dict[str, Any]
    isvc: InferenceService
    fields: dict[str, str] = field(default_factory=dict)
    """InferenceService field path → the LLMInferenceService field it was made from."""

    def rename(self, text: str) -> str:
        """``text`` (a message or a path) with the InferenceService's field paths as the LLMInferenceService's."""
        for path in sorted(self.fields, key=len, reverse=True):
            text = re.sub(re.escape(path) + r"(?![\w\[])", self.fields[path].replace("\\", "\\\\"), text)
        return text


def main_container(llm: LLMInferenceService) -> tuple[int, Container] | None:
    """The template's model server container: the one named ``main``.

    KServe merges the template into its own by container name, so only ``main`` changes the model server;
    other containers are sidecars, even the first.
    """
    containers = llm.spec.template.containers if llm.spec.template else []
    return next(((i, c) for i, c in enumerate(containers) if c.name == MAIN), None)


def additional_args(value: str | None) -> list[str] | None:
    """The flags of a ``VLLM_ADDITIONAL_ARGS`` value, split as bash splits them; None if it does not split."""
    try:
        return shlex.split(value or "")
    except ValueError:  # an unclosed quote: webhook.check_llm_inference_service reports it
        return None


def served_name(llm: LLMInferenceService) -> str:
    return llm.spec.model.name or llm.metadata.name


def to_inference_service(llm: LLMInferenceService) -> Derived:
    """The InferenceService (huggingface format, isvc's runtime) that serves ``llm`` on this machine."""
    fields = {"spec.predictor": "spec", "spec.predictor.model.storageUri": "spec.model.uri"}
    args = [f"--model_name={served_name(llm)}"]
    fields["spec.predictor.model.args[0]"] = "spec.model.name" if llm.spec.model.name else "metadata.name"
    model: dict[str, Any] = {"modelFormat": {"name": "huggingface"}, "storageUri": llm.spec.model.uri}
    found = main_container(llm)
    if found is not None:
        index, main = found
        cpath = f"spec.template.containers[{index}]"
        fields["spec.predictor.model"] = cpath
        for i, env in enumerate(main.env):  # KServe's template puts these before the container's args
            if env.name == ADDITIONAL_ARGS_ENV:
                for arg in additional_args(env.value) or []:
                    fields[f"spec.predictor.model.args[{len(args)}]"] = f"{cpath}.env[{i}].value"
                    args.append(arg)
        for i, arg in enumerate(main.args):
            fields[f"spec.predictor.model.args[{len(args)}]"] = f"{cpath}.args[{i}]"
            args.append(arg)
        if main.env:
            model["env"] = [e.model_dump(by_alias=True, exclude_none=True) for e in main.env]
            fields.update({f"spec.predictor.model.env[{i}]": f"{cpath}.env[{i}]" for i in range(len(main.env))})
        resources = main.resources.model_dump(by_alias=True, exclude_defaults=True)
        if resources:
            model["resources"] = resources
            fields["spec.predictor.model.resources"] = f"{cpath}.resources"
    tensor = llm.spec.parallelism.tensor if llm.spec.parallelism else None
    if tensor:
        fields[f"spec.predictor.model.args[{len(args)}]"] = "spec.parallelism.tensor"
        args.append(f"--tensor_parallel_size={tensor}")
    model["args"] = args
    predictor: dict[str, Any] = {"model": model}
    if llm.spec.replicas is not None:
        predictor["minReplicas"] = llm.spec.replicas
        fields["spec.predictor.minReplicas"] = "spec.replicas"
    meta = llm.metadata
    metadata: dict[str, Any] = {"name": meta.name, "namespace": meta.namespace}
    if meta.labels:
        metadata["labels"] = dict(meta.labels)
    if meta.annotations:
        metadata["annotations"] = dict(meta.annotations)
    body = {
        "apiVersion": ISVC_API_VERSION,
        "kind": "InferenceService",
        "metadata": metadata,
        "spec": {"predictor": predictor},
    }
    return Derived(body, InferenceService.model_validate(body), fields)


def warnings(body: dict[str, Any], llm: LLMInferenceService) -> list[str]:
    """Fields that are valid KServe but take effect only on a cluster, each with the reason."""
    spec = body.get("spec", {})
    out: list[str] = []
    for key, value in spec.items():
        if key == "router" and isinstance(value, dict) and value:
            out += [f"spec.router.{k}: accepted; {_ROUTER_WHY.get(k, _SPEC_WHY['router'])}" for k in value]
        elif key in _SPEC_WHY:
            out.append(f"spec.{key}: accepted; {_SPEC_WHY[key]}")
    model = spec.get("model") or {}
    out += [
        f"spec.model.{k}: accepted but not honoured (not supported by isvc)" for k in model if k not in ("uri", "name")
    ]
    for key in spec.get("parallelism") or {}:
        if key != "tensor":
            out.append(f"spec.parallelism.{key}: accepted; {_PARALLELISM_WHY}")
    out += [f"{path}: {message} (here isvc serve takes it)" for path, message in vllm_refuses(llm)]
    template = spec.get("template") or {}
    found = main_container(llm)
    for key in template:
        if key != "containers":
            out.append(f"spec.template.{key}: accepted but not honoured (the model server runs as a host process)")
    for i, c in enumerate(template.get("containers") or []):
        if not isinstance(c, dict):
            continue
        path = f"spec.template.containers[{i}]"
        if found is None or i != found[0]:
            out.append(f"{path} ({c.get('name')}): accepted but not run (isvc runs the {MAIN} container only)")
            continue
        for j, env in enumerate(c.get("env") or []):
            if isinstance(env, dict) and env.get("name") == ADDITIONAL_ARGS_ENV and "valueFrom" in env:
                why = "is not read from a ConfigMap or Secret here; write its flags as the value or in args"
                out.append(f"{path}.env[{j}].valueFrom: {ADDITIONAL_ARGS_ENV} {why}")
        for key in c:
            if key not in _MAIN_HONOURED:
                out.append(f"{path}.{key}: {_MAIN_WHY.get(key, 'accepted but not honoured (not supported by isvc)')}")
    return out


# ---- InferenceService -> LLMInferenceService ------------------------------------------------
# huggingfaceserver/isvc flag -> vLLM's name for it; flags not listed (and not below) are vLLM's own.
_TO_VLLM = {"max_length": "max-model-len", "model_revision": "revision"}
_ISVC_ONLY = {
    "http_port", "port", "grpc_port", "enable_grpc", "workers", "max_threads", "max_asyncio_workers",
    "enable_docs_url", "enable_latency_logging", "configure_logging", "log_config_file", "access_log_format",
    "predictor_host", "predictor_protocol", "predictor_use_ssl", "predictor_request_timeout_seconds",
    "max_request_body_bytes", "max_request_header_bytes", "request_header_timeout_seconds",
    "request_body_timeout_seconds", "disable_lower_case", "disable_special_tokens", "return_token_type_ids",
    "return_probabilities", "backend", "task", "kv_cache_space", "num_threads", "num_speculative_tokens",
    "speculative_max_batch", "max_queue", "max_batch_tokens", "host", "return_offsets_mapping", "return_raw_logits",
    "tensor_input_names",
}  # fmt: skip
_VLLM_FLAG_VALUES = {"trust_remote_code", "enable_prefix_caching", "no_enable_prefix_caching", "enforce_eager",
                     "enable_auto_tool_choice", "disable_log_requests", "trust_request_chat_template"}  # fmt: skip
_MODEL_FLAGS = {
    "model_dir": "spec.model.uri says where the model is",
    "model_id": "spec.model.uri says where the model is (hf://ORG/NAME)",
    "model_name": "spec.model.name is the served name",
}
"""isvc serve's model flags: KServe's template passes the model and its name to vllm serve itself."""
_CARRIED = {"model", "minReplicas"}
_MODEL_CARRIED = {"modelFormat", "args", "env", "resources", "storageUri", "name"}


def _flags(args: list[str]) -> list[tuple[str, str | None, int]]:
    """``(name, value, item index)`` per flag (names with underscores); a bare value follows its flag."""
    out: list[tuple[str, str | None, int]] = []
    for i, raw in enumerate(args):
        items = normalize(shlex.split(raw) if raw.startswith("--") and " " in raw.strip() else [raw])
        for item in items:
            if item.startswith("--"):
                name, eq, value = item[2:].partition("=")
                out.append((name, value if eq else None, i))
            elif out and out[-1][1] is None and out[-1][0] not in _VLLM_FLAG_VALUES:
                out[-1] = (out[-1][0], item, out[-1][2])
            else:
                out.append(("", item, i))
    return out


def vllm_refuses(llm: LLMInferenceService) -> list[tuple[str, str]]:
    """``(field, message)`` for each flag of the ``main`` container (args and ``VLLM_ADDITIONAL_ARGS``) that
    ``isvc serve`` takes but ``vllm serve``, which runs them on a cluster, refuses."""
    found = main_container(llm)
    if found is None:
        return []
    index, main = found
    cpath = f"spec.template.containers[{index}]"
    sources = [(f"{cpath}.args[{i}]", [arg]) for i, arg in enumerate(main.args)]
    sources += [
        (f"{cpath}.env[{i}].value", additional_args(env.value) or [])
        for i, env in enumerate(main.env)
        if env.name == ADDITIONAL_ARGS_ENV
    ]
    out = []
    for path, items in sources:
        for name, _, _ in _flags(items):
            if name in _MODEL_FLAGS:
                out.append(
                    (path, f"--{name} is isvc serve's: on a cluster `vllm serve` refuses it; {_MODEL_FLAGS[name]}")
                )
            elif name in _ISVC_ONLY:
                out.append((path, f"--{name} is isvc serve's, not vLLM's: on a cluster `vllm serve` refuses it"))
    return out


def _model_uri(storage_uri: str | None, model_dir: str | None, model_id: str | None) -> str | None:
    """The model folder as one URI: the storageUri plus the path ``--model_dir`` takes below /mnt/models."""
    if storage_uri:
        if model_dir and model_dir.startswith(MOUNT_PATH):
            below = model_dir.removeprefix(MOUNT_PATH).strip("/")
            return f"{storage_uri.rstrip('/')}/{below}" if below else storage_uri
        return storage_uri
    if model_dir and "://" in model_dir:
        return model_dir
    if model_id:
        return f"hf://{model_id}"
    return None


def to_llm_inference_service(doc: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """An LLM InferenceService document (huggingface format) as an LLMInferenceService document,
    and a warning for each thing that does not carry over. Raises ConfigError naming the field
    when ``doc`` is not such an InferenceService."""
    if doc.get("kind") != "InferenceService":
        raise ConfigError(f"kind {doc.get('kind')!r}: only an InferenceService converts", param="kind")
    meta = doc.get("metadata") or {}
    pred = (doc.get("spec") or {}).get("predictor") or {}
    model = pred.get("model") if isinstance(pred.get("model"), dict) else pred.get("huggingface")
    where = "spec.predictor.model" if isinstance(pred.get("model"), dict) else "spec.predictor.huggingface"
    if not isinstance(model, dict):
        raise ConfigError(
            "spec.predictor.model: only a model predictor (modelFormat huggingface) converts to an "
            "LLMInferenceService; custom containers do not",
            param="spec.predictor.model",
        )
    fmt = (model.get("modelFormat") or {}).get("name", "huggingface" if where.endswith("huggingface") else None)
    if str(fmt).lower() != "huggingface":
        raise ConfigError(
            f"{where}.modelFormat.name: {fmt!r}: only huggingface models convert to an LLMInferenceService",
            param=f"{where}.modelFormat.name",
        )
    warn: list[str] = []
    values: dict[str, str | None] = {}
    args: list[str] = []
    tensor: int | None = None
    for name, value, i in _flags([str(a) for a in model.get("args") or []]):
        apath = f"{where}.args[{i}]"
        if name in ("model_dir", "model_id", "model_name", "served_model_name"):
            values[name] = value
        elif name == "tensor_parallel_size" and value and value.isdigit():
            tensor = int(value)
        elif name in _ISVC_ONLY:
            warn.append(f"{apath}: --{name} is not a vLLM flag; dropped (vllm serve would refuse it)")
        elif not name:
            warn.append(f"{apath}: {value!r} is not a flag; dropped")
        else:
            flag = "--" + _TO_VLLM.get(name, name.replace("_", "-"))
            args.append(flag if value is None else f"{flag}={value}")
    uri = _model_uri(model.get("storageUri"), values.get("model_dir"), values.get("model_id"))
    if uri is None:
        raise ConfigError(
            f"{where}.storageUri: a model location is needed (storageUri, or --model_id / a --model_dir URI in args)",
            param=f"{where}.storageUri",
        )
    served = values.get("model_name") or values.get("served_model_name") or meta.get("name")
    llm_model: dict[str, Any] = {"uri": uri, "name": served}
    gpus = str(((model.get("resources") or {}).get("limits") or {}).get("nvidia.com/gpu", ""))
    if tensor is None and gpus.isdigit() and int(gpus) > 1:
        tensor = int(gpus)  # KServe's huggingfaceserver shards over the pod's GPUs; vLLM needs it said
    if tensor:
        # also as vLLM's flag: KServe's single-node template passes parallelism.tensor to `vllm serve` only
        # from 0.20 (kserve#5782); the args come after its flags, so the two agree where both are given
        args.append(f"--tensor-parallel-size={tensor}")
    container: dict[str, Any] = {"name": MAIN}
    if args:
        container["args"] = args
    for key in ("env", "resources"):
        if model.get(key):
            container[key] = model[key]
    spec: dict[str, Any] = {"model": llm_model}
    if pred.get("minReplicas") is not None:
        spec["replicas"] = pred["minReplicas"]
    if tensor:
        spec["parallelism"] = {"tensor": tensor}
    spec["template"] = {"containers": [container]}
    warn.append(
        "spec.router: not set, so KServe makes no route: the service is reached inside the cluster (Service "
        f"{meta.get('name')}-kserve-workload-svc, port 8000); add `router: {{route: {{}}, gateway: {{}}}}` to "
        "route to it through KServe's Gateway"
    )
    out_meta = {k: meta[k] for k in ("name", "namespace", "labels") if meta.get(k)}
    annotations = {
        k: v
        for k, v in (meta.get("annotations") or {}).items()
        if not k.startswith(("serving.kserve.io/deploymentMode", "serving.knative.dev/", "autoscaling.knative.dev/"))
    }
    if annotations:
        out_meta["annotations"] = annotations
    warn += [
        f"{where}.{k}: not carried over (an LLMInferenceService has no such field)"
        for k in model
        if k not in _MODEL_CARRIED
    ]
    for key in pred:
        if key in _CARRIED or key == "huggingface":
            continue
        if key == "maxReplicas":
            warn.append(
                "spec.predictor.maxReplicas: not carried over; an LLMInferenceService autoscales with spec.scaling"
            )
        elif key == "volumes":
            warn.append(
                "spec.predictor.volumes: not carried over; KServe's LLM template mounts its own (a memory-backed "
                "/dev/shm among them)"
            )
        else:
            warn.append(f"spec.predictor.{key}: not carried over (an LLMInferenceService has no such field)")
    for key in doc.get("spec") or {}:
        if key != "predictor":
            warn.append(f"spec.{key}: not carried over (an LLMInferenceService serves the model only)")
    out = {"apiVersion": API_VERSION, "kind": "LLMInferenceService", "metadata": out_meta, "spec": spec}
    return out, warn
