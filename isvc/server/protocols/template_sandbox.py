"""Request chat templates rendered in a child process that a memory limit bounds and a deadline kills.

A request's template (``--trust-request-chat-template``) is a client's code. The renderer in
``chat_template`` refuses what it foresees (steps, time, value sizes) before it is built; what it
does not foresee must still fail only its request, and a thread that runs it cannot be killed.
So each request template renders in a process of its own:

- a small fork server (this module run with ``-m``: one thread, jinja and the renderer imported
  once) starts with the first request template and ends when the server's end of its socket closes;
- each render is a fork of it: the child caps its address space (``RLIMIT_AS``, the limits'
  ``max_memory_mb`` over what it started with), renders, answers in JSON and exits; the fork
  server kills it with SIGKILL once past the deadline;
- the server waits on a socket, so no thread is held while a template runs.

NOTE: why not fork the server itself: with SmolLM2-135M loaded (0.9 GB resident) ``os.fork()``
took 8 ms (15 ms at worst) with the GIL held, i.e. a frozen event loop, growing with the weights,
and a child forked from a process whose engine and pools run threads inherits their held locks.
A fork of the fork server (~20 MB resident, one thread) takes 0.3 ms; a whole render of a small
template through it, JSON both ways and compiling in the child included, about 6 ms.
"""

from __future__ import annotations

import asyncio
import json
import os
import resource
import select
import signal
import socket
import subprocess
import sys
import time
from dataclasses import asdict
from typing import Any

from isvc.errors import InvalidRequest, IsvcError, Unavailable
from isvc.server.protocols.chat_template import RenderLimits, TemplateLimitExceeded, render
from isvc.server.protocols.preprocess import off_loop

_KILL_GRACE_S = 0.5
"""The renderer stops itself at the deadline; the fork server kills what did not (a long C call)."""
_MAX_CONCURRENT = 2
"""Request templates rendering at once; more wait their turn (each child may use a core and max_memory_mb)."""


class TemplateSandbox:
    """The server's side: starts the fork server on first use and renders through it."""

    def __init__(self) -> None:
        self._proc: subprocess.Popen[bytes] | None = None
        self._control: socket.socket | None = None
        self._slots: asyncio.Semaphore | None = None

    async def render(self, source: str, variables: dict[str, Any], limits: RenderLimits, param: str) -> str:
        """Render like ``chat_template.render``, in a child process; raises the same errors."""
        request = await off_loop(
            lambda: json.dumps(
                {"source": source, "variables": variables, "limits": asdict(limits), "param": param}, default=str
            )
        )
        if self._slots is None:
            self._slots = asyncio.Semaphore(_MAX_CONCURRENT)
        async with self._slots:
            started = time.monotonic()
            reply = await self._exchange(request.encode(), limits.timeout_s)
            elapsed = time.monotonic() - started
        if reply is None:
            if elapsed >= limits.timeout_s:
                raise TemplateLimitExceeded(
                    f"the chat template ran longer than {limits.timeout_s:g} s (the template time limit)", param=param
                )
            raise TemplateLimitExceeded(
                f"the chat template's process ended without an answer (it may have passed the template memory "
                f"limit of {limits.max_memory_mb} MB)",
                param=param,
            )
        if "text" in reply:
            return str(reply["text"])
        if "limit" in reply:
            raise TemplateLimitExceeded(str(reply["limit"]), param=param)
        raise InvalidRequest(str(reply.get("invalid", "the chat template failed")), param=param)

    async def _exchange(self, request: bytes, timeout_s: float) -> dict[str, Any] | None:
        ours, theirs = socket.socketpair()
        try:
            self._send(theirs.fileno(), timeout_s + _KILL_GRACE_S)
        except OSError as exc:
            ours.close()
            raise Unavailable(f"the chat template sandbox could not start: {exc}", retry_after_s=5) from exc
        finally:
            theirs.close()  # the child holds it now: EOF on ours once the child is gone
        loop = asyncio.get_running_loop()
        ours.setblocking(False)
        chunks: list[bytes] = []
        try:
            async with asyncio.timeout(timeout_s + _KILL_GRACE_S + 5):  # the fork server itself is stuck
                await loop.sock_sendall(ours, request)
                ours.shutdown(socket.SHUT_WR)
                while chunk := await loop.sock_recv(ours, 1 << 16):
                    chunks.append(chunk)
        except (OSError, TimeoutError):  # killed before it read the request, or no answer at all
            return None
        finally:
            ours.close()
        try:
            reply = json.loads(b"".join(chunks)) if chunks else None
        except ValueError:  # cut short by the kill
            return None
        return reply if isinstance(reply, dict) else None

    def _send(self, fd: int, kill_after_s: float) -> None:
        message = json.dumps({"kill_after_s": kill_after_s}).encode()
        for attempt in range(2):
            if self._control is None or self._proc is None or self._proc.poll() is not None:
                self._start()
            assert self._control is not None
            try:
                socket.send_fds(self._control, [message], [fd])
                return
            except OSError:
                self.close()  # the fork server died: start another once
                if attempt:
                    raise

    def _start(self) -> None:
        self.close()
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self._proc = subprocess.Popen(
            [sys.executable, "-m", __name__, str(theirs.fileno())],
            pass_fds=[theirs.fileno()],
            stdin=subprocess.DEVNULL,
        )
        theirs.close()
        self._control = ours

    def close(self) -> None:
        """Stop the fork server (closing its socket is enough: it exits on EOF)."""
        if self._control is not None:
            self._control.close()
            self._control = None
        if self._proc is not None:
            try:
                self._proc.wait(timeout=2)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
            self._proc = None


# -- the fork server and its children ----------------------------------------------------------


def serve(control_fd: int) -> None:
    """Fork one child per render request; kill each one that outlives its deadline."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the server's Ctrl-C is the server's to handle
    control = socket.socket(fileno=control_fd)
    deadlines: dict[int, float] = {}
    while True:
        now = time.monotonic()
        wait = min((d - now for d in deadlines.values()), default=None)
        ready, _, _ = select.select([control], [], [], None if wait is None else min(max(wait, 0.0), 1.0))
        if ready:
            message, fds, _, _ = socket.recv_fds(control, 1024, 1)
            if not message:  # the server is gone
                return
            if fds:
                pid = os.fork()
                if pid == 0:
                    control.close()
                    _child(fds[0])
                os.close(fds[0])
                deadlines[pid] = time.monotonic() + float(json.loads(message)["kill_after_s"])
        for pid, deadline in list(deadlines.items()):
            if os.waitpid(pid, os.WNOHANG)[0]:
                del deadlines[pid]
            elif time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)  # reaped on a later turn


def _child(fd: int) -> None:
    code = 1
    try:
        conn = socket.socket(fileno=fd)
        chunks = []
        while chunk := conn.recv(1 << 16):
            chunks.append(chunk)
        request = json.loads(b"".join(chunks))
        limits = RenderLimits(**request["limits"])
        _cap_memory(limits.max_memory_mb)
        reply: dict[str, str]
        try:
            reply = {"text": render(request["source"], request["variables"], limits, request["param"])}
        except TemplateLimitExceeded as exc:
            reply = {"limit": exc.message}
        except IsvcError as exc:
            reply = {"invalid": exc.message}
        conn.sendall(json.dumps(reply).encode())
        code = 0
    finally:
        os._exit(code)


def _cap_memory(extra_mb: int) -> None:
    with open("/proc/self/status") as status:
        size_kb = next(int(line.split()[1]) for line in status if line.startswith("VmSize:"))
    cap = size_kb * 1024 + extra_mb * 1024 * 1024
    resource.setrlimit(resource.RLIMIT_AS, (cap, cap))


if __name__ == "__main__":
    serve(int(sys.argv[1]))
