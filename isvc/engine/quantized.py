"""GPTQ and AWQ checkpoints: ``quantization_config`` and the packed weights of one linear at a time.

A quantized checkpoint stores each linear as integers packed into int32 words with a float
scale (and an integer zero point) per group of ``group_size`` inputs and per output; the
``quantization_config`` in config.json names the method, as transformers and vLLM read it.
Layouts (the formats AutoGPTQ/GPTQModel and AutoAWQ write, and vLLM reads):

- GPTQ: ``qweight`` [K / pack, N] packs consecutive inputs into a word (lowest bits first);
  ``qzeros`` [groups, N / pack] packs consecutive outputs; ``scales`` [groups, N]; ``g_idx`` [K]
  names each input's group (with ``desc_act`` the groups follow activation order, not input
  order). The original "gptq" format stores each zero point minus one; "gptq_v2" stores it as is.
- AWQ (GEMM): ``qweight`` [K, N / pack] and ``qzeros`` [groups, N / pack] pack outputs in the
  interleaved order ``AWQ_ORDER``; ``scales`` [groups, N]; the groups are consecutive inputs.

Either way ``w[n, k] = scale[g, n] * (q[k, n] - zero[g, n])`` with ``g`` the input's group.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from isvc.engine.errors import UnsupportedModel
from isvc.engine.kernels.int4 import Int4Weight, native_available, pack_int4

METHODS = ("gptq", "awq")
"""Checkpoint methods the engine loads (``--quantization`` names them as vLLM does)."""

AWQ_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)
"""AWQ packs output ``8c + AWQ_ORDER[i]`` into bits ``4i`` of word ``c``."""


@dataclass(frozen=True, slots=True)
class QuantizedCheckpoint:
    """A checkpoint's ``quantization_config``: what its packed weights mean."""

    method: str
    bits: int
    group_size: int
    """Inputs per group; -1: one group over the whole row."""
    zero_offset: int
    """Added to each stored zero point (1 for GPTQ's original format, else 0)."""

    def inputs_per_group(self, k: int) -> int:
        """The group size of a linear with ``k`` inputs (``group_size`` -1 is one group per row)."""
        return self.group_size if self.group_size > 0 else k


QUANTIZE_CONFIG_FILES = ("quantize_config.json", "quant_config.json")
"""Where checkpoints older than config.json's ``quantization_config`` keep it (AutoGPTQ, AutoAWQ), as vLLM looks."""


def read_quantization_config(config: dict[str, Any], model_dir: Path | None = None) -> QuantizedCheckpoint | None:
    """The checkpoint's quantization from config.json (or, beside it, an older ``quantize_config.json``),
    None for a float checkpoint; UnsupportedModel for a method or layout the engine cannot load."""
    q = config.get("quantization_config")
    if not q and model_dir is not None:
        for name in QUANTIZE_CONFIG_FILES:
            if (model_dir / name).is_file():
                q = json.loads((model_dir / name).read_text())
                q.setdefault("quant_method", "awq" if "w_bit" in q or "zero_point" in q else "gptq")
                break
    if not q:
        return None
    method = str(q.get("quant_method", "")).lower()
    if method not in METHODS:
        raise UnsupportedModel(
            f"quantization_config.quant_method {method!r} is not loaded by isvc's CPU engine "
            f"(it loads {', '.join(METHODS)}); try --backend vllm"
        )
    bits = int(q.get("bits", q.get("w_bit", 4)))
    if bits not in (4, 8) or (method == "awq" and bits != 4):
        raise UnsupportedModel(f"{method} checkpoints with {bits}-bit weights are not supported (4 or 8 bits)")
    if method == "awq" and str(q.get("version", "gemm")).lower() != "gemm":
        raise UnsupportedModel(f"AWQ version {q.get('version')!r} is not supported (GEMM is)")
    fmt = str(q.get("checkpoint_format", "gptq")).lower()
    if method == "gptq" and fmt not in ("gptq", "gptq_v2"):
        raise UnsupportedModel(f"GPTQ checkpoint_format {fmt!r} is not supported (gptq or gptq_v2)")
    if q.get("is_marlin_format") or str(q.get("pack_dtype", "int32")).removeprefix("torch.") != "int32":
        raise UnsupportedModel("only checkpoints packed in int32 words are supported (not marlin or other pack dtypes)")
    group_size = int(q.get("group_size", q.get("q_group_size", 128)))
    return QuantizedCheckpoint(method, bits, group_size, zero_offset=1 if method == "gptq" and fmt == "gptq" else 0)


def _unpack(words: torch.Tensor, bits: int, dim: int) -> torch.Tensor:
    """int32 words -> their ``32 / bits`` unsigned fields, lowest bits first, spread along ``dim``."""
    shifts = torch.arange(0, 32, bits, dtype=torch.int32)
    mask = (1 << bits) - 1
    if dim == 0:  # [R, C] -> [R * pack, C]
        fields = (words.unsqueeze(1) >> shifts[None, :, None]) & mask
        return fields.reshape(-1, words.shape[1])
    fields = (words.unsqueeze(2) >> shifts[None, None, :]) & mask  # [R, C] -> [R, C * pack]
    return fields.reshape(words.shape[0], -1)


@dataclass(frozen=True, slots=True)
class GroupedLinear:
    """One linear of a checkpoint, unpacked: ``w[n, k] = scale[n, g] * (q[n, k] - zero[n, g])``, g = group_of[k]."""

    q: torch.Tensor
    """[N, K] integers in 0 .. 2**bits - 1, inputs in the model's order."""
    zero: torch.Tensor
    """[N, groups] float32 (integers)."""
    scale: torch.Tensor
    """[N, groups] float32."""
    group_of: torch.Tensor
    """[K] each input's group."""

    def dequantize(self) -> torch.Tensor:
        """The float32 weight [N, K]."""
        return (self.q.float() - self.zero[:, self.group_of]) * self.scale[:, self.group_of]


def read_linear(
    checkpoint: QuantizedCheckpoint, take: Callable[[str], torch.Tensor | None], prefix: str
) -> GroupedLinear:
    """The linear ``prefix`` (e.g. ``layers.0.self_attn.q_proj``) of the checkpoint; ``take(name)`` pops
    a tensor from it (None when it has none)."""

    def need(name: str) -> torch.Tensor:
        tensor = take(f"{prefix}.{name}")
        if tensor is None:
            raise UnsupportedModel(f"the {checkpoint.method} checkpoint has no {prefix}.{name}")
        return tensor

    qweight, qzeros, scales = need("qweight"), need("qzeros"), need("scales").float()
    bits = checkpoint.bits
    if checkpoint.method == "awq":
        q = _awq_order(_unpack(qweight, bits, dim=1))  # [K, N]
        zeros = _awq_order(_unpack(qzeros, bits, dim=1))  # [groups, N]
        g_idx = None
    else:
        q = _unpack(qweight, bits, dim=0)  # [K, N]
        zeros = _unpack(qzeros, bits, dim=1)[:, : q.shape[1]] + checkpoint.zero_offset
        g_idx = take(f"{prefix}.g_idx")
    k = q.shape[0]
    group_of = g_idx.long() if g_idx is not None else torch.arange(k) // checkpoint.inputs_per_group(k)
    groups = int(group_of.max()) + 1
    if group_of.shape[0] != k or groups != scales.shape[0]:
        raise UnsupportedModel(
            f"{prefix}: {groups} groups of inputs, but scales for {scales.shape[0]} "
            "(does quantization_config's group_size match the weights?)"
        )
    return GroupedLinear(q.t().to(torch.uint8), zeros.t().float(), scales.t().contiguous(), group_of)


def to_int4(parts: list[GroupedLinear], checkpoint: QuantizedCheckpoint) -> Int4Weight | None:
    """``parts`` (q, k, v or gate, up: one input, outputs stacked) as one 4-bit kernel weight, or None
    when they cannot share one: values wider than 4 bits, groups not 32-aligned, or act orders
    that differ between the parts (each permutes its inputs its own way)."""
    if not native_available():
        return None  # served as int8 instead (kernels/int4.py: the torch path is a reference, not a server)
    first = parts[0]
    k = first.q.shape[1]
    group = checkpoint.inputs_per_group(k)
    if any(int(p.q.max()) > 15 for p in parts) or k % 32 or group % 32:
        return None
    perm = torch.argsort(first.group_of, stable=True)
    if not all(torch.equal(p.group_of, first.group_of) for p in parts[1:]):
        return None
    if not torch.equal(first.group_of[perm], torch.arange(k) // group):
        return None  # groups of unequal sizes: no consecutive layout
    identity = torch.equal(perm, torch.arange(k))
    q = torch.cat([p.q for p in parts])
    return pack_int4(
        q if identity else q[:, perm],
        torch.cat([p.scale for p in parts]),
        torch.cat([p.zero for p in parts]),
        group,
        None if identity else perm,
    )


def _awq_order(fields: torch.Tensor) -> torch.Tensor:
    """Undo AWQ's interleave: word c's field i is output 8c + AWQ_ORDER[i]."""
    r, n = fields.shape
    inverse = torch.argsort(torch.tensor(AWQ_ORDER))
    return fields.view(r, n // 8, 8)[:, :, inverse].reshape(r, n)
