"""Make GPTQ and AWQ checkpoints of the embedded SmolLM2 with GPTQModel (PyPI), on this CPU.

The checkpoints are fixtures for ``--quantization gptq`` / ``awq`` (issue 14): real files in the
formats AutoGPTQ/GPTQModel and AutoAWQ write and vLLM reads, kept out of the repo and made by this
one command. GPTQModel runs in its own venv (``~/.cache/isvc/bench/venvs/gptqmodel``, installed
from PyPI on first use); the calibration text is the standard library's own docstrings, not
``pydoc_data/topics.py`` that bench.perplexity scores, so quality is measured on unseen text.

    .venv/bin/python -m bench.quantize                 # gptq (4-bit, group 128) and awq (4-bit, group 128)
    .venv/bin/python -m bench.quantize --method gptq --group-size 32 --desc-act

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
from gptqmodel import GPTQModel, QuantizeConfig
job = json.load(sys.stdin)
config = QuantizeConfig(
    bits=job["bits"], group_size=job["group_size"], desc_act=job["desc_act"], sym=job["sym"],
    method=job["method"], format=job["format"], device="cpu",
)
model = GPTQModel.load(job["model"], config)
model.quantize(job["calibration"], batch_size=4)
model.save(job["out"])
"""

FORMATS = {"gptq": "gptq", "awq": "gemm"}


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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--method", choices=["gptq", "awq", "all"], default="all")
    ap.add_argument("--bits", type=int, default=4)
    ap.add_argument("--group-size", type=int, default=128)
    ap.add_argument("--desc-act", action="store_true", help="GPTQ: quantize columns in activation order (g_idx)")
    ap.add_argument("--asym", action="store_true", help="zero points per group (default: symmetric)")
    ap.add_argument("--samples", type=int, default=128)
    args = ap.parse_args()
    for method in ("gptq", "awq") if args.method == "all" else (args.method,):
        make(method, args.bits, args.group_size, args.desc_act and method == "gptq", not args.asym, args.samples)


if __name__ == "__main__":
    main()
