"""Native CPU kernels for the hot shapes of decoding, compiled on first use and cached.

The C sources sit beside this file. They are built with the machine's C compiler into
``$ISVC_CACHE_DIR/kernels`` (one file per source, flags and compiler), which takes about a
second, once. They link OpenMP by soname, so in a process that imported torch they share
torch's own OpenMP runtime and thread pool rather than bringing a second one.

Everything here falls back to the torch op when the kernel cannot be used (no compiler, a
CPU without AVX2/FMA, a shape or dtype it does not cover, ``ISVC_NATIVE_KERNELS=0``), so
the kernels change speed, never answers beyond float rounding.
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
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import torch
import torch.nn.functional as F

logger = logging.getLogger(__name__)

SOURCE_DIR = Path(__file__).parent
CFLAGS = ["-O3", "-mavx2", "-mfma", "-fopenmp", "-shared", "-fPIC"]

Linear = Callable[[torch.Tensor, torch.Tensor, "torch.Tensor | None"], torch.Tensor]


class KernelUnavailable(Exception):
    """The native kernel cannot be built or loaded here; the caller uses the torch op."""


def _cache_dir() -> Path:
    root = os.environ.get("ISVC_CACHE_DIR") or Path.home() / ".cache" / "isvc"
    return Path(root) / "kernels"


def _disabled() -> bool:
    return os.environ.get("ISVC_NATIVE_KERNELS", "1").lower() in ("0", "false", "no", "off")


def build(source_name: str) -> Path:
    """Compile ``source_name`` (a .c file beside this module) once; return the shared library."""
    if _disabled():
        raise KernelUnavailable("disabled by ISVC_NATIVE_KERNELS")
    if torch.backends.cpu.get_cpu_capability() not in ("AVX2", "AVX512"):
        raise KernelUnavailable(f"CPU capability {torch.backends.cpu.get_cpu_capability()} lacks AVX2")
    cc = os.environ.get("CC", "cc")
    if shutil.which(cc) is None:
        raise KernelUnavailable(f"no C compiler ({cc}) on PATH")
    source = (SOURCE_DIR / source_name).read_bytes()
    version = subprocess.run([cc, "--version"], capture_output=True, text=True).stdout
    digest = hashlib.sha256(source + " ".join(CFLAGS).encode() + version.encode()).hexdigest()[:16]
    target = _cache_dir() / f"{Path(source_name).stem}-{digest}.so"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    # Build beside the target and rename: a concurrent build or a killed one never leaves
    # a half-written library under the final name.
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
    os.close(fd)
    try:
        done = subprocess.run([cc, *CFLAGS, str(SOURCE_DIR / source_name), "-o", tmp],
                              capture_output=True, text=True)
        if done.returncode != 0:
            raise KernelUnavailable(f"{cc} failed to build {source_name}: {done.stderr.strip()[-500:]}")
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


def load(source_name: str) -> ctypes.CDLL | None:
    """The built library for ``source_name``, or None (logged once) when it cannot be had."""
    return None if _disabled() else _load(source_name)


@functools.cache
def _load(source_name: str) -> ctypes.CDLL | None:
    try:
        return ctypes.CDLL(str(build(source_name)))  # CDLL calls release the GIL
    except (KernelUnavailable, OSError) as exc:
        logger.info("native kernel %s not used (%s); using torch's ops", source_name, exc)
        return None


def native_linear(num_threads: int) -> Linear:
    """``F.linear`` for float32, on the AVX2 kernel where it applies; the torch op otherwise."""
    lib = load("linear_avx2.c")
    if lib is None:
        return F.linear
    fn = lib.isvc_linear_f32
    fn.argtypes = [ctypes.c_void_p] * 3 + [ctypes.c_long] * 3 + [ctypes.c_int]
    fn.restype = None

    def linear(x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        M, K = x.shape if x.dim() == 2 else (0, 0)
        N = w.shape[0]
        if (M == 0 or x.dtype != torch.float32 or w.dtype != torch.float32 or K % 8 or N % 4
                or not w.is_contiguous()):
            return F.linear(x, w, bias)
        x = x.contiguous()
        y = torch.empty(M, N, dtype=torch.float32)
        fn(x.data_ptr(), w.data_ptr(), y.data_ptr(), M, N, K, num_threads)
        return y if bias is None else y.add_(bias)

    return linear


class DecodeAttention(Protocol):
    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kc: torch.Tensor,
                 vc: torch.Tensor, slots: torch.Tensor, positions: torch.Tensor) -> torch.Tensor: ...


def native_decode_attention(num_threads: int, num_kv_heads: int, head_dim: int,
                            group: int) -> DecodeAttention | None:
    """Write this step's K/V at each request's position and attend over its own length.

    q [D, H, Dh], k and v [D, KVH, Dh] (rows may be strided, heads contiguous), the layer's
    cache kc/vc [slots, KVH, cap, Dh], slots and positions [D] (int64). Returns [D, H * Dh].
    None when the kernel does not cover this model or machine.
    """
    lib = load("attention_avx2.c")
    if lib is None or head_dim % 8 or head_dim > 256 or group > 16:
        return None
    fn = lib.isvc_decode_attention
    fn.argtypes = ([ctypes.c_void_p, ctypes.c_long] * 3 + [ctypes.c_void_p] * 5 + [ctypes.c_long] * 5
                   + [ctypes.c_float, ctypes.c_int])
    fn.restype = None
    scale = head_dim ** -0.5

    def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kc: torch.Tensor, vc: torch.Tensor,
                  slots: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        D = q.shape[0]
        for t in (q, k, v):
            assert t.dtype == torch.float32 and t.stride(2) == 1 and t.stride(1) == head_dim
        assert kc.is_contiguous() and vc.is_contiguous() and slots.dtype == positions.dtype == torch.long
        out = torch.empty(D, num_kv_heads * group * head_dim, dtype=torch.float32)
        fn(q.data_ptr(), q.stride(0), k.data_ptr(), k.stride(0), v.data_ptr(), v.stride(0),
           kc.data_ptr(), vc.data_ptr(), slots.data_ptr(), positions.data_ptr(), out.data_ptr(),
           D, num_kv_heads, group, head_dim, kc.shape[2], scale, num_threads)
        return out

    return attention
