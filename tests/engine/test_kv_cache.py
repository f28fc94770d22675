"""The KV cache reserves address space for every slot at full length, and holds memory only for what is written."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from isvc.engine.kv_cache import KVCache, KVCacheFull


def rss_mb() -> float:
    return int(re.search(r"VmRSS:\s+(\d+)", Path("/proc/self/status").read_text()).group(1)) / 1024


def cache(budget_gb: float = 8.0) -> KVCache:
    """SmolLM2's shape: 30 layers, 3 kv heads of 64, 32 slots of 8,192 tokens in float16 (5.6 GiB reserved)."""
    return KVCache(30, 3, 64, max_slots=32, max_len=8192, dtype=torch.float16, budget_bytes=int(budget_gb * 2**30))


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads RSS from /proc")
def test_memory_follows_what_is_written_not_what_is_reserved():
    before = rss_mb()
    kv = cache()
    assert kv.capacity == 8192 and rss_mb() - before < 20
    kv.ensure(32, 300)
    for layer in kv.k + kv.v:  # 32 requests of 300 tokens: 32 * 300 * 23 KB = 211 MB written
        layer[:, :, :300] = 1.0
    grown = rss_mb() - before
    assert 200 < grown < 260, grown
    assert kv.nbytes == 32 * 300 * kv.bytes_per_slot_token

    kv.shrink()  # idle: the pages go back, and read as zeros
    assert rss_mb() - before < 30
    assert kv.nbytes == 0 and not kv.k[5][7, 1, :300].any()


def test_the_budget_counts_every_running_slot_at_the_longest_length():
    kv = cache(budget_gb=0.1)  # 0.1 GiB: 4,660 slot-tokens of 23,040 bytes
    kv.ensure(4, 1000)
    with pytest.raises(KVCacheFull):
        kv.ensure(5, 1000)
    assert kv.capacity == 4660  # no slot can be longer than the whole budget, so none is reserved so


def test_small_use_is_kept_across_idle_periods():
    kv = cache()
    kv.ensure(1, 200)
    kv.k[0][0, :, :200] = 2.0
    kv.shrink()  # a serial client's next request reuses the pages
    assert kv.nbytes == 200 * kv.bytes_per_slot_token and bool((kv.k[0][0, :, :200] == 2.0).all())
