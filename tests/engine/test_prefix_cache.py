"""PrefixCache on a real KV cache: what it finds, what it keeps, what it evicts."""

from __future__ import annotations

import torch

from isvc.engine.kv_cache import KVCache
from isvc.engine.prefix_cache import MIN_REUSE_TOKENS, PrefixCache


def filled_cache(slots: int = 4, length: int = 64) -> KVCache:
    cache = KVCache(
        num_layers=2,
        num_kv_heads=1,
        head_dim=8,
        max_slots=slots,
        max_len=length,
        dtype=torch.float16,
        budget_bytes=1 << 30,
    )
    cache.ensure(slots, length)
    for layer in cache.k + cache.v:
        layer.copy_(torch.randn(layer.shape))
    return cache


def test_longest_stored_prefix_wins_and_the_last_token_is_left_to_compute():
    cache = filled_cache()
    pc = PrefixCache(1 << 20)
    a, b = list(range(100, 120)), list(range(100, 130))
    pc.store(a, cache, slot=0)
    pc.store(b, cache, slot=1)
    hit = pc.lookup(list(range(100, 125)) + [7, 8])
    assert hit is not None and hit.num_tokens == 25 and hit.entry.tokens == tuple(b)
    assert pc.lookup(a).num_tokens == len(a) - 1  # a whole stored prompt: its last token still runs
    assert pc.lookup([1, 2, 3] + a) is None  # a prefix, not a substring
    assert pc.lookup(a[: MIN_REUSE_TOKENS - 1] + [0] * 10) is None  # too short to bother


def test_load_copies_exactly_the_stored_positions():
    cache = filled_cache()
    pc = PrefixCache(1 << 20)
    prompt = list(range(30))
    pc.store(prompt, cache, slot=2)
    hit = pc.lookup(prompt[:20] + [99, 98])
    before = cache.k[0][3, :, 20:].clone()
    PrefixCache.load(hit, cache, slot=3)
    for layer in cache.k + cache.v:
        assert torch.equal(layer[3, :, :20], layer[2, :, :20])
    assert torch.equal(cache.k[0][3, :, 20:], before)  # nothing past the hit is touched


def test_covered_prompts_are_not_stored_twice_and_the_budget_evicts_oldest():
    cache = filled_cache()
    per_token = 2 * 2 * 1 * 8 * 2  # layers x (k, v) x heads x head_dim x float16 bytes
    pc = PrefixCache(budget_bytes=50 * per_token)
    pc.store(list(range(20)), cache, slot=0)
    pc.store(list(range(15)), cache, slot=0)  # covered by the first
    assert len(pc) == 1 and pc.nbytes == 20 * per_token
    pc.store(list(range(50, 70)), cache, slot=1)
    pc.lookup(list(range(20)) + [5])  # touch the first: now the most recent
    pc.store(list(range(80, 100)), cache, slot=2)  # over budget: the least recently used goes
    assert pc.lookup(list(range(50, 70)) + [5]) is None
    assert pc.lookup(list(range(20)) + [5]) is not None and pc.nbytes <= 50 * per_token
