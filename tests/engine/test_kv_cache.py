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


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads RSS from /proc")
def test_a_vacated_or_reused_slot_gives_its_pages_back_and_a_moved_one_keeps_its_rows():
    kv = cache()
    before = rss_mb()
    kv.ensure(4, 2000)
    for layer in kv.k + kv.v:  # four requests of 2,000 tokens: 4 * 2000 * 23 KB = 176 MB
        layer[:4, :, :2000] = 1.0
        layer[3, :, :500] = 3.0
    assert rss_mb() - before > 160

    kv.move(src=3, dst=1, length=500)  # slot 1's request finished; slot 3's (500 tokens) moves into the hole
    kv.ensure(3, 600)  # the next step runs three slots
    # whole pages go back: 4 KiB are 32 positions of 64 float16 values, so from 512 on
    assert bool((kv.k[0][1, :, :500] == 3.0).all()) and not kv.k[0][1, :, 512:2000].any()
    assert not kv.k[0][3].any()  # vacated
    held = lambda tokens: tokens * kv.bytes_per_slot_token / 2**20 + 10  # MB, with room for the test's own
    assert rss_mb() - before < held(2000 + 2000 + 512)  # slots 0 and 2, and 1's 500 tokens

    kv.release(2)  # admitted to a new request: the last one's keys are gone
    assert not kv.v[29][2].any() and rss_mb() - before < held(2000 + 512)

    kv.ensure(1, 600)  # two slots vacated at once
    assert not kv.k[0][1].any() and rss_mb() - before < held(2000)
