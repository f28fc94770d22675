"""KServe's admission rules (its validating webhooks) and isvc's "accepted, not honoured" warnings.

Rules return problems (the document is refused). Warnings are kept on the resource and
shown by ``get``/``describe``: a field isvc understands but cannot honour on one machine
is never silently dropped.
"""

from __future__ import annotations

import re
from typing import Any

from isvc.manifest import llmisvc
from isvc.manifest.images import entrypoint
from isvc.manifest.models import FRAMEWORKS, Container, InferenceService, LLMInferenceService, ServingRuntime
from isvc.manifest.quantity import parse_quantity

# KServe: inferenceservice_validation.go (IsvcNameFmt)
_ISVC_NAME = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_STORAGE_PREFIXES = (
    "gs://", "s3://", "pvc://", "file://", "https://", "http://", "hdfs://", "webhdfs://", "hf://", "oci://",
)  # fmt: skip
_ENV_NAME = re.compile(r"^[-._a-zA-Z][-._a-zA-Z0-9]*$")
GPU_RESOURCE = "nvidia.com/gpu"

# Predictor fields isvc acts on; everything else gets a warning.
_PREDICTOR_HONOURED = {
    "model", "containers", "minReplicas", "maxReplicas", "canaryTrafficPercent", "timeout", "volumes", *FRAMEWORKS,
}  # fmt: skip
_CONTAINER_HONOURED = {
    "name", "image", "command", "args", "env", "resources", "ports", "readinessProbe", "workingDir", "volumeMounts",
    "modelFormat", "runtime", "storageUri", "protocolVersion", "imagePullPolicy",
}  # fmt: skip
_WHY = {
    "nodeSelector": "there is one node",
    "affinity": "there is one node",
    "tolerations": "there is one node",
    "topologySpreadConstraints": "there is one node",
    "nodeName": "there is one node",
    "schedulerName": "there is one scheduler",
    "priorityClassName": "predictors are not preempted",
    "serviceAccountName": "there is no Kubernetes API",
    "serviceAccount": "there is no Kubernetes API",
    "imagePullSecrets": "images are not pulled",
    "securityContext": "processes run as the user running isvc",
    "hostIPC": "processes share the host",
    "hostNetwork": "predictors listen on 127.0.0.1",
    "livenessProbe": "a predictor is restarted when its process exits",
    "startupProbe": "readinessProbe and the process exit are watched instead",
    "autoScaling": "replicas stay at minReplicas",
    "scaleMetric": "replicas stay at minReplicas",
    "scaleTarget": "replicas stay at minReplicas",
    "containerConcurrency": "the model server's own queue limits concurrency",
    "logger": "request logging to a sink is not implemented",
    "batcher": "the model server batches continuously on its own",
}
_SPEC_NOT_RUN = {"transformer", "explainer"}


def _q(value: Any) -> float | None:
    try:
        return parse_quantity(value)
    except (TypeError, ValueError):
        return None


def check_name(kind: str, meta: dict[str, Any]) -> list[tuple[str, str]]:
    """metadata.name/namespace rules (the API server's and KServe's)."""
    problems: list[tuple[str, str]] = []
    name, ns = meta.get("name"), meta.get("namespace", "default")
    if not isinstance(name, str) or not name:
        return [("metadata.name", "Required value: name is required")]
    pattern = _ISVC_NAME if kind in ("InferenceService", "LLMInferenceService") else _DNS1123_LABEL
    if len(name) > 63 or not pattern.match(name):
        problems.append(
            (
                "metadata.name",
                f'Invalid value: "{name}": a {kind} name must consist of lower case alphanumeric characters or '
                f"'-', start with an alphabetic character, end with an alphanumeric character and be at most 63 "
                f"characters (regex used for validation is '{pattern.pattern}')",
            )
        )
    if kind != "ClusterServingRuntime" and (not isinstance(ns, str) or not _DNS1123_LABEL.match(ns)):
        hint = "; it looks like an unexpanded placeholder (try envsubst)" if isinstance(ns, str) and "$" in ns else ""
        problems.append(
            (
                "metadata.namespace",
                f'Invalid value: "{ns}": a lowercase RFC 1123 label must consist of lower case alphanumeric '
                f"characters or '-', and must start and end with an alphanumeric character{hint}",
            )
        )
    return problems


def _check_container(c: Container, path: str) -> list[tuple[str, str]]:
    problems: list[tuple[str, str]] = []
    for i, env in enumerate(c.env):
        if not _ENV_NAME.match(env.name):
            problems.append(
                (f"{path}.env[{i}].name", f'Invalid value: "{env.name}": a valid environment variable name')
            )
    limits, requests = c.resources.limits, c.resources.requests
    for key, value in {**limits, **requests}.items():
        if _q(value) is None:
            problems.append(
                (f"{path}.resources", f'Invalid value: "{value}" for {key}: quantities must match e.g. 6, 500m, 24Gi')
            )
    for key, req in requests.items():
        lim = limits.get(key)
        rq, lq = _q(req), _q(lim) if lim is not None else None
        if rq is None or lq is None:
            continue
        if key == GPU_RESOURCE and rq != lq:
            problems.append(
                (f"{path}.resources.requests[{key}]", f'Invalid value: "{req}": must be equal to {key} limit of {lim}')
            )
        elif rq > lq:
            problems.append(
                (
                    f"{path}.resources.requests",
                    f'Invalid value: "{req}": must be less than or equal to {key} limit of {lim}',
                )
            )
    gpu = limits.get(GPU_RESOURCE)
    if gpu is not None and (_q(gpu) is None or float(_q(gpu) or 0) != int(_q(gpu) or 0)):
        problems.append(
            (f"{path}.resources.limits[{GPU_RESOURCE}]", f'Invalid value: "{gpu}": must be a whole number of GPUs')
        )
    return problems


def check_inference_service(isvc: InferenceService) -> list[tuple[str, str]]:
    """KServe's ValidateCreate/ValidateUpdate rules for an InferenceService predictor."""
    p = isvc.spec.predictor
    path = "spec.predictor"
    problems: list[tuple[str, str]] = []
    impls = [
        n for n in ("model", *FRAMEWORKS) if getattr(p, n, None) is not None or (p.model_extra or {}).get(n) is not None
    ]
    # KServe counts containers as the predictor only if one is named kserve-container: beside a
    # model, others (transformer-container: KServe's collocation) are sidecars.
    main = [c for c in p.containers if c.name == "kserve-container"]
    if p.containers and (main or not impls):
        impls.append("containers")
    if len(impls) != 1:
        got = ", ".join(impls) if impls else "none"
        problems.append(
            (path, f"exactly one of [model, containers, {', '.join(FRAMEWORKS)}] must be specified (got {got})")
        )
    if p.canary_traffic_percent is not None and not 0 <= p.canary_traffic_percent <= 100:
        problems.append(
            (f"{path}.canaryTrafficPercent", f"Invalid value: {p.canary_traffic_percent}: must be between 0 and 100")
        )
    if p.min_replicas is not None and p.min_replicas < 0:
        problems.append((f"{path}.minReplicas", "Invalid value: MinReplicas cannot be less than 0"))
    if p.max_replicas is not None and p.max_replicas < 0:
        problems.append((f"{path}.maxReplicas", "Invalid value: MaxReplicas cannot be less than 0"))
    if p.min_replicas is not None and p.max_replicas and p.min_replicas > p.max_replicas:
        problems.append(
            (
                f"{path}.minReplicas",
                f"Invalid value: MinReplicas ({p.min_replicas}) cannot be greater than MaxReplicas ({p.max_replicas})",
            )
        )
    if p.timeout is not None and p.timeout <= 0:
        problems.append((f"{path}.timeout", f"Invalid value: {p.timeout}: must be a positive number of seconds"))
    model = p.model_spec()
    if model is not None:
        mpath = f"{path}.model" if p.model is not None else f"{path}.{impls[0] if impls else 'model'}"
        if p.model is not None and model.model_format is None:
            problems.append((f"{mpath}.modelFormat", "Required value: modelFormat is required for a model predictor"))
        uri = model.storage_uri
        if uri is not None and not (uri.startswith(_STORAGE_PREFIXES) or uri.startswith("/") or "://" not in uri):
            problems.append(
                (
                    f"{mpath}.storageUri",
                    f'Invalid value: "{uri}": storageUri must start with one of {", ".join(_STORAGE_PREFIXES)} or be a local path',
                )
            )
        problems += _check_container(model, mpath)
    if p.containers:
        if len(p.containers) > 1 and len(main) != 1 and model is None:
            problems.append(
                (
                    f"{path}.containers",
                    "Invalid value: with more than one container, exactly one must be named kserve-container",
                )
            )
        for i, c in enumerate(p.containers):
            if model is None or c.name == "kserve-container":  # sidecars of a model are not run
                problems += _check_command(c, f"{path}.containers[{i}]")
            problems += _check_container(c, f"{path}.containers[{i}]")
    return problems


def _check_command(c: Container, path: str) -> list[tuple[str, str]]:
    """A container isvc runs needs a command, or an image whose entrypoint isvc knows (its args go there)."""
    if c.command or entrypoint(c.image):
        return []
    if not c.args:
        return [
            (f"{path}.command", "Required value: isvc runs a container's command on the host; set command (and args)")
        ]
    image = f"image {c.image}" if c.image else "no image"
    return [
        (
            f"{path}.command",
            f"Required value: with args but no command, Kubernetes runs the image's entrypoint, and isvc does not know "
            f"the entrypoint of {image} (it runs commands on the host); set command to what the entrypoint runs",
        )
    ]


def check_llm_inference_service(llm: LLMInferenceService) -> list[tuple[str, str]]:
    """What KServe's LLMInferenceService webhook and the InferenceService rules it runs as refuse here."""
    problems: list[tuple[str, str]] = []
    uri = llm.spec.model.uri
    if not uri.startswith(_STORAGE_PREFIXES):
        problems.append(
            (
                "spec.model.uri",
                f'Invalid value: "{uri}": the model URI must start with one of {", ".join(_STORAGE_PREFIXES)}',
            )
        )
    if llm.spec.replicas is not None and llm.spec.replicas < 0:
        problems.append(("spec.replicas", f"Invalid value: {llm.spec.replicas}: must be >= 0"))
    containers = llm.spec.template.containers if llm.spec.template else []
    for i, c in enumerate(containers):
        problems += _check_container(c, f"spec.template.containers[{i}]")
        for j, e in enumerate(c.env):
            if e.name == llmisvc.ADDITIONAL_ARGS_ENV and llmisvc.additional_args(e.value) is None:
                message = f'Invalid value: "{e.value}": {e.name} does not split into flags (an unclosed quote?)'
                problems.append((f"spec.template.containers[{i}].env[{j}].value", message))
    return problems


def check_serving_runtime(rt: ServingRuntime, others: list[ServingRuntime]) -> list[tuple[str, str]]:
    """KServe's ServingRuntime webhook: containers, formats, and no two auto-selected runtimes with equal priority."""
    problems: list[tuple[str, str]] = []
    if not rt.spec.containers:
        problems.append(("spec.containers", "Required value: a ServingRuntime needs at least one container"))
    for i, c in enumerate(rt.spec.containers):
        problems += _check_command(c, f"spec.containers[{i}]")
        problems += _check_container(c, f"spec.containers[{i}]")
    for i, fmt in enumerate(rt.spec.supported_model_formats):
        if fmt.priority is not None and fmt.priority < 1:
            problems.append(
                (f"spec.supportedModelFormats[{i}].priority", f"Invalid value: {fmt.priority}: priority must be >= 1")
            )
        if fmt.priority is not None and not fmt.auto_select:
            problems.append(
                (
                    f"spec.supportedModelFormats[{i}].priority",
                    "Invalid value: priority can only be set when autoSelect is true",
                )
            )
        for other in others:
            if (
                other.metadata.name == rt.metadata.name
                or other.kind != rt.kind
                or other.metadata.namespace != rt.metadata.namespace
            ):
                continue
            for ofmt in other.spec.supported_model_formats:
                same = ofmt.name == fmt.name and ofmt.version == fmt.version
                if (
                    same
                    and fmt.auto_select
                    and ofmt.auto_select
                    and fmt.priority is not None
                    and fmt.priority == ofmt.priority
                ):
                    problems.append(
                        (
                            f"spec.supportedModelFormats[{i}].priority",
                            f"Invalid value: {fmt.priority}: {rt.kind} {other.metadata.name} has the same priority for model format {fmt.name}",
                        )
                    )
    return problems


def _container_warnings(body: dict[str, Any], path: str) -> list[str]:
    out: list[str] = []
    for key in body:
        if key in _CONTAINER_HONOURED:
            continue
        out.append(f"{path}.{key}: accepted but not honoured ({_WHY.get(key, 'not supported by isvc')})")
    if body.get("image"):
        out.append(f"{path}.image: {body['image']} is recorded, not pulled; the command runs on the host")
    return out


def inference_service_warnings(body: dict[str, Any], isvc: InferenceService) -> list[str]:
    """Fields that are valid KServe but have no effect here, each with the reason."""
    spec = body.get("spec", {})
    out = [f"spec.{k}: accepted but not honoured (isvc runs the predictor only)" for k in spec if k in _SPEC_NOT_RUN]
    out += [
        f"spec.{k}: accepted but not honoured (not supported by isvc)"
        for k in spec
        if k not in _SPEC_NOT_RUN and k != "predictor"
    ]
    pred = spec.get("predictor", {})
    for key, _value in pred.items():
        if key in _PREDICTOR_HONOURED:
            continue
        out.append(f"spec.predictor.{key}: accepted but not honoured ({_WHY.get(key, 'not supported by isvc')})")
    for key in ("model", *FRAMEWORKS):
        if isinstance(pred.get(key), dict):
            out += _container_warnings(pred[key], f"spec.predictor.{key}")
    sidecars = isvc.spec.predictor.model_spec() is not None
    for i, c in enumerate(pred.get("containers") or []):
        if not isinstance(c, dict):
            continue
        if sidecars and c.get("name") != "kserve-container":
            out.append(
                f"spec.predictor.containers[{i}] ({c.get('name')}): collocated with the model, accepted but not run "
                "(isvc serves the model predictor directly; run a transformer as its own process)"
            )
            continue
        out += _container_warnings(c, f"spec.predictor.containers[{i}]")
    for i, vol in enumerate(pred.get("volumes") or []):
        if isinstance(vol, dict) and set(vol) - {"name", "emptyDir"}:
            out.append(
                f"spec.predictor.volumes[{i}]: only emptyDir volumes are understood; {vol.get('name')} is not mounted"
            )
    p = isvc.spec.predictor
    if p.max_replicas and p.max_replicas > max(p.min_replicas or 1, 1):
        out.append(
            f"spec.predictor.maxReplicas: autoscaling is not implemented; {max(p.min_replicas or 1, 1)} replica(s) run (minReplicas)"
        )
    if p.min_replicas == 0:
        out.append("spec.predictor.minReplicas: scale to zero is not implemented; 1 replica runs")
    ann = body.get("metadata", {}).get("annotations") or {}
    for key in ann:
        if key.startswith(("sidecar.istio.io/", "serving.knative.dev/", "autoscaling.knative.dev/")):
            out.append(f"metadata.annotations[{key}]: no effect (there is no Istio/Knative here)")
    return out
