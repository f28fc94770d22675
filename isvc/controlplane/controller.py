"""The controller process: observe predictors, reconcile, execute actions, publish status and routes.

Run by ``isvc up`` as ``python -m isvc.controlplane.controller --state-dir D``. All state
is in SQLite, so a controller killed with -9 and restarted re-adopts the predictors whose
pid and start time still match, and restarts the rest.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from isvc.controlplane import process
from isvc.controlplane.plan import PORT_TOKEN, LaunchPlan, build_plan, spec_hash
from isvc.controlplane.reconciler import (
    Action,
    Cluster,
    CreateRevision,
    DeleteRevision,
    DeleteService,
    DesiredService,
    MarkPending,
    ReplicaView,
    RevisionView,
    ScheduleRestart,
    ServiceView,
    SetTraffic,
    StartReplica,
    StopReplica,
    reconcile,
)
from isvc.controlplane.settings import CPU_FALLBACK_ENV, ControllerSettings, detect_gpus, env_flag
from isvc.controlplane.status import ReplicaFacts, ServiceFacts, compute_route, compute_status
from isvc.controlplane.store import ReplicaRow, ResourceRow, Store
from isvc.errors import IsvcError
from isvc.manifest import SERVICE_KINDS, llmisvc
from isvc.manifest.models import InferenceService, LLMInferenceService, ServingRuntime

logger = logging.getLogger(__name__)
EXIT_OOM = 137


@dataclass(slots=True)
class _Probe:
    successes: int = 0
    failures: int = 0
    next_at: float = 0.0


@dataclass(slots=True)
class _Desired:
    service: DesiredService
    plan: LaunchPlan | None
    generation: int
    warnings: list[str]
    error_reason: str = ""


@dataclass
class Controller:
    settings: ControllerSettings
    store: Store = field(init=False)
    procs: dict[tuple[str, str, int], subprocess.Popen[bytes]] = field(default_factory=dict)
    probes: dict[tuple[str, str, int], _Probe] = field(default_factory=dict)
    _plan_cache: dict[tuple[str, str, str, int, int], _Desired] = field(default_factory=dict)
    _pool: ThreadPoolExecutor = field(default_factory=lambda: ThreadPoolExecutor(max_workers=8))
    _next_mem_check: float = 0.0
    stopping: bool = False

    def __post_init__(self) -> None:
        self.store = Store(self.settings.state_dir)

    # ---- desired ----------------------------------------------------------------------
    def desired(self) -> dict[tuple[str, str], _Desired]:
        runtimes = self.store.runtimes()
        out: dict[tuple[str, str], _Desired] = {}
        # InferenceServices first: an LLMInferenceService of the same name (apply refuses one) waits for it to go
        for row in [r for kind in SERVICE_KINDS for r in self.store.resources(kind)]:
            if (row.namespace, row.name) in out:
                continue
            key = (row.kind, row.namespace, row.name, row.generation, runtimes.version)
            cached = self._plan_cache.get(key)
            if cached is None:
                cached = self._plan(row, runtimes.items)
                self._plan_cache[key] = cached
            out[(row.namespace, row.name)] = cached
        return out

    @staticmethod
    def _plan(row: ResourceRow, runtimes: list[ServingRuntime]) -> _Desired:
        body, rename = row.body, _same
        if row.kind == "LLMInferenceService":  # runs as the InferenceService it amounts to
            derived = llmisvc.to_inference_service(LLMInferenceService.model_validate(row.body))
            body, rename = derived.body, derived.rename
        isvc = InferenceService.model_validate(body)
        ns, name = isvc.metadata.namespace, isvc.metadata.name
        pred = isvc.spec.predictor
        try:
            plan = build_plan(isvc, runtimes)
        except IsvcError as exc:
            reason = (
                "NoSupportingRuntime" if getattr(exc, "code", "") == "no_supporting_runtime" else "InvalidPredictorSpec"
            )
            invalid = DesiredService(ns, name, "", invalid=rename(exc.message))
            return _Desired(invalid, None, row.generation, row.warnings, reason)
        svc = DesiredService(ns, name, spec_hash(body), plan.replicas, pred.canary_traffic_percent, plan.gpus)
        return _Desired(svc, plan, row.generation, row.warnings + plan.notes)

    # ---- observe ----------------------------------------------------------------------
    def observe(self, now: float) -> None:
        """Refresh every replica row: process exits, readiness probes, memory limits."""
        rows = [r for r in self.store.replicas() if r.alive]
        plans = {(rv.namespace, rv.name): rv.plan for rv in self.store.revisions()}
        to_probe = []
        for r in rows:
            key = (r.namespace, r.revision, r.idx)
            code = self._exit_code(key, r)
            if code is not False:
                self._record_exit(r, code, "Error" if code not in (None, 0) else "Completed", now)
                continue
            plan = plans.get((r.namespace, r.revision))
            if plan is None:
                continue
            probe = self.probes.setdefault(key, _Probe(next_at=(r.started or now) + plan.probe.initial_delay_s))
            if now >= probe.next_at:
                probe.next_at = now + (plan.probe.period_s if r.ready else min(plan.probe.period_s, 0.25))
                to_probe.append((r, plan, probe))
        results = list(self._pool.map(lambda t: self._probe(t[0], t[1]), to_probe))
        for (r, plan, probe), ok in zip(to_probe, results, strict=True):
            self._apply_probe(r, plan, probe, ok)
        if now >= self._next_mem_check:
            self._next_mem_check = now + self.settings.memory_check_s
            self._check_memory(rows, plans, now)

    def _exit_code(self, key: tuple[str, str, int], r: ReplicaRow) -> int | None | bool:
        """False while running; the exit code (None if unknown: not our child) once it exited."""
        proc = self.procs.get(key)
        if proc is not None and proc.pid == r.pid:
            code = proc.poll()
            return False if code is None else code
        return False if r.pid and process.is_same_process(r.pid, r.start_ticks) else None

    @staticmethod
    def _probe(r: ReplicaRow, plan: LaunchPlan) -> bool:
        p = plan.probe
        if r.port is None:
            return False
        if p.kind == "tcp":
            return process.probe_tcp(r.port, p.timeout_s)
        return process.probe_http(r.port, p.path, p.timeout_s)

    def _apply_probe(self, r: ReplicaRow, plan: LaunchPlan, probe: _Probe, ok: bool) -> None:
        ns, rev, idx = r.namespace, r.revision, r.idx
        if ok:
            probe.successes, probe.failures = probe.successes + 1, 0
            if not r.ready and probe.successes >= plan.probe.success_threshold:
                self.store.replica_ready(ns, rev, idx)
                elapsed = time.time() - (r.started or time.time())
                self.store.event(
                    ns, r.service, "Normal", "Ready", f"{rev} replica {idx} ready on port {r.port} after {elapsed:.1f}s"
                )
                logger.info("predictor %s/%s ready on %s after %.1fs", rev, idx, r.port, elapsed)
        else:
            probe.failures, probe.successes = probe.failures + 1, 0
            if r.ready and probe.failures >= plan.probe.failure_threshold:
                self.store.replica_unready(ns, rev, idx, "readiness probe failing")
                self.store.event(
                    ns,
                    r.service,
                    "Warning",
                    "Unhealthy",
                    f"{rev} replica {idx}: readiness probe failed {probe.failures} times",
                )

    def _record_exit(self, r: ReplicaRow, code: int | None, reason: str, now: float) -> None:
        ns, rev, idx = r.namespace, r.revision, r.idx
        self.procs.pop((ns, rev, idx), None)
        self.probes.pop((ns, rev, idx), None)
        prev = r.last_exit or {}
        if prev.get("reason") == "OOMKilled" and prev.get("pid") == r.pid:
            reason, code = "OOMKilled", EXIT_OOM
        if code is None:
            reason = "exited while the controller was not watching"
        tail = process.tail(Path(r.log)) if r.log else []
        last = {
            "exit_code": code,
            "reason": reason,
            "log_tail": tail,
            "time": _now_iso(),
            "revision": rev,
            "pid": r.pid,
        }
        ran_s = max(0.0, now - (r.started or now))  # the reconciler decides whether a crash loop goes on
        self.store.replica_exited(ns, rev, idx, last, ran_s)
        self.store.event(
            ns, r.service, "Warning", "Exited", f"{rev} replica {idx} exited (code {code}): {' | '.join(tail[-2:])}"
        )

    def _check_memory(self, rows: list[ReplicaRow], plans: dict[tuple[str, str], LaunchPlan], now: float) -> None:
        for r in rows:
            plan = plans.get((r.namespace, r.revision))
            if plan is None or not plan.memory_limit_bytes or not r.pid:
                continue
            rss = process.group_rss_bytes(r.pid)
            if rss > plan.memory_limit_bytes and process.is_same_process(r.pid, r.start_ticks):
                msg = f"RSS {rss / 2**20:.0f} MiB over the memory limit {plan.memory_limit_bytes / 2**20:.0f} MiB"
                self.store.replica_killed(
                    r.namespace, r.revision, r.idx, {"reason": "OOMKilled", "pid": r.pid, "message": msg}
                )
                self.store.event(r.namespace, r.service, "Warning", "OOMKilled", f"{r.revision} replica {r.idx}: {msg}")
                process.kill_group(r.pid, signal.SIGKILL)

    # ---- views for the reconciler -----------------------------------------------------
    def views(self) -> list[ServiceView]:
        replicas: dict[tuple[str, str], list[ReplicaView]] = {}
        for r in self.store.replicas():
            replicas.setdefault((r.namespace, r.revision), []).append(
                ReplicaView(r.idx, r.phase, r.ready, r.crash_loop, r.ran_s, r.next_start, r.gpus)
            )
        revs: dict[tuple[str, str], list[RevisionView]] = {}
        for rv in self.store.revisions():
            revs.setdefault((rv.namespace, rv.service), []).append(
                RevisionView(rv.name, rv.number, rv.spec_hash, tuple(replicas.get((rv.namespace, rv.name), [])))
            )
        return [
            ServiceView(s.namespace, s.name, tuple(revs.get((s.namespace, s.name), [])), s.rolled_out, s.traffic)
            for s in self.store.services()
        ]

    # ---- execute ----------------------------------------------------------------------
    def execute(self, actions: list[Action], desired: dict[tuple[str, str], _Desired]) -> None:
        deferred = [a for a in actions if isinstance(a, (StopReplica, DeleteRevision, DeleteService))]
        for a in actions:
            if isinstance(a, CreateRevision):
                d = desired[(a.namespace, a.service)]
                assert d.plan is not None
                self.store.create_revision(a.namespace, a.service, a.revision, a.number, a.spec_hash, d.plan)
                self.store.event(
                    a.namespace, a.service, "Normal", "RevisionCreated", f"created {a.revision} ({d.plan.runtime})"
                )
            elif isinstance(a, StartReplica):
                self._start(a)
            elif isinstance(a, MarkPending):
                self.store.replica_pending(a.namespace, a.service, a.revision, a.index, a.message)
                self.store.event(
                    a.namespace,
                    a.service,
                    "Warning",
                    "FailedScheduling",
                    f"{a.revision} replica {a.index}: {a.message}",
                )
            elif isinstance(a, ScheduleRestart):
                row = self.store.replica(a.namespace, a.revision, a.index)
                restarts = (row.restarts if row else 0) + 1  # only grows: what users see flap
                delay = max(0.0, a.at - time.time())
                self.store.replica_backoff(a.namespace, a.revision, a.index, at=a.at, restarts=restarts,
                                           crash_loop=a.crash_loop)  # fmt: skip
                if row:
                    self.store.event(
                        a.namespace,
                        row.service,
                        "Warning",
                        "BackOff",
                        f"restarting {a.revision} replica {a.index} in {delay:.0f}s (restart {restarts})",
                    )
            elif isinstance(a, SetTraffic):
                self.store.set_traffic(a.namespace, a.service, a.traffic, a.rolled_out)
                pretty = ", ".join(f"{k}={v}%" for k, v in sorted(a.traffic.items()))
                self.store.event(a.namespace, a.service, "Normal", "Traffic", f"traffic {pretty}")
        if any(isinstance(a, SetTraffic) for a in actions):
            self.publish(desired)  # routes move off a revision before it is stopped
        for a in deferred:
            if isinstance(a, StopReplica):
                self._stop(a.namespace, a.revision, a.index)
            elif isinstance(a, DeleteRevision):
                self.store.delete_revision(a.namespace, a.revision)
                self.store.event(a.namespace, a.service, "Normal", "RevisionDeleted", f"deleted {a.revision}")
            elif isinstance(a, DeleteService):
                self.store.delete_service(a.namespace, a.service)

    def _start(self, a: StartReplica) -> None:
        revision = self.store.revision(a.namespace, a.revision)
        assert revision is not None  # the reconciler starts replicas of existing revisions only
        plan = revision.plan
        port = process.free_port()
        command = [c.replace(PORT_TOKEN, str(port)) for c in process.resolve_command(plan.command)]
        if plan.tensor_parallel and len(a.gpus) > 1 and not any("tensor_parallel_size" in c for c in command):
            command.append(f"--tensor_parallel_size={len(a.gpus)}")
        env = dict(os.environ)
        env.update({k: v.replace(PORT_TOKEN, str(port)) for k, v in plan.env.items()})
        env["CUDA_VISIBLE_DEVICES"] = ",".join(map(str, a.gpus))
        if plan.cpu_threads:
            for name in ("OMP_NUM_THREADS", "ISVC_NUM_THREADS", "MKL_NUM_THREADS"):
                env[name] = str(plan.cpu_threads)
        root = self.settings.state_dir
        pod_file = root / "pods" / a.namespace / f"{a.revision}-{a.index}.json"
        log_file = root / "logs" / a.namespace / f"{a.revision}-{a.index}.log"
        pod_file.parent.mkdir(parents=True, exist_ok=True)
        pod = {
            "command": command,
            "env": env,  # the full environment: exec replaces the wrapper's
            "storage_uri": plan.storage_uri,
            "model_dest": str(root / "models" / a.namespace / a.revision),
        }
        pod_file.write_text(json.dumps(pod))
        proc = process.spawn(pod_file, log_file, env)
        ticks = process.start_ticks(proc.pid)
        key = (a.namespace, a.revision, a.index)
        self.procs[key] = proc
        self.probes.pop(key, None)
        self.store.replica_started(
            a.namespace, a.service, a.revision, a.index, pid=proc.pid, start_ticks=ticks, port=port,
            gpus=tuple(a.gpus), log=str(log_file), cpu_fallback=a.cpu_fallback,
        )  # fmt: skip
        where = "CPU (fallback)" if a.cpu_fallback else (f"GPUs {a.gpus}" if a.gpus else "CPU")
        self.store.event(
            a.namespace,
            a.service,
            "Normal",
            "Started",
            f"{a.revision} replica {a.index}: pid {proc.pid}, port {port}, {where}",
        )
        logger.info("started %s/%s pid %s port %s", a.revision, a.index, proc.pid, port)

    def _stop(self, ns: str, rev: str, idx: int) -> None:
        row = self.store.replica(ns, rev, idx)
        key = (ns, rev, idx)
        proc = self.procs.pop(key, None)
        self.probes.pop(key, None)
        if row is not None and row.pid:
            process.terminate(row.pid, row.start_ticks, self.settings.stop_grace_s, proc)
        self.store.delete_replica(ns, rev, idx)

    # ---- publish ----------------------------------------------------------------------
    def publish(self, desired: dict[tuple[str, str], _Desired]) -> None:
        """Write each service's status and route; bump routes_version when any route changed."""
        domain, gateway = self.store.domain(), self.store.gateway_url()
        replicas: dict[tuple[str, str], list[ReplicaFacts]] = {}
        for r in self.store.replicas():
            replicas.setdefault((r.namespace, r.service), []).append(ReplicaFacts(
                r.revision, r.idx, r.phase, r.ready, r.port, r.restarts, r.message, r.last_exit, r.cpu_fallback,
            ))  # fmt: skip
        revs: dict[tuple[str, str], list[str]] = {}
        for rv in self.store.revisions():
            revs.setdefault((rv.namespace, rv.service), []).append(rv.name)
        changed = False
        for (ns, name), d in desired.items():
            s = self.store.ensure_service(ns, name)
            facts = ServiceFacts(
                ns, name, d.generation, revs.get((ns, name), []), s.traffic, s.rolled_out,
                replicas.get((ns, name), []), d.service.invalid, d.error_reason or "InvalidPredictorSpec",
                d.plan.model_names if d.plan else [name], d.plan.timeout_s if d.plan else None, d.warnings,
                d.plan.gpus if d.plan else 0,
            )  # fmt: skip
            status = compute_status(facts, domain=domain, gateway=gateway, previous=s.status)
            ready = next(c for c in status["conditions"] if c["type"] == "Ready")
            route = compute_route(facts, ready.get("message", ""))
            if status != s.status or route != s.route:
                self.store.publish_service(ns, name, status, route)
                changed = changed or route != s.route
        if changed:
            self.store.bump("routes_version")

    # ---- loop -------------------------------------------------------------------------
    def cluster(self) -> Cluster:
        gpus = int(self.store.get_meta("gpus", str(self.settings.gpus)) or 0)
        fallback = (self.store.get_meta("cpu_fallback", "1" if self.settings.cpu_fallback else "0") or "0") == "1"
        return Cluster(gpus_total=gpus, cpu_fallback=fallback)

    def tick(self) -> list[Action]:
        now = time.time()
        self.observe(now)
        desired = self.desired()
        wanted = [d.service for d in desired.values()]
        actions = reconcile(wanted, self.views(), self.cluster(), now)
        self.execute(actions, desired)
        self.publish(desired)
        return actions

    def adopt(self) -> None:
        """At start: say which predictors survived the previous controller."""
        for r in self.store.replicas():
            if r.alive and r.pid and process.is_same_process(r.pid, r.start_ticks):
                self.store.event(
                    r.namespace, r.service, "Normal", "Adopted", f"{r.revision} replica {r.idx} (pid {r.pid}) adopted"
                )
                self.probes[(r.namespace, r.revision, r.idx)] = _Probe(successes=1 if r.ready else 0)

    def stop_all(self) -> None:
        for r in self.store.replicas():
            if r.pid:
                proc = self.procs.get((r.namespace, r.revision, r.idx))
                process.terminate(r.pid, r.start_ticks, self.settings.stop_grace_s, proc)
        deadline = time.time() + self.settings.stop_grace_s + 2
        for r in self.store.replicas():
            while r.pid and process.is_same_process(r.pid, r.start_ticks) and time.time() < deadline:
                proc = self.procs.get((r.namespace, r.revision, r.idx))
                if proc is not None:
                    proc.poll()
                time.sleep(0.05)
        self.store.forget_processes()  # the next `isvc up` starts them afresh

    def run(self) -> None:
        parent = os.getppid()
        self.store.set_meta("controller_pid", str(os.getpid()))
        self.adopt()
        seen = -1
        while not self.stopping:
            if os.getppid() != parent and parent != 1:
                logger.warning("the isvc up process is gone; exiting and leaving predictors running")
                return
            try:
                actions = self.tick()
            except Exception:
                logger.exception("reconcile pass failed")
                actions = []
            if actions:
                continue
            deadline = time.monotonic() + self.settings.tick_s
            while time.monotonic() < deadline and not self.stopping:
                version = self.store.version("desired_version")
                if version != seen:
                    seen = version
                    break
                time.sleep(0.05)
        if (self.store.get_meta("shutdown") or "") == "1":
            logger.info("stopping all predictors")
            self.stop_all()


def _same(text: str) -> str:
    return text


def _now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="isvc-controller")
    parser.add_argument("--state-dir", required=True)
    parser.add_argument("--cpu-fallback", action="store_true", default=env_flag(CPU_FALLBACK_ENV))
    parser.add_argument("--gpus", type=int, default=None)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s controller %(levelname)s %(message)s")
    settings = ControllerSettings(
        state_dir=Path(args.state_dir),
        cpu_fallback=args.cpu_fallback,
        gpus=detect_gpus() if args.gpus is None else args.gpus,
    )
    controller = Controller(settings)

    def on_term(signum: int, frame: Any) -> None:
        controller.stopping = True

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    controller.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
