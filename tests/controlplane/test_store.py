"""The state file: a state dir made by an earlier isvc opens with today's columns."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from isvc.controlplane.store import Store

_OLD_REPLICAS = """CREATE TABLE replicas (
    namespace TEXT, service TEXT, revision TEXT, idx INTEGER, phase INTEGER, pid INTEGER, start_ticks INTEGER,
    port INTEGER, ready INTEGER, restarts INTEGER, next_start REAL, started REAL, gpus TEXT, log TEXT,
    message TEXT, last_exit TEXT, cpu_fallback INTEGER DEFAULT 0, PRIMARY KEY (namespace, revision, idx))"""


def test_an_older_state_file_gets_the_crash_loop_columns(tmp_path: Path) -> None:
    with sqlite3.connect(tmp_path / "state.db") as db:
        db.execute(_OLD_REPLICAS)
        db.execute("INSERT INTO replicas(namespace, revision, idx, restarts) VALUES ('default', 'r-00001', 0, 4)")
    store = Store(tmp_path)
    (row,) = store.replicas()
    assert (row["restarts"], row["crash_loop"], row["ran_s"]) == (4, 0, 0)
    store.update_replica("default", "r-00001", 0, crash_loop=2, ran_s=8.5)
    Store(tmp_path).close()  # a second opener (the CLI, the gateway) finds them there
    assert tuple(store.replicas()[0])[-2:] == (2, 8.5)
    store.close()
