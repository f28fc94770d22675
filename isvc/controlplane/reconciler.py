"""The pure heart of the controller: ``reconcile(desired, actual, now) -> actions``.

No I/O here. The controller (controller.py) observes processes and the database, builds
the snapshots below, and executes the returned actions. Revision and traffic rules follow
KServe/Knative:

- a spec change creates revision ``{name}-predictor-NNNNN``; traffic stays on the
  rolled-out revision until the new one is ready, then moves 100% (and the old one is
  stopped), unless ``canaryTrafficPercent`` is set: then the latest ready revision gets
  that percent and the rolled-out one the rest, and both keep running;
- removing ``canaryTrafficPercent`` (or setting it to 100) promotes the latest revision;
- a replica whose process exits restarts at once the first time, then, while it keeps
  exiting, after an exponential backoff, ready or not in between (a crash loop); a run of
  ``BACKOFF_RESET_S`` ends the loop (the kubelet's rule, at our scale);
- a replica needing more GPUs than are free stays Pending (unless CPU fallback is on).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

BACKOFF_BASE_S = 1.0
BACKOFF_MAX_S = 60.0
BACKOFF_RESET_S = 2 * BACKOFF_MAX_S
"""A process that ran this long before it exited was not in a crash loop: its restart is
immediate again. The kubelet's window is also twice its longest backoff (10 min for 5)."""


class Phase(enum.IntEnum):
    """Replica lifecycle; the order is the lifecycle."""

    PENDING = enum.auto()  # not started: waiting for GPUs
    STARTING = enum.auto()  # process alive, not ready yet
    RUNNING = enum.auto()  # process alive (ready or not: see ReplicaView.ready)
    # Anything after RUNNING has no live process.
    EXITED = enum.auto()  # exited, restart not yet scheduled
    BACKOFF = enum.auto()  # exited, restart scheduled at next_start


def backoff_s(crash_loop: int) -> float:
    """The wait before a restart: none for the first of a crash loop, then 1, 2, 4 ... 60 s."""
    if crash_loop <= 0:
        return 0.0
    return min(BACKOFF_MAX_S, BACKOFF_BASE_S * 2 ** (crash_loop - 1))


def revision_name(service: str, number: int) -> str:
    return f"{service}-predictor-{number:05d}"


@dataclass(frozen=True, slots=True)
class DesiredService:
    namespace: str
    name: str
    spec_hash: str
    replicas: int = 1
    canary_percent: int | None = None
    gpus: int = 0
    invalid: str | None = None  # a plan error: no revision is created


@dataclass(frozen=True, slots=True)
class ReplicaView:
    index: int
    phase: Phase
    ready: bool = False
    crash_loop: int = 0
    """Restarts since the replica last ran ``BACKOFF_RESET_S`` (readiness does not end a loop)."""
    ran_s: float = 0.0
    """How long its last process ran before it exited."""
    next_start: float | None = None
    gpus: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class RevisionView:
    name: str
    number: int
    spec_hash: str
    replicas: tuple[ReplicaView, ...] = ()

    @property
    def ready(self) -> bool:
        return any(r.ready for r in self.replicas)


@dataclass(frozen=True, slots=True)
class ServiceView:
    namespace: str
    name: str
    revisions: tuple[RevisionView, ...] = ()  # ascending by number
    rolled_out: str | None = None
    traffic: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Cluster:
    """Machine facts the reconciler needs."""

    gpus_total: int = 0
    cpu_fallback: bool = False


# ---- actions -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CreateRevision:
    namespace: str
    service: str
    revision: str
    number: int
    spec_hash: str


@dataclass(frozen=True, slots=True)
class StartReplica:
    namespace: str
    service: str
    revision: str
    index: int
    gpus: tuple[int, ...] = ()
    cpu_fallback: bool = False


@dataclass(frozen=True, slots=True)
class MarkPending:
    namespace: str
    service: str
    revision: str
    index: int
    message: str


@dataclass(frozen=True, slots=True)
class ScheduleRestart:
    namespace: str
    revision: str
    index: int
    at: float
    crash_loop: int = 1
    """The replica's crash loop once this restart is counted (the controller stores it)."""


@dataclass(frozen=True, slots=True)
class StopReplica:
    namespace: str
    revision: str
    index: int


@dataclass(frozen=True, slots=True)
class DeleteRevision:
    namespace: str
    service: str
    revision: str


@dataclass(frozen=True, slots=True)
class SetTraffic:
    namespace: str
    service: str
    traffic: dict[str, int]
    rolled_out: str | None


@dataclass(frozen=True, slots=True)
class DeleteService:
    namespace: str
    service: str


Action = (
    CreateRevision
    | StartReplica
    | MarkPending
    | ScheduleRestart
    | StopReplica
    | DeleteRevision
    | SetTraffic
    | DeleteService
)


# ---- rules ---------------------------------------------------------------------------


def plan_traffic(view: ServiceView, canary: int | None) -> tuple[dict[str, int], str | None, set[str]]:
    """(traffic by revision, rolled-out revision, revisions to keep) for one service."""
    if not view.revisions:
        return {}, None, set()
    latest = view.revisions[-1]
    by_name = {r.name: r for r in view.revisions}
    rolled = view.rolled_out if view.rolled_out in by_name else None
    if rolled is None:
        # Nothing ever rolled out: the latest takes everything once ready.
        if latest.ready:
            return {latest.name: 100}, latest.name, {latest.name}
        return {latest.name: 100}, None, {latest.name}
    if rolled == latest.name:
        return {latest.name: 100}, rolled, {latest.name}
    keep = {rolled, latest.name}
    if not latest.ready:
        return {rolled: 100}, rolled, keep
    if canary is None or canary >= 100:
        return {latest.name: 100}, latest.name, {latest.name}
    return {rolled: 100 - canary, latest.name: canary}, rolled, keep


def _replica_actions(
    svc: DesiredService, rev: RevisionView, cluster: Cluster, gpus_free: list[int], now: float
) -> list[Action]:
    out: list[Action] = []
    have = {r.index: r for r in rev.replicas}
    for index in range(svc.replicas):
        r = have.get(index)
        if r is not None and r.phase in (Phase.STARTING, Phase.RUNNING):
            continue
        if r is not None and r.phase == Phase.EXITED:
            # Like the kubelet: the first restart is at once (a killed server serves again
            # quickly); one that keeps exiting waits longer each time, even if it was ready in
            # between (a poison request retried by a client); a long run ends the loop.
            loop = 0 if r.ran_s >= BACKOFF_RESET_S else r.crash_loop
            out.append(ScheduleRestart(svc.namespace, rev.name, index, now + backoff_s(loop), loop + 1))
            continue
        if r is not None and r.phase == Phase.BACKOFF and (r.next_start or 0.0) > now:
            continue
        if svc.gpus <= len(gpus_free):
            take = tuple(gpus_free[: svc.gpus])
            del gpus_free[: svc.gpus]
            out.append(StartReplica(svc.namespace, svc.name, rev.name, index, take))
        elif cluster.cpu_fallback:
            out.append(StartReplica(svc.namespace, svc.name, rev.name, index, (), cpu_fallback=True))
        else:
            noun = "GPU" if svc.gpus == 1 else "GPUs"
            if cluster.gpus_total < svc.gpus:
                msg = f"needs {svc.gpus} {noun}, {cluster.gpus_total} present"
            else:
                msg = f"needs {svc.gpus} {noun}, {len(gpus_free)} of {cluster.gpus_total} free"
            if r is None or r.phase != Phase.PENDING:
                out.append(MarkPending(svc.namespace, svc.name, rev.name, index, msg))
    for index in have:
        if index >= svc.replicas:
            out.append(StopReplica(svc.namespace, rev.name, index))
    return out


def reconcile(desired: list[DesiredService], actual: list[ServiceView], cluster: Cluster, now: float) -> list[Action]:
    """Actions that move ``actual`` toward ``desired``. Pure: same inputs, same actions."""
    out: list[Action] = []
    want = {(d.namespace, d.name): d for d in desired}
    views = {(v.namespace, v.name): v for v in actual}
    used = {g for v in actual for rev in v.revisions for r in rev.replicas if r.phase <= Phase.RUNNING for g in r.gpus}
    gpus_free = [g for g in range(cluster.gpus_total) if g not in used]

    for key, view in views.items():
        if key not in want:
            for rev in view.revisions:
                out += [StopReplica(view.namespace, rev.name, r.index) for r in rev.replicas]
                out.append(DeleteRevision(view.namespace, view.name, rev.name))
            out.append(DeleteService(view.namespace, view.name))

    for key, svc in sorted(want.items()):
        if svc.invalid is not None:
            continue
        view = views.get(key, ServiceView(svc.namespace, svc.name))
        latest = view.revisions[-1] if view.revisions else None
        if latest is None or latest.spec_hash != svc.spec_hash:
            number = (latest.number if latest else 0) + 1
            out.append(CreateRevision(svc.namespace, svc.name, revision_name(svc.name, number), number, svc.spec_hash))
            continue  # the next pass starts its replicas
        traffic, rolled, keep = plan_traffic(view, svc.canary_percent)
        for rev in view.revisions:
            if rev.name in keep:
                out += _replica_actions(svc, rev, cluster, gpus_free, now)
            else:
                out += [StopReplica(svc.namespace, rev.name, r.index) for r in rev.replicas]
                out.append(DeleteRevision(svc.namespace, svc.name, rev.name))
        if traffic != view.traffic or rolled != view.rolled_out:
            out.append(SetTraffic(svc.namespace, svc.name, traffic, rolled))
    return out
