"""Which grammar engine for structured outputs (issue 12): token-mask cost on this CPU, by measurement.

For each candidate (xgrammar, llguidance) from PyPI, in a venv of its own under the bench cache:
compile a fixed JSON schema (an object with 5 typed fields, one enum, one array) for SmolLM2's
tokenizer, cold and again (cached), then drive 32 matchers through valid JSON answers token by
token, as 32 constrained streams decoding together would: each step fills the 32 rows' token
bitmasks and advances every matcher by its next token. Reports the compile times and the mask
time per step for 32 streams (the engine adds it to every decode step of such a batch).

    .venv/bin/python -m bench.grammar_masks          # installs the candidates first (never beside a measurement)
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

STREAMS = 32
SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "age": {"type": "integer"},
        "height_m": {"type": "number"},
        "member": {"type": "boolean"},
        "color": {"type": "string", "enum": ["red", "green", "blue"]},
        "tags": {"type": "array", "items": {"type": "string"}},
    },
    "required": ["name", "age", "height_m", "member", "color", "tags"],
    "additionalProperties": False,
}
CANDIDATES = {"xgrammar": "xgrammar==0.2.8", "llguidance": "llguidance==1.9.1"}


def answers(count: int) -> list[str]:
    """Valid, distinct answers to SCHEMA, as a model would write them."""
    colors = ["red", "green", "blue"]
    return [
        json.dumps(
            {
                "name": f"Person number {i}",
                "age": 20 + i,
                "height_m": 1.5 + i / 100,
                "member": i % 2 == 0,
                "color": colors[i % 3],
                "tags": [f"tag{j}" for j in range(i % 4)],
            }
        )
        for i in range(count)
    ]


def measure(candidate: str, model_dir: str) -> dict[str, float]:
    """Run inside the candidate's venv: compile times and mask cost per step for STREAMS matchers."""
    import torch
    from transformers import AutoConfig, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    vocab_size = AutoConfig.from_pretrained(model_dir).vocab_size
    schema = json.dumps(SCHEMA)
    sequences = [tokenizer.encode(a, add_special_tokens=False) + [tokenizer.eos_token_id] for a in answers(STREAMS)]
    steps = max(len(s) for s in sequences)
    out: dict[str, float] = {}
    if candidate == "xgrammar":
        import xgrammar as xgr

        start = time.perf_counter()
        info = xgr.TokenizerInfo.from_huggingface(tokenizer, vocab_size=vocab_size)
        compiler = xgr.GrammarCompiler(info, max_threads=1)
        out["tokenizer_setup_ms"] = (time.perf_counter() - start) * 1000
        start = time.perf_counter()
        compiled = compiler.compile_json_schema(schema)
        out["compile_ms"] = (time.perf_counter() - start) * 1000
        start = time.perf_counter()
        compiler.compile_json_schema(schema)
        out["compile_cached_ms"] = (time.perf_counter() - start) * 1000
        matchers = [xgr.GrammarMatcher(compiled) for _ in range(STREAMS)]
        bitmask = xgr.allocate_token_bitmask(STREAMS, vocab_size)

        def fill(i: int) -> None:
            matchers[i].fill_next_token_bitmask(bitmask, i)

        def accept(i: int, token: int) -> bool:
            return bool(matchers[i].accept_token(token))

        def apply(logits: torch.Tensor) -> None:
            xgr.apply_token_bitmask_inplace(logits, bitmask)

    else:
        import llguidance
        import llguidance.hf
        import llguidance.torch as llt

        start = time.perf_counter()
        lltok = llguidance.hf.from_tokenizer(tokenizer, n_vocab=vocab_size)
        out["tokenizer_setup_ms"] = (time.perf_counter() - start) * 1000
        start = time.perf_counter()
        grammar = llguidance.LLMatcher.grammar_from_json_schema(schema)
        matchers = [llguidance.LLMatcher(lltok, grammar) for _ in range(STREAMS)]
        out["compile_ms"] = (time.perf_counter() - start) * 1000 / STREAMS
        start = time.perf_counter()
        llguidance.LLMatcher(lltok, grammar)
        out["compile_cached_ms"] = (time.perf_counter() - start) * 1000
        bitmask = llt.allocate_token_bitmask(STREAMS, vocab_size)

        def fill(i: int) -> None:
            llt.fill_next_token_bitmask(matchers[i], bitmask, i)

        def accept(i: int, token: int) -> bool:
            return bool(matchers[i].consume_token(token))

        def apply(logits: torch.Tensor) -> None:
            llt.apply_token_bitmask_inplace(logits, bitmask)

    logits = torch.zeros(STREAMS, vocab_size)
    mask_s = apply_s = 0.0
    rejected = 0
    for step in range(steps):
        live = [i for i, s in enumerate(sequences) if step < len(s)]
        start = time.perf_counter()
        for i in live:
            fill(i)
        mask_s += time.perf_counter() - start
        start = time.perf_counter()
        apply(logits)
        apply_s += time.perf_counter() - start
        for i in live:
            rejected += not accept(i, sequences[i][step])
    out["steps"] = steps
    out["mask_ms_per_step_32_streams"] = mask_s / steps * 1000
    out["apply_ms_per_step"] = apply_s / steps * 1000
    out["rejected_valid_tokens"] = rejected
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--measure", choices=list(CANDIDATES), help=argparse.SUPPRESS)
    parser.add_argument("--model-dir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(args.measure, args.model_dir)))
        return
    from bench.peers import venvs_root
    from isvc.models.prepare import ensure_default_model

    model_dir = str(ensure_default_model())
    venv = venvs_root() / "grammar"
    python = venv / "bin" / "python"
    if not (venv / ".installed").exists():  # every install first: never an install beside a measurement
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        pip = [str(python), "-m", "pip", "install", "--quiet"]
        subprocess.run([*pip, "torch==2.13.0"], check=True)
        subprocess.run([*pip, "transformers", *CANDIDATES.values()], check=True)
        (venv / ".installed").touch()
    repo = Path(__file__).resolve().parent.parent
    lines = [
        f"# Grammar engines, token-mask cost {dt.datetime.now():%Y-%m-%d %H:%M}",
        "",
        f"{platform.machine()}, {os.cpu_count()} cores; SmolLM2 tokenizer; {STREAMS} streams; `python -m bench.grammar_masks`",
        "",
        "| engine | tokenizer setup | compile (cold) | compile (cached) | mask fill per step, 32 streams | "
        "bitmask apply per step (the library's own) | valid tokens rejected |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, pin in CANDIDATES.items():
        done = subprocess.run(
            [str(python), "-m", "bench.grammar_masks", "--measure", name, "--model-dir", model_dir],
            capture_output=True,
            text=True,
            cwd=repo,
        )
        if done.returncode != 0:
            print(f"{name}: failed: {done.stderr.strip()[-800:]}", flush=True)
            continue
        r = json.loads(done.stdout.strip().splitlines()[-1])
        print(f"{name}: {r}", flush=True)
        lines.append(
            f"| {pin} | {r['tokenizer_setup_ms']:.1f} ms | {r['compile_ms']:.2f} ms | {r['compile_cached_ms']:.2f} ms "
            f"| {r['mask_ms_per_step_32_streams']:.2f} ms | {r['apply_ms_per_step']:.1f} ms | "
            f"{r['rejected_valid_tokens']} |"
        )
    out = repo / "bench" / "results" / f"grammar-masks-{dt.datetime.now():%Y-%m-%d-%H%M}.md"
    out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
