"""The KV cache: one dense tensor per layer, indexed by batch slot, grown on demand.

Layout per layer: ``[slots, kv_heads, capacity, head_dim]``. Running requests hold
slots 0..n-1 (the scheduler keeps them dense), so decode attention reads the view
``[:n, :, :max_len]`` without copying. Capacity grows in steps of ``GROW_TOKENS``
when a request needs more, and shrinks back when the engine idles.
"""

from __future__ import annotations

import torch

GROW_TOKENS = 64


class KVCacheFull(Exception):
    """Growing the cache would exceed its memory budget."""


class KVCache:
    def __init__(
        self, num_layers: int, num_kv_heads: int, head_dim: int, max_slots: int, dtype: torch.dtype, budget_bytes: int
    ) -> None:
        self.num_layers = num_layers
        self.num_kv_heads = num_kv_heads
        self.head_dim = head_dim
        self.max_slots = max_slots
        self.dtype = dtype
        self.budget_bytes = budget_bytes
        self.num_slots = 0
        self.capacity = 0
        self.k: list[torch.Tensor] = []
        self.v: list[torch.Tensor] = []

    @property
    def bytes_per_slot_token(self) -> int:
        return 2 * self.num_layers * self.num_kv_heads * self.head_dim * self.dtype.itemsize

    @property
    def nbytes(self) -> int:
        return self.num_slots * self.capacity * self.bytes_per_slot_token

    def ensure(self, num_slots: int, length: int) -> None:
        """Make room for ``num_slots`` slots of ``length`` tokens; raises KVCacheFull over budget."""
        if num_slots <= self.num_slots and length <= self.capacity:
            return
        slots = self.num_slots
        while slots < num_slots:
            slots = min(self.max_slots, max(4, slots * 2))
        capacity = max(self.capacity, -(-length // GROW_TOKENS) * GROW_TOKENS)
        if slots * capacity * self.bytes_per_slot_token > self.budget_bytes:
            raise KVCacheFull(f"{slots} slots x {capacity} tokens exceed the KV cache budget")
        self._realloc(slots, capacity)

    def shrink(self) -> None:
        """Drop the memory while nothing runs (called when the engine idles)."""
        if self.capacity > GROW_TOKENS * 4 or self.num_slots > 4:
            self.k, self.v, self.num_slots, self.capacity = [], [], 0, 0

    def _realloc(self, slots: int, capacity: int) -> None:
        # Layer by layer, so the old and the new cache never both exist in full (peak RSS).
        shape = (slots, self.num_kv_heads, capacity, self.head_dim)
        if not self.k:
            self.k = [torch.empty(0, dtype=self.dtype) for _ in range(self.num_layers)]
            self.v = [torch.empty(0, dtype=self.dtype) for _ in range(self.num_layers)]
        for cache in (self.k, self.v):
            for i, old in enumerate(cache):
                new = torch.zeros(shape, dtype=self.dtype)
                if self.capacity:
                    new[: self.num_slots, :, : self.capacity].copy_(old)
                cache[i] = new
                del old
        self.num_slots, self.capacity = slots, capacity

    def move(self, src: int, dst: int, length: int) -> None:
        """Copy one slot's first ``length`` positions into another (slot compaction)."""
        if length <= 0:
            return
        for cache in (self.k, self.v):
            for layer in cache:
                layer[dst, :, :length].copy_(layer[src, :, :length])
