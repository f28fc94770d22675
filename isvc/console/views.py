"""What the console shows, read from the control plane's Store (the same rows ``isvc get``/``describe`` read)."""

from __future__ import annotations

import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from isvc.controlplane.serving import serving_of
from isvc.controlplane.store import Store
from isvc.manifest import SERVICE_KINDS

_NAME = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
"""A Kubernetes name (DNS label): never '..', never a path."""


@dataclass
class ReplicaView:
    revision: str
    index: int
    phase: str
    ready: bool
    pid: int | None
    port: int | None
    restarts: int
    message: str


@dataclass
class ServiceView:
    kind: str
    namespace: str
    name: str
    ready: str
    """``True``, ``False`` or ``Unknown`` (no status published yet)."""
    reason: str
    message: str
    url: str
    address: str
    model_names: list[str]
    runtime: str
    traffic: dict[str, int]
    revisions: list[str]
    conditions: list[dict[str, Any]] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
    replicas: list[ReplicaView] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    serving: dict[str, str] = field(default_factory=dict)
    """What ``isvc describe`` says will serve it: ``task`` and ``engine`` (detail only)."""
    routes: list[str] = field(default_factory=list)
    """The routes that answer, when known before the predictor starts (detail only)."""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def services(store: Store, *, detail: bool = False) -> list[ServiceView]:
    """Every InferenceService and LLMInferenceService, by namespace then name."""
    out = []
    for kind in SERVICE_KINDS:
        for row in store.resources(kind):
            out.append(_view(store, kind, row.namespace, row.name, row.warnings, detail))
    return sorted(out, key=lambda v: (v.namespace, v.name))


def service(store: Store, namespace: str, name: str) -> ServiceView | None:
    for kind in SERVICE_KINDS:
        row = store.resource(kind, namespace, name)
        if row is not None:
            return _view(store, kind, namespace, name, row.warnings, True)
    return None


def _view(store: Store, kind: str, ns: str, name: str, warnings: list[str], detail: bool) -> ServiceView:
    row = store.service(ns, name)
    status = (row.status if row else None) or {}
    conditions = status.get("conditions", [])
    ready: dict[str, Any] = next((c for c in conditions if c.get("type") == "Ready"), {})
    revisions = store.revisions(ns, name)
    plan = revisions[-1].plan if revisions else None
    view = ServiceView(
        kind=kind, namespace=ns, name=name,
        ready=ready.get("status", "Unknown"), reason=ready.get("reason", ""), message=ready.get("message", ""),
        url=status.get("url", ""), address=status.get("address", {}).get("url", ""),
        model_names=status.get("isvc", {}).get("modelNames") or (plan.model_names if plan else []),
        runtime=plan.runtime if plan else "", traffic=dict(row.traffic) if row else {},
        revisions=[r.name for r in revisions], conditions=conditions, warnings=warnings,
    )  # fmt: skip
    view.replicas = [
        ReplicaView(r.revision, r.idx, r.phase.name.title(), r.ready, r.pid, r.port, r.restarts, r.message)
        for r in store.replicas(ns, name)
    ]
    if detail:
        if plan is not None:
            serving = serving_of(plan)
            view.serving = {"task": serving.task_text, "engine": serving.engine}
            view.routes = serving.routes
        view.events = [
            {"time": time.strftime("%H:%M:%S", time.localtime(e.time)), "type": e.type, "reason": e.reason,
             "message": e.message}
            for e in store.events(ns, name)
        ]  # fmt: skip
    return view


def log_path(store: Store, namespace: str, revision: str, index: int) -> Path | None:
    """A replica's log file (the storage initializer's lines, then the predictor's), if the replica exists."""
    row = store.replica(namespace, revision, index)
    if row is not None and row.log:
        return Path(row.log)
    if not (_NAME.fullmatch(namespace) and _NAME.fullmatch(revision)):  # a log of a deleted replica, by name
        return None
    path = store.root / "logs" / namespace / f"{revision}-{index}.log"
    return path if path.exists() else None
