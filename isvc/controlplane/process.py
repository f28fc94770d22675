"""Host processes for predictors: spawn in a process group, recognise after a restart, probe, stop."""

from __future__ import annotations

import http.client
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

logger = logging.getLogger(__name__)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def start_ticks(pid: int) -> int | None:
    """The process start time in clock ticks (/proc/PID/stat field 22), None if gone or a zombie."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = raw[raw.rindex(")") + 2 :].split()
    if fields[0] in ("Z", "X"):
        return None
    return int(fields[19])


def is_same_process(pid: int | None, ticks: int | None) -> bool:
    """True if ``pid`` is alive and is the process we started (not a reused pid)."""
    if not pid:
        return False
    now = start_ticks(pid)
    return now is not None and (ticks is None or now == ticks)


UP_PID_FILE = "up.pid"
"""``{state_dir}/up.pid``: "PID START_TICKS" of the live ``isvc up``."""


def running_pid(root: Path) -> int | None:
    """The pid of the live ``isvc up`` for this state dir, or None."""
    try:
        pid_s, ticks_s = (root / UP_PID_FILE).read_text().split()
    except (OSError, ValueError):
        return None
    pid, ticks = int(pid_s), int(ticks_s)
    return pid if is_same_process(pid, ticks) else None


def resolve_command(command: list[str]) -> list[str]:
    """``isvc ...`` → this interpreter's ``-m isvc``; ``python``/``python3`` → this interpreter."""
    if command and command[0] == "isvc":
        return [sys.executable, "-m", "isvc", *command[1:]]
    if command and command[0] in ("python", "python3"):
        return [sys.executable, *command[1:]]
    return list(command)


def spawn(pod_file: Path, log_file: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    """Start the pod wrapper in a new session (its own process group), output appended to ``log_file``."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with open(log_file, "ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "isvc.controlplane.pod", str(pod_file)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=env,
            close_fds=True,
        )


def kill_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        try:
            os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


def terminate(pid: int, ticks: int | None, grace_s: float = 10.0, proc: subprocess.Popen[bytes] | None = None) -> None:
    """SIGTERM the group, SIGKILL it after ``grace_s``; returns at once (a thread waits)."""
    if not is_same_process(pid, ticks):
        kill_group(pid, signal.SIGKILL)  # leftovers of the group, if any
        return
    kill_group(pid, signal.SIGTERM)

    def wait() -> None:
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline:
            if proc is not None and proc.poll() is not None:
                break
            if proc is None and not is_same_process(pid, ticks):
                break
            time.sleep(0.05)
        kill_group(pid, signal.SIGKILL)
        if proc is not None:
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                logger.warning("pid %s did not exit after SIGKILL", pid)

    threading.Thread(target=wait, name=f"terminate-{pid}", daemon=True).start()


def probe_tcp(port: int, timeout_s: float) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout_s):
            return True
    except OSError:
        return False


def probe_http(port: int, path: str, timeout_s: float) -> bool:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout_s)
    try:
        conn.request("GET", path)
        status = conn.getresponse().status
        return 200 <= status < 400
    except (OSError, http.client.HTTPException):
        return False
    finally:
        conn.close()


def tail(path: Path, num_lines: int = 5, max_bytes: int = 8192) -> list[str]:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - max_bytes))
            lines = f.read().decode("utf-8", "replace").splitlines()
    except OSError:
        return []
    return [line for line in lines if line.strip()][-num_lines:]


def group_rss_bytes(pgid: int) -> int:
    """Resident memory of every process in group ``pgid`` (what a cgroup limit would count)."""
    total = 0
    page = os.sysconf("SC_PAGE_SIZE")
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            raw = Path(f"/proc/{entry.name}/stat").read_text()
        except OSError:
            continue
        fields = raw[raw.rindex(")") + 2 :].split()
        if int(fields[2]) == pgid:
            total += int(fields[21]) * page
    return total
