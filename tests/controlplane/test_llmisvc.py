"""LLMInferenceService (serving.kserve.io/v1alpha2): the seed's first manifest converted to one, validated
against KServe's vendored CRD schema, run by `isvc up` as a real `isvc serve`, and answering the seed's
completions curl through the gateway; bad fields named; cluster-only fields warned about."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import pytest
import yaml
from cp_helpers import ControlPlane
from test_seed_manifests import NS, SEED, seed, stock_pvc

from isvc.controlplane import cli
from isvc.errors import ConfigError
from isvc.manifest import ManifestError, load_text, parse_one, schema
from isvc.manifest.llmisvc import to_llm_inference_service

needs_seed = pytest.mark.skipif(not SEED.exists(), reason="seed notes not present")
SEED_COMPLETION = {"model": "llama2", "prompt": "你好! 我们用中文打个招呼", "stream": False, "max_tokens": 30}


def llm(index: int) -> dict:  # type: ignore[type-arg]
    doc, _ = to_llm_inference_service(yaml.safe_load(seed(index)))
    return doc


@needs_seed
def test_the_seeds_llm_manifests_convert_to_schema_valid_llm_inference_services() -> None:
    doc, warnings = to_llm_inference_service(yaml.safe_load(seed(1)))
    assert schema.validate("LLMInferenceService", "v1alpha2", doc) == []
    assert doc["apiVersion"] == "serving.kserve.io/v1alpha2" and doc["kind"] == "LLMInferenceService"
    assert doc["spec"]["model"] == {"uri": "pvc://global-shared/models/Llama-2-7b-chat-hf", "name": "llama2"}
    (main,) = doc["spec"]["template"]["containers"]
    assert main["name"] == "main" and main["resources"]["limits"]["nvidia.com/gpu"] == "1" and "args" not in main
    (warning,) = warnings  # no router: KServe would make no route to it
    assert warning.startswith("spec.router: not set") and "llama2-7b-chat-kserve-workload-svc" in warning

    doc, warnings = to_llm_inference_service(yaml.safe_load(seed(3)))
    assert schema.validate("LLMInferenceService", "v1alpha2", doc) == []
    assert doc["spec"]["model"] == {
        "uri": "pvc://global-shared/models/Qwen2-72B-Instruct-GPTQ-Int4",
        "name": "qwen2-72b",
    }
    assert doc["spec"]["parallelism"] == {"tensor": 2}  # its two GPUs; vLLM shards only when told
    assert doc["spec"]["template"]["containers"][0]["args"] == [
        "--max-model-len=6144", "--trust-remote-code", "--gpu-memory-utilization=0.95", "--quantization=gptq",
        "--tensor-parallel-size=2",  # KServe before 0.20 does not pass parallelism.tensor to a single-node vllm
    ]  # fmt: skip
    assert any(w.startswith("spec.predictor.volumes: not carried over") for w in warnings)
    assert any(w.startswith("spec.predictor.model.volumeMounts: not carried over") for w in warnings)

    with pytest.raises(ConfigError, match=r"spec\.predictor\.model: only a model predictor"):
        to_llm_inference_service(yaml.safe_load(seed(2)))  # a custom vLLM container


@needs_seed
def test_seed_1_as_an_llm_inference_service_serves_the_seed_curl(
    start_control_plane, pvc_root: Path, tiny_model_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:  # type: ignore[no-untyped-def]
    cp: ControlPlane = start_control_plane("--cpu-fallback")  # the seed asks for a GPU
    stock_pvc(pvc_root, tiny_model_dir)
    assert cp.apply(yaml.safe_dump(llm(1), allow_unicode=True)) == 0
    assert "llminferenceservice.serving.kserve.io/llama2-7b-chat created" in capsys.readouterr().out
    status = cp.wait_ready("llama2-7b-chat", NS, timeout_s=120)
    assert status["url"] == f"http://llama2-7b-chat.{NS}.example.com"
    r = httpx.post(
        f"{cp.url}/openai/v1/completions", headers={"Host": f"llama2-7b-chat.{NS}.example.com"}, json=SEED_COMPLETION,
        timeout=60,
    )  # fmt: skip
    assert r.status_code == 200, r.text
    assert r.json()["model"] == "llama2" and r.json()["usage"]["completion_tokens"] == 30
    assert r.headers["x-isvc-revision"] == "llama2-7b-chat-predictor-00001"

    capsys.readouterr()
    assert cli.get(cp.args("llmisvc", "-n", NS)) == 0
    out = capsys.readouterr().out
    assert "llama2-7b-chat" in out and "True" in out and f"http://llama2-7b-chat.{NS}.example.com" in out
    assert cli.get(cp.args("isvc", "-n", NS)) == 0  # kubectl's kinds stay apart
    assert "llama2-7b-chat" not in capsys.readouterr().out
    assert cli.describe(cp.args("llmisvc", "llama2-7b-chat", "-n", NS)) == 0
    out = capsys.readouterr().out
    assert "Model name:   llama2" in out and f"URL:          http://llama2-7b-chat.{NS}.example.com" in out
    assert "--model_name=llama2" in out and "CPUFallback" in out

    # an InferenceService may not take its name: the gateway serves both by name
    assert cp.apply(seed(1)) == 1
    err = capsys.readouterr().err
    assert "metadata.name: LLMInferenceService kserve-test/llama2-7b-chat exists" in err
    assert cli.delete(cp.args("llmisvc", "llama2-7b-chat", "-n", NS)) == 0
    cp.wait(lambda: not cp.replicas("llama2-7b-chat", NS), 20, "the predictor to stop")


LLM = """\
apiVersion: serving.kserve.io/v1alpha2
kind: LLMInferenceService
metadata: {{name: chat, namespace: demo}}
spec:
  model: {{uri: "pvc://models/chat", name: chat-model}}
{extra}"""


def dry_run(tmp_path: Path, text: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    path = tmp_path / "llm.yaml"
    path.write_text(text)
    code = cli.apply(["-f", str(path), "--dry-run", "--state-dir", str(tmp_path / "state")])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize(
    ("extra", "field", "words"),
    [
        ("  replicaz: 2\n", "spec.replicaz", 'unknown field "replicaz"'),
        ("  parallelism: {tensor: 0}\n", "spec.parallelism.tensor", "minimum"),
        ("  template:\n    containers: [{name: main, args: [--max_lenght=64]}]\n",
         "spec.template.containers[0].args[0]", "did you mean --max_length"),
        ("  template:\n    containers: [{name: main, resources: {requests: {cpu: '4'}, limits: {cpu: '2'}}}]\n",
         "spec.template.containers[0].resources.requests", "must be less than or equal to cpu limit"),
    ],
)  # fmt: skip
def test_a_bad_llm_inference_service_gets_an_error_naming_the_field(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: str, field: str, words: str
) -> None:
    code, _, err = dry_run(tmp_path, LLM.format(extra=extra), capsys)
    assert code == 1 and f"{field}: " in err and words in err, err


def test_a_model_uri_without_a_known_scheme_is_refused() -> None:
    (doc,) = load_text(LLM.format(extra="").replace("pvc://models/chat", "ftp://models/chat"))
    with pytest.raises(ManifestError) as exc:
        parse_one(doc)
    assert exc.value.problems[0].path == "spec.model.uri" and "must start with one of" in exc.value.problems[0].message


def test_router_scheduler_and_prefill_are_accepted_with_a_warning_that_they_need_a_cluster(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    extra = """\
  replicas: 2
  parallelism: {tensor: 2, data: 4}
  router:
    route: {}
    gateway: {}
    scheduler: {}
  prefill:
    replicas: 1
  template:
    containers:
      - name: main
        image: ghcr.io/llm-d/llm-d-cuda:v0.9.0
        args: [--max-model-len=4096]
        env: [{name: VLLM_LOGGING_LEVEL, value: INFO}]
"""
    code, out, err = dry_run(tmp_path, LLM.format(extra=extra), capsys)
    assert code == 0, err
    for field in ("spec.router.scheduler", "spec.router.route", "spec.router.gateway", "spec.prefill"):
        line = next(x for x in err.splitlines() if f"llminferenceservice/chat: {field}:" in x)
        assert "needs a cluster" in line, line
    assert "spec.parallelism.data: accepted; only tensor parallelism maps to one machine" in err
    assert "spec.template.containers[0].image: recorded, not pulled" in err
    assert re.search(r"runtime: +ClusterServingRuntime/[a-z]+-huggingfaceserver\n", out), out
    assert "--model_name=chat-model" in out and "--max-model-len=4096" in out and "--tensor_parallel_size=2" in out
    assert "storage:     pvc://models/chat -> /mnt/models" in out and "replicas:    2;" in out


ADDITIONAL = """\
  template:
    containers:
      - name: main
        env:
          - {{name: VLLM_LOGGING_LEVEL, value: INFO}}
          - name: VLLM_ADDITIONAL_ARGS
            value: {value}
        args: [--dtype=float32]
"""


def test_the_flags_in_vllm_additional_args_are_passed_as_kserves_template_passes_them(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """KServe's own samples set vLLM's flags in this env var; here they reach `isvc serve`, before the args."""
    value = "--enable-auto-tool-choice --tool-call-parser=hermes --max-model-len 2048"
    code, out, err = dry_run(tmp_path, LLM.format(extra=ADDITIONAL.format(value=f"'{value}'")), capsys)
    assert code == 0, err
    assert f"--model_name=chat-model {value} --dtype=float32 --http_port=" in out, out

    bad = "--enable-auto-tool-choice --tool-call-parser=qwen3_coder"
    code, _, err = dry_run(tmp_path, LLM.format(extra=ADDITIONAL.format(value=f"'{bad}'")), capsys)
    assert code == 1 and "spec.template.containers[0].env[1].value: argument --tool_call_parser: invalid choice" in err

    code, _, err = dry_run(tmp_path, LLM.format(extra=ADDITIONAL.format(value='"--max-model-len \'2048"')), capsys)
    assert code == 1 and "spec.template.containers[0].env[1].value: Invalid value:" in err, err
    assert "does not split into flags" in err


def test_only_the_container_named_main_is_the_model_server(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """KServe merges the template into its own by name: a lone container of another name is a sidecar."""
    extra = "  template:\n    containers: [{name: proxy, image: envoy, args: [--config=/etc/envoy.yaml]}]\n"
    code, out, err = dry_run(tmp_path, LLM.format(extra=extra), capsys)
    assert code == 0, err
    assert "spec.template.containers[0] (proxy): accepted but not run" in err
    assert "--config" not in out and "--model_name=chat-model" in out


ISVC_CHAT = """\
apiVersion: serving.kserve.io/v1beta1
kind: InferenceService
metadata: {name: chat, namespace: demo}
spec:
  predictor:
    model: {modelFormat: {name: huggingface}, storageUri: "pvc://models/chat"}
"""


def test_the_two_kinds_may_not_share_a_name_in_one_apply_nor_in_a_dry_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Checked before anything is applied: nothing half-applied, and --dry-run says what apply would."""
    (tmp_path / "both.yaml").write_text(ISVC_CHAT + "---\n" + LLM.format(extra=""))
    state = ["--state-dir", str(tmp_path / "state")]
    for extra in (["--dry-run"], []):
        assert cli.apply(["-f", str(tmp_path / "both.yaml"), *extra, *state]) == 1
        err = capsys.readouterr().err
        assert "both.yaml[doc 1]: metadata.name: InferenceService demo/chat is in the same files" in err, err
        assert "both.yaml[doc 0]: metadata.name: LLMInferenceService demo/chat is in the same files" in err
    assert cli.get(["llmisvc", "-A", *state]) == 0 and cli.get(["isvc", "-A", *state]) == 0
    assert "chat" not in capsys.readouterr().out  # neither was applied

    (tmp_path / "llm.yaml").write_text(LLM.format(extra=""))
    (tmp_path / "isvc.yaml").write_text(ISVC_CHAT)
    assert cli.apply(["-f", str(tmp_path / "llm.yaml"), *state]) == 0
    assert cli.apply(["-f", str(tmp_path / "isvc.yaml"), "--dry-run", *state]) == 1
    assert "metadata.name: LLMInferenceService demo/chat exists" in capsys.readouterr().err


LLM_ISVC = ISVC_CHAT


def test_every_isvc_serve_flag_vllm_lacks_is_dropped_on_the_way_to_an_llm_inference_service() -> None:
    """`vllm serve` refuses a flag it does not know: the pod would crash-loop on the cluster."""
    args = ["--model_name=chat", "--return_raw_logits", "--tensor_input_names=input_ids", "--max_model_len=512"]
    doc = yaml.safe_load(LLM_ISVC)
    doc["spec"]["predictor"]["model"]["args"] = args
    out, warnings = to_llm_inference_service(doc)
    assert out["spec"]["template"]["containers"][0]["args"] == ["--max-model-len=512"]
    for i, flag in ((1, "return_raw_logits"), (2, "tensor_input_names")):
        assert (
            f"spec.predictor.model.args[{i}]: --{flag} is not a vLLM flag; dropped (vllm serve would refuse it)"
            in warnings
        )
