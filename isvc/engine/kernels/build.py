"""Compile the C kernels beside this file into one shared library, once, and load it.

They are built with the machine's C compiler into ``$ISVC_CACHE_DIR/kernels`` under a name
that hashes the sources, flags and compiler, which takes about two seconds the first time.
The library links OpenMP by soname, so in a process that imported torch it shares torch's
own OpenMP runtime and thread pool rather than bringing a second one.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from isvc.paths import cache_root

logger = logging.getLogger(__name__)

SOURCE_DIR = Path(__file__).parent
CFLAGS = ["-O3", "-mavx2", "-mfma", "-mf16c", "-ffp-contract=off", "-fopenmp", "-shared", "-fPIC"]


class KernelUnavailable(Exception):
    """The native kernels cannot be built or loaded here; the caller uses torch's ops."""


def disabled() -> bool:
    return os.environ.get("ISVC_NATIVE_KERNELS", "1").lower() in ("0", "false", "no", "off")


def build() -> Path:
    """Compile every ``*.c`` here into one library (cached); return its path."""
    import torch

    if disabled():
        raise KernelUnavailable("disabled by ISVC_NATIVE_KERNELS")
    capability = torch.backends.cpu.get_cpu_capability()
    if capability not in ("AVX2", "AVX512"):
        raise KernelUnavailable(f"CPU capability {capability} lacks AVX2")
    cc = os.environ.get("CC", "cc")
    if shutil.which(cc) is None:
        raise KernelUnavailable(f"no C compiler ({cc}) on PATH")
    sources = sorted(SOURCE_DIR.glob("*.c"))
    digest = hashlib.sha256()
    for path in [*sources, *sorted(SOURCE_DIR.glob("*.h"))]:
        digest.update(path.name.encode() + path.read_bytes())
    digest.update(" ".join(CFLAGS).encode())
    digest.update(subprocess.run([cc, "--version"], capture_output=True, text=True).stdout.encode())
    target = cache_root() / "kernels" / f"isvc_kernels-{digest.hexdigest()[:16]}.so"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    # Build beside the target and rename: a concurrent build or a killed one never leaves
    # a half-written library under the final name.
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
    os.close(fd)
    try:
        done = subprocess.run([cc, *CFLAGS, *map(str, sources), "-o", tmp], capture_output=True, text=True)
        if done.returncode != 0:
            raise KernelUnavailable(f"{cc} failed to build the kernels: {done.stderr.strip()[-500:]}")
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


def load() -> ctypes.CDLL | None:
    """The kernel library, or None (logged once) when it cannot be had here."""
    return None if disabled() else _load()


@functools.cache
def _load() -> ctypes.CDLL | None:
    try:
        return ctypes.CDLL(str(build()))  # CDLL calls release the GIL
    except (KernelUnavailable, OSError) as exc:
        logger.info("native kernels not used (%s); using torch's ops", exc)
        return None


def bind(fn: ctypes._CFuncPtr, argtypes: list) -> ctypes._CFuncPtr:  # type: ignore[name-defined]
    """A kernel function of the library, typed: its C argument types, no return value."""
    fn.argtypes = argtypes
    fn.restype = None
    return fn
