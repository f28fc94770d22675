"""Manifests: the seed's three are accepted; each bad one is refused naming file, document and field."""

from __future__ import annotations

import io
import re
from pathlib import Path

import pytest

from isvc.manifest import ManifestError, load_paths, load_text, parse_documents

SEED = Path("/work/shared/seed/kserve-llm-deployment-notes.md")


def seed_manifests(namespace: str = "demo") -> list[str]:
    text = SEED.read_text() if SEED.exists() else ""
    blocks = re.findall(r"```yaml\n(.*?)```", text, re.S)
    return [re.sub(r"namespace: .*", f"namespace: {namespace}", b) for b in blocks]


def problems(text: str) -> list[str]:
    with pytest.raises(ManifestError) as info:
        parse_documents(load_text(text, "bad.yaml"))
    return [str(p) for p in info.value.problems]


ISVC = """\
apiVersion: serving.kserve.io/v1beta1
kind: InferenceService
metadata:
  name: demo
spec:
  predictor:
{predictor}
"""


def isvc(predictor: str) -> str:
    return ISVC.format(predictor="\n".join("    " + line for line in predictor.strip("\n").splitlines()))


@pytest.mark.skipif(not SEED.exists(), reason="seed notes not present")
def test_the_seed_manifests_are_accepted_with_warnings_not_silence() -> None:
    m1, m2, m3 = seed_manifests()
    r1 = parse_documents(load_text(m1))[0]
    assert (r1.kind, r1.namespace, r1.name) == ("InferenceService", "demo", "llama2-7b-chat")
    r2 = parse_documents(load_text(m2))[0]
    assert any("kserve/vllm:v1.9.0-dirty is recorded, not pulled" in w for w in r2.warnings)
    assert any("sidecar.istio.io/inject" in w for w in r2.warnings)
    r3 = parse_documents(load_text(m3))[0]
    assert r3.name == "qwen2-72b"


@pytest.mark.skipif(not SEED.exists(), reason="seed notes not present")
def test_the_seed_placeholder_namespace_is_refused_with_a_hint() -> None:
    raw = re.findall(r"```yaml\n(.*?)```", SEED.read_text(), re.S)[0]
    (msg,) = problems(raw)
    assert msg.startswith("bad.yaml[doc 0]: metadata.namespace: Invalid value")
    assert "unexpanded placeholder" in msg


@pytest.mark.parametrize(
    ("predictor", "path", "fragment"),
    [
        ("model:\n  modelFormat: {name: huggingface}\n  storageUri: pvc://x/y\n  argz: [a]",
         "spec.predictor.model.argz", 'unknown field "argz"'),
        ("model:\n  modelFormat: {name: huggingface}\nminReplicas: two",
         "spec.predictor.minReplicas", "must be of type integer"),
        ("model:\n  modelFormat: {version: '1'}", "spec.predictor.model.modelFormat.name", "Required value"),
        ("model:\n  storageUri: pvc://a/b", "spec.predictor.model.modelFormat", "Required value"),
        ("model:\n  modelFormat: {name: huggingface}\ncontainers:\n- name: kserve-container\n  command: [x]",
         "spec.predictor", "exactly one of"),
        ("model:\n  modelFormat: {name: huggingface}\ncanaryTrafficPercent: 150",
         "spec.predictor.canaryTrafficPercent", "between 0 and 100"),
        ("model:\n  modelFormat: {name: huggingface}\nminReplicas: 3\nmaxReplicas: 2",
         "spec.predictor.minReplicas", "cannot be greater than MaxReplicas"),
        ("model:\n  modelFormat: {name: huggingface}\n  resources:\n    limits: {cpu: '1'}\n    requests: {cpu: '2'}",
         "spec.predictor.model.resources.requests", "less than or equal to cpu limit"),
        ("model:\n  modelFormat: {name: huggingface}\n  resources:\n    limits: {nvidia.com/gpu: '2'}\n    requests: {nvidia.com/gpu: '1'}",
         "spec.predictor.model.resources.requests[nvidia.com/gpu]", "must be equal to"),
        ("model:\n  modelFormat: {name: huggingface}\n  resources:\n    limits: {memory: [1]}",
         "spec.predictor.model.resources.limits.memory", "integer or a string"),
        ("model:\n  modelFormat: {name: huggingface}\n  storageUri: ftp://host/m",
         "spec.predictor.model.storageUri", "storageUri must start with"),
        ("containers:\n- name: kserve-container\n  image: x\n  ports: [{containerPort: http}]",
         "spec.predictor.containers[0].ports[0].containerPort", "must be of type integer"),
        ("containers:\n- name: kserve-container\n  image: only-an-image",
         "spec.predictor.containers[0].command", "runs a container's command on the host"),
        ("containers:\n- name: kserve-container\n  image: vllm/vllm-openai:latest\n  args: [--port, '8080']",
         "spec.predictor.containers[0].command", "does not know the entrypoint of image vllm/vllm-openai:latest"),
    ],
)  # fmt: skip
def test_bad_inference_services_name_the_field(predictor: str, path: str, fragment: str) -> None:
    msgs = problems(isvc(predictor))
    assert any(m.startswith(f"bad.yaml[doc 0]: {path}: ") and fragment in m for m in msgs), msgs


@pytest.mark.parametrize(
    ("doc", "path", "fragment"),
    [
        ("apiVersion: serving.kserve.io/v1beta1\nkind: Deployment\nmetadata: {name: a}", "kind", "unsupported kind"),
        ("apiVersion: serving.kserve.io/v1alpha1\nkind: InferenceService\nmetadata: {name: a}\nspec: {}",
         "apiVersion", "use 'serving.kserve.io/v1beta1'"),
        ("apiVersion: serving.kserve.io/v1beta1\nkind: InferenceService\nmetadata: {name: My_Model}\nspec: {predictor: {}}",
         "metadata.name", "lower case alphanumeric"),
        ("apiVersion: serving.kserve.io/v1beta1\nkind: InferenceService\nmetadata: {name: a}\nspec: {}",
         "spec.predictor", "Required value"),
    ],
)  # fmt: skip
def test_identity_problems(doc: str, path: str, fragment: str) -> None:
    msgs = problems(doc)
    assert any(m.startswith(f"bad.yaml[doc 0]: {path}: ") and fragment in m for m in msgs), msgs


def test_the_document_index_points_at_the_bad_document_and_all_are_reported() -> None:
    good = isvc("model:\n  modelFormat: {name: huggingface}")
    bad = isvc("model:\n  modelFormat: {name: huggingface}\n  storageUri: 5")
    bad2 = isvc("model:\n  modelFormat: {name: huggingface}\ntimeout: -1")
    msgs = problems("---\n".join([good, bad, bad2]))
    assert [m.split(":")[0] for m in msgs] == ["bad.yaml[doc 1]", "bad.yaml[doc 2]"]
    assert "spec.predictor.model.storageUri" in msgs[0]
    assert "spec.predictor.timeout" in msgs[1]


def test_broken_yaml_names_line_and_column(tmp_path: Path) -> None:
    f = tmp_path / "broken.yaml"
    f.write_text("kind: InferenceService\nmetadata: {name: [x\n")
    with pytest.raises(ManifestError) as info:
        load_paths([str(f)])
    assert str(info.value.problems[0]).startswith(f"{f}[doc 0]: not valid YAML (line")


def test_directories_and_stdin_are_loaded_in_order(tmp_path: Path) -> None:
    (tmp_path / "b.yaml").write_text(
        isvc("model:\n  modelFormat: {name: huggingface}").replace("name: demo", "name: bee")
    )
    (tmp_path / "a.yml").write_text(
        isvc("model:\n  modelFormat: {name: huggingface}").replace("name: demo", "name: ay")
    )
    (tmp_path / "notes.txt").write_text("not a manifest")
    docs = load_paths([str(tmp_path)])
    assert [d.body["metadata"]["name"] for d in docs] == ["ay", "bee"]
    docs = load_paths(["-"], stdin=io.StringIO(isvc("model:\n  modelFormat: {name: huggingface}")))
    assert docs[0].source == "<stdin>"
    with pytest.raises(ManifestError, match="no such file"):
        load_paths([str(tmp_path / "missing.yaml")])


def test_fields_that_cannot_be_honoured_are_warned_about() -> None:
    text = isvc(
        "nodeSelector: {gpu: a100}\ntolerations: [{key: k, operator: Exists}]\nmaxReplicas: 3\n"
        "model:\n  modelFormat: {name: huggingface}\n  livenessProbe: {tcpSocket: {port: 8080}}"
    )
    (res,) = parse_documents(load_text(text))
    joined = "\n".join(res.warnings)
    assert "spec.predictor.nodeSelector: accepted but not honoured (there is one node)" in joined
    assert "spec.predictor.tolerations" in joined
    assert "spec.predictor.model.livenessProbe" in joined
    assert "autoscaling is not implemented; 1 replica(s) run" in joined


RUNTIME = """\
apiVersion: serving.kserve.io/v1alpha1
kind: ServingRuntime
metadata: {{name: {name}, namespace: demo}}
spec:
  supportedModelFormats: [{{name: huggingface, autoSelect: true, priority: {prio}}}]
  containers: [{{name: kserve-container, command: [isvc, serve]}}]
"""


def test_two_auto_selected_runtimes_may_not_share_a_priority() -> None:
    text = RUNTIME.format(name="a", prio=2) + "---\n" + RUNTIME.format(name="b", prio=2)
    msgs = problems(text)
    assert msgs == [
        "bad.yaml[doc 1]: spec.supportedModelFormats[0].priority: Invalid value: 2: "
        "ServingRuntime a has the same priority for model format huggingface"
    ]
    ok = RUNTIME.format(name="a", prio=2) + "---\n" + RUNTIME.format(name="b", prio=3)
    assert [r.name for r in parse_documents(load_text(ok))] == ["a", "b"]


def test_a_model_with_a_collocated_transformer_container_is_accepted_with_a_warning() -> None:
    text = isvc(
        "model:\n  modelFormat: {name: huggingface}\n  storageUri: pvc://m/x\n"
        "containers:\n- name: transformer-container\n  image: kserve/transformer:latest\n  args: [--model_name, x]"
    )
    (res,) = parse_documents(load_text(text))
    assert any(
        w.startswith(
            "spec.predictor.containers[0] (transformer-container): collocated with the model, accepted but not run"
        )
        for w in res.warnings
    ), res.warnings


def test_args_without_command_run_the_entrypoint_of_an_image_isvc_knows() -> None:
    text = isvc(
        "containers:\n- name: kserve-container\n  image: docker.io/kserve/huggingfaceserver:v0.14.0\n"
        "  args: [--model_name=m, --model_dir=/mnt/models]"
    )
    (res,) = parse_documents(load_text(text))
    assert res.kind == "InferenceService"
