"""`isvc export` output and deploy/kserve applied to a real cluster (`kubectl apply --dry-run=server`).

Runs only with KUBECONFIG set to a reachable cluster that has KServe's CRDs; the API server then runs
its own schema validation and KServe's admission webhooks on every document, and changes nothing.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from isvc.controlplane import cli

REPO = Path(__file__).resolve().parents[2]
SEED = Path("/work/shared/seed/kserve-llm-deployment-notes.md")


def kubectl(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["kubectl", *args], input=stdin, capture_output=True, text=True, timeout=60)


def _cluster_reason() -> str | None:
    if not os.environ.get("KUBECONFIG"):
        return "KUBECONFIG is not set (no cluster to apply to)"
    if shutil.which("kubectl") is None:
        return "kubectl is not installed"
    try:
        probe = kubectl("get", "--raw", "/readyz")
    except subprocess.TimeoutExpired:
        return "the cluster in KUBECONFIG did not answer within 60 s"
    if probe.returncode != 0:
        return f"the cluster in KUBECONFIG is unreachable: {probe.stderr.strip()[:200]}"
    if kubectl("get", "crd", "clusterservingruntimes.serving.kserve.io").returncode != 0:
        return "KServe's CRDs are not installed in the cluster in KUBECONFIG"
    return None


REASON = _cluster_reason()
pytestmark = pytest.mark.skipif(REASON is not None, reason=REASON or "")


def test_the_runtime_applies_with_kustomize() -> None:
    r = kubectl("apply", "--dry-run=server", "-k", str(REPO / "deploy" / "kserve"))
    assert r.returncode == 0, r.stderr
    assert "clusterservingruntime.serving.kserve.io/isvc-huggingfaceserver" in r.stdout


@pytest.mark.skipif(not SEED.exists(), reason="seed notes not present")
def test_the_exported_seed_manifests_apply(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    blocks = re.findall(r"```yaml\n(.*?)```", SEED.read_text(), re.S)
    files = []
    for i, block in enumerate(blocks):
        (path := tmp_path / f"seed{i + 1}.yaml").write_text(re.sub(r"namespace: .*", "namespace: default", block))
        files += ["-f", str(path)]
    assert cli.export(["--runtime", "--image", "registry.example.com/isvc:0.1.0-cpu", *files]) == 0
    manifests = capsys.readouterr().out
    r = kubectl("apply", "--dry-run=server", "-f", "-", stdin=manifests)
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("(server dry run)") == 4
