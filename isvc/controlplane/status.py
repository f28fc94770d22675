"""KServe-shaped status and the gateway's route for one InferenceService, from controller facts.

Pure functions: the controller passes rows it read; nothing here touches the database.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from isvc.controlplane.reconciler import Phase


@dataclass(slots=True)
class ReplicaFacts:
    revision: str
    index: int
    phase: Phase
    ready: bool
    port: int | None
    restarts: int
    message: str = ""
    last_exit: dict[str, Any] | None = None
    cpu_fallback: bool = False


@dataclass(slots=True)
class ServiceFacts:
    namespace: str
    name: str
    generation: int
    revisions: list[str]  # ascending
    traffic: dict[str, int]
    rolled_out: str | None
    replicas: list[ReplicaFacts]
    plan_error: str | None = None
    plan_error_reason: str = "InvalidPredictorSpec"
    model_names: list[str] = field(default_factory=list)
    timeout_s: float | None = None
    warnings: list[str] = field(default_factory=list)
    gpus: int = 0


def _cond(type_: str, ok: bool, reason: str = "", message: str = "", severity: str | None = None) -> dict[str, Any]:
    c: dict[str, Any] = {"type": type_, "status": "True" if ok else "False"}
    if reason:
        c["reason"] = reason
    if message:
        c["message"] = message
    if severity:
        c["severity"] = severity
    return c


def _exit_message(last: dict[str, Any]) -> str:
    lines = last.get("log_tail") or []
    tail = " | ".join(lines[-3:])
    code = last.get("exit_code")
    head = f"exit code {code}" if code is not None else "exited"
    return f"{head}: {last.get('reason', '')}; last log lines: {tail}" if tail else f"{head}: {last.get('reason', '')}"


def _why_not_ready(f: ServiceFacts) -> tuple[str, str]:
    if f.plan_error:
        return f.plan_error_reason, f.plan_error
    latest = f.revisions[-1] if f.revisions else None
    mine = [r for r in f.replicas if r.revision == latest] or f.replicas
    for r in mine:
        if r.phase == Phase.PENDING:
            return "Unschedulable", r.message
    for r in mine:
        if r.phase in (Phase.EXITED, Phase.BACKOFF) and r.last_exit:
            reason = "StorageInitFailed" if r.last_exit.get("exit_code") == 3 else "CrashLoopBackOff"
            if r.last_exit.get("reason") == "OOMKilled":
                reason = "OOMKilled"
            return reason, _exit_message(r.last_exit)
    if not f.revisions:
        return "Creating", "creating the first revision"
    return "Loading", f"revision {latest} is starting (waiting for its readiness probe)"


def compute_status(f: ServiceFacts, *, domain: str, gateway: str, previous: dict[str, Any] | None) -> dict[str, Any]:
    """status: url, address, conditions, components.predictor, modelStatus; timestamps kept when unchanged."""
    ready_revs = {r.revision for r in f.replicas if r.ready}
    serving = [rev for rev, pct in f.traffic.items() if pct > 0 and rev in ready_revs]
    predictor_ready = bool(serving)
    reason, message = ("", "") if predictor_ready else _why_not_ready(f)
    url = f"http://{f.name}.{f.namespace}.{domain}"
    conditions = [
        _cond("IngressReady", True, message=f"{gateway}/serving/{f.namespace}/{f.name}"),
        _cond("PredictorReady", predictor_ready, reason, message),
        _cond("Ready", predictor_ready, reason, message),
    ]
    if any(r.cpu_fallback for r in f.replicas):
        conditions.append(_cond(
            "CPUFallback", True, "NoGPU", f"needs {f.gpus} GPU(s), running on CPU (isvc up --cpu-fallback)", "Warning"
        ))  # fmt: skip
    if f.warnings:
        conditions.append(_cond("Warnings", True, "FieldsNotHonoured", "; ".join(f.warnings), "Info"))
    old = {c["type"]: c for c in (previous or {}).get("conditions", [])}
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    for c in conditions:
        prev = old.get(c["type"])
        same = prev is not None and prev.get("status") == c["status"] and prev.get("reason") == c.get("reason")
        c["lastTransitionTime"] = prev["lastTransitionTime"] if same and prev else now
    latest = f.revisions[-1] if f.revisions else None
    latest_ready = next((r for r in reversed(f.revisions) if r in ready_revs), None)
    failed = [r for r in f.replicas if r.phase in (Phase.EXITED, Phase.BACKOFF)]
    last = next((r.last_exit for r in failed if r.last_exit), None)
    if predictor_ready:
        state, transition = "Loaded", "UpToDate" if latest in serving or latest == f.rolled_out else "InProgress"
    elif f.plan_error:
        state, transition = "FailedToLoad", "InvalidSpec"
    elif failed:
        state, transition = "FailedToLoad", "BlockedByFailedLoad"
    else:
        state, transition = ("Pending" if reason == "Unschedulable" else "Loading"), "InProgress"
    model_status: dict[str, Any] = {
        "transitionStatus": transition,
        "states": {"activeModelState": state, "targetModelState": "Loaded"},
        "copies": {"failedCopies": len(failed), "totalCopies": len({(r.revision, r.index) for r in f.replicas})},
    }
    if last:
        model_status["lastFailureInfo"] = {
            "reason": "ModelLoadFailed",
            "message": _exit_message(last),
            "exitCode": last.get("exit_code"),
            "time": last.get("time"),
            "modelRevisionName": last.get("revision"),
        }
    elif f.plan_error:
        model_status["lastFailureInfo"] = {"reason": f.plan_error_reason, "message": f.plan_error}
    traffic = [
        {
            "revisionName": rev,
            "percent": pct,
            "latestRevision": rev == latest,
            "tag": "latest" if rev == latest else "prev",
        }
        for rev, pct in sorted(f.traffic.items())
    ]
    return {
        "url": url,
        "address": {"url": f"{gateway}/serving/{f.namespace}/{f.name}"},
        "observedGeneration": f.generation,
        "conditions": conditions,
        "components": {
            "predictor": {
                "url": f"http://{f.name}-predictor.{f.namespace}.{domain}",
                "latestCreatedRevision": latest,
                "latestReadyRevision": latest_ready,
                "latestRolledoutRevision": f.rolled_out,
                "traffic": traffic,
            }
        },
        "modelStatus": model_status,
        "isvc": {
            "modelNames": f.model_names,
            "replicas": [
                {
                    "revision": r.revision,
                    "index": r.index,
                    "phase": r.phase.name.title(),
                    "ready": r.ready,
                    "port": r.port,
                    "restarts": r.restarts,
                    "message": r.message,
                }
                for r in f.replicas
            ],  # fmt: skip
            "warnings": f.warnings,
        },
    }


def compute_route(f: ServiceFacts, reason: str = "") -> dict[str, Any]:
    """What the gateway needs: endpoints of ready replicas per revision, traffic, names, timeout."""
    revisions = []
    for rev, pct in sorted(f.traffic.items()):
        endpoints = [f"http://127.0.0.1:{r.port}" for r in f.replicas if r.revision == rev and r.ready and r.port]
        revisions.append({"name": rev, "percent": pct, "endpoints": endpoints})
    return {
        "namespace": f.namespace,
        "name": f.name,
        "model_names": f.model_names,
        "timeout_s": f.timeout_s,
        "revisions": revisions,
        "reason": reason,
    }
