"""One predictor "pod": run the storage initializer, rewrite the mount path (/mnt/models), then exec the server.

Started by the launcher as ``python -m isvc.controlplane.pod POD.json`` in its own process
group, with stdout/stderr going to the replica's log file. ``os.execvpe`` keeps the pid, so
the pid the controller records is the server's. A storage failure exits 3 with the reason
as the last log line (the controller shows it in the status).

``python3``/``python`` on the predictor's PATH are isvc's own interpreter (a ``bin`` folder
next to the pod files comes first), so a seed-style ``sh -c "python3 -m ..."`` runs with
the packages isvc runs with, not the system Python's.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import sys
from pathlib import Path
from typing import Any

EXIT_STORAGE = 3


def _fetch(uri: str, dest: Path) -> Path:
    from isvc.storage.initializer import download

    return Path(download(uri, dest))


def _mount_root() -> str:
    """KServe's /mnt/models, or ISVC_MOUNT_ROOT (the storage settings own the default)."""
    from isvc.storage.settings import StorageSettings

    return StorageSettings.from_env().mount_root


def rewrite_mount(text: str, root: Path, mount_root: str = "/mnt/models") -> str:
    """``<mount root>/X`` → ``<root>/X`` wherever it appears in an argument or env value."""
    pattern = re.escape(mount_root) + r"(?=$|[/\s\"':,;=])"
    return re.sub(pattern, str(root).replace("\\", "\\\\"), text)


def interpreter_bin(folder: Path) -> Path:
    """``folder`` holding ``python3`` and ``python`` scripts that exec this interpreter."""
    folder.mkdir(parents=True, exist_ok=True)
    script = f'#!/bin/sh\nexec {shlex.quote(sys.executable)} "$@"\n'
    for name in ("python3", "python"):
        path = folder / name
        if path.exists() and path.read_text() == script:
            continue
        tmp = folder / f".{name}.{os.getpid()}"
        tmp.write_text(script)
        tmp.chmod(0o755)
        tmp.replace(path)  # atomic: pods starting together each see a whole script
    return folder


def main(argv: list[str]) -> int:
    spec: dict[str, Any] = json.loads(Path(argv[0]).read_text())
    command: list[str] = spec["command"]
    env: dict[str, str] = spec["env"]
    uri = spec.get("storage_uri")
    if uri:
        print(f"storage-initializer: fetching {uri}", flush=True)
        try:
            root = _fetch(uri, Path(spec["model_dest"]))
        except Exception as exc:  # any failure here is the pod's failure; say why and exit
            print(f"storage-initializer: failed: {type(exc).__name__}: {exc}", flush=True)
            return EXIT_STORAGE
        print(f"storage-initializer: {uri} -> {root}", flush=True)
        mount_root = _mount_root()
        command = [rewrite_mount(a, root, mount_root) for a in command]
        env = {k: rewrite_mount(v, root, mount_root) for k, v in env.items()}
    bin_dir = interpreter_bin(Path(argv[0]).resolve().parent / "bin")
    env["PATH"] = os.pathsep.join([str(bin_dir), *(p for p in env.get("PATH", os.defpath).split(os.pathsep) if p)])
    print(f"isvc pod: exec {' '.join(command)}", flush=True)
    exe = shutil.which(command[0], path=env.get("PATH")) or command[0]
    cwd = spec.get("cwd")
    if cwd:
        os.chdir(cwd)
    try:
        os.execvpe(exe, command, env)
    except OSError as exc:
        print(f"isvc pod: cannot run {command[0]!r}: {exc}", flush=True)
        return 127
    return 0  # unreachable


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
