"""Prometheus metrics the engine and the server update (vLLM-like names under isvc:)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

_LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)

REQUESTS = Counter("isvc_requests", "Requests finished, by route and outcome", ["route", "status"])
PROMPT_TOKENS = Counter("isvc_prompt_tokens", "Prompt tokens processed")
PREFIX_CACHE_HIT_TOKENS = Counter(
    "isvc_prefix_cache_hit_tokens", "Prompt tokens whose KV was copied from the prefix cache, not computed"
)
GENERATION_TOKENS = Counter("isvc_generation_tokens", "Tokens generated")
ABORTED = Counter("isvc_requests_aborted", "Requests aborted (client disconnected or cancelled)")
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
