"""Prometheus metrics the engine and the server update: isvc's names, and vLLM's beside them.

vLLM's series (``vllm:*``) carry the labels ``model_name`` (the served model name) and
``engine`` as vLLM's own do, so dashboards, KEDA triggers and llm-d's scorer that read
vLLM read isvc unchanged. The engine writes each of its series through one
``EngineMetrics`` (nothing else in the engine touches a metric), which records nothing
while muted (the warm-up request is not traffic).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from prometheus_client import Counter, Gauge, Histogram

_LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
# vLLM's buckets for these two histograms, so quantiles compare across servers.
_VLLM_TTFT_BUCKETS = (
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75,
    1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0,
)  # fmt: skip
_VLLM_E2E_BUCKETS = (
    0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0,
    40.0, 50.0, 60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0,
)  # fmt: skip

REQUESTS = Counter("isvc_requests", "Requests finished, by route and outcome", ["route", "status"])
PROMPT_TOKENS = Counter("isvc_prompt_tokens", "Prompt tokens processed")
PREFIX_CACHE_HIT_TOKENS = Counter(
    "isvc_prefix_cache_hit_tokens", "Prompt tokens whose KV was copied from the prefix cache, not computed"
)
GENERATION_TOKENS = Counter("isvc_generation_tokens", "Tokens generated")
ABORTED = Counter("isvc_requests_aborted", "Requests aborted (client disconnected or cancelled)")
FAILED = Counter("isvc_requests_failed", "Requests the engine failed (their own fault, or a failed step)")
SPEC_DRAFT_TOKENS = Counter("isvc_spec_decode_num_draft_tokens", "Tokens drafted by prompt lookup")
SPEC_ACCEPTED_TOKENS = Counter("isvc_spec_decode_num_accepted_tokens", "Drafted tokens the model confirmed")
NUM_RUNNING = Gauge("isvc_num_requests_running", "Requests in the running batch")
NUM_WAITING = Gauge("isvc_num_requests_waiting", "Requests waiting for a batch slot (the queue)")
BATCH_SIZE = Histogram(
    "isvc_batch_size",
    "Sequences decoded together in one engine step",
    buckets=(1, 2, 4, 8, 12, 16, 24, 32, 48, 64, 128),
)
MAX_BATCH_SIZE = Gauge("isvc_batch_size_max", "Largest decode batch seen since start")
STEP_SECONDS = Histogram("isvc_step_seconds", "Engine step duration", buckets=_LATENCY_BUCKETS)
TTFT_SECONDS = Histogram("isvc_time_to_first_token_seconds", "Time to first token", buckets=_LATENCY_BUCKETS)
E2E_SECONDS = Histogram(
    "isvc_e2e_request_latency_seconds", "Request latency, arrival to last token", buckets=_LATENCY_BUCKETS
)
KV_CACHE_BYTES = Gauge("isvc_kv_cache_bytes", "Bytes held by the KV cache")

_VLLM_LABELS = ["model_name", "engine"]
VLLM_NUM_RUNNING = Gauge("vllm:num_requests_running", "Number of requests in model execution batches.", _VLLM_LABELS)
VLLM_NUM_WAITING = Gauge("vllm:num_requests_waiting", "Number of requests waiting to be processed.", _VLLM_LABELS)
VLLM_KV_CACHE_USAGE = Gauge("vllm:kv_cache_usage_perc", "KV-cache usage. 1 means 100 percent usage.", _VLLM_LABELS)
VLLM_PREFIX_QUERIES = Counter(
    "vllm:prefix_cache_queries", "Prefix cache queries, in terms of number of queried tokens.", _VLLM_LABELS
)
VLLM_PREFIX_HITS = Counter(
    "vllm:prefix_cache_hits", "Prefix cache hits, in terms of number of cached tokens.", _VLLM_LABELS
)
VLLM_PROMPT_TOKENS = Counter("vllm:prompt_tokens", "Number of prefill tokens processed.", _VLLM_LABELS)
VLLM_GENERATION_TOKENS = Counter("vllm:generation_tokens", "Number of generation tokens processed.", _VLLM_LABELS)
VLLM_TTFT = Histogram(
    "vllm:time_to_first_token_seconds",
    "Histogram of time to first token in seconds.",
    _VLLM_LABELS,
    buckets=_VLLM_TTFT_BUCKETS,
)
VLLM_E2E = Histogram(
    "vllm:e2e_request_latency_seconds",
    "Histogram of e2e request latency in seconds.",
    _VLLM_LABELS,
    buckets=_VLLM_E2E_BUCKETS,
)


class EngineMetrics:
    """The engine's series for one served model; the engine thread is the only writer."""

    def __init__(self, model_name: str, engine_index: int = 0) -> None:
        labels = (model_name, str(engine_index))
        self.muted = False
        self._running = VLLM_NUM_RUNNING.labels(*labels)
        self._waiting = VLLM_NUM_WAITING.labels(*labels)
        self._kv_usage = VLLM_KV_CACHE_USAGE.labels(*labels)
        self._prefix_queries = VLLM_PREFIX_QUERIES.labels(*labels)
        self._prefix_hits = VLLM_PREFIX_HITS.labels(*labels)
        self._prompt_tokens = VLLM_PROMPT_TOKENS.labels(*labels)
        self._generation_tokens = VLLM_GENERATION_TOKENS.labels(*labels)
        self._ttft = VLLM_TTFT.labels(*labels)
        self._e2e = VLLM_E2E.labels(*labels)

    @contextmanager
    def mute(self) -> Iterator[None]:
        """Record nothing inside (the warm-up request)."""
        self.muted = True
        try:
            yield
        finally:
            self.muted = False

    def failed(self) -> None:
        if not self.muted:
            FAILED.inc()

    def aborted(self) -> None:
        if not self.muted:
            ABORTED.inc()

    def speculated(self, num_drafted: int, num_accepted: int) -> None:
        """One request's drafts in one step, and how many of them the model confirmed."""
        if not self.muted:
            SPEC_DRAFT_TOKENS.inc(num_drafted)
            SPEC_ACCEPTED_TOKENS.inc(num_accepted)

    def first_token(self, seconds: float) -> None:
        if not self.muted:
            TTFT_SECONDS.observe(seconds)
            self._ttft.observe(seconds)

    def finished(self, seconds: float) -> None:
        if not self.muted:
            E2E_SECONDS.observe(seconds)
            self._e2e.observe(seconds)

    def prefix_lookup(self, num_queried: int, num_hit: int) -> None:
        if not self.muted:
            self._prefix_queries.inc(num_queried)
            if num_hit:
                PREFIX_CACHE_HIT_TOKENS.inc(num_hit)
                self._prefix_hits.inc(num_hit)

    def step(
        self, seconds: float, *, computed_prompt: int, prompts_done: int, generated: int, batch: int, max_batch: int
    ) -> None:
        """After each step: prompt tokens computed and whole prompts finished, tokens generated."""
        if self.muted:
            return
        STEP_SECONDS.observe(seconds)
        if computed_prompt:
            PROMPT_TOKENS.inc(computed_prompt)
        if prompts_done:  # vLLM counts a prompt's every token, cached or computed
            self._prompt_tokens.inc(prompts_done)
        if generated:
            GENERATION_TOKENS.inc(generated)
            self._generation_tokens.inc(generated)
        if batch:
            BATCH_SIZE.observe(batch)
            MAX_BATCH_SIZE.set(max_batch)

    def load(self, running: int, waiting: int, kv_usage: float, kv_bytes: int) -> None:
        """Queue depth and KV cache use: after each step, and at idle."""
        if self.muted:
            return
        NUM_RUNNING.set(running)
        NUM_WAITING.set(waiting)
        self._running.set(running)
        self._waiting.set(waiting)
        self._kv_usage.set(kv_usage)
        KV_CACHE_BYTES.set(kv_bytes)
