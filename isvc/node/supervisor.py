"""The ``isvc up`` process: the gateway on one port, and the controller as a supervised child.

The controller is a separate process so that killing it (even with -9) leaves the gateway
serving; this process restarts it with backoff and it re-adopts predictors from SQLite.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import uvicorn

from isvc.console.app import create_console
from isvc.controlplane import process
from isvc.controlplane.store import Store
from isvc.errors import ConfigError
from isvc.gateway.app import create_app
from isvc.gateway.settings import GatewaySettings
from isvc.http_limits import uvicorn_config

logger = logging.getLogger(__name__)


class ControllerChild:
    """Runs ``python -m isvc.controlplane.controller`` and restarts it when it exits."""

    def __init__(self, root: Path, cpu_fallback: bool, gpus: int) -> None:
        self.root = root
        self.argv = [
            sys.executable,
            "-m",
            "isvc.controlplane.controller",
            "--state-dir",
            str(root),
            "--gpus",
            str(gpus),
        ]
        if cpu_fallback:
            self.argv.append("--cpu-fallback")
        self.proc: subprocess.Popen[bytes] | None = None
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, name="controller-supervisor", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def _run(self) -> None:
        delay = 0.5
        log_path = self.root / "logs" / "controller.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        while not self.stopping.is_set():
            started = time.monotonic()
            with open(log_path, "ab") as log:
                self.proc = subprocess.Popen(self.argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
            code = self.proc.wait()
            if self.stopping.is_set():
                return
            delay = 0.5 if time.monotonic() - started > 30 else min(delay * 2, 10.0)
            logger.warning("controller exited with %s; restarting in %.1fs", code, delay)
            self.stopping.wait(delay)

    def stop(self, timeout_s: float) -> None:
        self.stopping.set()
        proc = self.proc
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _check_port(host: str, port: int) -> None:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as exc:
            raise ConfigError(
                f"the gateway cannot listen on {host}:{port}: {exc.strerror}; pick another with --port"
            ) from exc


def serve(settings: GatewaySettings, *, cpu_fallback: bool, gpus: int, admin_key: str | None = None) -> int:
    """Run until SIGINT/SIGTERM; then stop the controller, which stops the predictors.

    ``admin_key`` is the console's (``isvc.console.auth.admin_key``: None for an open console on loopback).
    """
    root = settings.state_dir
    if (pid := process.running_pid(root)) is not None:
        raise ConfigError(f"isvc is already running for {root} (pid {pid}); `isvc down` first")
    _check_port(settings.host, settings.port)
    store = Store(root)
    host_for_url = "127.0.0.1" if settings.host in ("0.0.0.0", "::") else settings.host
    for key, value in {
        "gateway_url": f"http://{host_for_url}:{settings.port}",
        "domain": settings.domain,
        "gpus": str(gpus),
        "cpu_fallback": "1" if cpu_fallback else "0",
        "shutdown": "0",
    }.items():
        store.set_meta(key, value)
    (root / process.UP_PID_FILE).write_text(f"{os.getpid()} {process.start_ticks(os.getpid())}")
    child = ControllerChild(root, cpu_fallback, gpus)
    child.start()
    routes_store = Store(root)
    console = create_console(root, admin_key=admin_key)
    app = create_app(settings, lambda: (routes_store.version("routes_version"), routes_store.routes()), console)
    config = uvicorn_config(app, host=settings.host, port=settings.port, limits=settings.limits,
                            log_level="warning", access_log=False, server_header=False, date_header=False)  # fmt: skip
    logger.info("isvc up: gateway on http://%s:%s, state in %s", host_for_url, settings.port, root)
    logger.info("isvc up: console on http://%s:%s/_isvc/console/%s", host_for_url, settings.port,
                " (admin key required)" if admin_key else "")  # fmt: skip

    # NOTE: uvicorn re-raises the signal that stopped it once it has shut down; with the
    # default handler that would kill us before the controller and predictors are stopped.
    def on_signal(signum: int, frame: object) -> None:
        logger.info("signal %s: stopping", signum)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        uvicorn.Server(config).run()
    finally:
        store.set_meta("shutdown", "1")
        child.stop(timeout_s=30.0)
        (root / process.UP_PID_FILE).unlink(missing_ok=True)
    return 0
