"""Perplexity of isvc's engine per weight mode (issue 14): quality measured, not assumed.

The text is one every machine has: Python's own ``pydoc_data/topics.py`` (~700 KB of English
prose about the language). It is cut into windows of ``--window`` tokens; each window runs
through the engine's model as one prompt chunk with every row's logits, and the perplexity is
exp(mean negative log-likelihood of each token given the ones before it in its window).
SmolLM2-135M-Instruct, float32 against each quantized mode, in one process; the GPTQ and AWQ
checkpoints are every one ``python -m bench.quantize`` has made next to the float folder.

    .venv/bin/python -m bench.perplexity                      # float32, int8, gptq, awq: 32 windows of 512
    .venv/bin/python -m bench.perplexity --windows 8 --window 256

When bench.run_all has installed llama-cpp-python (its venv under ~/.cache/isvc/bench/venvs/llamacpp),
the same windows are also scored by llama.cpp on the embedded model's own Q4_1 GGUF (the file the
float32 folder was dequantized from), in that venv's Python.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import pydoc_data.topics
import subprocess
import time
from pathlib import Path

import torch

from isvc.engine.core import load_tokenizer
from isvc.engine.llama import LlamaModel
from isvc.engine.step import ChunkInput, StepLayout
from isvc.models.prepare import ensure_default_model

RESULTS = Path(__file__).parent / "results"
CHECKPOINTS = ("gptq", "awq")
LLAMA_CPP_SCORER = """
import json, sys
import numpy as np
from llama_cpp import Llama
job = json.load(sys.stdin)
llm = Llama(model_path=job["gguf"], n_ctx=job["window"], logits_all=True, verbose=False, n_threads=2, n_batch=512)
nll, n = 0.0, 0
for ids in job["windows"]:
    llm.reset()
    llm.eval(ids)
    logits = np.asarray(llm.scores[: len(ids) - 1], dtype=np.float64)
    logits -= logits.max(axis=1, keepdims=True)
    logp = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    nll -= logp[np.arange(len(ids) - 1), ids[1:]].sum()
    n += len(ids) - 1
print(json.dumps({"nll": nll, "n": n}))
"""
MODES: dict[str, str | None] = {"float32": None, "int8": "int8", "gptq": "gptq", "awq": "awq"}
"""Weight modes: the float folder as is or quantized at load (int8), or a checkpoint bench.quantize made."""


def windows(tokenizer: object, count: int, length: int) -> list[list[int]]:
    text = Path(pydoc_data.topics.__file__).read_text()
    ids: list[int] = tokenizer.encode(text, add_special_tokens=False)  # type: ignore[attr-defined]
    stride = max(length, (len(ids) - length) // max(count, 1))  # spread over the whole file
    return [ids[i : i + length] for i in range(0, len(ids) - length, stride)][:count]


def perplexity(model: LlamaModel, texts: list[list[int]]) -> float:
    nll, n = 0.0, 0
    cache = model.new_cache(1, 1 << 31)
    for ids in texts:
        cache.ensure(1, len(ids))
        step = StepLayout(
            num_slots=1,
            decode_slots=[],
            decode_tokens=[],
            decode_positions=[],
            chunks=[ChunkInput(slot=0, token_ids=ids, start=0)],
            logit_rows=list(range(len(ids) - 1)),
            sampled=[],
            verified=[],
            prompt_scored=[],
        )
        logits = model.forward(step, cache)  # row j predicts token j + 1
        logp = torch.log_softmax(logits.double(), dim=-1)
        nll -= logp[torch.arange(len(ids) - 1), torch.tensor(ids[1:])].sum().item()
        n += len(ids) - 1
    return math.exp(nll / n)


def llama_cpp_perplexity(texts: list[list[int]], window: int) -> float | None:
    """llama.cpp's perplexity on the Q4_1 GGUF, or None when llama-cpp-python is not installed for the bench."""
    from bench.peers import PEERS
    from bench.run_all import smollm2_gguf

    peer = PEERS["llamacpp"]
    if not peer.installed():
        print("llama.cpp: not installed (python -m bench.run_all --peers llamacpp installs it); skipped")
        return None
    job = json.dumps({"gguf": str(smollm2_gguf()), "window": window, "windows": texts})
    done = subprocess.run([peer.python, "-c", LLAMA_CPP_SCORER], input=job, capture_output=True, text=True, check=True)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    return math.exp(result["nll"] / result["n"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--windows", type=int, default=32)
    parser.add_argument("--window", type=int, default=512)
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--kv-cache-dtype", default="auto", help="as isvc serve's --kv_cache_dtype (fp8_e5m2, ...)")
    args = parser.parse_args()
    model_dir = ensure_default_model()
    texts = windows(load_tokenizer(str(model_dir)), args.windows, args.window)
    tokens = sum(len(t) - 1 for t in texts)
    rows = []
    runs: list[tuple[str, Path, str | None]] = []  # (row label, folder, --quantization)
    for mode in args.modes.split(","):
        if mode not in CHECKPOINTS:
            runs.append((mode, model_dir, MODES[mode]))
            continue
        made = sorted(model_dir.parent.glob(f"{model_dir.name}-{mode}-*"))  # every one bench.quantize made
        if not made:
            print(f"{mode}: no checkpoint next to {model_dir} (python -m bench.quantize makes one); skipped")
        runs += [(f"{mode} ({folder.name.removeprefix(model_dir.name + '-')})", folder, mode) for folder in made]
    for label, folder, quantization in runs:
        start = time.perf_counter()
        model = LlamaModel(folder, torch.float32, None, args.kv_cache_dtype, quantization)
        ppl = perplexity(model, texts)
        rows.append((label, ppl, time.perf_counter() - start))
        print(f"{label}: perplexity {ppl:.3f} ({time.perf_counter() - start:.0f} s)", flush=True)
        del model
    start = time.perf_counter()
    q4 = llama_cpp_perplexity(texts, args.window)
    if q4 is not None:
        rows.append(("llama.cpp Q4_1 GGUF (llama-cpp-python 0.3.36)", q4, time.perf_counter() - start))
        print(f"llama.cpp Q4_1: perplexity {q4:.3f}", flush=True)
    base = rows[0][1]
    stamp = dt.datetime.now().strftime("%Y-%m-%d-%H%M")
    lines = [
        f"# Perplexity {stamp}",
        "",
        f"SmolLM2-135M-Instruct on Python's pydoc_data/topics.py: {len(texts)} windows of {args.window} tokens "
        f"({tokens} scored), KV cache {args.kv_cache_dtype}; "
        f"`python -m bench.perplexity --windows {args.windows} --window {args.window} --kv-cache-dtype {args.kv_cache_dtype}`",
        "",
        "| weights | perplexity | vs float32 |",
        "|---|---|---|",
        *(f"| {mode} | {ppl:.3f} | {100 * (ppl / base - 1):+.2f} % |" for mode, ppl, _ in rows),
        "",
    ]
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"perplexity-{stamp}.md"
    out.write_text("\n".join(lines))
    print("\n".join(lines))
    print(f"written to {out}")


if __name__ == "__main__":
    main()
