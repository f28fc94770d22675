"""reconcile(desired, actual, cluster, now) → actions, as tables."""

from __future__ import annotations

from isvc.controlplane.reconciler import (
    BACKOFF_RESET_S,
    Cluster,
    CreateRevision,
    DeleteRevision,
    DeleteService,
    DesiredService,
    MarkPending,
    Phase,
    ReplicaView,
    RevisionView,
    ScheduleRestart,
    ServiceView,
    SetTraffic,
    StartReplica,
    StopReplica,
    backoff_s,
    reconcile,
)

NS = "demo"
R1, R2, R3 = "svc-predictor-00001", "svc-predictor-00002", "svc-predictor-00003"
READY = ReplicaView(0, Phase.RUNNING, ready=True)
STARTING = ReplicaView(0, Phase.STARTING)


def want(spec: str = "h1", **kw: object) -> DesiredService:
    return DesiredService(NS, "svc", spec, **kw)  # type: ignore[arg-type]


def view(*revs: RevisionView, rolled: str | None = None, traffic: dict[str, int] | None = None) -> ServiceView:
    return ServiceView(NS, "svc", tuple(revs), rolled, traffic or {})


def rev(name: str, spec: str, *replicas: ReplicaView) -> RevisionView:
    return RevisionView(name, int(name[-5:]), spec, tuple(replicas))


def test_a_new_service_gets_its_first_revision() -> None:
    assert reconcile([want()], [], Cluster(), 0.0) == [CreateRevision(NS, "svc", R1, 1, "h1")]


def test_a_new_revision_starts_its_replicas_and_routes_to_itself() -> None:
    actions = reconcile([want(replicas=2)], [view(rev(R1, "h1"))], Cluster(), 0.0)
    assert actions == [
        StartReplica(NS, "svc", R1, 0),
        StartReplica(NS, "svc", R1, 1),
        SetTraffic(NS, "svc", {R1: 100}, None),
    ]


def test_ready_first_revision_becomes_rolled_out() -> None:
    actions = reconcile([want()], [view(rev(R1, "h1", READY), traffic={R1: 100})], Cluster(), 0.0)
    assert actions == [SetTraffic(NS, "svc", {R1: 100}, R1)]


def test_steady_state_does_nothing() -> None:
    assert reconcile([want()], [view(rev(R1, "h1", READY), rolled=R1, traffic={R1: 100})], Cluster(), 0.0) == []


def test_a_spec_change_keeps_traffic_on_the_old_revision_until_the_new_is_ready() -> None:
    v = view(rev(R1, "h1", READY), rolled=R1, traffic={R1: 100})
    assert reconcile([want("h2")], [v], Cluster(), 0.0) == [CreateRevision(NS, "svc", R2, 2, "h2")]
    v = view(rev(R1, "h1", READY), rev(R2, "h2", STARTING), rolled=R1, traffic={R1: 100})
    assert reconcile([want("h2")], [v], Cluster(), 0.0) == []
    v = view(rev(R1, "h1", READY), rev(R2, "h2", READY), rolled=R1, traffic={R1: 100})
    assert reconcile([want("h2")], [v], Cluster(), 0.0) == [
        StopReplica(NS, R1, 0),
        DeleteRevision(NS, "svc", R1),
        SetTraffic(NS, "svc", {R2: 100}, R2),
    ]


def test_canary_splits_between_rolled_out_and_latest_ready() -> None:
    v = view(rev(R1, "h1", READY), rev(R2, "h2", READY), rolled=R1, traffic={R1: 100})
    assert reconcile([want("h2", canary_percent=20)], [v], Cluster(), 0.0) == [
        SetTraffic(NS, "svc", {R1: 80, R2: 20}, R1)
    ]


def test_promoting_a_canary_moves_everything_and_stops_the_old_revision() -> None:
    v = view(rev(R1, "h1", READY), rev(R2, "h2", READY), rolled=R1, traffic={R1: 80, R2: 20})
    assert reconcile([want("h2", canary_percent=None)], [v], Cluster(), 0.0) == [
        StopReplica(NS, R1, 0),
        DeleteRevision(NS, "svc", R1),
        SetTraffic(NS, "svc", {R2: 100}, R2),
    ]


def test_a_third_revision_during_a_canary_replaces_the_canary_not_the_rolled_out() -> None:
    v = view(rev(R1, "h1", READY), rev(R2, "h2", READY), rev(R3, "h3", READY), rolled=R1, traffic={R1: 80, R2: 20})
    assert reconcile([want("h3", canary_percent=20)], [v], Cluster(), 0.0) == [
        StopReplica(NS, R2, 0),
        DeleteRevision(NS, "svc", R2),
        SetTraffic(NS, "svc", {R1: 80, R3: 20}, R1),
    ]


def restart_of(exited: ReplicaView, now: float = 100.0) -> ScheduleRestart:
    (action,) = reconcile([want()], [view(rev(R1, "h1", exited), rolled=R1, traffic={R1: 100})], Cluster(), now)
    assert isinstance(action, ScheduleRestart)
    return action


def test_a_serving_replica_killed_once_restarts_at_once() -> None:
    """kill -9 of a predictor that had been serving: no wait (it serves again within seconds)."""
    assert restart_of(ReplicaView(0, Phase.EXITED, crash_loop=0, ran_s=30.0)) == ScheduleRestart(NS, R1, 0, 100.0, 1)


def test_a_replica_that_dies_again_after_becoming_ready_backs_off() -> None:
    """Ready after 7 s, killed a second later by a request its client retries: readiness in
    between does not reset the backoff, so the loop waits 0, 1, 2, 4 ... 60 s."""
    loop, delays = 0, []
    for _ in range(9):
        action = restart_of(ReplicaView(0, Phase.EXITED, crash_loop=loop, ran_s=8.0))
        delays.append(action.at - 100.0)
        loop = action.crash_loop
    assert delays == [0.0, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 60.0]
    assert loop == 9


def test_a_long_run_ends_the_crash_loop() -> None:
    """Like the kubelet's reset after 10 clean minutes: a process that ran BACKOFF_RESET_S restarts at once."""
    assert restart_of(ReplicaView(0, Phase.EXITED, crash_loop=7, ran_s=BACKOFF_RESET_S)).at == 100.0
    assert restart_of(ReplicaView(0, Phase.EXITED, crash_loop=7, ran_s=BACKOFF_RESET_S)).crash_loop == 1
    assert restart_of(ReplicaView(0, Phase.EXITED, crash_loop=7, ran_s=BACKOFF_RESET_S - 1)).at == 100.0 + 60.0


def test_a_replica_in_backoff_starts_when_its_time_comes() -> None:
    waiting = ReplicaView(0, Phase.BACKOFF, crash_loop=3, next_start=104.0)
    v = view(rev(R1, "h1", waiting), rolled=R1, traffic={R1: 100})
    assert reconcile([want()], [v], Cluster(), 103.9) == []
    assert reconcile([want()], [v], Cluster(), 104.0) == [StartReplica(NS, "svc", R1, 0)]
    assert [backoff_s(n) for n in (0, 1, 2, 3, 4, 10)] == [0.0, 1.0, 2.0, 4.0, 8.0, 60.0]


def test_gpu_replicas_stay_pending_when_gpus_are_missing() -> None:
    v = view(rev(R1, "h1"))
    actions = reconcile([want(gpus=2)], [v], Cluster(gpus_total=0), 0.0)
    assert actions[0] == MarkPending(NS, "svc", R1, 0, "needs 2 GPUs, 0 present")
    pending = ReplicaView(0, Phase.PENDING)
    assert reconcile([want(gpus=2)], [view(rev(R1, "h1", pending), traffic={R1: 100})], Cluster(), 0.0) == []


def test_gpus_are_allocated_without_overlap_and_cpu_fallback_runs_without_them() -> None:
    other = ServiceView(NS, "other", (RevisionView("other-predictor-00001", 1, "x", (ReplicaView(0, Phase.RUNNING, True, gpus=(0,)),)),),
                        "other-predictor-00001", {"other-predictor-00001": 100})  # fmt: skip
    actions = reconcile(
        [want(gpus=1), DesiredService(NS, "other", "x", gpus=1)],
        [view(rev(R1, "h1")), other],
        Cluster(gpus_total=2),
        0.0,
    )
    assert StartReplica(NS, "svc", R1, 0, (1,)) in actions
    actions = reconcile([want(gpus=1)], [view(rev(R1, "h1"))], Cluster(gpus_total=0, cpu_fallback=True), 0.0)
    assert StartReplica(NS, "svc", R1, 0, (), cpu_fallback=True) in actions


def test_a_deleted_service_is_torn_down() -> None:
    v = view(rev(R1, "h1", READY), rolled=R1, traffic={R1: 100})
    assert reconcile([], [v], Cluster(), 0.0) == [
        StopReplica(NS, R1, 0),
        DeleteRevision(NS, "svc", R1),
        DeleteService(NS, "svc"),
    ]


def test_scaling_down_stops_the_extra_replicas() -> None:
    v = view(rev(R1, "h1", READY, ReplicaView(1, Phase.RUNNING, True)), rolled=R1, traffic={R1: 100})
    assert reconcile([want(replicas=1)], [v], Cluster(), 0.0) == [StopReplica(NS, R1, 1)]


def test_an_invalid_spec_creates_nothing() -> None:
    assert reconcile([want(invalid="No runtime found")], [], Cluster(), 0.0) == []
