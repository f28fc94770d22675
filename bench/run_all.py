"""isvc and its peers, one after another in one run, on SmolLM2-135M-Instruct; writes Markdown and JSON.

    python -m bench.run_all                       # all peers (installs missing ones first, one at a time)
    python -m bench.run_all --peers isvc,vllm     # a subset (isvc-int8: isvc with --quantization int8)
    python -m bench.run_all --no-install          # skip peers that are not installed yet

Installs happen before any measurement, so an install never competes with a benchmark for the 2 cores.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import platform
import socket
import subprocess
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import httpx

from bench.loadgen import sweep
from bench.peers import KSERVE_REFERENCE, PEERS, REPO, Peer, server_process
from isvc.models.prepare import ensure_default_model, fetch_gguf
from isvc.paths import cache_root

RESULTS = REPO / "bench" / "results"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def smollm2_gguf() -> Path:
    target = cache_root() / "bench" / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=target.parent) as work:
            fetch_gguf(Path(work)).rename(target)
    return target


def wait_ready(base: str, model: str, proc: subprocess.Popen, timeout_s: float) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout_s:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            r = httpx.post(
                f"{base}/v1/chat/completions",
                timeout=600,
                json={"model": model, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2},
            )
            if r.status_code == 200:
                return time.monotonic() - start
        except httpx.HTTPError:
            pass
        time.sleep(1)
    raise TimeoutError(f"not ready after {timeout_s}s")


def bench_peer(peer: Peer, levels: list[int], max_tokens: int, scale: float, log_dir: Path) -> dict[str, object]:
    model_dir = ensure_default_model()
    port = free_port()
    argv, env, model = peer.command(model_dir, smollm2_gguf(), port)
    print(f"[bench] {peer.label}: {' '.join(argv)}", flush=True)
    base = f"http://127.0.0.1:{port}"
    log_path = log_dir / f"{peer.name}.log"
    with server_process(argv, env, log_path) as proc:
        try:
            ready_s = wait_ready(base, model, proc, timeout_s=900)
            print(f"[bench] {peer.label} ready in {ready_s:.1f}s", flush=True)
            results = asyncio.run(sweep(f"{base}/v1", model, levels, max_tokens, proc.pid, scale))
            return {
                "peer": peer.name,
                "label": peer.label,
                "weights": peer.weights,
                "start_to_ready_s": round(ready_s, 1),
                "levels": [asdict(r) for r in results],
            }
        except Exception as exc:
            print(f"[bench] {peer.label} failed: {exc} (log: {log_path})", flush=True)
            return {"peer": peer.name, "label": peer.label, "weights": peer.weights, "error": str(exc), "levels": []}


def markdown(run: dict) -> str:
    levels = run["levels"]
    lines = [
        "| server (weights) | "
        + " | ".join(f"c={c} tok/s" for c in levels)
        + " | TTFT p50 c=16 | ITL p50 c=32 | peak RSS | start→ready |",
        "|" + "---|" * (len(levels) + 5),
    ]
    for peer in run["peers"]:
        by_c = {lv["concurrency"]: lv for lv in peer["levels"]}
        tok_s = [f"{by_c[c]['output_tok_s']:.1f}" if c in by_c else "—" for c in levels]
        ttft = f"{by_c[16]['ttft_p50_s']:.2f} s" if 16 in by_c else "—"
        itl = f"{by_c[32]['itl_p50_ms']:.0f} ms" if 32 in by_c else "—"
        rss = max((lv["peak_rss_mb"] for lv in peer["levels"]), default=0)
        ready = f"{peer['start_to_ready_s']} s" if "start_to_ready_s" in peer else "—"
        note = f" failed: {peer['error']}" if peer.get("error") else ""
        lines.append(
            f"| {peer['label']} ({peer['weights']}) | "
            + " | ".join(tok_s)
            + f" | {ttft} | {itl} | {rss / 1024:.2f} GB | {ready} |{note}"
        )
    ref = KSERVE_REFERENCE
    lines.append(
        f"| {ref['label']} ({ref['weights']}) | "
        + " | ".join(str(ref["tok_s"].get(c, "—")) for c in levels)
        + f" | {ref['ttft_p50_c16_s']:.0f} s | — | {ref['rss_mb'] / 1024:.1f} GB | — |"
    )
    return "\n".join([*lines, "", *ratios(run)])


def ratios(run: dict) -> list[str]:
    """Each of isvc's rows (fp32, and int8 when run) against each peer, then against its fp32 row."""
    peers = {p["peer"]: {lv["concurrency"]: lv for lv in p["levels"]} for p in run["peers"]}
    own = {name: levels for name, levels in peers.items() if name.startswith("isvc") and levels}
    out: list[str] = []
    for own_name, mine in own.items():

        def cells(theirs: dict, mine: dict = mine) -> str:
            return ", ".join(
                f"c={c}: {mine[c]['output_tok_s'] / theirs[c]['output_tok_s']:.2f}×"
                for c in sorted(theirs)
                if c in mine and theirs[c]["output_tok_s"]
            )

        out += [f"Ratios ({PEERS[own_name].label} ÷ peer, output tok/s, same run):", ""]
        out += [
            f"- vs {PEERS[name].label}: " + cells(levels)
            for name, levels in peers.items()
            if name not in own and levels
        ]
        if own_name != "isvc" and "isvc" in own:
            out.append(f"- vs {PEERS['isvc'].label} (fp32): " + cells(own["isvc"]))
        ref = KSERVE_REFERENCE["tok_s"]
        out.append(
            "- vs KServe HF backend (reference figures): "
            + ", ".join(f"c={c}: {mine[c]['output_tok_s'] / ref[c]:.1f}×" for c in sorted(mine) if c in ref)
        )
        out.append("")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--peers", default="isvc,isvc-int8,vllm,transformers,llamacpp")
    parser.add_argument("--concurrency", default="1,4,16,32")
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--scale", type=float, default=1.0, help="multiply the requests per level")
    parser.add_argument("--no-install", action="store_true", help="skip peers that are not installed")
    args = parser.parse_args()
    levels = [int(c) for c in args.concurrency.split(",")]
    chosen = [PEERS[name] for name in args.peers.split(",")]
    for peer in chosen:  # all installs first: never an install beside a measurement
        if not args.no_install:
            peer.ensure_installed()
    stamp = dt.datetime.now().strftime("%Y-%m-%d-%H%M")
    log_dir = RESULTS / f"logs-{stamp}"
    log_dir.mkdir(parents=True, exist_ok=True)
    run = {
        "date": stamp,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.processor() or 'cpu'}",
        "model": "SmolLM2-135M-Instruct",
        "max_tokens": args.max_tokens,
        "levels": levels,
        "command": "python -m bench.run_all " + " ".join(f"--{k.replace('_', '-')}={v}" for k, v in vars(args).items()),
        "peers": [],
    }
    for peer in chosen:
        if not peer.installed():
            print(f"[bench] skipping {peer.label}: not installed", flush=True)
            continue
        run["peers"].append(bench_peer(peer, levels, args.max_tokens, args.scale, log_dir))
        (RESULTS / f"{stamp}.json").write_text(json.dumps(run, indent=2))
    table = markdown(run)
    (RESULTS / f"{stamp}.md").write_text(f"# Benchmark {stamp}\n\n{run['machine']}; `{run['command']}`\n\n{table}\n")
    print(table)


if __name__ == "__main__":
    main()
