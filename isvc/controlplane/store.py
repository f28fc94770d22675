"""The control plane's state: one SQLite file under the state dir, shared by CLI, controller and gateway.

Writers: the CLI writes ``resources`` (desired state) and bumps ``meta.desired_version``;
the controller owns everything else and bumps ``meta.routes_version`` when routes change.
WAL mode lets the gateway and the CLI read while the controller writes.
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

DEFAULT_STATE_DIR = "~/.isvc"

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


@dataclass(slots=True)
class ResourceRow:
    kind: str
    namespace: str
    name: str
    body: dict[str, Any]
    warnings: list[str]
    generation: int
    created: float
    updated: float


class Store:
    """Thin typed access to the SQLite file. One instance per thread (sqlite3 connections are not shared)."""

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

    # ---- events ----
    def event(self, ns: str, service: str, type_: str, reason: str, message: str) -> None:
        self.db.execute(
            "INSERT INTO events(namespace, service, time, type, reason, message) VALUES (?,?,?,?,?,?)",
            (ns, service, time.time(), type_, reason, message),
        )

    def events(self, ns: str, service: str, limit: int = 20) -> list[sqlite3.Row]:
        rows = self.db.execute(
            "SELECT * FROM events WHERE namespace=? AND service=? ORDER BY id DESC LIMIT ?", (ns, service, limit)
        ).fetchall()
        return list(reversed(rows))

    # ---- controller-owned ----
    def services(self) -> list[sqlite3.Row]:
        return self.db.execute("SELECT * FROM services ORDER BY namespace, name").fetchall()

    def service(self, ns: str, name: str) -> sqlite3.Row | None:
        return self.db.execute("SELECT * FROM services WHERE namespace=? AND name=?", (ns, name)).fetchone()

    def revisions(self, ns: str | None = None, service: str | None = None) -> list[sqlite3.Row]:
        return self._rows("revisions", "namespace, service, number", ns, service)

    def replicas(self, ns: str | None = None, service: str | None = None) -> list[sqlite3.Row]:
        return self._rows("replicas", "namespace, revision, idx", ns, service)

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

    def update_replica(self, ns: str, revision: str, idx: int, **fields: Any) -> None:
        cols = ", ".join(f"{k}=?" for k in fields)
        self.db.execute(
            f"UPDATE replicas SET {cols} WHERE namespace=? AND revision=? AND idx=?",
            (*fields.values(), ns, revision, idx),
        )

    def routes(self) -> list[dict[str, Any]]:
        rows = self.db.execute("SELECT route FROM services WHERE route IS NOT NULL").fetchall()
        return [json.loads(r["route"]) for r in rows]
