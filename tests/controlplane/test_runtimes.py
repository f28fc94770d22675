"""The built-in huggingface runtimes are deploy/kserve's ClusterServingRuntime, run as a host process."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from isvc.controlplane.plan import PORT_TOKEN, LaunchPlan, build_plan
from isvc.controlplane.runtimes import KSERVE_HUGGINGFACE, builtin_runtimes, host_process
from isvc.manifest import InferenceService, ServingRuntime, load_text, parse_documents
from isvc.manifest.deploy import RUNTIME_NAME, cluster_runtime

DEPLOY_FILE = Path(__file__).resolve().parents[2] / "deploy" / "kserve" / "isvc-huggingfaceserver.yaml"

HF = """\
apiVersion: serving.kserve.io/v1beta1
kind: InferenceService
metadata: {name: smol, namespace: demo}
spec:
  predictor:
    model:
      modelFormat: {name: huggingface}
      storageUri: pvc://models/smol
"""


def builtin(name: str) -> dict[str, Any]:
    rt = next(r for r in builtin_runtimes() if r.metadata.name == name)
    return rt.model_dump(by_alias=True, exclude_none=True, exclude_unset=True)


def test_the_local_builtin_is_the_deploy_files_runtime_as_a_host_process() -> None:
    cluster = yaml.safe_load(DEPLOY_FILE.read_text())
    local = builtin(RUNTIME_NAME)
    # what a host process changes, and only that (host_process's docstring says why)
    (c,) = local["spec"]["containers"]
    assert c.pop("command") == ["isvc", "serve"]  # the image's entrypoint
    assert c["args"].pop() == "--model_dir=/mnt/models"  # the image's default, made explicit for the pod
    assert local["metadata"]["annotations"].pop("isvc.dev/builtin") == "true"
    cluster["spec"]["containers"][0].pop("resources")  # requests are for a scheduler
    local["metadata"].pop("namespace", None)
    assert local == cluster


def test_kserves_runtime_name_stays_a_builtin_running_isvc_serve_below_isvcs_priority() -> None:
    isvc_rt, kserve_rt = builtin(RUNTIME_NAME), builtin(KSERVE_HUGGINGFACE)
    assert kserve_rt["spec"]["supportedModelFormats"][0]["priority"] == 1
    assert isvc_rt["spec"]["supportedModelFormats"][0]["priority"] == 3
    assert kserve_rt["spec"]["containers"] == isvc_rt["spec"]["containers"]


def plan_of(text: str) -> LaunchPlan:
    obj = parse_documents(load_text(text))[0].obj
    assert isinstance(obj, InferenceService)
    return build_plan(obj, [])


def test_auto_selection_picks_isvcs_runtime_and_kserves_name_still_works() -> None:
    plan = plan_of(HF)
    assert plan.runtime == f"ClusterServingRuntime/{RUNTIME_NAME}"
    assert plan.command == [
        "isvc",
        "serve",
        "--model_name=smol",
        "--model_dir=/mnt/models",
        f"--http_port={PORT_TOKEN}",
    ]
    assert plan.probe.kind == "http" and plan.probe.path == "/v2/health/ready"
    assert plan.cpu_threads is None and plan.memory_limit_bytes is None  # the file's requests do not cap threads
    explicit = plan_of(
        HF.replace("{name: huggingface}", "{name: huggingface}\n      runtime: kserve-huggingfaceserver")
    )
    assert explicit.runtime == f"ClusterServingRuntime/{KSERVE_HUGGINGFACE}" and explicit.command == plan.command


def test_a_user_runtime_applied_from_the_deploy_file_runs_locally_too() -> None:
    """`isvc apply -f deploy/kserve/isvc-huggingfaceserver.yaml` replaces the built-in with the same runtime."""
    (res,) = parse_documents(load_text(DEPLOY_FILE.read_text(), str(DEPLOY_FILE)))
    obj = parse_documents(load_text(HF))[0].obj
    assert isinstance(obj, InferenceService)
    assert isinstance(res.obj, ServingRuntime)
    plan = build_plan(obj, [res.obj])
    assert plan.command[:3] == ["isvc", "serve", "--model_name=smol"]


def test_host_process_keeps_a_model_dir_the_runtime_names() -> None:
    rt = cluster_runtime()
    rt["spec"]["containers"][0]["args"].append("--model_dir=/mnt/models/sub")
    assert host_process(rt)["spec"]["containers"][0]["args"] == [
        "--model_name={{.Name}}",
        "--model_dir=/mnt/models/sub",
    ]
