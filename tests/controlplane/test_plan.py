"""Runtime selection, argument merging and the port/storage mapping of a LaunchPlan."""

from __future__ import annotations

import pytest

from isvc.controlplane.plan import PORT_TOKEN, build_plan, merge_args, spec_hash
from isvc.controlplane.runtimes import NoSupportingRuntime
from isvc.manifest import InferenceService, ServingRuntime, load_text, parse_documents


def isvc(text: str) -> InferenceService:
    obj = parse_documents(load_text(text))[0].obj
    assert isinstance(obj, InferenceService)
    return obj


def runtime(text: str) -> ServingRuntime:
    obj = parse_documents(load_text(text))[0].obj
    assert isinstance(obj, ServingRuntime)
    return obj


HF = """\
apiVersion: serving.kserve.io/v1beta1
kind: InferenceService
metadata: {name: llama, namespace: demo}
spec:
  predictor:
    model:
      modelFormat: {name: huggingface}
      args: ["--model_dir=/mnt/models/Llama", "--model_name=llama2", "--quantization gptq"]
      storageUri: pvc://global-shared/models
      resources:
        limits: {cpu: "1", memory: 2Gi, nvidia.com/gpu: "2"}
"""

MY_RT = """\
apiVersion: serving.kserve.io/v1alpha1
kind: ServingRuntime
metadata: {name: my-hf, namespace: demo}
spec:
  supportedModelFormats: [{name: huggingface, autoSelect: true, priority: 1}]
  containers:
    - name: kserve-container
      command: [python, my_server.py]
      args: ["--port=8080", "--name={{.Name}}"]
      env: [{name: A, value: "1"}]
"""


def test_builtin_huggingface_runtime_runs_isvc_serve_on_its_own_port() -> None:
    plan = build_plan(isvc(HF), [])
    assert plan.runtime == "ClusterServingRuntime/kserve-huggingfaceserver"
    assert plan.command == [
        "isvc", "serve", "--model_dir=/mnt/models/Llama", "--model_name=llama2", "--quantization", "gptq",
        f"--http_port={PORT_TOKEN}",
    ]  # fmt: skip
    assert (plan.gpus, plan.cpu_threads, plan.memory_limit_bytes) == (2, 1, 2 * 2**30)
    assert plan.model_names == ["llama2"] and plan.storage_uri == "pvc://global-shared/models"
    assert any("split into" in n for n in plan.notes)


def test_a_namespace_runtime_beats_the_builtin_and_is_templated() -> None:
    plan = build_plan(isvc(HF), [runtime(MY_RT)])
    assert plan.runtime == "ServingRuntime/my-hf"
    assert plan.command[:4] == ["python", "my_server.py", f"--port={PORT_TOKEN}", "--name=llama"]
    assert plan.env["A"] == "1" and plan.env["PORT"] == PORT_TOKEN


def test_a_runtime_in_another_namespace_is_not_seen() -> None:
    plan = build_plan(isvc(HF), [runtime(MY_RT.replace("namespace: demo", "namespace: other"))])
    assert plan.runtime == "ClusterServingRuntime/kserve-huggingfaceserver"


def test_an_explicit_runtime_must_support_the_format() -> None:
    text = HF.replace("modelFormat: {name: huggingface}", "modelFormat: {name: sklearn}\n      runtime: my-hf")
    with pytest.raises(NoSupportingRuntime, match="does not support specified framework/version sklearn"):
        build_plan(isvc(text), [runtime(MY_RT)])
    with pytest.raises(NoSupportingRuntime, match=r"No runtime found to support predictor with model type: \{onnx\}"):
        build_plan(isvc(HF.replace("name: huggingface", "name: onnx")), [])


def test_later_flags_win_like_argparse() -> None:
    notes: list[str] = []
    assert merge_args(["--model_dir=/mnt/models", "--x=1"], ["--model-dir=/m/a", "--y"], notes) == [
        "--x=1",
        "--model-dir=/m/a",
        "--y",
    ]


def test_custom_container_port_8080_is_rewritten_and_storage_uri_env_is_taken() -> None:
    text = """\
apiVersion: serving.kserve.io/v1beta1
kind: InferenceService
metadata: {name: ysz-t1, namespace: demo}
spec:
  predictor:
    containers:
      - name: kserve-container
        image: kserve/vllm:v1.9.0-dirty
        command: ["/bin/sh", "-c"]
        args: ["python3 -m vllm.entrypoints.openai.api_server --port 8080 --served-model-name qwen --model /mnt/models/Q"]
        env: [{name: STORAGE_URI, value: "pvc://global-shared/models"}]
        readinessProbe: {tcpSocket: {port: 8080}, initialDelaySeconds: 30, periodSeconds: 10}
"""
    plan = build_plan(isvc(text), [])
    assert plan.kind == "custom" and plan.declared_port == 8080
    assert f"--port {PORT_TOKEN} " in plan.command[2]
    assert plan.storage_uri == "pvc://global-shared/models" and plan.env["STORAGE_URI"] == "/mnt/models"
    assert (plan.probe.kind, plan.probe.initial_delay_s, plan.probe.period_s) == ("tcp", 30.0, 10.0)
    assert plan.model_names == ["qwen"]


def test_traffic_fields_do_not_make_a_new_revision() -> None:
    a = {"spec": {"predictor": {"model": {"x": 1}, "canaryTrafficPercent": 10, "minReplicas": 2}}}
    b = {"spec": {"predictor": {"model": {"x": 1}}}}
    c = {"spec": {"predictor": {"model": {"x": 2}}}}
    assert spec_hash(a) == spec_hash(b) != spec_hash(c)
