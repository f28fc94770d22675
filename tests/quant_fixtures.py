"""Tiny GPTQ and AWQ checkpoints, packed here bit by bit the way the formats' writers do.

AutoGPTQ/GPTQModel: inputs packed into int32 words along K, zero points along N, "gptq" storing
each zero point minus one; AutoAWQ's GEMM layout: outputs packed in the interleaved order
0 2 4 6 1 3 5 7. Written out independently of the engine's vectorized unpacking, so tests hold the
engine to the formats, not to itself. ``quantized_folders`` also writes the float folder of the
weights a checkpoint stands for (``scale * (q - zero)``).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

LINEARS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
           "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")  # fmt: skip
AWQ_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)


def _quantize_groups(w: torch.Tensor, group_of: torch.Tensor, groups: int, sym: bool, bits: int = 4):  # type: ignore[no-untyped-def]
    """``bits``-bit q [K, N], zero points [groups, N] and fp16 scales [groups, N] for w [N, K]."""
    top = (1 << bits) - 1
    n, k = w.shape
    q = torch.zeros(k, n, dtype=torch.long)
    zeros = torch.zeros(groups, n, dtype=torch.long)
    scales = torch.zeros(groups, n)
    for g in range(groups):
        cols = (group_of == g).nonzero().flatten()
        block = w[:, cols]
        if sym:
            s = block.abs().amax(1).clamp_min(1e-6) / (top / 2)
            z = torch.full((n,), (top + 1) // 2)
        else:
            lo, hi = block.amin(1), block.amax(1)
            s = (hi - lo).clamp_min(1e-6) / top
            z = torch.round(-lo / s).clamp(1, top).long()
        s = s.half().float()  # what the checkpoint stores
        q[cols] = torch.round(block / s[:, None] + z[:, None]).clamp(0, top).long().t()
        zeros[g], scales[g] = z, s
    return q, zeros, scales


def _pack(fields: list[int], bits: int = 4) -> int:
    """Eight 4-bit fields into one int32 word, field j in bits 4j..4j+3."""
    word = 0
    for j, f in enumerate(fields):
        word |= (f & ((1 << bits) - 1)) << (bits * j)
    return int(np.uint32(word).view(np.int32))


def _gptq_tensors(
    q: torch.Tensor, zeros: torch.Tensor, scales: torch.Tensor, v1: bool, bits: int = 4
) -> dict[str, torch.Tensor]:
    k, n = q.shape
    p = 32 // bits  # fields per word
    qweight = [[_pack([int(q[p * r + j, c]) for j in range(p)], bits) for c in range(n)] for r in range(k // p)]
    stored = zeros - 1 if v1 else zeros
    qzeros = [
        [_pack([int(stored[g, p * c + j]) for j in range(p)], bits) for c in range(n // p)] for g in range(len(zeros))
    ]
    return {
        "qweight": torch.tensor(qweight, dtype=torch.int32),
        "qzeros": torch.tensor(qzeros, dtype=torch.int32),
        "scales": scales.half(),
    }


def _awq_tensors(q: torch.Tensor, zeros: torch.Tensor, scales: torch.Tensor) -> dict[str, torch.Tensor]:
    k, n = q.shape
    qweight = [[_pack([int(q[r, 8 * c + AWQ_ORDER[i]]) for i in range(8)]) for c in range(n // 8)] for r in range(k)]
    qzeros = [
        [_pack([int(zeros[g, 8 * c + AWQ_ORDER[i]]) for i in range(8)]) for c in range(n // 8)]
        for g in range(len(zeros))
    ]
    return {
        "qweight": torch.tensor(qweight, dtype=torch.int32),
        "qzeros": torch.tensor(qzeros, dtype=torch.int32),
        "scales": scales.half(),
    }


def quantized_folders(
    src: Path,
    out: Path,
    method: str,
    fmt: str,
    desc_act: bool,
    group_size: int = 32,
    bits: int = 4,
    quantized_head: bool = False,
) -> Path:
    """``out/q``: the checkpoint; ``out/ref``: a float folder of the weights it stands for.
    ``quantized_head``: an untied output head (the embedding's values), quantized as well."""
    weights = load_file(str(src / "model.safetensors"))
    if quantized_head:
        weights["lm_head.weight"] = weights["model.embed_tokens.weight"].clone()
    packed: dict[str, torch.Tensor] = {}
    ref: dict[str, torch.Tensor] = {}
    gen = torch.Generator().manual_seed(1)
    for name, w in weights.items():
        prefix = name.removesuffix(".weight")
        if not any(prefix.endswith(linear) for linear in LINEARS) and not (quantized_head and prefix == "lm_head"):
            packed[name] = ref[name] = w
            continue
        k = w.shape[1]
        groups = k // group_size
        group_of = torch.arange(k) // group_size
        if desc_act:  # act order: each group is a scattered set of inputs
            group_of = group_of[torch.randperm(k, generator=gen)]
        q, zeros, scales = _quantize_groups(w.float(), group_of, groups, sym=fmt == "gptq", bits=bits)
        ref[name] = ((q - zeros[group_of]).float() * scales[group_of]).t().contiguous()
        if method == "awq":
            tensors = _awq_tensors(q, zeros, scales)
        else:
            tensors = _gptq_tensors(q, zeros, scales, fmt == "gptq", bits)
        if method == "gptq":
            tensors["g_idx"] = group_of.int()
        packed.update({f"{prefix}.{key}": t for key, t in tensors.items()})
    config = json.loads((src / "config.json").read_text())
    if quantized_head:
        config["tie_word_embeddings"] = False
    quant: dict[str, Any] = {"quant_method": method, "bits": bits, "group_size": group_size}
    quant |= (
        {"desc_act": desc_act, "sym": fmt == "gptq", "checkpoint_format": fmt}
        if method == "gptq"
        else {"version": "gemm", "zero_point": True}
    )
    for folder, tensors, extra in ((out / "q", packed, {"quantization_config": quant}), (out / "ref", ref, {})):
        shutil.copytree(src, folder)
        save_file(tensors, str(folder / "model.safetensors"))
        (folder / "config.json").write_text(json.dumps({**config, **extra}))
    return out


@pytest.fixture(scope="session")
def tiny_gptq_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny Llama as a 4-bit GPTQ checkpoint (group 32, symmetric, the original "gptq" format)."""
    return quantized_folders(tiny_model_dir, tmp_path_factory.mktemp("tiny-gptq"), "gptq", "gptq", False) / "q"
