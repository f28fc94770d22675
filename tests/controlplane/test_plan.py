"""Runtime selection, argument merging and the port/storage mapping of a LaunchPlan."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from isvc.controlplane import cli
from isvc.controlplane.plan import PORT_TOKEN, InvalidServeArgs, build_plan, merge_args, spec_hash
from isvc.controlplane.runtimes import NoSupportingRuntime
from isvc.controlplane.store import Store
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
    assert plan.runtime == "ClusterServingRuntime/isvc-huggingfaceserver"
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
    assert plan.runtime == "ClusterServingRuntime/isvc-huggingfaceserver"


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


@pytest.mark.parametrize(
    ("args", "field", "fragment"),
    [
        ('["--model_name=m", "--max_model_len=many"]', "spec.predictor.model.args[1]", "invalid int value: 'many'"),
        (
            '["--model_name=m", "--max-lenght=9", "--dtype=half"]',
            "spec.predictor.model.args[1]",
            "unknown flag --max_lenght",
        ),
        ('["--dtype int3"]', "spec.predictor.model.args[0]", "invalid choice: 'int3'"),
    ],
)
def test_args_isvc_serve_would_refuse_are_refused_by_the_plan_naming_the_field(
    args: str, field: str, fragment: str
) -> None:
    text = HF.replace(
        'args: ["--model_dir=/mnt/models/Llama", "--model_name=llama2", "--quantization gptq"]', f"args: {args}"
    )
    with pytest.raises(InvalidServeArgs) as info:
        build_plan(isvc(text), [])
    assert info.value.message.startswith(f"{field}: ") and fragment in info.value.message, info.value.message


def test_a_huggingfaceserver_image_with_args_only_runs_isvc_serve() -> None:
    text = """\
apiVersion: serving.kserve.io/v1beta1
kind: InferenceService
metadata: {name: hf, namespace: demo}
spec:
  predictor:
    containers:
      - name: kserve-container
        image: kserve/huggingfaceserver:v0.14.0
        args: [--model_name=hf, --model_dir=/mnt/models, --http_port=8080]
"""
    plan = build_plan(isvc(text), [])
    assert plan.command == ["isvc", "serve", "--model_name=hf", "--model_dir=/mnt/models", f"--http_port={PORT_TOKEN}"]
    with pytest.raises(InvalidServeArgs, match=r"^spec.predictor.containers\[0\].args\[1\]: unknown flag --model_dri"):
        build_plan(isvc(text.replace("--model_dir", "--model_dri")), [])


def test_a_model_beside_a_transformer_container_is_planned_as_the_model() -> None:
    text = HF + "    containers:\n      - {name: transformer-container, image: t, args: [--x]}\n"
    plan = build_plan(isvc(text), [])
    assert plan.command[:2] == ["isvc", "serve"] and plan.runtime == "ClusterServingRuntime/isvc-huggingfaceserver"


@pytest.mark.parametrize("dry_run", [True, False])
def test_apply_refuses_args_isvc_serve_would_refuse(
    dry_run: bool, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(HF.replace('"--quantization gptq"', '"--max_model_len=lots"'))
    argv = ["-f", str(path), "--state-dir", str(tmp_path / "state"), *(["--dry-run"] if dry_run else [])]
    assert cli.apply(argv) == 1
    err = capsys.readouterr().err
    assert "error: spec.predictor.model.args[2]: argument --max_model_len" in err and "'lots'" in err
    assert not Store(tmp_path / "state").resources("InferenceService")


def test_python3_in_a_predictor_shell_is_the_interpreter_isvc_runs_with(tmp_path: Path) -> None:
    pod = tmp_path / "pods" / "p.json"
    pod.parent.mkdir()
    command = ["/bin/sh", "-c", "python3 -c 'import sys; print(sys.executable)'; python -c 'import isvc'"]
    pod.write_text(json.dumps({"command": command, "env": {"PATH": "/usr/bin:/bin"}}))
    run = subprocess.run([sys.executable, "-m", "isvc.controlplane.pod", str(pod)], capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stdout.splitlines()[-1] == sys.executable
