"""The control plane end to end with real processes: `isvc up`, manifests, a real predictor process, the gateway."""

from __future__ import annotations

import json
import os
import signal
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest
from cp_helpers import FAKE, ControlPlane, fake_container

from isvc.controlplane import cli, process


def test_apply_to_ready_then_routed_by_host_path_and_model(
    control_plane: ControlPlane, capsys: pytest.CaptureFixture[str]
) -> None:
    cp = control_plane
    t0 = time.monotonic()
    assert (
        cp.apply(fake_container("fake1", "--model_name", "fakemodel", "--ready-after", "0.7", "--token-delay", "0.25"))
        == 0
    )
    # Not ready yet: 503 with Retry-After, naming why.
    cp.wait(lambda: cp.replicas("fake1"), what="a replica")
    r = httpx.post(f"{cp.url}/v1/completions", headers={"Host": "fake1.default.example.com"}, json={"prompt": "x"})
    assert r.status_code == 503 and r.headers["retry-after"] == "5"
    assert "no ready revision" in r.json()["error"]["message"]
    cp.wait_ready("fake1")
    apply_to_ready_s = time.monotonic() - t0
    assert apply_to_ready_s < 15

    body = {"model": "fakemodel", "prompt": "hi", "max_tokens": 3}
    for headers, path in [
        ({"Host": "fake1.default.example.com"}, "/openai/v1/completions"),
        ({"Host": "fake1-predictor.default.example.com:8080"}, "/v1/completions"),
        ({}, "/serving/default/fake1/v1/completions"),
        ({}, "/v1/completions"),  # by the OpenAI model field
    ]:
        r = httpx.post(cp.url + path, headers=headers, json=body, timeout=10)
        assert r.status_code == 200, (path, r.text)
        assert r.headers["x-isvc-revision"] == "fake1-predictor-00001"
        assert r.json()["choices"][0]["text"] == " w0 w1 w2"

    # SSE is streamed through chunk by chunk, not buffered: events arrive ~0.25 s apart.
    arrivals = []
    with httpx.stream(
        "POST", f"{cp.url}/v1/completions", json={**body, "stream": True, "max_tokens": 4}, timeout=10
    ) as s:
        assert s.headers["content-type"].startswith("text/event-stream")
        for line in s.iter_lines():
            if line.startswith("data: "):
                arrivals.append((time.monotonic(), line))
    assert arrivals[-1][1] == "data: [DONE]" and len(arrivals) == 5
    gaps = [b[0] - a[0] for a, b in zip(arrivals, arrivals[1:4], strict=False)]
    assert min(gaps) > 0.15, gaps

    # Unknown names: 404 listing the known ones.
    r = httpx.post(f"{cp.url}/v1/completions", json={**body, "model": "nope"})
    assert r.status_code == 404 and "known models: fakemodel" in r.json()["error"]["message"]
    r = httpx.get(f"{cp.url}/v1/models", headers={"Host": "other.default.example.com"})
    assert r.status_code == 404 and "fake1.default.example.com" in r.json()["error"]["message"]
    models = httpx.get(f"{cp.url}/v1/models").json()["data"]
    assert [m["id"] for m in models] == ["fakemodel"]

    # The port the manifest declared (8080) was mapped to a free one.
    (rep,) = cp.replicas("fake1")
    assert rep.port != 8080
    info = httpx.get(f"{cp.url}/serving/default/fake1/info").json()
    assert info["port"] == rep.port and info["pid"] == rep.pid

    capsys.readouterr()
    assert cli.get(cp.args("isvc")) == 0
    out = capsys.readouterr().out
    assert "fake1" in out and "True" in out and "http://fake1.default.example.com" in out
    assert cli.describe(cp.args("isvc", "fake1")) == 0
    out = capsys.readouterr().out
    assert "Model name:   fakemodel" in out and "-H 'Host: fake1.default.example.com'" in out
    assert "fake:latest is recorded, not pulled" in out
    assert cli.logs(cp.args("fake1")) == 0
    assert "fake predictor fakemodel on port" in capsys.readouterr().out

    pid = rep.pid
    assert cli.delete(cp.args("isvc", "fake1")) == 0
    cp.wait(lambda: process.start_ticks(pid) is None, 15, "the predictor to stop")
    cp.wait(lambda: httpx.post(f"{cp.url}/v1/completions", json=body).status_code == 404, 5, "route removal")
    print(f"\napply→Ready (fake predictor, ready-after 0.7 s): {apply_to_ready_s:.2f}s")


RUNTIME = """\
apiVersion: serving.kserve.io/v1alpha1
kind: ServingRuntime
metadata: {{name: fake-runtime, namespace: demo}}
spec:
  supportedModelFormats: [{{name: fake, autoSelect: true, priority: 1}}]
  containers:
    - name: kserve-container
      command: [python, {fake}]
      args: ["--model_name={{{{.Name}}}}", "--require-dir"]
      readinessProbe:
        httpGet: {{path: /v2/health/ready, port: 8080}}
        periodSeconds: 1
---
apiVersion: serving.kserve.io/v1beta1
kind: InferenceService
metadata: {{name: withstore, namespace: demo}}
spec:
  predictor:
    minReplicas: 2
    model:
      modelFormat: {{name: fake}}
      storageUri: pvc://global-shared/models
      args: ["--model_dir=/mnt/models/m1", "--http_port=8080"]
      resources:
        limits: {{cpu: "1", memory: 4Gi}}
"""


def test_runtime_predictor_with_pvc_storage_two_replicas(control_plane: ControlPlane, pvc_root: Path) -> None:
    cp = control_plane
    (pvc_root / "global-shared" / "models" / "m1").mkdir(parents=True)
    assert cp.apply(RUNTIME.format(fake=FAKE)) == 0
    cp.wait_ready("withstore", "demo")
    cp.wait(lambda: sum(r.ready for r in cp.replicas("withstore", "demo")) == 2, 15, "both replicas ready")
    seen = set()
    for _ in range(6):
        info = httpx.get(f"{cp.url}/info", headers={"Host": "withstore.demo.example.com"}).json()
        seen.add(info["pid"])
        # the storage initializer links (never copies) the claim's folder into the revision's model dir
        assert os.path.realpath(info["model_dir"]) == str(pvc_root / "global-shared" / "models" / "m1")
        assert info["model_name"] == "withstore" and info["env_threads"] == "1"
    assert len(seen) == 2  # round-robin over the two replicas


def test_missing_gpus_leave_the_predictor_pending_with_a_condition(control_plane: ControlPlane) -> None:
    cp = control_plane
    text = fake_container("needs-gpu", ns="demo").replace(
        "image: fake:latest", 'image: fake:latest\n        resources: {limits: {nvidia.com/gpu: "2"}}'
    )
    assert cp.apply(text) == 0
    cond = cp.wait(
        lambda: (
            cp.condition("needs-gpu", ns="demo").get("reason") == "Unschedulable"
            and cp.condition("needs-gpu", ns="demo")
        ),
        10,
    )
    assert cond["status"] == "False" and cond["message"] == "needs 2 GPUs, 0 present"
    assert all(r.pid is None for r in cp.replicas("needs-gpu", "demo"))
    host = {"Host": "needs-gpu.demo.example.com"}  # the 503 says why, in each protocol's format
    r = httpx.post(f"{cp.url}/v1/completions", headers=host, json={"prompt": "x"})
    assert r.status_code == 503 and "needs 2 GPUs, 0 present" in r.json()["error"]["message"]
    r = httpx.get(f"{cp.url}/v2/models/needs-gpu/ready", headers=host)
    assert r.status_code == 503 and "needs 2 GPUs, 0 present" in r.json()["error"]


def test_cpu_fallback_runs_gpu_predictors_on_cpu_with_a_warning(start_control_plane) -> None:  # type: ignore[no-untyped-def]
    cp = start_control_plane("--cpu-fallback")
    text = fake_container("fallback").replace(
        "image: fake:latest", 'image: fake:latest\n        resources: {limits: {nvidia.com/gpu: "1"}}'
    )
    assert cp.apply(text) == 0
    cp.wait_ready("fallback")
    warn = cp.condition("fallback", "CPUFallback")
    assert warn["status"] == "True" and warn["severity"] == "Warning"
    info = httpx.get(f"{cp.url}/info", headers={"Host": "fallback.default.example.com"}).json()
    assert info["cuda"] == ""


def test_canary_splits_traffic_and_promotion_moves_it_all(control_plane: ControlPlane) -> None:
    cp = control_plane
    assert cp.apply(fake_container("can", "--model_name", "v1")) == 0
    cp.wait_ready("can")
    assert cp.apply(fake_container("can", "--model_name", "v2", extra="    canaryTrafficPercent: 30\n")) == 0

    def split() -> bool:
        pred = cp.status("can").get("components", {}).get("predictor", {})
        return {t["revisionName"]: t["percent"] for t in pred.get("traffic", [])} == {
            "can-predictor-00001": 70, "can-predictor-00002": 30}  # fmt: skip

    cp.wait(split, 20, "a 70/30 split")
    time.sleep(0.3)  # the gateway refreshes routes every 0.1 s
    counts = Counter(
        httpx.get(f"{cp.url}/info", headers={"Host": "can.default.example.com"}).headers["x-isvc-revision"]
        for _ in range(100)
    )
    assert set(counts) == {"can-predictor-00001", "can-predictor-00002"}
    assert 10 <= counts["can-predictor-00002"] <= 50, counts
    old_pid = next(r.pid for r in cp.replicas("can") if r.revision == "can-predictor-00001")

    assert cp.apply(fake_container("can", "--model_name", "v2")) == 0  # promote: no canary percent
    cp.wait(lambda: process.start_ticks(old_pid) is None, 15, "the old revision to stop")
    heads = {
        httpx.get(f"{cp.url}/info", headers={"Host": "can.default.example.com"}).headers["x-isvc-revision"]
        for _ in range(10)
    }
    assert heads == {"can-predictor-00002"}


def test_a_crashing_predictor_backs_off_and_says_why(control_plane: ControlPlane) -> None:
    cp = control_plane
    assert cp.apply(fake_container("crashy", "--exit-after", "0.3", "--exit-code", "7")) == 0

    def crashed_twice() -> bool:
        reps = cp.replicas("crashy")
        return bool(reps) and reps[0].restarts >= 2

    cp.wait(crashed_twice, 20, "two restarts")
    cond = cp.wait(lambda: (c := cp.condition("crashy")).get("reason") == "CrashLoopBackOff" and c, 10)
    assert "exit code 7" in cond["message"] and "exiting with 7" in cond["message"]
    status = cp.status("crashy")
    assert status["modelStatus"]["lastFailureInfo"]["exitCode"] == 7
    events = [e.reason for e in cp.store().events("default", "crashy", 50)]
    assert "BackOff" in events and "Exited" in events


def test_a_predictor_that_dies_after_becoming_ready_backs_off_and_its_restarts_add_up(
    control_plane: ControlPlane, capsys: pytest.CaptureFixture[str]
) -> None:
    """A crash loop with readiness in between (say, a poison request its client retries):
    the first restart is at once, each next one waits longer, and the count only grows."""
    cp = control_plane
    assert cp.apply(fake_container("flappy", "--exit-after", "1.5", "--exit-code", "9")) == 0
    cp.wait(lambda: (r := cp.replicas("flappy")) and r[0].restarts >= 3, 30, "three restarts")
    events = cp.store().events("default", "flappy", 100)
    backoffs = [e.message.split(" in ")[1] for e in events if e.reason == "BackOff"]
    assert backoffs[:3] == ["0s (restart 1)", "1s (restart 2)", "2s (restart 3)"]
    readies = [e for e in events if e.reason == "Ready"]
    assert len(readies) >= 3  # it was ready before each exit: readiness did not reset the backoff
    capsys.readouterr()
    assert cli.get(cp.args("isvc", "flappy")) == 0
    head, row = capsys.readouterr().out.splitlines()[:2]
    assert int(row[head.index("RESTARTS") :].split()[0]) >= 3  # the column's cell (columns are aligned)


def test_kill_9_of_a_predictor_and_of_the_controller_are_survived(control_plane: ControlPlane) -> None:
    cp = control_plane
    assert cp.apply(fake_container("tough")) == 0
    cp.wait_ready("tough")
    host = {"Host": "tough.default.example.com"}
    (rep,) = cp.replicas("tough")
    os.kill(rep.pid, signal.SIGKILL)
    cp.wait(
        lambda: (r := cp.replicas("tough")) and r[0].pid not in (None, rep.pid) and r[0].ready,
        20,
        "a restarted predictor",
    )
    assert httpx.get(f"{cp.url}/info", headers=host).status_code == 200

    (rep,) = cp.replicas("tough")
    store = cp.store()
    controller_pid = int(store.get_meta("controller_pid") or 0)
    assert controller_pid and process.start_ticks(controller_pid) is not None
    os.kill(controller_pid, signal.SIGKILL)
    # The gateway keeps serving while the controller is down and comes back.
    for _ in range(10):
        assert httpx.get(f"{cp.url}/info", headers=host).json()["pid"] == rep.pid
    cp.wait(lambda: int(cp.store().get_meta("controller_pid") or 0) not in (0, controller_pid), 20, "a new controller")
    cp.wait(lambda: "Adopted" in [e.reason for e in cp.store().events("default", "tough", 50)], 10, "adoption")
    (after,) = cp.replicas("tough")
    assert after.pid == rep.pid and after.ready  # re-adopted, not restarted


def test_api_keys_guard_their_namespace(start_control_plane) -> None:  # type: ignore[no-untyped-def]
    cp = start_control_plane("--api-key", "secure=s3cret")
    assert cp.apply(fake_container("locked", ns="secure")) == 0
    assert cp.apply(fake_container("open", ns="default")) == 0
    cp.wait_ready("locked", "secure")
    cp.wait_ready("open")
    url = f"{cp.url}/serving/secure/locked/info"
    r = httpx.get(url)
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    assert httpx.get(url, headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert httpx.get(url, headers={"Authorization": "Bearer s3cret"}).status_code == 200
    assert httpx.get(f"{cp.url}/serving/default/open/info").status_code == 200


def test_dry_run_prints_the_plan_without_a_control_plane(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = tmp_path / "m.yaml"
    f.write_text(fake_container("dry", ns="demo"))
    state = tmp_path / "state"
    assert cli.apply(["-f", str(f), "--dry-run", "--state-dir", str(state)]) == 0
    out = capsys.readouterr().out
    assert "inferenceservice.serving.kserve.io/dry validated (dry run)" in out
    assert "declared 8080 -> a free 127.0.0.1 port" in out and "--port __ISVC_PORT__" in out
    assert cli.get(["isvc", "-A", "--state-dir", str(state)]) == 0
    assert "No resources found" in capsys.readouterr().err


def test_invalid_manifest_is_refused_by_apply(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = tmp_path / "bad.yaml"
    f.write_text(fake_container("bad").replace("containers:", "canaryTrafficPercent: 101\n    containers:"))
    assert cli.apply(["-f", str(f), "--state-dir", str(tmp_path / "s")]) == 1
    err = capsys.readouterr().err
    assert f"{f}[doc 0]: spec.predictor.canaryTrafficPercent: Invalid value: 101" in err
    assert json.loads(json.dumps(err))  # printable


def test_dash_n_fills_a_placeholder_namespace_but_not_a_real_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    f = tmp_path / "m.yaml"
    f.write_text(fake_container("ph", ns='"${YOUR-NS}"'))
    state = ["--state-dir", str(tmp_path / "s")]
    assert cli.apply(["-f", str(f), "-n", "team-a", "--dry-run", *state]) == 0
    assert "namespace:   team-a" in capsys.readouterr().out
    f.write_text(fake_container("ph", ns="team-b"))
    assert cli.apply(["-f", str(f), "-n", "team-a", "--dry-run", *state]) == 1
    assert "does not match -n team-a" in capsys.readouterr().err
