"""The bench's load generator against a live `isvc serve` (tiny model): what it measures adds up."""

from __future__ import annotations

import asyncio

from bench.loadgen import requests_for, sweep
from bench.prompts import build_prompts, request_prompt


def test_every_request_of_a_run_has_its_own_prompt():
    prompts = build_prompts()
    run = [request_prompt(prompts, i) for i in range(sum(requests_for(c) for c in (1, 4, 16, 32)))]
    assert len(set(run)) == len(run)


def test_sweep_reports_tokens_latencies_and_rss_of_the_server(start_server, tiny_model_dir):
    # the tiny model's tokenizer spends more tokens on the bench prompts than its 256 positions
    server = start_server(["--model_dir", str(tiny_model_dir), "--model_name", "tiny", "--max_length", "1024"])
    levels = asyncio.run(sweep(f"{server.base_url}/v1", "tiny", [1, 3], max_tokens=6, pid=server.proc.pid))
    assert [lv.concurrency for lv in levels] == [1, 3]
    for lv in levels:
        assert lv.requests == requests_for(lv.concurrency) and lv.failures == 0, lv.first_error
        assert lv.output_tokens == lv.requests * 6  # usage from the stream: max_tokens each (tiny model, no EOS soon)
        assert lv.output_tok_s > 0 and 0 < lv.ttft_p50_s <= lv.e2e_p50_s
        assert lv.peak_rss_mb > 50  # the server process was sampled
