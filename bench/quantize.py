"""Make GPTQ and AWQ checkpoints of the embedded SmolLM2 with GPTQModel (PyPI), on this CPU.

The checkpoints are fixtures for ``--quantization gptq`` / ``awq`` (issue 14): real files in the
formats AutoGPTQ/GPTQModel and AutoAWQ write and vLLM reads, kept out of the repo and made by this
one command. GPTQModel runs in its own venv (``~/.cache/isvc/bench/venvs/gptqmodel``, installed
from PyPI on first use); the calibration text is the standard library's own docstrings, not
``pydoc_data/topics.py`` that bench.perplexity scores, so quality is measured on unseen text.

    .venv/bin/python -m bench.quantize                 # gptq (4-bit, group 128) and awq (4-bit, group 64)
    .venv/bin/python -m bench.quantize --method gptq --group-size 32 --desc-act

Each checkpoint is then read by GPTQModel itself and by isvc, and their float32 weights compared
(``check``): the engine must read the format exactly as its writer means it.

Each folder lands next to the float one, e.g. ``~/.cache/isvc/models/SmolLM2-135M-Instruct-gptq-4bit-g128``.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import json
import os
import pkgutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.peers import Peer
from isvc.models.prepare import ensure_default_model

GPTQMODEL = Peer(
    "gptqmodel",
    "GPTQModel 7.5.0 (quantizes on CPU)",
    # 7.5.0: the newest that takes the CPU torch 2.13 (7.7.0 wants torch >= 2.14.1)
    [["install", "torch==2.13.0"], ["install", "gptqmodel==7.5.0", "transformers==5.23.0", "requests"]],
    weights="",
)

WORKER = """
import json, sys
from gptqmodel import BACKEND, GPTQModel, QuantizeConfig
job = json.load(sys.stdin)
config = QuantizeConfig(
    bits=job["bits"], group_size=job["group_size"], desc_act=job["desc_act"], sym=job["sym"],
    method=job["method"], format=job["format"], device="cpu",
)
model = GPTQModel.load(job["model"], config)
# AWQ's default packing kernel is CUDA's; its torch kernel writes the same GEMM layout on a CPU
model.quantize(job["calibration"], batch_size=4, backend=BACKEND.TORCH if job["method"] == "awq" else BACKEND.AUTO)
model.save(job["out"])
"""

DEQUANTIZE = """
import json, sys, torch
from gptqmodel import GPTQModel
from gptqmodel.quantization.awq.utils.packing_utils import dequantize_gemm
job = json.load(sys.stdin)
model = GPTQModel.load(job["folder"], device="cpu", dtype=torch.float32)
modules = dict(model.model.named_modules())

def weight(m):  # GPTQModel's own unpacking, [in, out] -> the engine's [out, in]
    if hasattr(m, "dequantize_weight"):
        return m.dequantize_weight().float().t().contiguous()
    return dequantize_gemm(m.qweight, m.qzeros, m.scales.float(), m.bits, m.group_size).float().t().contiguous()

torch.save({name: weight(modules[name]) for name in job["names"]}, job["out"])
"""

FORMATS = {"gptq": "gptq", "awq": "gemm"}
GROUP_SIZE = {"gptq": 128, "awq": 64}
"""AWQ needs groups that divide every row: SmolLM2's 576 inputs take 64, not 128 (GPTQ ends on a half group)."""
SYMMETRIC = {"gptq": True, "awq": False}
"""Each method's usual zero points: GPTQ symmetric (AutoGPTQ's default), AWQ one per group (AutoAWQ's)."""
LINEARS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
           "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")  # fmt: skip


def calibration_texts(count: int, min_chars: int = 400) -> list[str]:
    """Docstrings of the standard library's modules and their public classes and functions."""
    texts: list[str] = []
    for info in sorted(pkgutil.iter_modules(), key=lambda m: m.name):
        if info.name.startswith("_") or info.name in {"this", "antigravity", "pydoc_data", "idlelib", "tkinter"}:
            continue
        if not getattr(info.module_finder, "path", "").startswith(sys.base_prefix):
            continue  # the standard library only, not what the venv added
        try:
            module = importlib.import_module(info.name)
        except Exception:
            continue
        docs = [inspect.getdoc(module) or ""]
        docs += [inspect.getdoc(obj) or "" for _, obj in inspect.getmembers(module) if inspect.isclass(obj)]
        text = "\n\n".join(d for d in docs if d)
        if len(text) >= min_chars:
            texts.append(text[:4000])
        if len(texts) >= count:
            break
    return texts


def output_dir(model_dir: Path, method: str, bits: int, group_size: int, desc_act: bool) -> Path:
    suffix = f"{method}-{bits}bit-g{group_size}" + ("-act" if desc_act else "")
    return model_dir.parent / f"{model_dir.name}-{suffix}"


def make(method: str, bits: int, group_size: int, desc_act: bool, sym: bool, samples: int) -> Path:
    model_dir = ensure_default_model()
    out = output_dir(model_dir, method, bits, group_size, desc_act)
    if (out / "config.json").exists():
        print(f"[quantize] {out} exists")
        return out
    GPTQMODEL.ensure_installed()
    job = {
        "model": str(model_dir),
        "out": str(out),
        "bits": bits,
        "group_size": group_size,
        "desc_act": desc_act,
        "sym": sym,
        "method": method,
        "format": FORMATS[method],
        "calibration": calibration_texts(samples),
    }
    started = time.perf_counter()
    print(f"[quantize] {method} {bits}-bit, group {group_size}, {len(job['calibration'])} calibration texts -> {out}")
    # GPTQModel sizes its CPU pool at half the cores, then asks 2 of it for loading: on 2 cores, give it 2
    env = {**os.environ, "GPTQMODEL_CPU_WORKERS": "2"}
    with tempfile.TemporaryDirectory() as work:  # GPTQModel writes its logs/ under the working directory
        subprocess.run(
            [GPTQMODEL.python, "-c", WORKER], input=json.dumps(job), text=True, check=True, env=env, cwd=work
        )
    print(f"[quantize] done in {time.perf_counter() - started:.0f} s")
    return out


def check(folder: Path, layers: tuple[int, ...] = (0, 15, 29)) -> float:
    """The largest difference between GPTQModel's own dequantization of ``folder``'s linears (in
    float32) and the engine's reading of the same tensors (isvc/engine/quantized.py)."""
    import torch
    from safetensors.torch import load_file

    from isvc.engine.quantized import read_linear, read_quantization_config

    names = [f"model.layers.{i}.{linear}" for i in layers for linear in LINEARS]
    with tempfile.TemporaryDirectory() as work:
        out = Path(work) / "weights.pt"
        job = {"folder": str(folder), "names": names, "out": str(out)}
        env = {**os.environ, "GPTQMODEL_CPU_WORKERS": "2"}
        subprocess.run(
            [GPTQMODEL.python, "-c", DEQUANTIZE], input=json.dumps(job), text=True, check=True, env=env, cwd=work
        )
        theirs = torch.load(out)
    checkpoint = read_quantization_config(json.loads((folder / "config.json").read_text()))
    assert checkpoint is not None
    tensors = load_file(str(folder / "model.safetensors"))
    worst = max(float((read_linear(checkpoint, tensors.get, n).dequantize() - theirs[n]).abs().max()) for n in names)
    print(f"[quantize] {folder.name}: GPTQModel's dequantization vs isvc's, {len(names)} linears: max |diff| {worst:g}")
    return worst


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--method", choices=["gptq", "awq", "all"], default="all")
    ap.add_argument("--bits", type=int, default=4)
    ap.add_argument("--group-size", type=int, help="default: 128 for gptq, 64 for awq")
    ap.add_argument("--desc-act", action="store_true", help="GPTQ: quantize columns in activation order (g_idx)")
    ap.add_argument("--asym", action="store_true", help="GPTQ: zero points per group (default: symmetric)")
    ap.add_argument("--samples", type=int, default=128)
    ap.add_argument("--no-check", action="store_true", help="skip comparing GPTQModel's dequantization with isvc's")
    args = ap.parse_args()
    for method in ("gptq", "awq") if args.method == "all" else (args.method,):
        group_size = args.group_size or GROUP_SIZE[method]
        sym = SYMMETRIC[method] and not args.asym
        folder = make(method, args.bits, group_size, args.desc_act and method == "gptq", sym, args.samples)
        if not args.no_check:
            check(folder)


if __name__ == "__main__":
    main()
