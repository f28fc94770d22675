"""4-bit grouped weights (GPTQ / AWQ checkpoints) multiplied with 10-bit integer activations.

A weight [N, K] is kept as the checkpoint has it: unsigned 4-bit ``q`` with a float scale and an
integer zero point per row and group of ``group`` consecutive inputs, ``w = scale * (q - zero)``
-- half the bytes of int8, an eighth of float32, and no float copy of the model in memory. An
act-order checkpoint (GPTQ ``desc_act``) groups scattered inputs; its inputs are permuted once at
load so that each group is consecutive, and each call gathers the activations in that order.

The kernel is linear_int4.c: per group an exact int32 dot product of the 4-bit values with the
row's integer activations (quantized per row, as kernels/int8.py does), scaled and summed in
float in group order. Rows stay independent: a request's tokens do not depend on its batch.
Without the native kernels, torch computes the same sums (float64, per group).
"""

from __future__ import annotations

import ctypes
import functools
from dataclasses import dataclass

import torch

from isvc.engine.kernels.build import bind, load
from isvc.engine.kernels.int8 import ROW_BLOCK, kernel_output, quantize_rows


@dataclass(frozen=True, slots=True)
class Int4Weight:
    """A linear's weight [N, K] as 4-bit values in groups of ``group`` inputs."""

    q: torch.Tensor
    """[N_padded, K / 2] uint8: each 32 inputs are 16 bytes, byte b holding input b (low nibble)
    and input b + 16 (high nibble); rows past ``out_features`` are zeros."""
    scale: torch.Tensor
    """[N_padded, groups] float32."""
    zero: torch.Tensor
    """[N_padded, groups] float32 (integers)."""
    group: int
    out_features: int
    perm: torch.Tensor | None = None
    """[K] the input order the groups are consecutive in (act order), or None (as stored)."""

    @property
    def shape(self) -> torch.Size:
        return torch.Size((self.out_features, self.q.shape[1] * 2))


def pack_int4(
    q: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, group: int, perm: torch.Tensor | None = None
) -> Int4Weight:
    """``q`` [N, K] values in 0..15 (inputs already in group order), ``scale``/``zero`` [N, groups]."""
    n, k = q.shape
    if k % 32 or group % 32:
        raise ValueError(f"4-bit rows need K and the group size in multiples of 32 (K={k}, group={group})")
    if scale.shape != (n, -(-k // group)) or zero.shape != scale.shape:
        raise ValueError(f"scales and zero points must be [N, ceil(K / group)] = [{n}, {-(-k // group)}]")
    padded = -(-n // ROW_BLOCK) * ROW_BLOCK
    values = torch.zeros(padded, k, dtype=torch.uint8)
    values[:n] = q.to(torch.uint8)
    chunks = values.view(padded, k // 32, 32)
    packed = (chunks[:, :, :16] | (chunks[:, :, 16:] << 4)).reshape(padded, k // 2).contiguous()
    groups = scale.shape[1]
    scales = torch.ones(padded, groups, dtype=torch.float32)
    zeros = torch.zeros(padded, groups, dtype=torch.float32)
    scales[:n], zeros[:n] = scale.float(), zero.float()
    return Int4Weight(packed, scales, zeros, group, n, perm)


def native_available() -> bool:
    """Whether linear_int4.c runs here. Without it, callers keep 4-bit checkpoints as int8 weights:
    the torch path unpacks a whole weight per call (tests and reference), far too slow to serve."""
    return _native() is not None


def unpack_values(w: Int4Weight) -> torch.Tensor:
    """The 4-bit values [N, K] (inputs in group order)."""
    chunks = w.q[: w.out_features].view(w.out_features, -1, 16)
    return torch.cat([chunks & 0xF, chunks >> 4], dim=2).reshape(w.out_features, -1)


def dequantize_int4(w: Int4Weight) -> torch.Tensor:
    """The float32 weight [N, K] the 4-bit one stands for, in the model's input order (tests, reference)."""
    q = unpack_values(w).float()
    group_of = torch.arange(q.shape[1]) // w.group
    n = w.out_features
    grouped = (q - w.zero[:n, group_of]) * w.scale[:n, group_of]
    if w.perm is None:
        return grouped
    out = torch.empty_like(grouped)
    out[:, w.perm] = grouped
    return out


def int4_linear(
    x: torch.Tensor,
    w: Int4Weight,
    bias: torch.Tensor | None = None,
    out: torch.Tensor | None = None,
    *,
    portable: bool = False,
) -> torch.Tensor:
    """x [M, K] float32 @ w.T -> [M, N] float32; with ``out``, ``out += x @ w.T``.

    ``portable`` runs the kernel's AVX2 tiles even where the CPU has AVX-512 VNNI (tests)."""
    x = x.float()
    if w.perm is not None:
        x = x[:, w.perm]
    (M, K), N = x.shape, w.out_features
    native = _native()
    if native is not None and M > 0:
        x = x.contiguous()
        padded = w.q.shape[0]
        y, add = kernel_output(out, bias, M, N, padded)
        xq = torch.empty(M, K, dtype=torch.int16)
        xs = torch.empty(M, dtype=torch.float32)
        xsum = torch.empty(M, w.scale.shape[1], dtype=torch.int32)
        native(
            x.data_ptr(), w.q.data_ptr(), w.scale.data_ptr(), w.zero.data_ptr(), y.data_ptr(),
            M, padded, K, w.group, int(add), torch.get_num_threads(),
            xq.data_ptr(), xs.data_ptr(), xsum.data_ptr(), int(portable),
        )  # fmt: skip
        if add:
            return y
        y = y[:, :N] if padded != N else y
    else:
        y = _torch_int4(x, w)
    if bias is not None:
        y = y.add(bias)
    return y if out is None else out.add_(y)


def _torch_int4(x: torch.Tensor, w: Int4Weight) -> torch.Tensor:
    """The kernel's sums in torch: per group, exact integer dot products (float64 holds them)."""
    xq, xs = quantize_rows(x)
    q = unpack_values(w).double()
    n = w.out_features
    y = torch.zeros(x.shape[0], n, dtype=torch.float64)
    for g, k0 in enumerate(range(0, x.shape[1], w.group)):
        xg = xq[:, k0 : k0 + w.group].double()
        dot = xg @ q[:, k0 : k0 + w.group].t()
        y += (dot - w.zero[:n, g].double() * xg.sum(1, keepdim=True)) * w.scale[:n, g].double()
    return (y * xs.double()).float()


@functools.cache
def _native() -> ctypes._CFuncPtr | None:  # type: ignore[name-defined]
    lib = load()
    if lib is None:
        return None
    p, n, i = ctypes.c_void_p, ctypes.c_long, ctypes.c_int
    return bind(lib.isvc_linear_q4, [p, p, p, p, p, n, n, n, n, i, i, p, p, p, i])
