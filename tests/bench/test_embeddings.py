"""The embeddings bench's pieces against a live `isvc serve` on all-MiniLM-L6-v2: what it measures adds up.

Small levels and few requests (the bench itself runs by hand); the real model, since the bench's
documents are sized for it.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bench.documents import MAX_WORDS, MIN_WORDS, build_documents, rerank_requests
from bench.embed_load import in_process_ceiling, requests_for
from bench.embeddings import DOCS_PER_QUERY, SERVERS, bench_server, cross_encoder_dir, markdown
from isvc.models.catalog import ensure_model


@pytest.fixture(scope="module")
def minilm_dir() -> Path:
    return ensure_model("all-MiniLM-L6-v2", quiet=True)


def test_documents_are_unique_short_and_the_same_every_run() -> None:
    docs = build_documents(2000)
    assert len(set(docs)) == 2000 and docs == build_documents(2000)
    assert all(MIN_WORDS <= len(d.split()) <= MAX_WORDS for d in docs)
    requests = rerank_requests(50, DOCS_PER_QUERY)
    pairs = [doc for _, documents in requests for doc in documents]
    assert len(pairs) == len(set(pairs)) == 50 * DOCS_PER_QUERY


def test_embedding_sweep_counts_every_document(minilm_dir: Path, tmp_path: Path) -> None:
    result = bench_server(SERVERS["isvc"], "embed", minilm_dir, [1, 4], 0.05, tmp_path)
    assert "error" not in result, result.get("error")
    assert [lv["concurrency"] for lv in result["levels"]] == [1, 4]
    for level in result["levels"]:
        assert level["failures"] == 0, level["first_error"]
        assert level["items"] == level["requests"] == requests_for(level["concurrency"], 0.05)
        assert level["items_s"] > 0 and 0 < level["p50_ms"] <= level["p99_ms"]
        assert level["peak_rss_mb"] > 50  # the server's process tree was sampled
    assert result["start_to_ready_s"] > 0


def test_rerank_sweep_counts_every_pair(tmp_path: Path) -> None:
    result = bench_server(SERVERS["isvc"], "rerank", cross_encoder_dir(), [2], 0.05, tmp_path)
    assert "error" not in result, result.get("error")
    (level,) = result["levels"]
    assert level["failures"] == 0, level["first_error"]
    assert level["items"] == level["requests"] * DOCS_PER_QUERY


def test_in_process_ceiling_embeds_every_document(minilm_dir: Path) -> None:
    result = in_process_ceiling(minilm_dir, build_documents(64), batch_size=32)
    assert result["docs"] == 64 and result["docs_s"] > 0 and result["peak_rss_mb"] > 50


def test_table_and_ratios() -> None:
    def level(c: int, items_s: float, p50: float, rss: float) -> dict:
        return {"concurrency": c, "items_s": items_s, "p50_ms": p50, "p99_ms": p50 * 2, "peak_rss_mb": rss}

    run = {
        "levels": [1, 64],
        "embed": [
            {"server": "isvc", "label": "isvc (this repo)", "start_to_ready_s": 2.0,
             "levels": [level(1, 100, 9.5, 400), level(64, 900, 60, 450)]},
            {"server": "infinity", "label": "infinity-emb 0.0.78 (torch)", "start_to_ready_s": 9.0,
             "levels": [level(1, 50, 20, 900), level(64, 450, 120, 950)]},
            {"server": "vllm", "label": "vllm", "levels": [], "error": "RuntimeError: server exited with 1"},
        ],
        "rerank": [
            {"server": "isvc", "label": "isvc (this repo)", "levels": [level(1, 800, 20, 400), level(64, 1600, 600, 420)]},
            {"server": "infinity", "label": "infinity", "levels": [level(1, 400, 40, 900), level(64, 800, 1200, 900)]},
        ],
        "ceiling": {"label": "sentence-transformers in-process", "docs_s": 1000.0, "peak_rss_mb": 500.0},
    }  # fmt: skip
    text = markdown(run)
    assert "| isvc (this repo) | 100 | 900 | 9.5 ms | 19.0 ms | 60.0 ms | 450 MB | 2.0 s |" in text
    assert "failed: RuntimeError: server exited with 1" in text
    assert "isvc ÷ infinity-emb 0.0.78 (torch): 2.00×" in text
    assert "isvc ÷ in-process ceiling: 90%" in text
    assert "isvc p50 latency at c=1: 9.5 ms" in text and "isvc peak RSS: 450 MB" in text
    assert "rerank c=64 pairs/s, isvc ÷ infinity-emb: 2.00×" in text


def test_peer_commands_use_each_servers_pooling_mode(tmp_path: Path) -> None:
    argv, _ = SERVERS["vllm"].command(tmp_path, "m", 1234)
    assert argv[argv.index("--runner") + 1] == "pooling"
    argv, env = SERVERS["infinity"].command(tmp_path, "m", 1234)
    assert argv[1] == "v2" and argv[argv.index("--served-model-name") + 1] == "m" and env["DO_NOT_TRACK"] == "1"
    assert os.path.basename(argv[0]) == "infinity_emb"
