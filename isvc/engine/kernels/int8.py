"""Online int8 quantization (``--quantization int8``): 8-bit weights, 10-bit integer activations.

A float32 model's linear weights are quantized once at load, symmetric per output channel
(``scale = max|row| / 127``); each step quantizes its activations per row (token) to integers
in [-511, 511], multiplies in exact int32, and scales back with one multiply per output. Any
float model can be served this way, without a quantized checkpoint.

Why 10-bit activations, not 8: SmolLM2-135M's perplexity on pydoc's topics (bench/perplexity.py)
moved +2.9 % with 8-bit activations per token, and -0.2 % with 10 -- within noise of float
activations (weight-only int8: -0.3 %). 8-bit per token only held up in groups of 64
(+0.0 %), which costs a float rescale every 64 products; 10-bit values times int8 weights
are one int16 multiply-add each (AVX-512 VNNI's vpdpwssd, or AVX2's vpmaddwd).

Why it pays: a decode step streams every weight from memory (a quarter of the bytes of
float32), and larger steps are compute-bound (16 int16 multiply-adds per instruction against 8
float32 FMAs). The kernel is linear_int8.c; without the native kernels the same integers are
multiplied in float64 (exact) by torch.

Rows stay independent to the bit: a row's scale is its own, integer sums are exact whatever the
tiling, and the float epilogue is elementwise. So a request's tokens do not depend on its batch,
and prefix reuse and speculation keep working.
"""

from __future__ import annotations

import ctypes
import functools
from dataclasses import dataclass

import torch

from isvc.engine.kernels.build import bind, load

QMAX = 127.0
"""Weights: symmetric range [-127, 127]."""

ACT_QMAX = 511.0
"""Activations: symmetric range [-511, 511] (10 bits)."""

MAX_K = 32768
"""Longest row the int32 sums hold: K * 511 * 127 < 2**31 (checked at load)."""


ROW_BLOCK = 8
"""Weight rows are padded to a multiple of this (zero rows): the kernel's tiles are 4 or 8 rows
and a vocabulary such as 32001 would otherwise fall off them."""


@dataclass(frozen=True, slots=True)
class Int8Weight:
    """A linear's weight [N, K] as int8 with one float32 scale per output channel (row)."""

    q: torch.Tensor
    """[N_padded, K] int8, contiguous; rows past ``out_features`` are zeros."""
    scale: torch.Tensor
    """[N_padded] float32."""
    out_features: int
    """N: the outputs the linear has (the rest are padding)."""

    @property
    def shape(self) -> torch.Size:
        return torch.Size((self.out_features, self.q.shape[1]))


def quantize_weight(w: torch.Tensor) -> Int8Weight:
    """Per output channel symmetric int8 of a float weight [N, K]."""
    w = w.float()
    n, k = w.shape
    if k > MAX_K:
        raise ValueError(f"int8 weights take rows of at most {MAX_K} inputs, this one has {k}")
    scale = w.abs().amax(dim=1).clamp_min(torch.finfo(torch.float32).tiny) / QMAX
    padded = -(-n // ROW_BLOCK) * ROW_BLOCK
    q = torch.zeros(padded, k, dtype=torch.int8)
    q[:n] = torch.round(w / scale[:, None]).clamp_(-QMAX, QMAX).to(torch.int8)
    return Int8Weight(q=q, scale=torch.cat([scale, scale.new_ones(padded - n)]), out_features=n)


def dequantize(w: Int8Weight) -> torch.Tensor:
    """The float32 weight [N, K] the int8 one stands for (tests and the reference path)."""
    return (w.q.float() * w.scale[:, None])[: w.out_features]


def embedding(ids: torch.Tensor, w: Int8Weight) -> torch.Tensor:
    """Rows ``ids`` of an int8 table as float32 [len(ids), K]: an embedding lookup on the same int8
    copy that serves a tied output head, so a quantized model keeps no float table (SmolLM2: 113 MB)."""
    return w.q[ids].float().mul_(w.scale[ids, None])


def quantize_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x [M, K] float32 -> (integers in [-511, 511] as float32 [M, K], scale [M, 1]), each row
    on its own scale: the same float ops as linear_int8.c's quantize_row."""
    scale = x.abs().amax(dim=1, keepdim=True).clamp_min_(torch.finfo(torch.float32).tiny).div_(ACT_QMAX)
    return torch.round(x / scale).clamp_(-ACT_QMAX, ACT_QMAX), scale


def kernel_output(
    out: torch.Tensor | None, bias: torch.Tensor | None, M: int, N: int, padded: int
) -> tuple[torch.Tensor, bool]:
    """Where a quantized kernel writes y [M, padded rows]: into ``out`` itself (adding to it) when it
    can be the kernel's own output, else a new buffer."""
    if (
        out is not None
        and bias is None
        and padded == N
        and out.is_contiguous()
        and out.dtype == torch.float32
        and out.shape == (M, N)
    ):
        return out, True
    return torch.empty(M, padded, dtype=torch.float32), False


def int8_linear(
    x: torch.Tensor,
    w: Int8Weight,
    bias: torch.Tensor | None = None,
    out: torch.Tensor | None = None,
    *,
    portable: bool = False,
) -> torch.Tensor:
    """x [M, K] float32 @ w.T -> [M, N] float32 in integers; with ``out``, ``out += x @ w.T``.

    ``portable`` runs the kernel's AVX2 tiles even where the CPU has AVX-512 VNNI (tests: both
    must give the same bits)."""
    (M, K), N = x.shape, w.out_features
    x = x.float()
    native = _native()
    if native is not None and K % 16 == 0 and M > 0:
        x = x.contiguous()
        padded = w.q.shape[0]
        y, add = kernel_output(out, bias, M, N, padded)
        xq = torch.empty(M, K, dtype=torch.int16)  # scratch: the integer activations and their scales
        xs = torch.empty(M, dtype=torch.float32)
        native(
            x.data_ptr(),
            w.q.data_ptr(),
            w.scale.data_ptr(),
            y.data_ptr(),
            M,
            padded,
            K,
            int(add),
            torch.get_num_threads(),
            xq.data_ptr(),
            xs.data_ptr(),
            int(portable),
        )
        if add:
            return y
        y = y[:, :N] if padded != N else y
    else:  # exact integer sums: float64 holds them (K * 511 * 127 < 2**53); in blocks of rows, not a copy of all
        xq, xs = quantize_rows(x)
        xq64 = xq.double()
        y = torch.cat([(xq64 @ w.q[i : i + 1024].double().t()).float() for i in range(0, N, 1024)], dim=1)[:, :N]
        y = y.mul_(xs).mul_(w.scale[:N])
    if bias is not None:
        y = y.add(bias)
    return y if out is None else out.add_(y)


@functools.cache
def _native() -> ctypes._CFuncPtr | None:  # type: ignore[name-defined]
    lib = load()
    if lib is None:
        return None
    p, n, i = ctypes.c_void_p, ctypes.c_long, ctypes.c_int
    return bind(lib.isvc_linear_i8, [p, p, p, p, n, n, n, i, i, p, p, i])
