"""Local manifests → manifests a Kubernetes cluster with KServe accepts (``isvc export``); pure: documents in,
documents and warnings out.

What changes on the way:

- A ``model`` predictor of ``modelFormat: huggingface`` that names no runtime is pinned to isvc's
  ClusterServingRuntime (``runtime_name``; ``None`` leaves the choice to the cluster's auto-selection). The
  old ``predictor.huggingface`` shortcut has no ``runtime`` field, so it becomes the ``model`` form first.
  Custom containers and other formats are left alone.
- What only this machine knows is removed and reported: ``isvc.dev/`` annotations, and what ``isvc get -o
  yaml`` adds (``status``, ``metadata.generation``, ``metadata.creationTimestamp``, ...).
- A model on this machine is refused: a ``file://`` or plain-path ``storageUri`` (or ``STORAGE_URI``), or a
  ``--model_dir`` outside ``/mnt/models``; the error names the field and asks for a storageUri a cluster
  reads. ``pvc://CLAIM/path`` is kept: on the cluster it is the PersistentVolumeClaim CLAIM.
- A container a cluster would run needs an ``image``; isvc runs commands on the host and does without.

Every document out is validated against the vendored CRD schemas (``schema.py``).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from isvc.errors import ConfigError
from isvc.manifest import schema
from isvc.manifest.deploy import KSERVE_HUGGINGFACE, MOUNT_PATH, RUNTIME_NAME
from isvc.manifest.errors import ManifestError, Problem
from isvc.manifest.llmisvc import to_llm_inference_service, vllm_refuses
from isvc.manifest.loader import Document
from isvc.manifest.models import FRAMEWORKS, LLMInferenceService
from isvc.manifest.parse import Resource, parse_documents

LOCAL_ANNOTATION_PREFIX = "isvc.dev/"
_SERVER_SET_METADATA = (
    "generation", "creationTimestamp", "resourceVersion", "uid", "managedFields", "selfLink", "deletionTimestamp",
)  # fmt: skip
_REMOTE_SCHEMES = ("s3://", "gs://", "hf://", "https://", "http://", "hdfs://", "webhdfs://", "oci://")
_ASK_FOR_STORAGE = (
    "put the model where the cluster can read it and set storageUri to that: pvc://CLAIM/PATH (a "
    "PersistentVolumeClaim in the namespace), s3://, gs://, hf:// or https://"
)
TARGETS = ("inferenceservice", "llmisvc")

Check = Callable[[list[Resource]], list[Problem]]
"""More checks on the parsed documents (the CLI passes the plan's: args ``isvc serve`` would refuse)."""


@dataclass(slots=True)
class Exported:
    """The cluster documents, in input order, and what was changed or needs the user's attention."""

    documents: list[dict[str, Any]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def export(
    docs: list[Document],
    *,
    runtime_name: str | None = RUNTIME_NAME,
    namespace: str | None = None,
    to_llm: bool = False,
    check: Check | None = None,
) -> Exported:
    """Turn local documents into cluster documents; raise ManifestError with every problem found.

    ``to_llm``: LLM InferenceServices out as LLMInferenceServices (``--to llmisvc``).
    """
    docs = [Document(d.source, d.index, copy.deepcopy(d.body)) for d in docs]
    problems = [p for d in docs for p in d.set_namespace(namespace)]
    if problems:
        raise ManifestError(problems)
    removed = [_strip_local_metadata(d.body) for d in docs]
    # the checks `isvc apply` makes (schema, webhook rules, then `check`), on copies: parsing fills in defaults
    resources = parse_documents([Document(d.source, d.index, copy.deepcopy(d.body)) for d in docs])
    problems = check(resources) if check is not None else []
    out = Exported()
    for doc, notes in zip(docs, removed):
        body, kind = doc.body, doc.body["kind"]
        who = f"{kind.lower()}/{body['metadata']['name']}"
        if kind == "InferenceService":
            converted = _to_llm(body, notes) if to_llm else None
            # an LLMInferenceService names no runtime; the checks still run on the InferenceService
            problems += _inference_service(doc, None if converted else runtime_name, notes)
            body = converted or body
        elif kind == "LLMInferenceService":
            problems += _storage(doc, (body["spec"].get("model") or {}).get("uri"), "spec.model.uri", notes)
            llm = LLMInferenceService.model_validate(body)
            problems += [doc.problem(path, message) for path, message in vllm_refuses(llm)]
        else:
            problems += _runtime(doc)
        if body.get("kind") in schema.KINDS:
            problems += [
                doc.problem(p, f"exported document is not valid: {m}")
                for p, m in schema.validate(body["kind"], schema.KINDS[body["kind"]], body)
            ]
        out.documents.append(body)
        out.warnings += [f"{who}: {n}" for n in notes]
    if problems:
        raise ManifestError(problems)
    return out


def _to_llm(body: dict[str, Any], notes: list[str]) -> dict[str, Any] | None:
    """The LLMInferenceService of an InferenceService, or None (with the reason in ``notes``) for one that
    does not convert (a custom container, another format): that one is exported as an InferenceService."""
    try:
        converted, more = to_llm_inference_service(copy.deepcopy(body))
    except ConfigError as exc:
        notes.append(f"kept as an InferenceService: {exc.message}")
        return None
    notes += more
    return converted


def _strip_local_metadata(body: dict[str, Any]) -> list[str]:
    """Remove what only this machine gave the document; say what went."""
    notes: list[str] = []
    if "status" in body:
        del body["status"]
        notes.append("removed status (the cluster writes its own)")
    meta = body.get("metadata")
    if not isinstance(meta, dict):
        return notes
    for key in _SERVER_SET_METADATA:
        if key in meta:
            del meta[key]
            notes.append(f"removed metadata.{key} (set by the API server)")
    annotations = meta.get("annotations") or {}
    for key in [k for k in annotations if k.startswith(LOCAL_ANNOTATION_PREFIX)]:
        del annotations[key]
        notes.append(f"removed metadata.annotations[{key}] (isvc's own, no meaning on a cluster)")
    if "annotations" in meta and not annotations:
        del meta["annotations"]
    return notes


def _inference_service(doc: Document, runtime_name: str | None, notes: list[str]) -> list[Problem]:
    pred = doc.body["spec"]["predictor"]
    path = "spec.predictor"
    problems: list[Problem] = []
    key = next((k for k in ("model", *FRAMEWORKS) if isinstance(pred.get(k), dict)), None)
    if key == "huggingface" and runtime_name:
        pred["model"] = {"modelFormat": {"name": "huggingface"}, **pred.pop("huggingface")}
        notes.append(f"{path}.huggingface written as {path}.model (modelFormat huggingface) to name its runtime")
        key = "model"
    if key is not None:
        model, mpath = pred[key], f"{path}.{key}"
        problems += _storage(doc, model.get("storageUri"), f"{mpath}.storageUri", notes)
        problems += _model_dir_args(doc, model.get("args") or [], f"{mpath}.args")
        if key == "model":
            _pin(model, mpath, runtime_name, notes)
        if model.get("image"):
            notes.append(f"{mpath}.image {model['image']} replaces the runtime's image on a cluster")
    for i, c in enumerate(pred.get("containers") or []):
        cpath = f"{path}.containers[{i}]"
        if key is not None and c.get("name") != "kserve-container":
            continue  # a transformer collocated with the model: the user's container, as written
        problems += _container(doc, c, cpath, notes)
    return problems


def _pin(model: dict[str, Any], path: str, runtime_name: str | None, notes: list[str]) -> None:
    fmt = (model.get("modelFormat") or {}).get("name", "")
    runtime = model.get("runtime")
    if runtime == KSERVE_HUGGINGFACE:
        notes.append(
            f"{path}.runtime {runtime} kept: on a cluster that is KServe's own server, not isvc's "
            f"(flags only isvc serve takes would fail there); drop it to use {runtime_name or RUNTIME_NAME}"
        )
    if runtime or not runtime_name or fmt.lower() != "huggingface":
        return
    items = list(model.items())
    at = next(i for i, (k, _) in enumerate(items) if k == "modelFormat") + 1
    model.clear()
    model.update([*items[:at], ("runtime", runtime_name), *items[at:]])  # beside modelFormat, where one reads it
    install = (
        "install it with `kubectl apply -k deploy/kserve`" if runtime_name == RUNTIME_NAME else "it must exist there"
    )
    notes.append(f"{path}.runtime set to {runtime_name} ({install})")
    limits = (model.get("resources") or {}).get("limits") or {}
    if "nvidia.com/gpu" in limits:
        notes.append(f"{path}.resources asks for a GPU: give {runtime_name} the GPU build of isvc's image")


def _container(doc: Document, c: dict[str, Any], path: str, notes: list[str]) -> list[Problem]:
    problems: list[Problem] = []
    if not c.get("image"):
        problems.append(
            doc.problem(
                f"{path}.image",
                "Required value: a cluster runs a container from an image (isvc runs its command on the host); "
                "set image",
            )
        )
    for i, env in enumerate(c.get("env") or []):
        if isinstance(env, dict) and env.get("name") == "STORAGE_URI":
            problems += _storage(doc, env.get("value"), f"{path}.env[{i}].value", notes)
    command = c.get("command") or []
    if command[:2] == ["isvc", "serve"] or not command:
        problems += _model_dir_args(doc, c.get("args") or [], f"{path}.args")
    return problems


def _runtime(doc: Document) -> list[Problem]:
    problems: list[Problem] = []
    for i, c in enumerate(doc.body["spec"].get("containers") or []):
        if not c.get("image"):
            problems.append(
                doc.problem(
                    f"spec.containers[{i}].image",
                    "Required value: a cluster runs a container from an image (isvc runs its command on the "
                    "host); set image",
                )
            )
    return problems


def _is_local(uri: str) -> bool:
    return uri.startswith(("file://", "/")) or "://" not in uri


def _storage(doc: Document, uri: Any, path: str, notes: list[str]) -> list[Problem]:
    if not isinstance(uri, str) or not uri:
        return []
    if _is_local(uri):
        return [doc.problem(path, f'Invalid value: "{uri}": a path on this machine, which a cluster cannot read; '
                                  f"{_ASK_FOR_STORAGE}")]  # fmt: skip
    if uri.startswith("pvc://"):
        claim = uri.removeprefix("pvc://").split("/", 1)[0]
        ns = doc.body["metadata"].get("namespace", "default")
        notes.append(
            f"{path} {uri}: the PersistentVolumeClaim {claim} must exist in namespace {ns} "
            f"(here it was $ISVC_PVC_ROOT/{claim})"
        )
    return []


def _model_dir_args(doc: Document, args: list[Any], path: str) -> list[Problem]:
    """``--model_dir`` must be under /mnt/models (where KServe mounts the storageUri) or a remote URI."""
    problems: list[Problem] = []
    items = [str(a) for a in args]
    for i, arg in enumerate(items):
        flag, eq, value = arg.partition("=")
        if not eq and " " in arg:
            flag, _, value = arg.partition(" ")
        elif not eq:
            value = items[i + 1] if i + 1 < len(items) else ""
        if flag.replace("-", "_") != "__model_dir" or not value:
            continue
        value = value.strip()
        if value == MOUNT_PATH or value.startswith(MOUNT_PATH + "/") or value.startswith(_REMOTE_SCHEMES):
            continue
        problems.append(
            doc.problem(
                f"{path}[{i}]",
                f'Invalid value: "{value}": a path on this machine; on a cluster --model_dir is a folder under '
                f"{MOUNT_PATH}, where KServe mounts the storageUri (or a remote URI): give the model a storageUri "
                f"a cluster reads (pvc://CLAIM/PATH, s3://, gs://, hf://, https://) and point --model_dir under it",
            )
        )
    return problems
