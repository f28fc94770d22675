"""The KV cache: one tensor per layer for K and one for V, indexed by batch slot.

Layout per layer: ``[max_slots, kv_heads, capacity, head_dim]``, reserved whole at start as
anonymous memory. The system backs a page of it only once a step writes there, so a slot costs
what its request has written (rounded up to pages), not ``capacity`` tokens: a dense cache grown
to the longest request would hold every slot at that length (SmolLM2, 32 streams of a few hundred
tokens: ~160 MB more RSS with an fp8 cache). Reading a page never written gives zeros.

Running requests hold slots 0..n-1 (the scheduler keeps them dense), so decode attention reads
the view ``[:n, :, :length]`` without copying. ``ensure`` checks each step against the memory
budget as if every running slot were as long as the longest; when the engine idles, the
written pages go back to the system.
"""

from __future__ import annotations

import mmap

import torch

from isvc.errors import ConfigError

RELEASE_ABOVE_TOKENS = 1024
"""Idle release: only once slots x tokens written since the last release exceed this (SmolLM2: 23 MB
in float16). Below it, a serial client's next request reuses the pages without faulting them in again."""


class KVCacheFull(Exception):
    """A step would exceed the cache's memory budget."""


class KVCache:
    def __init__(
        self,
        num_layers: int,
        num_kv_heads: int,
        head_dim: int,
        max_slots: int,
        max_len: int,
        dtype: torch.dtype,
        budget_bytes: int,
    ) -> None:
        self.num_layers = num_layers
        self.num_kv_heads = num_kv_heads
        self.head_dim = head_dim
        self.max_slots = max_slots
        self.dtype = dtype
        self.budget_bytes = budget_bytes
        # No slot may ever be longer than the budget holds, so that bounds the reservation too.
        self.capacity = max(1, min(max_len, budget_bytes // self.bytes_per_slot_token))
        """Tokens per slot: the stride between slots' rows (fixed)."""
        self.num_slots = 0
        self.length = 0
        """The most slots and tokens any step may have written since the last release."""
        shape = (max_slots, num_kv_heads, self.capacity, head_dim)
        self._maps: list[mmap.mmap] = []
        self.k = [self._reserve(shape) for _ in range(num_layers)]
        self.v = [self._reserve(shape) for _ in range(num_layers)]

    @property
    def bytes_per_slot_token(self) -> int:
        return 2 * self.num_layers * self.num_kv_heads * self.head_dim * self.dtype.itemsize

    @property
    def nbytes(self) -> int:
        """An upper bound of the memory the cache holds: the slots and length steps may have written."""
        return self.num_slots * self.length * self.bytes_per_slot_token

    def ensure(self, num_slots: int, length: int) -> None:
        """Let a step write ``num_slots`` slots of up to ``length`` tokens; KVCacheFull over budget."""
        if num_slots * length * self.bytes_per_slot_token > self.budget_bytes or length > self.capacity:
            raise KVCacheFull(f"{num_slots} slots x {length} tokens exceed the KV cache budget")
        self.num_slots, self.length = max(self.num_slots, num_slots), max(self.length, length)

    def shrink(self) -> None:
        """Give the written pages back to the system (called when the engine idles)."""
        if self.num_slots * self.length <= RELEASE_ABOVE_TOKENS:
            return
        for m in self._maps:
            m.madvise(mmap.MADV_DONTNEED)  # an anonymous private mapping reads as zeros afterwards
        self.num_slots = self.length = 0

    def move(self, src: int, dst: int, length: int) -> None:
        """Copy one slot's first ``length`` positions into another (slot compaction)."""
        if length <= 0:
            return
        for cache in (self.k, self.v):
            for layer in cache:
                layer[dst, :, :length].copy_(layer[src, :, :length])

    def _reserve(self, shape: tuple[int, int, int, int]) -> torch.Tensor:
        size = shape[0] * shape[1] * shape[2] * shape[3] * self.dtype.itemsize
        try:
            memory = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)  # zeros, backed when written
        except OSError as exc:
            raise ConfigError(
                f"cannot reserve {size * 2 * self.num_layers / 2**30:.1f} GiB of address space for the KV cache "
                f"({exc.strerror}); lower --max_num_seqs, --max_model_len or --kv_cache_space"
            ) from None
        if hasattr(mmap, "MADV_NOHUGEPAGE"):  # a huge page would back 2 MB at the first write
            memory.madvise(mmap.MADV_NOHUGEPAGE)
        self._maps.append(memory)
        return torch.frombuffer(memory, dtype=self.dtype).view(shape)  # the tensor keeps the mapping alive
