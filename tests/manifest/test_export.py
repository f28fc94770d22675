"""`isvc export`: local manifests out as cluster manifests, each valid against KServe's CRD schemas."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from isvc.controlplane import cli
from isvc.manifest import schema
from isvc.manifest.deploy import RUNTIME_NAME, cluster_runtime, cluster_runtime_text

REPO = Path(__file__).resolve().parents[2]
SEED = Path("/work/shared/seed/kserve-llm-deployment-notes.md")
KSERVE_RUNTIME = Path("/work/shared/kserve/runtimes/kserve-huggingfaceserver.yaml")
DEPLOY_FILE = REPO / "deploy" / "kserve" / "isvc-huggingfaceserver.yaml"
NS = "kserve-test"


def seed(index: int, namespace: str | None = NS) -> str:
    blocks = re.findall(r"```yaml\n(.*?)```", SEED.read_text(), re.S)
    block = blocks[index - 1]
    return re.sub(r"namespace: .*", f"namespace: {namespace}", block) if namespace else block


def export(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], *texts: str, flags: tuple[str, ...] = ()
) -> tuple[int, list[dict[str, Any]], str]:
    """Run `isvc export -f ...` on ``texts``; its exit code, the documents it printed and its stderr."""
    files = []
    for i, text in enumerate(texts):
        (path := tmp_path / f"m{i}.yaml").write_text(text)
        files += ["-f", str(path)]
    code = cli.export([*files, *flags])
    out, err = capsys.readouterr()
    return code, [d for d in yaml.safe_load_all(out) if d is not None], err


def assert_valid(doc: dict[str, Any]) -> None:
    kind = doc["kind"]
    assert doc["apiVersion"] == f"{schema.GROUP}/{schema.KINDS[kind]}"
    assert schema.validate(kind, schema.KINDS[kind], doc) == [], doc


ISVC = """\
apiVersion: serving.kserve.io/v1beta1
kind: InferenceService
metadata: {name: smol, namespace: demo}
spec:
  predictor:
    model:
      modelFormat: {name: huggingface}
      args: ["--model_dir=/mnt/models/SmolLM2", "--model_name=smol"]
      storageUri: pvc://models/llm
"""


@pytest.mark.skipif(not SEED.exists(), reason="seed notes not present")
def test_the_seed_manifests_export_as_schema_valid_cluster_manifests(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, docs, err = export(tmp_path, capsys, seed(1), seed(2), seed(3))
    assert code == 0, err
    assert [d["metadata"]["name"] for d in docs] == ["llama2-7b-chat", "ysz-t1", "qwen2-72b"]
    for doc in docs:
        assert_valid(doc)
    m1, m2, m3 = docs
    for m in (m1, m3):  # huggingface models run on isvc's server, pinned; storage stays the claim
        assert m["spec"]["predictor"]["model"]["runtime"] == RUNTIME_NAME
        assert m["spec"]["predictor"]["model"]["storageUri"] == "pvc://global-shared/models"
    assert m3["spec"]["predictor"]["model"]["args"][-1] == "--quantization gptq"  # isvc serve splits it itself
    assert m2 == yaml.safe_load(seed(2))  # a custom container is the user's: as written
    assert "the PersistentVolumeClaim global-shared must exist in namespace kserve-test" in err
    assert f"runtime set to {RUNTIME_NAME}" in err


@pytest.mark.skipif(not SEED.exists(), reason="seed notes not present")
def test_n_fills_the_seeds_namespace_placeholder_and_without_it_the_error_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, docs, _ = export(tmp_path, capsys, seed(1, namespace=None), flags=("-n", "team-a"))
    assert code == 0 and docs[0]["metadata"]["namespace"] == "team-a"
    code, docs, err = export(tmp_path, capsys, seed(1, namespace=None))
    assert code == 1 and docs == []
    assert 'metadata.namespace: Invalid value: "${YOUR-NS}"' in err and "placeholder" in err


def test_export_runtime_prints_the_deploy_file_and_it_is_schema_valid(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.export(["--runtime"]) == 0
    out, err = capsys.readouterr()
    assert out == DEPLOY_FILE.read_text() and "placeholder 'isvc'" in err
    (doc,) = yaml.safe_load_all(out)
    assert_valid(doc)
    code, docs, _ = export(tmp_path, capsys, ISVC, flags=("--runtime", "--image", "ghcr.io/me/isvc:0.1.0"))
    assert code == 0 and [d["kind"] for d in docs] == ["ClusterServingRuntime", "InferenceService"]
    assert docs[0]["spec"]["containers"][0]["image"] == "ghcr.io/me/isvc:0.1.0"
    for d in docs:
        assert_valid(d)


def test_image_without_runtime_is_an_error_not_ignored(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        export(tmp_path, capsys, ISVC, flags=("--image", "ghcr.io/me/isvc:0.1.0"))
    assert exc.value.code == 2 and "--image sets the image of the ClusterServingRuntime" in capsys.readouterr().err


def test_the_runtime_file_is_read_through_the_package_and_is_the_deploy_file() -> None:
    assert cluster_runtime_text() == DEPLOY_FILE.read_text()
    assert cluster_runtime() == yaml.safe_load(DEPLOY_FILE.read_text())


# KServe's auto-selected huggingface runtimes as its config/runtimes ships them (0.17 to 0.20), when
# /work/shared/kserve/runtimes is not here to read them from
KSERVE_HF_PRIORITIES = {"kserve-huggingfaceserver": 1, "kserve-huggingfaceserver-multinode": 2}


def kserve_hf_runtimes() -> dict[str, tuple[int, set[str]]]:
    """KServe's auto-selected huggingface ClusterServingRuntimes: name -> (priority, protocol versions)."""
    out = {name: (p, {"v1", "v2"}) for name, p in KSERVE_HF_PRIORITIES.items()}
    for path in sorted(KSERVE_RUNTIME.parent.glob("*.yaml")):
        doc = yaml.safe_load(path.read_text())
        for f in doc["spec"]["supportedModelFormats"]:
            if f["name"] == "huggingface" and f.get("autoSelect"):
                out[doc["metadata"]["name"]] = (f["priority"], set(doc["spec"].get("protocolVersions", [])))
    return out


def kserve_priority_of(name: str) -> int:
    return kserve_hf_runtimes()[name][0]


def test_kserves_webhook_would_admit_the_runtime_beside_kserves_own() -> None:
    """KServe refuses a ClusterServingRuntime whose auto-selected format and priority equal another's with a
    protocol in common (servingruntime_webhook.go, validateServingRuntimePriority): `kubectl apply -k` would fail."""
    rt = cluster_runtime()
    (fmt,) = rt["spec"]["supportedModelFormats"]
    for name, (priority, protocols) in kserve_hf_runtimes().items():
        assert not (priority == fmt["priority"] and protocols & set(rt["spec"]["protocolVersions"])), name


def test_the_cluster_runtime_has_what_the_issue_asks() -> None:
    rt = cluster_runtime()
    assert rt["kind"] == "ClusterServingRuntime" and rt["metadata"]["name"] == "isvc-huggingfaceserver"
    (fmt,) = rt["spec"]["supportedModelFormats"]
    assert (
        fmt["name"] == "huggingface"
        and fmt["autoSelect"] is True
        and fmt["priority"] > kserve_priority_of("kserve-huggingfaceserver")
    )
    assert set(rt["spec"]["protocolVersions"]) == {"v1", "v2"}
    assert rt["spec"]["annotations"] == {"prometheus.kserve.io/port": "8080", "prometheus.kserve.io/path": "/metrics"}
    (c,) = rt["spec"]["containers"]
    assert c["name"] == "kserve-container" and c["args"] == ["--model_name={{.Name}}"] and "command" not in c
    assert c["readinessProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": 8080}
    sc = c["securityContext"]
    assert (sc["runAsNonRoot"], sc["runAsUser"], sc["allowPrivilegeEscalation"]) == (True, 1000, False)
    assert sc["capabilities"] == {"drop": ["ALL"]} and sc["seccompProfile"] == {"type": "RuntimeDefault"}
    (mount,) = c["volumeMounts"]
    (volume,) = rt["spec"]["volumes"]
    assert mount == {"name": volume["name"], "mountPath": "/dev/shm"} and volume["emptyDir"] == {"medium": "Memory"}


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")
def test_kustomize_sets_the_image_and_changes_nothing_else() -> None:
    out = subprocess.run(
        ["kubectl", "kustomize", str(REPO / "deploy" / "kserve")], capture_output=True, text=True, check=True
    ).stdout
    (doc,) = yaml.safe_load_all(out)
    assert_valid(doc)
    assert doc["spec"]["containers"][0].pop("image") == "registry.example.com/isvc:0.1.0-cpu"
    expected = cluster_runtime()
    expected["spec"]["containers"][0].pop("image")
    assert doc == expected


LOCAL = [
    ("storageUri: pvc://models/llm", "storageUri: file:///home/me/models", "spec.predictor.model.storageUri"),
    ("storageUri: pvc://models/llm", "storageUri: /home/me/models", "spec.predictor.model.storageUri"),
    ("storageUri: pvc://models/llm", "storageUri: models/llm", "spec.predictor.model.storageUri"),
    ("--model_dir=/mnt/models/SmolLM2", "--model_dir=/home/me/SmolLM2", "spec.predictor.model.args[0]"),
    ("--model_dir=/mnt/models/SmolLM2", "--model_dir=pvc://models/llm", "spec.predictor.model.args[0]"),
]


@pytest.mark.parametrize(("old", "new", "field"), LOCAL)
def test_a_model_on_this_machine_is_refused_asking_for_a_storage_uri(
    old: str, new: str, field: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, docs, err = export(tmp_path, capsys, ISVC.replace(old, new))
    assert code == 1 and docs == []
    assert f"m0.yaml[doc 0]: {field}: Invalid value:" in err
    assert "a path on this machine" in err and "storageUri" in err and "pvc://CLAIM/PATH" in err


@pytest.mark.parametrize("to", ["inferenceservice", "llmisvc"])
@pytest.mark.parametrize(
    ("arg", "words"),
    [("--max_lenght=64", "unknown flag --max_lenght; did you mean --max_length?"),
     ("--tensor_parallel_size=two", "argument --tensor_parallel_size: invalid int value: 'two'")],
)  # fmt: skip
def test_args_isvc_serve_refuses_are_refused_as_apply_refuses_them(
    arg: str, words: str, to: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The exported service runs `isvc serve` on the cluster too: a flag it refuses would crash-loop there."""
    code, docs, err = export(tmp_path, capsys, ISVC.replace('"--model_name=smol"', f'"--model_name=smol", "{arg}"'),
                             flags=("--to", to))  # fmt: skip
    assert code == 1 and docs == []
    assert f"m0.yaml[doc 0]: spec.predictor.model.args[2]: {words}" in err, err


def test_an_llm_inference_service_with_isvc_serves_own_flags_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Locally isvc serve takes them; on a cluster KServe runs `vllm serve` with the main container's args."""
    text = """\
apiVersion: serving.kserve.io/v1alpha2
kind: LLMInferenceService
metadata: {name: chat, namespace: demo}
spec:
  model: {uri: "hf://HuggingFaceTB/SmolLM2-135M-Instruct"}
  template:
    containers:
      - name: main
        args: [--max-model-len=512, --max_queue=8, --model_name=chat]
        env: [{name: VLLM_ADDITIONAL_ARGS, value: "--kv-cache-space 2"}]
"""
    code, docs, err = export(tmp_path, capsys, text)
    assert code == 1 and docs == []
    assert "spec.template.containers[0].args[1]: --max_queue is isvc serve's, not vLLM's" in err
    assert "spec.template.containers[0].args[2]: --model_name is isvc serve's" in err and "spec.model.name" in err
    assert "spec.template.containers[0].env[0].value: --kv_cache_space is isvc serve's" in err
    assert "args[0]" not in err  # --max-model-len is vLLM's too
    code, docs, err = export(tmp_path, capsys, text.replace(", --max_queue=8, --model_name=chat", "").replace(
        "--kv-cache-space 2", "--enforce-eager"))  # fmt: skip
    assert code == 0, err
    assert_valid(docs[0])


def test_remote_storage_and_a_model_dir_under_the_mount_are_kept(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for uri in ("s3://bucket/llm", "hf://HuggingFaceTB/SmolLM2-135M-Instruct", "gs://b/m"):
        code, docs, err = export(tmp_path, capsys, ISVC.replace("pvc://models/llm", uri))
        assert code == 0, err
        assert docs[0]["spec"]["predictor"]["model"]["storageUri"] == uri


def test_a_custom_container_needs_an_image_and_a_storage_uri_env_a_cluster_reads(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = """\
apiVersion: serving.kserve.io/v1beta1
kind: InferenceService
metadata: {name: custom, namespace: demo}
spec:
  predictor:
    containers:
      - name: kserve-container
        command: [isvc, serve]
        args: ["--model_dir", "/srv/model"]
        env: [{name: STORAGE_URI, value: "file:///srv/models"}]
"""
    code, _, err = export(tmp_path, capsys, text)
    assert code == 1
    assert "spec.predictor.containers[0].image: Required value: a cluster runs a container from an image" in err
    assert 'spec.predictor.containers[0].env[0].value: Invalid value: "file:///srv/models"' in err
    assert 'spec.predictor.containers[0].args[0]: Invalid value: "/srv/model"' in err
    runtime = """\
apiVersion: serving.kserve.io/v1alpha1
kind: ServingRuntime
metadata: {name: mine, namespace: demo}
spec:
  supportedModelFormats: [{name: sklearn, autoSelect: true, priority: 3}]
  containers: [{name: kserve-container, command: [python, serve.py]}]
"""
    code, _, err = export(tmp_path, capsys, runtime)
    assert code == 1 and "spec.containers[0].image: Required value" in err
    code, docs, err = export(tmp_path, capsys, runtime.replace("command:", "image: me/sk:1, command:"))
    assert code == 0 and docs == [yaml.safe_load(runtime.replace("command:", "image: me/sk:1, command:"))]


def test_what_only_this_machine_knows_is_removed_and_reported(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """As `isvc get isvc smol -o yaml` prints it: status, server-set metadata, isvc's annotations."""
    body = yaml.safe_load(ISVC)
    body["metadata"] |= {"generation": 2, "creationTimestamp": "2026-12-07T23:00:00Z"}
    body["metadata"]["annotations"] = {"isvc.dev/note": "mine", "serving.kserve.io/deploymentMode": "RawDeployment"}
    body["status"] = {"url": "http://smol.demo.example.com", "isvc": {"replicas": []}}
    code, docs, err = export(tmp_path, capsys, yaml.safe_dump(body))
    assert code == 0, err
    (doc,) = docs
    assert_valid(doc)
    assert "status" not in doc and set(doc["metadata"]) == {"name", "namespace", "annotations"}
    assert doc["metadata"]["annotations"] == {"serving.kserve.io/deploymentMode": "RawDeployment"}
    for what in ("removed status", "removed metadata.generation", "removed metadata.annotations[isvc.dev/note]"):
        assert f"inferenceservice/smol: {what}" in err


def test_which_predictors_are_pinned_to_isvcs_runtime(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    def model(text: str, *flags: str) -> dict[str, Any]:
        code, docs, err = export(tmp_path, capsys, text, flags=flags)
        assert code == 0, err
        assert_valid(docs[0])
        return docs[0]["spec"]["predictor"]["model"]  # type: ignore[no-any-return]

    assert list(model(ISVC))[:2] == ["modelFormat", "runtime"]  # written beside the format
    assert "runtime" not in model(ISVC, "--runtime-name", "")  # the cluster's auto-selection picks
    assert model(ISVC, "--runtime-name", "my-hf")["runtime"] == "my-hf"
    assert (
        "runtime set to my-hf (it must exist there)"
        in export(tmp_path, capsys, ISVC, flags=("--runtime-name", "my-hf"))[2]
    )
    explicit = ISVC.replace(
        "modelFormat: {name: huggingface}", "modelFormat: {name: huggingface}\n      runtime: kserve-huggingfaceserver"
    )
    assert model(explicit)["runtime"] == "kserve-huggingfaceserver"
    sklearn = ISVC.replace("name: huggingface", "name: sklearn").replace(
        'args: ["--model_dir=/mnt/models/SmolLM2", "--model_name=smol"]', "protocolVersion: v2"
    )
    assert "runtime" not in model(sklearn)
    shortcut = ISVC.replace("    model:\n      modelFormat: {name: huggingface}\n", "    huggingface:\n")
    assert model(shortcut) == {
        "modelFormat": {"name": "huggingface"},
        "runtime": RUNTIME_NAME,
        "args": ["--model_dir=/mnt/models/SmolLM2", "--model_name=smol"],
        "storageUri": "pvc://models/llm",
    }


def test_an_explicit_kserve_runtime_is_kept_with_a_note(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = ISVC.replace(
        "modelFormat: {name: huggingface}", "modelFormat: {name: huggingface}\n      runtime: kserve-huggingfaceserver"
    )
    code, docs, err = export(tmp_path, capsys, text)
    assert code == 0 and docs[0]["spec"]["predictor"]["model"]["runtime"] == "kserve-huggingfaceserver"
    assert "kserve-huggingfaceserver kept: on a cluster that is KServe's own server" in err


@pytest.mark.skipif(not SEED.exists(), reason="seed notes not present")
def test_to_llmisvc_converts_the_llm_services_and_keeps_a_custom_container(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, docs, err = export(tmp_path, capsys, seed(1), seed(2), flags=("--to", "llmisvc"))
    assert code == 0, err
    assert [d["kind"] for d in docs] == ["LLMInferenceService", "InferenceService"]
    for doc in docs:
        assert_valid(doc)
    assert "runtime" not in str(docs[0]["spec"])
    assert "inferenceservice/ysz-t1: kept as an InferenceService" in err


def doc_examples() -> list[tuple[str, str]]:
    """Every complete manifest in a ```yaml block of README.md and docs/*.md, as (where, text)."""
    out = []
    for path in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]:
        for i, block in enumerate(re.findall(r"```yaml\n(.*?)```", path.read_text(), re.S)):
            if re.search(r"^kind: \w+", block, re.M) and "apiVersion: serving.kserve.io" in block:
                out.append((f"{path.name}#{i}", block))
    return out


@pytest.mark.parametrize(("where", "text"), doc_examples(), ids=[w for w, _ in doc_examples()])
def test_the_docs_example_manifests_export_as_schema_valid_manifests(
    where: str, text: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, docs, err = export(tmp_path, capsys, text, flags=("-n", "demo"))
    assert code == 0, f"{where}: {err}"
    assert docs
    for doc in docs:
        assert_valid(doc)


def test_an_exported_manifest_still_runs_locally_on_the_same_runtime(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from isvc.controlplane.plan import build_plan
    from isvc.manifest import InferenceService, load_text, parse_documents

    code, docs, err = export(tmp_path, capsys, ISVC)
    assert code == 0, err
    obj = parse_documents(load_text(yaml.safe_dump(docs[0])))[0].obj
    assert isinstance(obj, InferenceService)
    plan = build_plan(obj, [])
    assert plan.runtime == f"ClusterServingRuntime/{RUNTIME_NAME}" and plan.command[:2] == ["isvc", "serve"]
