"""Helpers for control-plane tests: run the real `isvc up` on 127.0.0.1, build manifests, stop everything."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from isvc.controlplane import cli, process
from isvc.controlplane.store import ReplicaRow, Store
from isvc.node import cli as node_cli

FAKE = Path(__file__).with_name("fake_predictor.py")
SEED = Path("/work/shared/seed/kserve-llm-deployment-notes.md")
NS = "kserve-test"


def seed(index: int) -> str:
    """The seed's manifest number ``index`` as written, in namespace ``NS`` (skips the test without the seed)."""
    if not SEED.exists():
        pytest.skip(f"seed notes not present at {SEED}")
    blocks = re.findall(r"```yaml\n(.*?)```", SEED.read_text(), re.S)
    return re.sub(r"namespace: .*", f"namespace: {NS}", blocks[index - 1])


def seed_1_on_cpu() -> str:
    """The seed's first manifest without its ``nvidia.com/gpu`` line, so that it runs on this machine's CPU."""
    return seed(1).replace('nvidia.com/gpu: "1"', "").replace("\n\n", "\n")


def stock_pvc(pvc_root: Path, model_dir: Path) -> None:
    """`pvc://global-shared/models` holding the model under the seed's folder names."""
    models = pvc_root / "global-shared" / "models"
    models.mkdir(parents=True)
    for name in ("Llama-2-7b-chat-hf", "Qwen1.5-14B-Chat", "Qwen2-72B-Instruct-GPTQ-Int4"):
        (models / name).symlink_to(model_dir, target_is_directory=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class ControlPlane:
    state_dir: Path
    port: int
    proc: subprocess.Popen[bytes]
    tmp: Path
    pids_seen: set[int] = field(default_factory=set)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def args(self, *extra: str) -> list[str]:
        return [*extra, "--state-dir", str(self.state_dir)]

    def apply(self, text: str, *extra: str) -> int:
        path = self.tmp / f"manifest-{time.monotonic_ns()}.yaml"
        path.write_text(text)
        return cli.apply(self.args("-f", str(path), *extra))

    def store(self) -> Store:
        return Store(self.state_dir)

    def status(self, name: str, ns: str = "default") -> dict[str, Any]:
        row = self.store().service(ns, name)
        return (row.status if row else None) or {}

    def condition(self, name: str, type_: str = "Ready", ns: str = "default") -> dict[str, Any]:
        return next((c for c in self.status(name, ns).get("conditions", []) if c["type"] == type_), {})

    def wait(self, check: Callable[[], Any], timeout_s: float = 30.0, what: str = "condition") -> Any:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            value = check()
            if value:
                return value
            time.sleep(0.05)
        raise AssertionError(f"timed out after {timeout_s}s waiting for {what}; log:\n{self.log_tail()}")

    def wait_ready(self, name: str, ns: str = "default", timeout_s: float = 30.0) -> dict[str, Any]:
        def ready() -> bool:
            cond = self.condition(name, ns=ns)
            if cond.get("reason") in ("CrashLoopBackOff", "StorageInitFailed", "InvalidPredictorSpec"):
                raise AssertionError(f"{ns}/{name} failed: {cond.get('message')}")
            return cond.get("status") == "True"

        self.wait(ready, timeout_s, f"{ns}/{name} Ready")
        return self.status(name, ns)

    def replicas(self, name: str, ns: str = "default") -> list[ReplicaRow]:
        rows = self.store().replicas(ns, name)
        self.pids_seen |= {r.pid for r in rows if r.pid}
        return rows

    def log_tail(self) -> str:
        lines = []
        for f in sorted((self.state_dir / "logs").rglob("*.log")):
            lines.append(f"== {f.name}: " + " | ".join(process.tail(f, 6)))
        return "\n".join(lines)


def fake_container(name: str, *args: str, ns: str = "default", extra: str = "") -> str:
    argv = json.dumps([str(FAKE), "--port", "8080", *args])
    return f"""\
apiVersion: serving.kserve.io/v1beta1
kind: InferenceService
metadata: {{name: {name}, namespace: {ns}}}
spec:
  predictor:
{extra}    containers:
      - name: kserve-container
        image: fake:latest
        command: [{json.dumps(sys.executable)}]
        args: {argv}
"""


def start(tmp: Path, *extra: str) -> ControlPlane:
    state = tmp / "state"
    port = free_port()
    log = open(tmp / "up.log", "ab")  # noqa: SIM115 (the server process owns it)
    proc = subprocess.Popen(
        [sys.executable, "-m", "isvc", "up", "--port", str(port), "--state-dir", str(state), *extra],
        stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    cp = ControlPlane(state, port, proc, tmp)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"isvc up exited {proc.returncode}: {(tmp / 'up.log').read_text()}")
        try:
            if httpx.get(f"{cp.url}/_isvc/healthz", timeout=1).status_code == 200:
                return cp
        except httpx.HTTPError:
            time.sleep(0.05)
    raise AssertionError("isvc up did not come up")


def stop(cp: ControlPlane) -> None:
    rows = cp.store().replicas()
    cp.pids_seen |= {r.pid for r in rows if r.pid}
    assert node_cli.down(cp.args("--timeout", "20")) == 0
    try:
        cp.proc.wait(timeout=20)
    finally:
        if cp.proc.poll() is None:
            os.killpg(cp.proc.pid, signal.SIGKILL)
            cp.proc.wait()
    alive = [pid for pid in cp.pids_seen if process.start_ticks(pid) is not None]
    for pid in alive:
        process.kill_group(pid, signal.SIGKILL)
    assert not alive, f"predictors survived isvc down: {alive}"
