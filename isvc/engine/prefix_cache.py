"""Prefix caching: the KV of recent prompts, copied into a new request's slot, not recomputed.

Chat requests start alike (the chat template's system prompt, a shared instruction, the
earlier turns of a conversation). Prefill is most of the work for a short answer, so a
new prompt that begins with a stored one copies those positions' keys and values into its
slot (a few hundred microseconds) and prefills only the rest.

Exact, not approximate: with the native kernels a position's K/V depend only on the tokens
up to it, computed the same way in any chunking or batch, so reused entries are the very
values the prefill would produce. Entries are whole prompts, evicted least recently used
within a byte budget; the longest common prefix with any entry wins.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import torch

from isvc.engine.kv_cache import KVCache

MIN_REUSE_TOKENS = 8  # below this the copy is not worth a lookup


@dataclass(eq=False, slots=True)
class PrefixEntry:
    tokens: tuple[int, ...]
    k: list[torch.Tensor]  # per layer [KVH, n, Dh]
    v: list[torch.Tensor]

    @property
    def nbytes(self) -> int:
        return sum(t.nbytes for t in self.k) + sum(t.nbytes for t in self.v)


@dataclass(frozen=True, slots=True)
class PrefixHit:
    entry: PrefixEntry
    num_tokens: int


class PrefixCache:
    def __init__(self, budget_bytes: int) -> None:
        self.budget_bytes = budget_bytes
        self.nbytes = 0
        self._entries: OrderedDict[tuple[int, ...], PrefixEntry] = OrderedDict()  # oldest first

    def __len__(self) -> int:
        return len(self._entries)

    def lookup(self, prompt: list[int]) -> PrefixHit | None:
        """The longest stored prefix of ``prompt``, leaving at least its last token to compute."""
        best: PrefixHit | None = None
        limit = len(prompt) - 1  # the last prompt token must run: its logits give the first output
        for entry in self._entries.values():
            n = _common_prefix(entry.tokens, prompt, limit)
            if n >= MIN_REUSE_TOKENS and (best is None or n > best.num_tokens):
                best = PrefixHit(entry, n)
        if best is not None:
            self._entries.move_to_end(best.entry.tokens)
        return best

    def store(self, prompt: list[int], cache: KVCache, slot: int) -> None:
        """Keep ``prompt``'s KV (already in ``slot``) unless a stored entry covers it already."""
        tokens = tuple(prompt)
        if len(tokens) < MIN_REUSE_TOKENS or tokens in self._entries:
            return
        for entry in self._entries.values():
            if len(entry.tokens) >= len(tokens) and entry.tokens[: len(tokens)] == tokens:
                return
        n = len(tokens)
        entry = PrefixEntry(
            tokens, [layer[slot, :, :n].clone() for layer in cache.k], [layer[slot, :, :n].clone() for layer in cache.v]
        )
        if entry.nbytes > self.budget_bytes:
            return
        while self._entries and self.nbytes + entry.nbytes > self.budget_bytes:
            _, old = self._entries.popitem(last=False)
            self.nbytes -= old.nbytes
        self._entries[tokens] = entry
        self.nbytes += entry.nbytes

    @staticmethod
    def load(hit: PrefixHit, cache: KVCache, slot: int) -> None:
        """Copy the hit's first positions into ``slot`` (the cache has room for them)."""
        n = hit.num_tokens
        for layer, saved in zip(cache.k, hit.entry.k):
            layer[slot, :, :n].copy_(saved[:, :n])
        for layer, saved in zip(cache.v, hit.entry.v):
            layer[slot, :, :n].copy_(saved[:, :n])


def _common_prefix(a: tuple[int, ...], b: list[int], limit: int) -> int:
    n = min(len(a), limit)
    if a[:n] == tuple(b[:n]):
        return n
    lo, hi = 0, n  # a[:lo] matches, a[:hi] does not: bisect on slice equality (C speed)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if a[:mid] == tuple(b[:mid]):
            lo = mid
        else:
            hi = mid
    return lo
