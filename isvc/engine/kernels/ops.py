"""The ops of a Llama step, twice: in torch (the reference) and on the native kernels.

``NativeOps`` overrides each op where its kernel covers the shapes and dtype and falls
back to ``TorchOps`` otherwise, so a model runs the same either way up to float rounding.
The native ops are row-exact: a row's result never depends, to the bit, on the other rows
in the step or on how a prompt was chunked. Torch's (MKL, SDPA) promise that only up to
rounding, which is why prefix reuse and speculation run on the native ops only.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable

import torch
import torch.nn.functional as F

from isvc.engine.kernels.build import bind, load
from isvc.engine.kernels.int4 import Int4Weight, int4_linear
from isvc.engine.kernels.int8 import Int8Weight, int8_linear

Weight = torch.Tensor | Int8Weight | Int4Weight
"""A linear's weight: a float tensor [N, K], its int8 form, or a checkpoint's 4-bit groups."""

_p, _l, _i, _f = ctypes.c_void_p, ctypes.c_long, ctypes.c_int, ctypes.c_float


class TorchOps:
    name = "torch"
    native_attention = False

    def linear(self, x: torch.Tensor, w: Weight, bias: torch.Tensor | None = None) -> torch.Tensor:
        if isinstance(w, Int8Weight):
            return int8_linear(x, w, bias)
        if isinstance(w, Int4Weight):
            return int4_linear(x, w, bias)
        return F.linear(x, w, bias)

    def linear_add_(self, out: torch.Tensor, x: torch.Tensor, w: Weight) -> torch.Tensor:
        """out += x @ w.T (a residual connection)."""
        if isinstance(w, Int8Weight):
            return int8_linear(x, w, out=out)
        if isinstance(w, Int4Weight):
            return int4_linear(x, w, out=out)
        return out.add_(self.linear(x, w))

    def rms_norm(self, x: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
        return F.rms_norm(x, (x.shape[-1],), w, eps)

    def rope_(
        self,
        qkv: torch.Tensor,
        heads: int,
        head_dim: int,
        positions: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
    ) -> None:
        """Rotary embedding in place on the first ``heads`` heads of each row of ``qkv``."""
        qk = qkv[:, : heads * head_dim].view(qkv.shape[0], heads, head_dim)
        half = head_dim // 2
        rotated = torch.cat((-qk[..., half:], qk[..., :half]), dim=-1)
        qk.copy_(qk * cos[positions].unsqueeze(1) + rotated * sin[positions].unsqueeze(1))

    def silu_mul(self, gu: torch.Tensor) -> torch.Tensor:
        """SwiGLU on the fused gate/up projection [N, 2I] -> [N, I]."""
        inter = gu.shape[1] // 2
        return F.silu(gu[:, :inter]) * gu[:, inter:]

    def attention(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        kc: torch.Tensor,
        vc: torch.Tensor,
        slots: torch.Tensor,
        positions: torch.Tensor,
    ) -> torch.Tensor:
        raise NotImplementedError("the model runs its torch attention path when native_attention is False")


class NativeOps(TorchOps):
    name = "native-avx2"

    def __init__(self, lib: ctypes.CDLL, num_threads: int, head_dim: int, group: int) -> None:
        self.threads = num_threads
        self._linear = bind(lib.isvc_linear_f32, [_p, _p, _p, _l, _l, _l, _i, _i])
        self._rms_norm = bind(lib.isvc_rms_norm, [_p, _p, _p, _l, _l, _f, _i])
        self._rope = bind(lib.isvc_rope, [_p, _l, _p, _p, _p, _l, _l, _l, _i])
        self._silu_mul = bind(lib.isvc_silu_mul, [_p, _p, _l, _l, _i])
        attention_args = [_p, _l, _p, _l, _p, _l, _p, _p, _p, _p, _p, _l, _l, _l, _l, _l, _f, _i]
        self._attention = {
            torch.float32: bind(lib.isvc_attention_f32, attention_args),
            torch.float16: bind(lib.isvc_attention_f16, attention_args),
            torch.float8_e5m2: bind(lib.isvc_attention_e5m2, attention_args),
        }
        self.native_attention = head_dim % 8 == 0 and head_dim <= 256 and group <= 16
        self.scale = head_dim**-0.5
        self.group = group

    def _covers(self, x: torch.Tensor, w: torch.Tensor) -> bool:
        return (
            x.dim() == 2
            and x.shape[0] > 0
            and x.dtype == w.dtype == torch.float32
            and x.shape[1] % 8 == 0
            and w.shape[0] % 4 == 0
            and w.is_contiguous()
        )

    def linear(self, x: torch.Tensor, w: Weight, bias: torch.Tensor | None = None) -> torch.Tensor:
        if not isinstance(w, torch.Tensor) or not self._covers(x, w):
            return super().linear(x, w, bias)
        x = x.contiguous()
        (M, K), N = x.shape, w.shape[0]
        y = torch.empty(M, N, dtype=torch.float32)
        self._linear(x.data_ptr(), w.data_ptr(), y.data_ptr(), M, N, K, 0, self.threads)
        return y if bias is None else y.add_(bias)

    def linear_add_(self, out: torch.Tensor, x: torch.Tensor, w: Weight) -> torch.Tensor:
        if not (
            isinstance(w, torch.Tensor) and self._covers(x, w) and out.is_contiguous() and out.dtype == torch.float32
        ):
            return super().linear_add_(out, x, w)
        x = x.contiguous()
        (M, K), N = x.shape, w.shape[0]
        self._linear(x.data_ptr(), w.data_ptr(), out.data_ptr(), M, N, K, 1, self.threads)
        return out

    def rms_norm(self, x: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
        if x.dim() != 2 or x.dtype != torch.float32 or x.shape[1] % 8 or not x.is_contiguous():
            return super().rms_norm(x, w, eps)
        out = torch.empty_like(x)
        self._rms_norm(x.data_ptr(), w.data_ptr(), out.data_ptr(), x.shape[0], x.shape[1], eps, self.threads)
        return out

    def rope_(
        self,
        qkv: torch.Tensor,
        heads: int,
        head_dim: int,
        positions: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
    ) -> None:
        if (
            head_dim % 16
            or qkv.dtype != torch.float32
            or qkv.stride(1) != 1
            or not (cos.is_contiguous() and sin.is_contiguous())
        ):
            return super().rope_(qkv, heads, head_dim, positions, cos, sin)
        self._rope(
            qkv.data_ptr(),
            qkv.stride(0),
            positions.data_ptr(),
            cos.data_ptr(),
            sin.data_ptr(),
            qkv.shape[0],
            heads,
            head_dim,
            self.threads,
        )

    def silu_mul(self, gu: torch.Tensor) -> torch.Tensor:
        inter = gu.shape[1] // 2
        if gu.dtype != torch.float32 or inter % 8 or not gu.is_contiguous():
            return super().silu_mul(gu)
        out = torch.empty(gu.shape[0], inter, dtype=torch.float32)
        self._silu_mul(gu.data_ptr(), out.data_ptr(), gu.shape[0], inter, self.threads)
        return out

    def attention(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        kc: torch.Tensor,
        vc: torch.Tensor,
        slots: torch.Tensor,
        positions: torch.Tensor,
    ) -> torch.Tensor:
        """Causal attention for every row of a step (decode tokens and prompt chunks alike).

        Writes each row's K/V into its slot at its position, then attends over positions
        0..position of that slot. q [R, H, Dh], k and v [R, KVH, Dh] (rows may be strided,
        heads contiguous), the layer's cache kc/vc [slots, KVH, cap, Dh] (float32,
        float16 or float8 e5m2), slots and positions [R] int64 -> [R, H*Dh].
        """
        D, H, Dh = q.shape
        KVH = k.shape[1]
        out = torch.empty(D, H * Dh, dtype=torch.float32)
        self._attention[kc.dtype](
            q.data_ptr(),
            q.stride(0),
            k.data_ptr(),
            k.stride(0),
            v.data_ptr(),
            v.stride(0),
            kc.data_ptr(),
            vc.data_ptr(),
            slots.data_ptr(),
            positions.data_ptr(),
            out.data_ptr(),
            D,
            KVH,
            self.group,
            Dh,
            kc.shape[2],
            self.scale,
            self.threads,
        )
        return out


Linear = Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None], torch.Tensor]
"""``linear(x [N, K], w [M, K], bias [M] or None) -> [N, M]``."""

SMALL_ROWS = 128
"""Up to this many rows a float32 linear runs on the native kernel, beyond it on torch (MKL)."""


def small_rows_linear() -> Linear:
    """A float32 linear that sends at most SMALL_ROWS rows to the native kernel, on as many threads
    as torch has on the calling thread, and the rest to torch.

    A lone encoder request runs on every core, and there MKL splits a 45-row matmul badly:
    measured here, one all-MiniLM-L6-v2 input of 20-45 tokens on 2 threads 13.1 -> 10.4 ms
    (min of 6x30), two inputs 18.3 -> 15.7 ms; on one thread the kernel and MKL tie, and from a
    few hundred rows on MKL is ahead. Without the kernels it is torch's linear.
    """
    by_threads: dict[int, TorchOps] = {}

    def linear(x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        if x.shape[0] > SMALL_ROWS:
            return F.linear(x, w, bias)
        threads = torch.get_num_threads()
        ops = by_threads.get(threads)
        if ops is None:
            ops = by_threads[threads] = ops_for(torch.float32, threads, head_dim=64, group=1)  # no attention
        return ops.linear(x, w, bias)

    return linear


def ops_for(dtype: torch.dtype, num_threads: int, head_dim: int, group: int) -> TorchOps:
    """The native ops for float32 when the kernels build here; torch's otherwise."""
    lib = load() if dtype == torch.float32 else None
    return NativeOps(lib, num_threads, head_dim, group) if lib is not None else TorchOps()
