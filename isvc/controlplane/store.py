"""The control plane's state: one SQLite file under the state dir, shared by CLI, controller and gateway.

Writers: the CLI writes ``resources`` (desired state) and bumps ``meta.desired_version``;
the controller owns everything else and bumps ``meta.routes_version`` when routes change.
WAL mode lets the gateway and the CLI read while the controller writes.

Every statement the control plane runs is here: callers get frozen rows with typed fields
and change state through one method per action, so the schema lives in this file alone.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from isvc.controlplane.plan import LaunchPlan
from isvc.controlplane.reconciler import Phase
from isvc.manifest.models import ServingRuntime

DEFAULT_STATE_DIR = "~/.isvc"
RUNTIME_KINDS = ("ServingRuntime", "ClusterServingRuntime")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS resources (
    kind TEXT, namespace TEXT, name TEXT, body TEXT, warnings TEXT, generation INTEGER,
    created REAL, updated REAL, PRIMARY KEY (kind, namespace, name));
CREATE TABLE IF NOT EXISTS services (
    namespace TEXT, name TEXT, rolled_out TEXT, traffic TEXT, status TEXT, route TEXT,
    PRIMARY KEY (namespace, name));
CREATE TABLE IF NOT EXISTS revisions (
    namespace TEXT, service TEXT, name TEXT, number INTEGER, spec_hash TEXT, plan TEXT, created REAL,
    PRIMARY KEY (namespace, name));
CREATE TABLE IF NOT EXISTS replicas (
    namespace TEXT, service TEXT, revision TEXT, idx INTEGER, phase INTEGER, pid INTEGER, start_ticks INTEGER,
    port INTEGER, ready INTEGER, restarts INTEGER, next_start REAL, started REAL, gpus TEXT, log TEXT,
    message TEXT, last_exit TEXT, cpu_fallback INTEGER DEFAULT 0, crash_loop INTEGER DEFAULT 0,
    ran_s REAL DEFAULT 0, PRIMARY KEY (namespace, revision, idx));
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT, namespace TEXT, service TEXT, time REAL, type TEXT,
    reason TEXT, message TEXT);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT);
"""
# Columns added after a release: a state dir made before gets them on open.
_ADDED_COLUMNS = {
    "replicas": {"crash_loop": "INTEGER DEFAULT 0", "ran_s": "REAL DEFAULT 0"},
}


def state_dir(explicit: str | None = None) -> Path:
    """``--state-dir``, else ``$ISVC_STATE_DIR``, else ``~/.isvc``; created if missing."""
    raw = explicit or os.environ.get("ISVC_STATE_DIR") or DEFAULT_STATE_DIR
    path = Path(raw).expanduser().resolve()
    path.mkdir(parents=True, exist_ok=True)
    return path


def _json(text: str | None) -> Any:
    return json.loads(text) if text else None


# ---- rows -------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class ResourceRow:
    """A desired resource as applied: the manifest body and the warnings apply printed."""

    kind: str
    namespace: str
    name: str
    body: dict[str, Any]
    warnings: list[str]
    generation: int
    created: float
    updated: float


@dataclass(frozen=True, slots=True)
class Runtimes:
    """The user's ServingRuntimes and ClusterServingRuntimes (the built-ins are added by ``all_runtimes``)."""

    items: list[ServingRuntime]
    version: int
    """Changes whenever one of them is applied, changed or deleted (a plan cache key)."""


@dataclass(frozen=True, slots=True)
class ServiceRow:
    """The controller's record of one service: traffic, and the status and route it last published."""

    namespace: str
    name: str
    rolled_out: str | None
    traffic: dict[str, int]
    status: dict[str, Any] | None
    route: dict[str, Any] | None


@dataclass(frozen=True, slots=True)
class RevisionRow:
    namespace: str
    service: str
    name: str
    number: int
    spec_hash: str
    plan: LaunchPlan
    created: float


@dataclass(frozen=True, slots=True)
class ReplicaRow:
    """One predictor process of a revision (a pod), as the controller last saw it."""

    namespace: str
    service: str
    revision: str
    idx: int
    phase: Phase
    pid: int | None
    start_ticks: int | None
    port: int | None
    ready: bool
    restarts: int
    next_start: float | None
    started: float | None
    gpus: tuple[int, ...]
    log: str | None
    message: str
    last_exit: dict[str, Any] | None
    cpu_fallback: bool
    crash_loop: int
    ran_s: float

    @property
    def alive(self) -> bool:
        """A process was started and has not been seen to exit."""
        return self.phase in (Phase.STARTING, Phase.RUNNING)

    @property
    def endpoint(self) -> str | None:
        """Where a ready replica answers (``http://127.0.0.1:PORT``), else None."""
        return f"http://127.0.0.1:{self.port}" if self.ready and self.port else None


@dataclass(frozen=True, slots=True)
class EventRow:
    time: float
    type: str
    reason: str
    message: str


def _replica(r: sqlite3.Row) -> ReplicaRow:
    return ReplicaRow(
        r["namespace"], r["service"], r["revision"], r["idx"], Phase(r["phase"] or Phase.PENDING), r["pid"], r["start_ticks"],
        r["port"], bool(r["ready"]), r["restarts"] or 0, r["next_start"], r["started"],
        tuple(_json(r["gpus"]) or ()), r["log"], r["message"] or "", _json(r["last_exit"]), bool(r["cpu_fallback"]),
        r["crash_loop"] or 0, r["ran_s"] or 0.0,
    )  # fmt: skip


class Store:
    """Typed access to the SQLite file. One instance per thread (sqlite3 connections are not shared)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.path = root / "state.db"
        self.db = sqlite3.connect(self.path, timeout=10.0, isolation_level=None, check_same_thread=False)
        self.db.row_factory = sqlite3.Row
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.executescript(_SCHEMA)
        for table, columns in _ADDED_COLUMNS.items():
            have = {row["name"] for row in self.db.execute(f"PRAGMA table_info({table})")}
            for name, decl in columns.items():
                if name not in have:
                    try:
                        self.db.execute(f"ALTER TABLE {table} ADD COLUMN {name} {decl}")
                    except sqlite3.OperationalError as exc:  # another process added it first
                        if "duplicate column" not in str(exc):
                            raise

    def close(self) -> None:
        self.db.close()

    @contextmanager
    def tx(self) -> Iterator[sqlite3.Connection]:
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield self.db
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    # ---- meta ----
    def get_meta(self, key: str, default: str | None = None) -> str | None:
        row = self.db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return row["value"] if row else default

    def set_meta(self, key: str, value: str | None) -> None:
        if value is None:
            self.db.execute("DELETE FROM meta WHERE key=?", (key,))
        else:
            self.db.execute("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", (key, value))

    def bump(self, key: str) -> int:
        with self.tx() as db:
            row = db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
            value = int(row["value"]) + 1 if row else 1
            db.execute("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", (key, str(value)))
        return value

    def version(self, key: str) -> int:
        return int(self.get_meta(key, "0") or 0)

    def gateway_url(self) -> str:
        """Where ``isvc up`` said its gateway listens (for URLs and curls)."""
        return self.get_meta("gateway_url") or "http://127.0.0.1:8080"

    def domain(self) -> str:
        return self.get_meta("domain") or "example.com"

    # ---- desired state ----
    def upsert_resource(self, kind: str, ns: str, name: str, body: dict[str, Any], warnings: list[str]) -> str:
        """Create or update; returns "created", "configured" or "unchanged" (kubectl's words)."""
        now = time.time()
        text = json.dumps(body, sort_keys=True)
        with self.tx() as db:
            row = db.execute(
                "SELECT body, generation FROM resources WHERE kind=? AND namespace=? AND name=?", (kind, ns, name)
            ).fetchone()
            if row is None:
                db.execute(
                    "INSERT INTO resources VALUES (?,?,?,?,?,?,?,?)",
                    (kind, ns, name, text, json.dumps(warnings), 1, now, now),
                )
                verb = "created"
            elif row["body"] == text:
                return "unchanged"
            else:
                db.execute(
                    "UPDATE resources SET body=?, warnings=?, generation=?, updated=? WHERE kind=? AND namespace=? AND name=?",
                    (text, json.dumps(warnings), row["generation"] + 1, now, kind, ns, name),
                )
                verb = "configured"
        self.bump("desired_version")
        return verb

    def delete_resource(self, kind: str, ns: str, name: str) -> bool:
        cur = self.db.execute("DELETE FROM resources WHERE kind=? AND namespace=? AND name=?", (kind, ns, name))
        if cur.rowcount:
            self.bump("desired_version")
        return bool(cur.rowcount)

    def resources(self, kind: str | None = None, ns: str | None = None) -> list[ResourceRow]:
        sql, args = "SELECT * FROM resources WHERE 1=1", []
        if kind:
            sql += " AND kind=?"
            args.append(kind)
        if ns is not None:
            sql += " AND namespace=?"
            args.append(ns)
        rows = self.db.execute(sql + " ORDER BY kind, namespace, name", args).fetchall()
        return [
            ResourceRow(r["kind"], r["namespace"], r["name"], json.loads(r["body"]), json.loads(r["warnings"]),
                        r["generation"], r["created"], r["updated"])
            for r in rows
        ]  # fmt: skip

    def resource(self, kind: str, ns: str, name: str) -> ResourceRow | None:
        return next((r for r in self.resources(kind, ns) if r.name == name), None)

    def runtimes(self) -> Runtimes:
        """The applied ServingRuntimes and ClusterServingRuntimes, typed: the one place they are loaded."""
        rows = [r for kind in RUNTIME_KINDS for r in self.resources(kind)]
        items = [ServingRuntime.model_validate(r.body) for r in rows]
        return Runtimes(items, hash(tuple((r.kind, r.namespace, r.name, r.generation) for r in rows)))

    # ---- events ----
    def event(self, ns: str, service: str, type_: str, reason: str, message: str) -> None:
        self.db.execute(
            "INSERT INTO events(namespace, service, time, type, reason, message) VALUES (?,?,?,?,?,?)",
            (ns, service, time.time(), type_, reason, message),
        )

    def events(self, ns: str, service: str, limit: int = 20) -> list[EventRow]:
        rows = self.db.execute(
            "SELECT time, type, reason, message FROM events WHERE namespace=? AND service=? ORDER BY id DESC LIMIT ?",
            (ns, service, limit),
        ).fetchall()
        return [EventRow(r["time"], r["type"], r["reason"], r["message"]) for r in reversed(rows)]

    # ---- services (controller-owned) ----
    def services(self) -> list[ServiceRow]:
        rows = self.db.execute("SELECT * FROM services ORDER BY namespace, name").fetchall()
        return [self._service(r) for r in rows]

    def service(self, ns: str, name: str) -> ServiceRow | None:
        row = self.db.execute("SELECT * FROM services WHERE namespace=? AND name=?", (ns, name)).fetchone()
        return self._service(row) if row else None

    @staticmethod
    def _service(r: sqlite3.Row) -> ServiceRow:
        return ServiceRow(
            r["namespace"], r["name"], r["rolled_out"], _json(r["traffic"]) or {}, _json(r["status"]), _json(r["route"])
        )

    def ensure_service(self, ns: str, name: str) -> ServiceRow:
        """The service's row, made (no traffic, no status) if it has none yet."""
        self.db.execute("INSERT OR IGNORE INTO services(namespace, name, traffic) VALUES (?,?,?)", (ns, name, "{}"))
        row = self.service(ns, name)
        assert row is not None  # inserted just above
        return row

    def set_traffic(self, ns: str, name: str, traffic: dict[str, int], rolled_out: str | None) -> None:
        self.db.execute(
            "UPDATE services SET traffic=?, rolled_out=? WHERE namespace=? AND name=?",
            (json.dumps(traffic, sort_keys=True), rolled_out, ns, name),
        )

    def publish_service(self, ns: str, name: str, status: dict[str, Any], route: dict[str, Any]) -> None:
        self.db.execute(
            "UPDATE services SET status=?, route=? WHERE namespace=? AND name=?",
            (json.dumps(status, sort_keys=True), json.dumps(route, sort_keys=True), ns, name),
        )

    def delete_service(self, ns: str, name: str) -> None:
        """The service's row and its events; the gateway is told its routes changed."""
        self.db.execute("DELETE FROM services WHERE namespace=? AND name=?", (ns, name))
        self.db.execute("DELETE FROM events WHERE namespace=? AND service=?", (ns, name))
        self.bump("routes_version")

    def routes(self) -> list[dict[str, Any]]:
        rows = self.db.execute("SELECT route FROM services WHERE route IS NOT NULL").fetchall()
        return [json.loads(r["route"]) for r in rows]

    def forget_processes(self) -> None:
        """After every predictor was stopped: no replicas, no routes; the next ``isvc up`` starts them afresh."""
        self.db.execute("DELETE FROM replicas")
        self.db.execute("UPDATE services SET route=NULL, status=NULL")
        self.bump("routes_version")

    # ---- revisions ----
    def revisions(self, ns: str | None = None, service: str | None = None) -> list[RevisionRow]:
        """Revisions, oldest first within a service; optionally of one namespace and/or service."""
        rows = self._rows("revisions", "namespace, service, number", ns, service)
        return [
            RevisionRow(r["namespace"], r["service"], r["name"], r["number"], r["spec_hash"],
                        LaunchPlan.from_json(r["plan"]), r["created"])
            for r in rows
        ]  # fmt: skip

    def revision(self, ns: str, name: str) -> RevisionRow | None:
        return next((r for r in self.revisions(ns) if r.name == name), None)

    def create_revision(self, ns: str, service: str, name: str, number: int, spec_hash: str, plan: LaunchPlan) -> None:
        self.ensure_service(ns, service)
        self.db.execute(
            "INSERT OR REPLACE INTO revisions VALUES (?,?,?,?,?,?,?)",
            (ns, service, name, number, spec_hash, plan.to_json(), time.time()),
        )

    def delete_revision(self, ns: str, name: str) -> None:
        """The revision and its replica rows (their processes must be stopped already)."""
        self.db.execute("DELETE FROM revisions WHERE namespace=? AND name=?", (ns, name))
        self.db.execute("DELETE FROM replicas WHERE namespace=? AND revision=?", (ns, name))

    # ---- replicas ----
    def replicas(self, ns: str | None = None, service: str | None = None) -> list[ReplicaRow]:
        return [_replica(r) for r in self._rows("replicas", "namespace, revision, idx", ns, service)]

    def replica(self, ns: str, revision: str, idx: int) -> ReplicaRow | None:
        row = self.db.execute(
            "SELECT * FROM replicas WHERE namespace=? AND revision=? AND idx=?", (ns, revision, idx)
        ).fetchone()
        return _replica(row) if row else None

    def _rows(self, table: str, order: str, ns: str | None, service: str | None) -> list[sqlite3.Row]:
        """Rows of a table, optionally for one namespace and/or service (table and order are ours, not user input)."""
        sql, args = f"SELECT * FROM {table} WHERE 1=1", []
        if ns is not None:
            sql += " AND namespace=?"
            args.append(ns)
        if service is not None:
            sql += " AND service=?"
            args.append(service)
        return self.db.execute(f"{sql} ORDER BY {order}", args).fetchall()

    def _set_replica(self, ns: str, revision: str, idx: int, **fields: Any) -> None:
        cols = ", ".join(f"{k}=?" for k in fields)  # keys are this class's, never user input
        self.db.execute(
            f"UPDATE replicas SET {cols} WHERE namespace=? AND revision=? AND idx=?",
            (*fields.values(), ns, revision, idx),
        )

    def _ensure_replica(self, ns: str, service: str, revision: str, idx: int) -> None:
        self.db.execute(
            "INSERT OR IGNORE INTO replicas(namespace, service, revision, idx, phase, ready, restarts)"
            " VALUES (?,?,?,?,?,0,0)",
            (ns, service, revision, idx, int(Phase.PENDING)),
        )

    def replica_pending(self, ns: str, service: str, revision: str, idx: int, message: str) -> None:
        """Not started: waiting for GPUs (``message`` says how many)."""
        self._ensure_replica(ns, service, revision, idx)
        self._set_replica(ns, revision, idx, phase=int(Phase.PENDING), message=message)

    def replica_started(
        self, ns: str, service: str, revision: str, idx: int, *, pid: int, start_ticks: int | None, port: int,
        gpus: tuple[int, ...], log: str, cpu_fallback: bool,
    ) -> None:  # fmt: skip
        self._ensure_replica(ns, service, revision, idx)
        self._set_replica(
            ns, revision, idx, phase=int(Phase.STARTING), pid=pid, start_ticks=start_ticks, port=port, ready=0,
            started=time.time(), next_start=None, gpus=json.dumps(list(gpus)), log=log,
            message="running on CPU (fallback)" if cpu_fallback else "", cpu_fallback=int(cpu_fallback),
        )  # fmt: skip

    def replica_ready(self, ns: str, revision: str, idx: int) -> None:
        self._set_replica(ns, revision, idx, ready=1, phase=int(Phase.RUNNING), message="")

    def replica_unready(self, ns: str, revision: str, idx: int, message: str) -> None:
        self._set_replica(ns, revision, idx, ready=0, message=message)

    def replica_exited(self, ns: str, revision: str, idx: int, last_exit: dict[str, Any], ran_s: float) -> None:
        self._set_replica(
            ns, revision, idx, phase=int(Phase.EXITED), ready=0, pid=None, last_exit=json.dumps(last_exit), ran_s=ran_s
        )

    def replica_killed(self, ns: str, revision: str, idx: int, last_exit: dict[str, Any]) -> None:
        """Killed by the controller (over its memory limit): the exit, when seen, reads as this."""
        self._set_replica(ns, revision, idx, last_exit=json.dumps(last_exit))

    def replica_backoff(self, ns: str, revision: str, idx: int, *, at: float, restarts: int, crash_loop: int) -> None:
        self._set_replica(
            ns, revision, idx, phase=int(Phase.BACKOFF), next_start=at, restarts=restarts, crash_loop=crash_loop
        )

    def delete_replica(self, ns: str, revision: str, idx: int) -> None:
        self.db.execute("DELETE FROM replicas WHERE namespace=? AND revision=? AND idx=?", (ns, revision, idx))
