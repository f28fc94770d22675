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

from isvc.engine.kernels.build import load

QMAX = 127.0
"""Weights: symmetric range [-127, 127]."""

ACT_QMAX = 511.0
"""Activations: symmetric range [-511, 511] (10 bits)."""

MAX_K = 32768
"""Longest row the int32 sums hold: K * 511 * 127 < 2**31."""


@dataclass(frozen=True, slots=True)
class Int8Weight:
    """A linear's weight [N, K] as int8 with one float32 scale per output channel (row)."""

    qt: torch.Tensor
    """[K, N] int8: the transpose view of the contiguous [N, K] rows, the layout ``_int_mm`` reads fastest."""
    scale: torch.Tensor
    """[N] float32."""

    @property
    def shape(self) -> torch.Size:
        return torch.Size((self.qt.shape[1], self.qt.shape[0]))

    @property
    def nbytes(self) -> int:
        return self.qt.numel() + self.scale.numel() * 4


Weight = torch.Tensor | Int8Weight
"""A linear's weight: a float tensor [N, K], or its int8 form."""


def quantize_weight(w: torch.Tensor) -> Int8Weight:
    """Per output channel symmetric int8 of a float weight [N, K]."""
    w = w.float()
    scale = w.abs().amax(dim=1).clamp_min(torch.finfo(torch.float32).tiny) / QMAX
    q = torch.round(w / scale[:, None]).clamp_(-QMAX, QMAX).to(torch.int8).contiguous()
    return Int8Weight(qt=q.t(), scale=scale.contiguous())


def dequantize(w: Int8Weight) -> torch.Tensor:
    """The float32 weight [N, K] the int8 one stands for (tests and the reference path)."""
    return w.qt.t().float() * w.scale[:, None]


def quantize_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x [M, K] float32 -> (integers in [-511, 511] as float32 [M, K], scale [M, 1]), each row
    on its own scale: the same float ops as linear_int8.c's quantize_row."""
    scale = x.abs().amax(dim=1, keepdim=True).clamp_min_(torch.finfo(torch.float32).tiny).div_(ACT_QMAX)
    return torch.round(x / scale).clamp_(-ACT_QMAX, ACT_QMAX), scale


def int8_linear(
    x: torch.Tensor, w: Int8Weight, bias: torch.Tensor | None = None, out: torch.Tensor | None = None
) -> torch.Tensor:
    """x [M, K] float32 @ w.T -> [M, N] float32 in integers; with ``out``, ``out += x @ w.T``."""
    (M, K), N = x.shape, w.qt.shape[1]
    if K > MAX_K:
        raise ValueError(f"int8 linear rows are at most {MAX_K} long, got {K}")
    x = x.float()
    native = _native()
    if native is not None and K % 16 == 0 and N % 4 == 0 and M > 0:
        x = x.contiguous()
        add = out is not None and bias is None and out.is_contiguous()
        y = out if add and out is not None else torch.empty(M, N, dtype=torch.float32)
        native(
            x.data_ptr(), w.qt.data_ptr(), w.scale.data_ptr(), y.data_ptr(), M, N, K, int(add), torch.get_num_threads()
        )
        if add:
            return y
    else:  # exact integer sums: float64 holds them (K * 511 * 127 < 2**53)
        xq, xs = quantize_rows(x)
        y = (xq.double() @ w.qt.double()).float().mul_(xs).mul_(w.scale)
    if bias is not None:
        y.add_(bias)
    return y if out is None else out.add_(y)


@functools.cache
def _native() -> ctypes._CFuncPtr | None:  # type: ignore[name-defined]
    lib = load()
    if lib is None:
        return None
    fn = lib.isvc_linear_i8
    p, n = ctypes.c_void_p, ctypes.c_long
    fn.argtypes = [p, p, p, p, n, n, n, ctypes.c_int, ctypes.c_int]
    fn.restype = None
    return fn
