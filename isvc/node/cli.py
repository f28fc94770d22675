"""``isvc up`` and ``isvc down``: start and stop the gateway and the controller of one state dir."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from pydantic import ValidationError

from isvc.console.auth import KEY_FILE, admin_key
from isvc.controlplane import process
from isvc.controlplane.cli import common_args, fail
from isvc.controlplane.settings import CPU_FALLBACK_ENV, GPUS_ENV, detect_gpus, env_flag
from isvc.controlplane.store import Store, state_dir
from isvc.errors import IsvcError
from isvc.gateway.settings import GatewaySettings
from isvc.node.supervisor import serve

ADMIN_KEY_ENV = "ISVC_ADMIN_KEY"
_ADMIN_KEY_FLAG = "--admin-key"


def up(argv: list[str]) -> int:
    p = common_args(argparse.ArgumentParser(prog="isvc up", description="start the controller and the gateway"))
    p.add_argument("--port", type=int, default=int(os.environ.get("ISVC_PORT", "8080")), help="gateway port (8080)")
    p.add_argument("--host", default="127.0.0.1", help="gateway interface (127.0.0.1; 0.0.0.0 for all)")
    p.add_argument("--domain", default="example.com", help="Host routing domain: {name}.{namespace}.{domain}")
    p.add_argument("--cpu-fallback", action="store_true", default=env_flag(CPU_FALLBACK_ENV),
                   help=f"run predictors that ask for GPUs on CPU, with a warning condition (env {CPU_FALLBACK_ENV}=1)")  # fmt: skip
    p.add_argument("--gpus", type=int, default=None, help=f"GPUs to offer (default: detected, or ${GPUS_ENV})")
    p.add_argument("--api-key", action="append", default=[], metavar="NS=KEY",
                   help="require 'Authorization: Bearer KEY' for namespace NS ('*' for all); repeatable")  # fmt: skip
    p.add_argument("--model-scan-bytes", type=int, default=1 << 20,
                   help="most bytes of a body read to find its OpenAI 'model' when no Host or path names the service")  # fmt: skip
    p.add_argument("--max-body-bytes", type=int, default=None,
                   help="largest request body the gateway accepts (413 beyond; default 4 MiB)")  # fmt: skip
    p.add_argument("--header-timeout", type=float, default=None, metavar="SECONDS",
                   help="a connection must send its header block within this (default 10)")  # fmt: skip
    p.add_argument("--body-timeout", type=float, default=None, metavar="SECONDS",
                   help="longest stall between two body chunks (408 then; default 30)")  # fmt: skip
    p.add_argument("--admin-key", default=os.environ.get(ADMIN_KEY_ENV), metavar="KEY",
                   help="key the web console (/_isvc/console) requires; off loopback without it, one is made in "
                        f"the state dir's admin.key and printed once (env {ADMIN_KEY_ENV}, which keeps it out of "
                        "`ps`; with -d this flag is passed on that way too)")  # fmt: skip
    p.add_argument("-d", "--detach", action="store_true", help="run in the background")
    p.add_argument("--wait-timeout", type=float, default=60.0, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    os.environ.pop(ADMIN_KEY_ENV, None)  # read; the controller and the predictors it starts never see it
    keys: dict[str, list[str]] = {}
    for item in args.api_key + [k for k in os.environ.get("ISVC_API_KEYS", "").split(",") if k.strip()]:
        ns, sep, key = item.partition("=")
        if not sep or not key:
            return fail(IsvcError(f"--api-key wants NS=KEY, got {item!r}"))
        keys.setdefault(ns.strip(), []).append(key.strip())
    root = state_dir(args.state_dir)
    # made before -d forks, so that the key is shown on this terminal, not in the background process's log
    key, created = admin_key(root, args.host, args.admin_key)
    if created:
        print(f"isvc up: the console's admin key (saved in {root / KEY_FILE}, shown only now): {key}", flush=True)
    if args.detach:
        return _detach(root, argv, args)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        settings = GatewaySettings(
            state_dir=root, host=args.host, port=args.port, domain=args.domain, api_keys=keys,
            model_scan_bytes=args.model_scan_bytes,
            **{k: v for k, v in (("max_body_bytes", args.max_body_bytes), ("header_timeout_s", args.header_timeout),
                                 ("body_timeout_s", args.body_timeout)) if v is not None},
        )  # fmt: skip
    except ValidationError as exc:
        first = exc.errors()[0]
        flag = "-".join(str(p) for p in first["loc"]).removesuffix("_s").replace("_", "-")
        return fail(IsvcError(f"--{flag}: {first['msg']}"))
    gpus = detect_gpus() if args.gpus is None else args.gpus
    try:
        return serve(settings, cpu_fallback=args.cpu_fallback, gpus=gpus, admin_key=key)
    except IsvcError as exc:
        return fail(exc)


def _detach(root: Path, argv: list[str], args: argparse.Namespace) -> int:
    if (pid := process.running_pid(root)) is not None:
        return fail(IsvcError(f"isvc is already running for {root} (pid {pid}); `isvc down` first"))
    rest = _without_admin_key([a for a in argv if a not in ("-d", "--detach")])
    if "--state-dir" not in rest:
        rest += ["--state-dir", str(root)]
    # the key goes by the environment, which only this user can read, not by argv, which `ps` shows everyone
    env = {**os.environ, ADMIN_KEY_ENV: args.admin_key} if args.admin_key else None
    log = root / "logs" / "controlplane.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        proc = subprocess.Popen([sys.executable, "-m", "isvc", "up", *rest], stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True, env=env)  # fmt: skip
    host = "127.0.0.1" if args.host in ("0.0.0.0", "::") else args.host
    url = f"http://{host}:{args.port}/_isvc/healthz"
    deadline = time.monotonic() + args.wait_timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = "\n".join(process.tail(log, 5))
            return fail(IsvcError(f"isvc up exited with {proc.returncode}:\n{tail}"))
        try:
            with urllib.request.urlopen(url, timeout=1) as resp:
                if resp.status == 200:
                    print(f"isvc up: gateway on http://{host}:{args.port} (pid {proc.pid}), state in {root}, log {log}")
                    return 0
        except OSError:
            time.sleep(0.1)
    return fail(IsvcError(f"isvc up did not answer on {url} within {args.wait_timeout:.0f}s; see {log}"))


def _without_admin_key(argv: list[str]) -> list[str]:
    """``argv`` less ``--admin-key KEY`` / ``--admin-key=KEY`` (or an abbreviation argparse took, ``--adm``)."""
    out: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
            continue
        name, eq, _ = arg.partition("=")
        if len(name) >= 4 and _ADMIN_KEY_FLAG.startswith(name):
            skip = not eq
            continue
        out.append(arg)
    return out


def down(argv: list[str]) -> int:
    p = common_args(argparse.ArgumentParser(prog="isvc down", description="stop the control plane and its predictors"))
    p.add_argument("--timeout", type=float, default=40.0)
    args = p.parse_args(argv)
    root = state_dir(args.state_dir)
    pid = process.running_pid(root)
    if pid is not None:
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + args.timeout
        while process.running_pid(root) is not None and time.monotonic() < deadline:
            time.sleep(0.1)
    store = Store(root)
    store.set_meta("shutdown", "1")
    cpid = int(store.get_meta("controller_pid") or 0)
    if cpid and _is_controller(cpid):  # the supervisor died without stopping it
        os.kill(cpid, signal.SIGTERM)
        deadline = time.monotonic() + args.timeout
        while _is_controller(cpid) and time.monotonic() < deadline:
            time.sleep(0.1)
    leftovers = 0
    for r in store.replicas():  # belt and braces: predictors of a controller that died with the supervisor
        if r.pid and process.is_same_process(r.pid, r.start_ticks):
            process.kill_group(r.pid, signal.SIGKILL)
            leftovers += 1
    store.forget_processes()  # the next `isvc up` starts them afresh
    print("isvc down: stopped" if pid is not None else "isvc down: control plane was not running", end="")
    print(f" ({leftovers} leftover predictor(s) killed)" if leftovers else "")
    return 0


def _is_controller(pid: int) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return b"isvc.controlplane.controller" in cmdline and process.is_same_process(pid, None)


__all__ = ["down", "up"]
