"""Metrics a dashboard can trust: the warm-up leaves no samples, vLLM's names sit beside isvc's
with the served model name, and a real Prometheus scraping a live server reads them."""

from __future__ import annotations

import math
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import ServerProcess, free_port, need_binary


def scrape(base_url: str) -> dict[str, float]:
    """Every sample of /metrics by name, with labels as in the exposition (`name{a="x",b="y"}`)."""
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(httpx.get(f"{base_url}/metrics", timeout=10).text):
        for s in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
            out[f"{s.name}{{{labels}}}" if labels else s.name] = s.value
    return out


def serve(tiny_model_dir: Path, name: str) -> ServerProcess:
    return ServerProcess(["--model_dir", str(tiny_model_dir), "--model_name", name]).wait_ready()


@pytest.fixture(scope="module")
def fresh_server(tiny_model_dir: Path) -> Iterator[ServerProcess]:
    """A server of this module's own: nothing but these tests has sent it a request."""
    server = serve(tiny_model_dir, "tiny-metrics")
    yield server
    server.stop()


def complete(base_url: str, model: str, prompt: str, max_tokens: int) -> tuple[openai.types.Completion, float]:
    client = openai.OpenAI(base_url=f"{base_url}/openai/v1", api_key="none", max_retries=0)
    started = time.monotonic()
    out = client.completions.create(
        model=model, prompt=prompt, max_tokens=max_tokens, temperature=0, extra_body={"ignore_eos": True}
    )
    return out, time.monotonic() - started


def test_warm_up_records_nothing_and_one_request_records_one(fresh_server: ServerProcess) -> None:
    vllm = '{engine="0",model_name="tiny-metrics"}'
    counts = (
        f"vllm:time_to_first_token_seconds_count{vllm}",
        f"vllm:e2e_request_latency_seconds_count{vllm}",
        "isvc_time_to_first_token_seconds_count",
        "isvc_e2e_request_latency_seconds_count",
    )
    tokens = (f"vllm:generation_tokens_total{vllm}", "isvc_generation_tokens_total", f"vllm:prompt_tokens_total{vllm}")
    # every engine counter, not only the latencies: drafts, failures and aborts go through the same mute
    others = (
        "isvc_spec_decode_num_draft_tokens_total",
        "isvc_spec_decode_num_accepted_tokens_total",
        "isvc_requests_failed_total",
        "isvc_requests_aborted_total",
        "isvc_prompt_tokens_total",
        f"vllm:prefix_cache_queries_total{vllm}",
    )
    ready = scrape(fresh_server.base_url)
    assert {name: ready[name] for name in counts + tokens + others} == dict.fromkeys(counts + tokens + others, 0.0)
    assert ready["isvc_batch_size_max"] == 0 and ready["isvc_step_seconds_count"] == 0

    out, wall_s = complete(fresh_server.base_url, "tiny-metrics", "Hello world! How are", 5)
    after = scrape(fresh_server.base_url)
    assert {name: after[name] for name in counts} == dict.fromkeys(counts, 1.0)
    assert out.usage is not None
    assert after[f"vllm:generation_tokens_total{vllm}"] == after["isvc_generation_tokens_total"] == 5
    assert after[f"vllm:prompt_tokens_total{vllm}"] == out.usage.prompt_tokens
    # latencies of this request, not of the host's uptime: within what the client measured
    ttft, e2e = (
        after[f"vllm:time_to_first_token_seconds_sum{vllm}"],
        after[f"vllm:e2e_request_latency_seconds_sum{vllm}"],
    )
    assert 0 < ttft <= e2e <= wall_s
    assert after["isvc_e2e_request_latency_seconds_sum"] == pytest.approx(e2e)
    assert 0 <= after[f"vllm:kv_cache_usage_perc{vllm}"] <= 1
    assert after[f"vllm:num_requests_running{vllm}"] == 0 and after[f"vllm:num_requests_waiting{vllm}"] == 0


def test_prefix_cache_counters_count_tokens(fresh_server: ServerProcess) -> None:
    vllm = '{engine="0",model_name="tiny-metrics"}'
    names = (f"vllm:prefix_cache_queries_total{vllm}", f"vllm:prefix_cache_hits_total{vllm}")
    before = scrape(fresh_server.base_url)
    prompt = "Once upon a time there was a small model that served many users at once."
    first, _ = complete(fresh_server.base_url, "tiny-metrics", prompt, 2)
    complete(fresh_server.base_url, "tiny-metrics", prompt, 2)
    after = scrape(fresh_server.base_url)
    queries, hits = (after[n] - before[n] for n in names)
    assert hits <= queries
    if queries:  # the prefix cache runs (native kernels): both prompts were looked up, the second hit
        assert first.usage is not None
        assert queries == 2 * first.usage.prompt_tokens and hits > 0
        assert after[names[1]] == after["isvc_prefix_cache_hit_tokens_total"]


class Prometheus:
    """/usr/bin/prometheus on a loopback port, scraping ``target`` every second."""

    def __init__(self, binary: str, workdir: Path, target: str) -> None:
        config = workdir / "prometheus.yml"
        config.write_text(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
            "scrape_configs:\n  - job_name: isvc\n    metrics_path: /metrics\n"
            f"    static_configs:\n      - targets: ['{target}']\n"
        )
        self.url = f"http://127.0.0.1:{free_port()}"
        self.log = open(workdir / "prometheus.log", "w+")  # noqa: SIM115 (the process writes it)
        self.proc = subprocess.Popen(
            [
                binary,
                f"--config.file={config}",
                f"--storage.tsdb.path={workdir / 'data'}",
                f"--web.listen-address={self.url.removeprefix('http://')}",
                "--log.level=warn",
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )

    def wait_ready(self, timeout_s: float = 60) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.output()
            try:
                if httpx.get(f"{self.url}/-/ready", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise TimeoutError(f"prometheus not ready:\n{self.output()}")

    def query(self, promql: str) -> list[dict[str, object]]:
        body = httpx.get(f"{self.url}/api/v1/query", params={"query": promql}, timeout=10).json()
        assert body["status"] == "success", body
        return list(body["data"]["result"])

    def value(self, promql: str, timeout_s: float = 30, until: object = None) -> float:
        """The single value of an instant query, waiting for scrapes until it exists (and passes ``until``)."""
        deadline = time.monotonic() + timeout_s
        while True:
            result = self.query(promql)
            if result:
                value = float(result[0]["value"][1])  # type: ignore[index]
                if until is None or until(value):  # type: ignore[operator]
                    return value
            if time.monotonic() > deadline:
                raise AssertionError(f"{promql} -> {result} after {timeout_s}s\n{self.output()}")
            time.sleep(0.5)

    def output(self) -> str:
        self.log.flush()
        self.log.seek(0)
        return self.log.read()

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


def test_prometheus_scrapes_vllm_metrics_from_a_live_server(tiny_model_dir: Path, tmp_path: Path) -> None:
    binary = need_binary("prometheus")
    server = serve(tiny_model_dir, "tiny-prom")
    try:
        prom = Prometheus(binary, tmp_path, f"127.0.0.1:{server.port}")
    except BaseException:
        server.stop()
        raise
    try:
        prom.wait_ready()
        generated, slowest = 0, 0.0
        for i, prompt in enumerate(["The capital of France is", "Hello world! How are", "你好! 我们用中文"]):
            out, wall_s = complete(server.base_url, "tiny-prom", prompt, 8 + i)
            assert out.usage is not None
            generated += out.usage.completion_tokens
            slowest = max(slowest, wall_s)
        sel = '{job="isvc",model_name="tiny-prom"}'
        assert prom.value(f"vllm:num_requests_running{sel}") == 0
        assert prom.value(f"vllm:generation_tokens_total{sel}", until=lambda v: v == generated) == generated > 0
        assert prom.value(f"vllm:time_to_first_token_seconds_count{sel}", until=lambda v: v == 3) == 3
        p90 = prom.value(f"histogram_quantile(0.9, sum by (le) (vllm:time_to_first_token_seconds_bucket{sel}))")
        # within the bucket that holds the slowest request the client saw (not the host's uptime)
        from isvc.engine.metrics import VLLM_TTFT

        bound = min(b for b in VLLM_TTFT._upper_bounds if b >= slowest)
        assert math.isfinite(p90) and 0 < p90 <= bound
        assert 0 <= prom.value(f"vllm:kv_cache_usage_perc{sel}") <= 1
    finally:
        prom.stop()
        server.stop()
