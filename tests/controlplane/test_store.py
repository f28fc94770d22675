"""The state file: a state dir made by an earlier isvc opens with today's columns; rows come back typed."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from isvc.controlplane.reconciler import Phase
from isvc.controlplane.store import Store

_OLD_REPLICAS = """CREATE TABLE replicas (
    namespace TEXT, service TEXT, revision TEXT, idx INTEGER, phase INTEGER, pid INTEGER, start_ticks INTEGER,
    port INTEGER, ready INTEGER, restarts INTEGER, next_start REAL, started REAL, gpus TEXT, log TEXT,
    message TEXT, last_exit TEXT, cpu_fallback INTEGER DEFAULT 0, PRIMARY KEY (namespace, revision, idx))"""


def test_an_older_state_file_gets_the_crash_loop_columns(tmp_path: Path) -> None:
    with sqlite3.connect(tmp_path / "state.db") as db:
        db.execute(_OLD_REPLICAS)
        db.execute(
            "INSERT INTO replicas(namespace, revision, idx, phase, restarts) VALUES ('default', 'r-00001', 0, 4, 4)"
        )
    store = Store(tmp_path)
    (row,) = store.replicas()
    assert (row.phase, row.restarts, row.crash_loop, row.ran_s) == (Phase.EXITED, 4, 0, 0.0)
    store.replica_backoff("default", "r-00001", 0, at=12.0, restarts=5, crash_loop=2)
    Store(tmp_path).close()  # a second opener (the CLI, the gateway) finds them there
    (row,) = store.replicas()
    assert (row.phase, row.next_start, row.restarts, row.crash_loop) == (Phase.BACKOFF, 12.0, 5, 2)
    store.close()


def test_a_replica_goes_through_its_lifecycle_as_typed_rows(tmp_path: Path) -> None:
    store = Store(tmp_path)
    store.replica_pending("ns", "svc", "svc-predictor-00001", 0, "needs 1 GPU, 0 present")
    (row,) = store.replicas("ns", "svc")
    assert (row.phase, row.message, row.pid, row.alive) == (Phase.PENDING, "needs 1 GPU, 0 present", None, False)
    store.replica_started("ns", "svc", "svc-predictor-00001", 0, pid=42, start_ticks=7, port=5000, gpus=(0,),
                          log="/tmp/x.log", cpu_fallback=False)  # fmt: skip
    store.replica_ready("ns", "svc-predictor-00001", 0)
    row = store.replica("ns", "svc-predictor-00001", 0)
    assert row is not None and (row.phase, row.ready, row.port, row.gpus, row.alive) == (
        Phase.RUNNING, True, 5000, (0,), True
    )  # fmt: skip
    store.replica_exited("ns", "svc-predictor-00001", 0, {"exit_code": 1, "reason": "Error"}, ran_s=3.0)
    row = store.replica("ns", "svc-predictor-00001", 0)
    assert row is not None and (row.phase, row.pid, row.ready, row.last_exit, row.ran_s) == (
        Phase.EXITED, None, False, {"exit_code": 1, "reason": "Error"}, 3.0
    )  # fmt: skip
    store.delete_replica("ns", "svc-predictor-00001", 0)
    assert store.replicas() == []
    store.close()
